"""Leases: what a running build holds, and how to tell that its owner is gone.

A lease row names its owner by pid, the process's start time (field 22 of ``/proc/<pid>/stat``,
clock ticks since boot) and the kernel's boot id. An owner is alive while a process with that
pid exists, is not a zombie, and started at that same tick of that same boot: a pid reused by an
unrelated process, or the same pid after a reboot, makes the lease stale. A stale lease is
*reclaimed*: its rows go, and what it held becomes ordinary (prunable) cache.

What a lease holds (tables of migration 3 in :mod:`engine.store.metadb`):

* ``lease_results``: results the build looked up or committed; prune never removes them, nor
  any snapshot in their chains;
* ``lease_snapshots``: snapshot ids handed out by ``Store.new_diff_dir``. The row is written
  *before* the directory is created and removed in the transaction that publishes the
  snapshot, so at every moment a directory under ``snapshots/`` is explained by a row (a live
  lease's or a committed snapshot's) or is garbage that any process may sweep.

Limitation: pids are compared in the caller's pid namespace, so processes in different pid
namespaces (containers) must not share one store.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from dataclasses import dataclass

from engine.store.trees import new_id

__all__ = [
    "Owner",
    "create_lease",
    "current_owner",
    "drop_lease",
    "is_alive",
    "lease_is_live",
    "live_lease_ids",
    "process_start_ticks",
    "reclaim_stale",
]


@dataclass(frozen=True, slots=True)
class Owner:
    """The process a lease belongs to."""

    pid: int
    start_ticks: int
    boot_id: str


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start_ticks(pid: int) -> int | None:
    """The start time of a running process (clock ticks since boot), None when it is gone.

    A zombie (killed but not yet reaped) counts as gone: it will never touch the store again.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain ")" and spaces; the
    # fields after the *last* ")" start at field 3 (state).
    rest = data[data.rfind(b")") + 2 :].split()
    if len(rest) < 20 or rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])  # field 22


def current_owner() -> Owner:
    """The owner identity of this process (recomputed each call: safe across fork)."""
    pid = os.getpid()
    ticks = process_start_ticks(pid)
    if ticks is None:  # pragma: no cover - /proc is always there on Linux
        ticks = -1
    return Owner(pid, ticks, _boot_id())


def is_alive(owner: Owner) -> bool:
    """Whether the owning process still runs (same pid, same start time, same boot)."""
    if owner.boot_id and owner.boot_id != _boot_id():
        return False
    ticks = process_start_ticks(owner.pid)
    return ticks is not None and ticks == owner.start_ticks


def create_lease(conn: sqlite3.Connection, owner: Owner, description: str = "") -> str:
    """Insert a lease row for ``owner`` (inside the caller's write transaction)."""
    lease_id = new_id()
    conn.execute(
        "INSERT INTO leases (id, pid, start_ticks, boot_id, created_ns, description) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (lease_id, owner.pid, owner.start_ticks, owner.boot_id, time.time_ns(), description),
    )
    return lease_id


def drop_lease(conn: sqlite3.Connection, lease_id: str) -> list[str]:
    """Delete a lease and what it holds; returns the snapshot ids it had handed out and not
    published (their directories are now garbage)."""
    rows = conn.execute(
        "SELECT snapshot_id FROM lease_snapshots WHERE lease_id = ?", (lease_id,)
    ).fetchall()
    conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
    return [r[0] for r in rows]


def _owners(conn: sqlite3.Connection) -> dict[str, Owner]:
    return {
        row[0]: Owner(int(row[1]), int(row[2]), str(row[3]))
        for row in conn.execute("SELECT id, pid, start_ticks, boot_id FROM leases")
    }


def live_lease_ids(conn: sqlite3.Connection) -> set[str]:
    """Ids of the leases whose owner is alive."""
    verdict: dict[Owner, bool] = {}
    live: set[str] = set()
    for lease_id, owner in _owners(conn).items():
        if owner not in verdict:
            verdict[owner] = is_alive(owner)
        if verdict[owner]:
            live.add(lease_id)
    return live


def lease_is_live(conn: sqlite3.Connection, lease_id: str) -> bool:
    """Whether ``lease_id`` exists and its owner is alive."""
    row = conn.execute(
        "SELECT pid, start_ticks, boot_id FROM leases WHERE id = ?", (lease_id,)
    ).fetchone()
    return row is not None and is_alive(Owner(int(row[0]), int(row[1]), str(row[2])))


def reclaim_stale(conn: sqlite3.Connection) -> list[str]:
    """Delete every lease whose owner is dead (inside the caller's write transaction).

    Returns:
        The snapshot ids those leases had handed out and not published: their directories
        (under ``snapshots/tmp`` or, after a crash between rename and publish, ``snapshots``)
        may be removed.
    """
    live = live_lease_ids(conn)
    orphaned: list[str] = []
    for lease_id in list(_owners(conn)):
        if lease_id not in live:
            orphaned.extend(drop_lease(conn, lease_id))
    return orphaned
