"""Two processes building into one store at once, with a third pruning all the while."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine.store.check import check
from engine.store.store import Store

WORKER = Path(__file__).with_name("store_worker.py")
ROUNDS = 100


def test_two_builders_and_a_pruner_stay_consistent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    stop = tmp_path / "stop"
    Store.open(root).close()
    builders = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "hammer", str(root), name, str(ROUNDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two")
    ]
    pruner = subprocess.Popen(
        [sys.executable, str(WORKER), "pruner", str(root), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    outputs = [p.communicate(timeout=300) for p in builders]
    stop.touch()
    pruned = pruner.communicate(timeout=300)
    for p, (_out, err) in zip(builders, outputs, strict=True):
        assert p.returncode == 0, err
    assert pruner.returncode == 0, pruned[1]
    assert json.loads(pruned[0])["prunes"] > 0

    records = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    assert len(records) == 2 * ROUNDS
    commits = 0
    for r in records:
        # what a build got is what it asked for, and stays there while it holds it
        assert r["a_marker"] == r["a_key"]
        assert r["b_marker"] == r["b_key"]
        assert r["b_base_marker"] == r["a_key"]
        assert r["dirs_ok"]
        assert r["a_again"] == r["a"]
        # b was made on (or found on) the very a this build holds
        assert r["b_layers"][:-1] == r["a_layers"]
        commits += len(r["steps"])
    # both processes hit each other's results (keys overlap) and also had to build
    assert commits < 4 * ROUNDS
    assert commits > 0

    with Store.open(root) as store:
        report = check(store)
        assert report.clean, report.problems
        with store.db.reading() as conn:
            # the commit race never leaves two results under one key
            dup = conn.execute(
                "SELECT key, COUNT(*) FROM cache_keys GROUP BY key HAVING COUNT(*) > 1"
            ).fetchall()
            assert dup == []
            assert conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
        assert list(store.tmp_dir.iterdir()) == []
