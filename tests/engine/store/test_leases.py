"""Leases: owner identity from /proc, stale detection, protection across processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.store.gc import prune
from engine.store.leases import Owner, current_owner, is_alive, process_start_ticks
from engine.store.store import Store

WORKER = Path(__file__).with_name("store_worker.py")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "root")
    yield s
    s.close()


def test_start_ticks_of_self_and_missing() -> None:
    me = current_owner()
    assert me.pid == os.getpid()
    assert me.start_ticks > 0
    assert process_start_ticks(os.getpid()) == me.start_ticks
    assert is_alive(me)
    assert process_start_ticks(99_999_999) is None
    # a reused pid: same pid, another start time
    assert not is_alive(Owner(me.pid, me.start_ticks + 1, me.boot_id))
    # another boot
    assert not is_alive(Owner(me.pid, me.start_ticks, "00000000-0000-0000-0000-000000000000"))


def test_start_ticks_with_odd_command_name(tmp_path: Path) -> None:
    # comm may contain spaces and ")" - parsing must use the last ")"
    exe = tmp_path / "a) b c"
    exe.symlink_to(sys.executable)
    proc = subprocess.Popen([str(exe), "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        ticks = process_start_ticks(proc.pid)
        assert ticks is not None and ticks > 0
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            assert b"a) b c" in f.read()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


def test_zombie_counts_as_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = Owner(proc.pid, process_start_ticks(proc.pid) or 0, current_owner().boot_id)
    deadline = time.monotonic() + 10
    # not reaped yet: a zombie
    while process_start_ticks(proc.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.path.exists(f"/proc/{proc.pid}")  # still there, as a zombie
    assert not is_alive(owner)
    proc.wait()


def _commit(store: Store, key: str) -> str:
    with store.lease() as lease:
        d = store.new_diff_dir(lease)
        (d / "f").write_text(key)
        r = store.commit(keys=[key], base=(), diff=d, exec_ns=1, description=key, lease=lease)
    return r.layers[0]


def test_live_lease_in_other_process_protects_against_prune(store: Store) -> None:
    snapshot = _commit(store, "k")
    holder = subprocess.Popen(
        [sys.executable, str(WORKER), "hold", str(store.root), "k"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        report = prune(store, all=True)
        assert report.removed == ()
        assert store.diff_path(snapshot).is_dir()
        # a fresh open (which sweeps) does not reclaim a live lease either
        with Store.open(store.root) as other:
            assert prune(other, all=True).removed == ()
            with other.db.reading() as conn:
                assert conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder is dead: its lease is stale and reclaimed, the cache becomes prunable
    report = prune(store, all=True)
    assert [r.description for r in report.removed] == ["k"]
    assert not store.diff_path(snapshot).exists()
    with store.db.reading() as conn:
        assert conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM lease_results").fetchone()[0] == 0


def test_dead_owner_leftovers_swept_on_open(tmp_path: Path) -> None:
    root = tmp_path / "root"
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from engine.store.store import Store\n"
        "s = Store.open(Path(sys.argv[1]))\n"
        "with s.lease() as lease:\n"
        "    d = s.new_diff_dir(lease)\n"
        "    (d / 'f').write_text('x')\n"
        "    e = s.new_diff_dir(lease)\n"
        "    os.rename(e, s.snapshots_dir / e.name)\n"  # as if killed between rename and publish
        "    os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(root)], check=False)
    assert proc.returncode == -9
    assert len(os.listdir(root / "snapshots" / "tmp")) == 1
    assert len(os.listdir(root / "snapshots")) == 2
    with Store.open(root) as store:
        assert os.listdir(store.tmp_dir) == []
        assert os.listdir(store.snapshots_dir) == ["tmp"]
        with store.db.reading() as conn:
            assert conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
            assert conn.execute("SELECT COUNT(*) FROM lease_snapshots").fetchone()[0] == 0


def test_reused_pid_lease_is_reclaimed(store: Store) -> None:
    me = current_owner()
    snapshot = _commit(store, "k")
    with store.db.transaction() as conn:
        result_id = conn.execute("SELECT id FROM results").fetchone()[0]
        # our own pid, but another start time: a previous process that had this pid
        conn.execute(
            "INSERT INTO leases (id, pid, start_ticks, boot_id, created_ns) VALUES (?, ?, ?, ?, 0)",
            ("old", me.pid, me.start_ticks - 1, me.boot_id),
        )
        conn.execute("INSERT INTO lease_results VALUES ('old', ?)", (result_id,))
    with Store.open(store.root) as again:
        with again.db.reading() as conn:
            assert conn.execute("SELECT id FROM leases").fetchall() == []
        assert len(prune(again).removed) == 1
    assert not store.diff_path(snapshot).exists()
