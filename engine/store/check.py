"""``cache check``: find damage in a store and, with ``repair``, take it out of service.

What is checked:

* the database itself (``PRAGMA quick_check``, ``PRAGMA foreign_key_check``);
* every snapshot row has its directory (``missing-snapshot``);
* every result's layers exist (``broken-result``: a layer row or directory is missing);
* every key and remembered checksum points at an existing result (``dangling-key``,
  ``dangling-checksum``; only possible if foreign keys were bypassed);
* leases whose owner is dead (``stale-lease``);
* directories nothing explains (``tmp-dir`` under ``snapshots/tmp``, ``orphan-dir`` under
  ``snapshots``) — the same rule the sweep on open applies;
* blobs: each file hashes to its name (``blob-digest``), no stray names (``stray-blob``), no
  partial writes of dead writers (``partial-blob``).

``repair`` reclaims stale leases and removes garbage directories and partial blobs (like the
sweep), and *quarantines* damage: a broken result, every result whose chain contains a broken
snapshot, their keys and checksums, and the broken snapshot rows are moved (as JSON) to the
``quarantine`` table, in one transaction; a damaged blob or a non-directory in a snapshot's
place is moved under ``quarantine/``. Items held by a live lease are never touched (reported as
``held``). Snapshots left without users by the quarantine are ordinary garbage, removed by the
next ``prune``. A clean store gives a clean report.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import StoreError
from engine.store.leases import live_lease_ids, reclaim_stale
from engine.store.roots import snapshot_roots
from engine.store.store import Store
from engine.store.trees import remove_tree

__all__ = ["CheckReport", "Problem", "check"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the store."""

    kind: str
    id: str
    detail: str


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What a check found and, with repair, what it did."""

    problems: tuple[Problem, ...] = ()
    repaired: tuple[Problem, ...] = ()  # fixed (removed, reclaimed or quarantined)
    held: tuple[Problem, ...] = ()  # left alone: a live lease holds them
    quarantined: int = 0  # rows moved to the quarantine table
    checked_snapshots: int = 0
    checked_results: int = 0
    checked_blobs: int = 0

    @property
    def clean(self) -> bool:
        """Nothing is wrong."""
        return not self.problems


@dataclass(slots=True)
class _Findings:
    problems: list[Problem]
    broken_snapshots: dict[str, str]  # id -> reason
    broken_results: dict[str, str]  # id -> reason
    dangling_keys: list[tuple[str, str]]
    dangling_checksums: list[tuple[str, str]]
    snapshots: int
    results: int


def check(store: Store, *, repair: bool = False) -> CheckReport:
    """Check ``store``; with ``repair``, fix or quarantine what is broken (see module doc).

    Raises:
        StoreError: the database cannot be read.
    """
    problems: list[Problem] = []
    repaired: list[Problem] = []
    held: list[Problem] = []
    quarantined = 0

    with store.db.reading() as conn:
        row = conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            problems.append(Problem("database", str(store.db.path), str(row[0] if row else "")))
        for table, rowid, parent, _fk in conn.execute("PRAGMA foreign_key_check"):
            problems.append(
                Problem("foreign-key", f"{table}:{rowid}", f"row points at a missing {parent}")
            )

    if repair:
        with store.db.transaction() as conn:
            stale = _stale_leases(conn)
            unpublished = reclaim_stale(conn)
            problems.extend(stale)
            repaired.extend(stale)
            found = _inspect(store, conn)
            problems.extend(found.problems)
            done, kept, quarantined, moves = _quarantine(store, conn, found)
            repaired.extend(done)
            held.extend(kept)
        for sid in unpublished:
            remove_tree(store.tmp_dir / sid)
            remove_tree(store.snapshots_dir / sid)
        for source, name in moves:
            _move_to_quarantine(store, source, name)
    else:
        with store.db.reading() as conn:
            problems.extend(_stale_leases(conn))
            found = _inspect(store, conn)
            problems.extend(found.problems)

    tmp, orphans = store.garbage_dirs()
    dir_problems = [Problem("tmp-dir", p.name, f"{p}: no live build owns it") for p in tmp]
    dir_problems += [Problem("orphan-dir", p.name, f"{p}: no snapshot row") for p in orphans]
    problems.extend(dir_problems)
    if repair:
        for path in (*tmp, *orphans):
            remove_tree(path)
        repaired.extend(dir_problems)

    blob_problems, blobs_checked = _check_blobs(store, repair)
    problems.extend(blob_problems)
    if repair:
        repaired.extend(blob_problems)
        quarantined += _record_blob_quarantine(store, blob_problems)

    return CheckReport(
        problems=tuple(problems),
        repaired=tuple(repaired),
        held=tuple(held),
        quarantined=quarantined,
        checked_snapshots=found.snapshots,
        checked_results=found.results,
        checked_blobs=blobs_checked,
    )


def _stale_leases(conn: sqlite3.Connection) -> list[Problem]:
    live = live_lease_ids(conn)
    return [
        Problem("stale-lease", lid, f"owner pid {pid} is gone")
        for lid, pid in conn.execute("SELECT id, pid FROM leases ORDER BY id")
        if lid not in live
    ]


def _snapshot_damage(path: Path) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "directory is missing"
    except OSError as exc:
        return f"cannot stat directory: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    return None


def _inspect(store: Store, conn: sqlite3.Connection) -> _Findings:
    problems: list[Problem] = []
    broken_snapshots: dict[str, str] = {}
    snapshot_ids = [r[0] for r in conn.execute("SELECT id FROM snapshots ORDER BY id")]
    for sid in snapshot_ids:
        damage = _snapshot_damage(store.snapshots_dir / sid)
        if damage is not None:
            broken_snapshots[sid] = damage
            problems.append(
                Problem("missing-snapshot", sid, f"{store.snapshots_dir / sid}: {damage}")
            )
    known = set(snapshot_ids)
    broken_results: dict[str, str] = {}
    result_count = 0
    chains: dict[str, list[str]] = {}
    for (rid,) in conn.execute("SELECT id FROM results"):
        chains[rid] = []
        result_count += 1
    for rid, sid in conn.execute(
        "SELECT result_id, snapshot_id FROM result_layers ORDER BY result_id, position"
    ):
        chains.setdefault(rid, []).append(sid)
    for rid in sorted(chains):
        for sid in chains[rid]:
            if sid not in known:
                broken_results[rid] = f"layer {sid} has no snapshot row"
                break
            if sid in broken_snapshots:
                broken_results[rid] = f"layer {sid}: {broken_snapshots[sid]}"
                break
        if rid in broken_results:
            problems.append(Problem("broken-result", rid, broken_results[rid]))
    dangling_keys = [
        (str(k), str(r))
        for k, r in conn.execute(
            "SELECT k.key, k.result_id FROM cache_keys k "
            "LEFT JOIN results r ON r.id = k.result_id WHERE r.id IS NULL"
        )
    ]
    problems.extend(
        Problem("dangling-key", k, f"points at missing result {r}") for k, r in dangling_keys
    )
    dangling_checksums = [
        (str(r), str(s))
        for r, s in conn.execute(
            "SELECT c.result_id, c.spec FROM result_checksums c "
            "LEFT JOIN results r ON r.id = c.result_id WHERE r.id IS NULL"
        )
    ]
    problems.extend(
        Problem("dangling-checksum", f"{r}:{s}", "belongs to a missing result")
        for r, s in dangling_checksums
    )
    return _Findings(
        problems,
        broken_snapshots,
        broken_results,
        dangling_keys,
        dangling_checksums,
        len(snapshot_ids),
        result_count,
    )


def _quarantine(
    store: Store, conn: sqlite3.Connection, found: _Findings
) -> tuple[list[Problem], list[Problem], int, list[tuple[Path, str]]]:
    """Move broken rows to the quarantine table (inside the caller's write transaction).

    Returns (repaired, held, rows quarantined, paths to move under ``quarantine/``).
    """
    now = time.time_ns()
    live = live_lease_ids(conn)
    leased = {
        rid
        for lid, rid in conn.execute("SELECT lease_id, result_id FROM lease_results")
        if lid in live
    }
    repaired: list[Problem] = []
    held: list[Problem] = []
    moves: list[tuple[Path, str]] = []
    count = 0

    def put(kind: str, item: str, reason: str, data: object, path: str | None = None) -> None:
        nonlocal count
        conn.execute(
            "INSERT INTO quarantine (kind, item, reason, data, path, quarantined_ns) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (kind, item, reason, json.dumps(data, sort_keys=True), path, now),
        )
        count += 1

    for rid, reason in sorted(found.broken_results.items()):
        problem = Problem("broken-result", rid, reason)
        if rid in leased:
            held.append(problem)
            continue
        put("result", rid, reason, _result_data(conn, rid))
        conn.execute("DELETE FROM results WHERE id = ?", (rid,))
        repaired.append(problem)

    roots = snapshot_roots(conn)
    for sid, reason in sorted(found.broken_snapshots.items()):
        problem = Problem("missing-snapshot", sid, reason)
        users = conn.execute(
            "SELECT COUNT(*) FROM result_layers WHERE snapshot_id = ?", (sid,)
        ).fetchone()[0]
        owners = conn.execute("SELECT COUNT(*) FROM results WHERE diff = ?", (sid,)).fetchone()[0]
        if users or owners or sid in roots:
            # still used by a held result (or an image): leave the row for the owner to deal with
            held.append(problem)
            continue
        row = conn.execute(
            "SELECT id, size, created_ns, diff_id FROM snapshots WHERE id = ?", (sid,)
        ).fetchone()
        path = store.snapshots_dir / sid
        target = None
        if reason == "not a directory":
            target = f"snapshot-{sid}-{now}"
            moves.append((path, target))
        put(
            "snapshot",
            sid,
            reason,
            dict(zip(("id", "size", "created_ns", "diff_id"), row, strict=True)),
            target,
        )
        conn.execute("DELETE FROM snapshots WHERE id = ?", (sid,))
        repaired.append(problem)

    for key, rid in found.dangling_keys:
        put("key", key, f"points at missing result {rid}", {"key": key, "result_id": rid})
        conn.execute("DELETE FROM cache_keys WHERE key = ? AND result_id = ?", (key, rid))
        repaired.append(Problem("dangling-key", key, f"points at missing result {rid}"))
    for rid, spec in found.dangling_checksums:
        put(
            "checksum",
            f"{rid}:{spec}",
            "belongs to a missing result",
            {"result_id": rid, "spec": spec},
        )
        conn.execute("DELETE FROM result_checksums WHERE result_id = ? AND spec = ?", (rid, spec))
        repaired.append(
            Problem("dangling-checksum", f"{rid}:{spec}", "belongs to a missing result")
        )
    return repaired, held, count, moves


def _result_data(conn: sqlite3.Connection, rid: str) -> dict[str, object]:
    row = conn.execute(
        "SELECT id, diff, exec_ns, created_ns, last_used_ns, usage_count, description "
        "FROM results WHERE id = ?",
        (rid,),
    ).fetchone()
    names = ("id", "diff", "exec_ns", "created_ns", "last_used_ns", "usage_count", "description")
    data: dict[str, object] = dict(zip(names, row, strict=True))
    data["layers"] = [
        r[0]
        for r in conn.execute(
            "SELECT snapshot_id FROM result_layers WHERE result_id = ? ORDER BY position", (rid,)
        )
    ]
    data["keys"] = [
        r[0]
        for r in conn.execute("SELECT key FROM cache_keys WHERE result_id = ? ORDER BY key", (rid,))
    ]
    data["checksums"] = {
        s: c
        for s, c in conn.execute(
            "SELECT spec, checksum FROM result_checksums WHERE result_id = ?", (rid,)
        )
    }
    return data


def _check_blobs(store: Store, repair: bool) -> tuple[list[Problem], int]:
    problems: list[Problem] = []
    count = 0
    for digest in store.blobs.digests():
        count += 1
        if not store.blobs.verify(digest):
            problems.append(Problem("blob-digest", digest, "content does not match its digest"))
            if repair:
                _move_to_quarantine(store, store.blobs.path(digest), f"blob-{digest[7:]}")
    for path in store.blobs.stray_files():
        problems.append(Problem("stray-blob", path.name, f"{path}: not a sha256 digest"))
        if repair:
            _move_to_quarantine(store, path, f"stray-{path.name}")
    for path in store.blobs.dead_ingests():
        problems.append(Problem("partial-blob", path.name, f"{path}: its writer is gone"))
        if repair:
            remove_tree(path)
    return problems, count


def _record_blob_quarantine(store: Store, blob_problems: list[Problem]) -> int:
    rows = [p for p in blob_problems if p.kind in ("blob-digest", "stray-blob")]
    if not rows:
        return 0
    now = time.time_ns()
    with store.db.transaction() as conn:
        for p in rows:
            name = f"blob-{p.id[7:]}" if p.kind == "blob-digest" else f"stray-{p.id}"
            conn.execute(
                "INSERT INTO quarantine (kind, item, reason, data, path, quarantined_ns) "
                "VALUES ('blob', ?, ?, '{}', ?, ?)",
                (p.id, p.detail, name, now),
            )
    return len(rows)


def _move_to_quarantine(store: Store, source: Path, name: str) -> None:
    try:
        store.quarantine_dir.mkdir(mode=0o700, exist_ok=True)
        os.rename(source, store.quarantine_dir / name)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(
            f"cannot move {source} to {store.quarantine_dir}: {exc.strerror}"
        ) from None
