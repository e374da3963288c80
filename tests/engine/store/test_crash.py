"""kill -9 at random moments: the next open leaves a correct store."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.store.check import check
from engine.store.metadb import open_meta_db
from engine.store.store import Store

WORKER = Path(__file__).with_name("store_worker.py")
KILLS = 20


def _rowless_dirs(root: Path) -> list[str]:
    """Snapshot directories no ``snapshots`` row names (read without opening the Store, whose
    open would sweep them)."""
    db = open_meta_db(root)
    try:
        with db.reading() as conn:
            published = {r[0] for r in conn.execute("SELECT id FROM snapshots")}
    finally:
        db.close()
    return [n for n in os.listdir(root / "snapshots") if n != "tmp" and n not in published]


def test_sigkill_at_random_moments_leaves_a_correct_store(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rng = random.Random(20240611)
    published_total = 0
    interrupted = 0
    for round_ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), "crashloop", str(root), str(round_)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        # kills mostly land mid-build: the dead process left unpublished diffs behind, being
        # written (under tmp/) or committed but not yet published (renamed, no row yet)
        interrupted += bool(os.listdir(root / "snapshots" / "tmp") or _rowless_dirs(root))

        with Store.open(root) as store:
            # the sweep on open removed the dead builder's leftovers
            assert os.listdir(store.tmp_dir) == [], round_
            assert os.listdir(store.blobs.ingest_dir) == [], round_
            report = check(store)
            assert report.clean, (round_, report.problems)
            # every published diff is complete (its last file was written before the commit)
            with store.db.reading() as conn:
                snapshots = [r[0] for r in conn.execute("SELECT id FROM snapshots")]
                keys = conn.execute(
                    "SELECT k.key, l.snapshot_id FROM cache_keys k "
                    "JOIN results r ON r.id = k.result_id "
                    "JOIN result_layers l ON l.result_id = r.id "
                    "WHERE r.diff = l.snapshot_id AND k.key NOT LIKE 'content-%' "
                    "AND k.key NOT LIKE 'alt-%'"
                ).fetchall()
            published_total += len(snapshots)
            for sid in snapshots:
                assert (store.diff_path(sid) / "done").read_text() == "1"
            for key, sid in keys:
                assert (store.diff_path(sid) / "key").read_text() == key
            # and the store still works
            with store.lease() as lease:
                d = store.new_diff_dir(lease)
                (d / "f").write_text(str(round_))
                (d / "key").write_text(f"after-{round_}")
                (d / "done").write_text("1")
                r = store.commit(
                    keys=[f"after-{round_}"],
                    base=(),
                    diff=d,
                    exec_ns=1,
                    description="after",
                    lease=lease,
                )
                assert store.lookup([f"after-{round_}"], lease) == r
                assert (store.diff_path(r.layers[0]) / "f").read_text() == str(round_)
            assert check(store).clean
    # the loop did real work between kills
    assert published_total > KILLS
    assert interrupted >= KILLS // 4
