"""Disk usage and pruning of the build cache, with BuildKit's knobs and meaning.

The records are *results* (what ``docker buildx du`` calls cache records). A result's size is
the size of the snapshot it added itself (its *own* diff; 0 for a result that added no layer),
so the sizes of all records add up to the disk the snapshots use. A snapshot that outlived the
result that made it (an image still uses it) is listed as a record of its own.

Relations, as in BuildKit's cache manager (``cache/manager.go``):

* *parents* of a result are the results that own the other layers of its chain; a result whose
  own diff is in another result's chain has *children* and cannot be removed before them
  (removing leaves makes parents removable, so a prune runs until nothing more qualifies);
* *in use* (not reclaimable): held by a live lease (a running build), directly or because a
  held result's chain contains its diff;
* *shared*: its diff is a layer of a local image (see
  :func:`engine.store.store.register_snapshot_root`). Without ``all`` a prune leaves shared
  records alone; with ``all`` it removes them, but the bytes stay until the image goes.

So "unused" (what a prune without ``all`` may remove) means: not held by a running build, no
remaining children, not sharing its diff with an image.

``prune`` options (``buildkitd.toml``'s GC policy fields and ``buildctl/buildx prune`` flags):

* ``until_ns`` (``--filter until=``, BuildKit's ``keepDuration``): only records not used within
  that long;
* ``reserved_space``: never prune below this much cache;
* ``max_used_space``: prune until the cache uses at most this much;
* ``min_free_space``: prune until the filesystem has this much free;
* with none of the three, everything that qualifies goes; with any, records go one at a time,
  least recently used first (fewer uses, then older, break ties), until the cap is met.

The cap is BuildKit's ``calculateKeepBytes``: start from ``max_used_space``; lower it by what
``min_free_space`` lacks (or, with only ``min_free_space`` set and enough free space, keep
everything); never below ``reserved_space``. The sizes counted are those of snapshots not
shared with images. Deviation: BuildKit stops when the total is *below* the cap; we stop at
*at or below* (``max_used_space=X`` means "use at most X").

After removing records, every snapshot that nothing references any more (no result, no lease,
no image) is deleted: BuildKit's garbage collection after a prune.
"""

from __future__ import annotations

import heapq
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.errors import UsageError
from engine.store.leases import live_lease_ids, reclaim_stale
from engine.store.roots import snapshot_roots
from engine.store.store import Store
from engine.store.trees import remove_tree

__all__ = ["PruneReport", "UsageRecord", "calculate_keep_bytes", "disk_usage", "prune"]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One cache record, as ``docker buildx du`` shows it."""

    id: str
    kind: str  # "result", or "snapshot" for a layer kept only by an image
    size: int
    description: str
    created_ns: int
    last_used_ns: int
    usage_count: int
    in_use: bool
    shared: bool
    reclaimable: bool  # what a prune (with --all) could actually free
    parents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune removed."""

    removed: tuple[UsageRecord, ...] = ()
    reclaimed: int = 0  # bytes of snapshots deleted
    snapshots: int = 0  # snapshots deleted
    keep_bytes: int = 0  # the cap that applied (0: none)
    total_before: int = 0  # cache size counted against the cap, before pruning


@dataclass(slots=True)
class _Res:
    id: str
    diff: str | None
    created_ns: int
    last_used_ns: int
    usage_count: int
    description: str
    chain: list[str] = field(default_factory=list)


class _Graph:
    """The cache's references, read in one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.results: dict[str, _Res] = {}
        for rid, diff, created, last_used, uses, desc in conn.execute(
            "SELECT id, diff, created_ns, last_used_ns, usage_count, description FROM results"
        ):
            self.results[rid] = _Res(rid, diff, created, last_used, uses, desc)
        for rid, sid in conn.execute(
            "SELECT result_id, snapshot_id FROM result_layers ORDER BY result_id, position"
        ):
            self.results[rid].chain.append(sid)
        self.snapshots: dict[str, tuple[int, int]] = {
            sid: (int(size), int(created))
            for sid, size, created in conn.execute("SELECT id, size, created_ns FROM snapshots")
        }
        live = live_lease_ids(conn)
        self.leased: set[str] = {
            rid
            for lid, rid in conn.execute("SELECT lease_id, result_id FROM lease_results")
            if lid in live
        }
        self.pending: set[str] = {
            sid
            for sid, lid in conn.execute("SELECT snapshot_id, lease_id FROM lease_snapshots")
            if lid in live
        }
        self.roots = snapshot_roots(conn)
        self.owner: dict[str, str] = {}
        self.users: dict[str, set[str]] = {}
        for res in self.results.values():
            if res.diff is not None:
                self.owner[res.diff] = res.id
            for sid in res.chain:
                self.users.setdefault(sid, set()).add(res.id)
        # Every snapshot in a held result's chain is held.
        self.protected: set[str] = set(self.pending)
        for rid in self.leased:
            if rid in self.results:
                self.protected.update(self.results[rid].chain)

    def in_use(self, res: _Res) -> bool:
        return res.id in self.leased or (res.diff is not None and res.diff in self.protected)

    def shared(self, res: _Res) -> bool:
        return res.diff is not None and res.diff in self.roots

    def has_children(self, res: _Res) -> bool:
        if res.diff is None:
            return False
        return any(u != res.id for u in self.users.get(res.diff, ()))

    def size(self, res: _Res) -> int:
        if res.diff is None:
            return 0
        return self.snapshots.get(res.diff, (0, 0))[0]

    def parents(self, res: _Res) -> tuple[str, ...]:
        seen: list[str] = []
        for sid in res.chain:
            pid = self.owner.get(sid)
            if pid is not None and pid != res.id and pid not in seen:
                seen.append(pid)
        return tuple(seen)

    def snapshot_free(self, sid: str) -> bool:
        """Nothing references the snapshot any more."""
        return not self.users.get(sid) and sid not in self.roots and sid not in self.protected

    def counted_total(self) -> int:
        return sum(size for sid, (size, _) in self.snapshots.items() if sid not in self.roots)

    def record(self, res: _Res) -> UsageRecord:
        in_use = self.in_use(res)
        shared = self.shared(res)
        return UsageRecord(
            id=res.id,
            kind="result",
            size=self.size(res),
            description=res.description,
            created_ns=res.created_ns,
            last_used_ns=res.last_used_ns,
            usage_count=res.usage_count,
            in_use=in_use,
            shared=shared,
            reclaimable=not in_use and not shared,
            parents=self.parents(res),
        )

    def snapshot_record(self, sid: str) -> UsageRecord:
        size, created = self.snapshots[sid]
        in_use = sid in self.protected
        shared = sid in self.roots
        return UsageRecord(
            id=sid,
            kind="snapshot",
            size=size,
            description="layer kept by an image" if shared else "unreferenced layer",
            created_ns=created,
            last_used_ns=created,
            usage_count=0,
            in_use=in_use,
            shared=shared,
            reclaimable=not in_use and not shared and not self.users.get(sid),
        )

    def remove(self, res: _Res) -> str | None:
        """Forget a result; returns its own snapshot's id if that became unreferenced."""
        del self.results[res.id]
        for sid in res.chain:
            users = self.users.get(sid)
            if users is not None:
                users.discard(res.id)
        if res.diff is not None:
            self.owner.pop(res.diff, None)
            if self.snapshot_free(res.diff):
                return res.diff
        return None


def disk_usage(store: Store) -> list[UsageRecord]:
    """Every cache record: results, and snapshots no result owns any more."""
    with store.db.reading() as conn:
        graph = _Graph(conn)
    records = [graph.record(r) for r in graph.results.values()]
    records.extend(graph.snapshot_record(s) for s in graph.snapshots if s not in graph.owner)
    records.sort(key=lambda r: (-r.last_used_ns, r.id))
    return records


def calculate_keep_bytes(
    total: int,
    free: int,
    *,
    max_used_space: int = 0,
    reserved_space: int = 0,
    min_free_space: int = 0,
) -> int:
    """BuildKit's ``calculateKeepBytes``: how much cache may stay (0: no cap)."""
    if max_used_space == 0 and reserved_space == 0 and min_free_space == 0:
        return 0
    keep = max_used_space
    excess = min_free_space - free
    if excess > 0:
        keep = total - excess if keep == 0 else min(keep, total - excess)
    elif min_free_space != 0 and keep == 0:
        # only min-free-space, and there is enough free space: keep everything
        keep = total
    return max(keep, reserved_space)


def prune(
    store: Store,
    *,
    all: bool = False,
    until_ns: int | None = None,
    max_used_space: int | None = None,
    reserved_space: int | None = None,
    min_free_space: int | None = None,
) -> PruneReport:
    """Remove cache records (see the module doc for the exact rules).

    Decisions and row deletions happen in one write transaction, so a build committing or
    looking up at the same time sees either the old or the new state, and what it holds is never
    removed; directories are deleted after the transaction (a crash leaves rowless directories,
    which the next open sweeps).

    Raises:
        UsageError: a negative size or duration.
        StoreError: the database failed.
    """
    for name, value in (
        ("until", until_ns),
        ("max-used-space", max_used_space),
        ("reserved-space", reserved_space),
        ("min-free-space", min_free_space),
    ):
        if value is not None and value < 0:
            raise UsageError(f"{name} must not be negative")
    store.sweep()
    cutoff = time.time_ns() - until_ns if until_ns else None
    capped = bool(max_used_space or reserved_space or min_free_space)
    free = _free_bytes(store) if min_free_space else 0
    with store.db.transaction() as conn:
        unpublished = reclaim_stale(conn)
        graph = _Graph(conn)
        total = graph.counted_total()
        keep = calculate_keep_bytes(
            total,
            free,
            max_used_space=max_used_space or 0,
            reserved_space=reserved_space or 0,
            min_free_space=min_free_space or 0,
        )

        def eligible(res: _Res) -> bool:
            if graph.in_use(res) or graph.has_children(res):
                return False
            if not all and graph.shared(res):
                return False
            return cutoff is None or res.last_used_ns < cutoff

        def order(res: _Res) -> tuple[int, int, int, str]:
            return (res.last_used_ns, res.usage_count, res.created_ns, res.id)

        heap = [(order(r), r.id) for r in graph.results.values() if eligible(r)]
        heapq.heapify(heap)
        removed: list[UsageRecord] = []
        freed: list[str] = []
        remaining = total
        while heap and not (capped and remaining <= keep):
            _, rid = heapq.heappop(heap)
            res = graph.results.get(rid)
            if res is None:
                continue
            removed.append(graph.record(res))
            parents = graph.parents(res)
            sid = graph.remove(res)
            if sid is not None:
                freed.append(sid)
                remaining -= graph.snapshots[sid][0]
            for pid in parents:
                parent = graph.results.get(pid)
                if parent is not None and eligible(parent):
                    heapq.heappush(heap, (order(parent), pid))
        # Garbage: every snapshot nothing references, freed now or left by earlier removals.
        already = set(freed)
        for sid in graph.snapshots:
            if sid not in already and sid not in graph.owner and graph.snapshot_free(sid):
                removed.append(graph.snapshot_record(sid))
                freed.append(sid)
        _delete_rows(conn, [r.id for r in removed if r.kind == "result"], freed)
    for sid in (*freed, *unpublished):
        remove_tree(store.snapshots_dir / sid)
        remove_tree(store.tmp_dir / sid)
    return PruneReport(
        removed=tuple(removed),
        reclaimed=sum(graph.snapshots[s][0] for s in freed),
        snapshots=len(freed),
        keep_bytes=keep,
        total_before=total,
    )


def _delete_rows(
    conn: sqlite3.Connection, results: Iterable[str], snapshots: Iterable[str]
) -> None:
    # Results first (their layers, keys and checksums cascade), then the snapshots they used:
    # the foreign keys refuse to delete a snapshot a remaining result still points at.
    conn.executemany("DELETE FROM results WHERE id = ?", [(r,) for r in results])
    conn.executemany("DELETE FROM snapshots WHERE id = ?", [(s,) for s in snapshots])


def _free_bytes(store: Store) -> int:
    st = os.statvfs(store.root)
    return st.f_bavail * st.f_frsize
