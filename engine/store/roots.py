"""GC roots outside the cache: snapshots that local images (or anything else) still use.

Prune and check never delete a snapshot named here. Two ways to name them:

* a table ``image_layers(snapshot_id, ...)`` in ``meta.db``: honoured by every process, whatever
  it imported (the safe way for references that persist);
* :func:`register_snapshot_root`: a function run inside GC's transaction, in this process only.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

__all__ = [
    "SnapshotRoot",
    "register_snapshot_root",
    "snapshot_roots",
    "unregister_snapshot_root",
]

SnapshotRoot = Callable[[sqlite3.Connection], set[str]]
"""A function naming snapshot ids that must be kept (it runs inside GC's transaction)."""

_roots: list[SnapshotRoot] = []
_roots_lock = threading.Lock()


def register_snapshot_root(fn: SnapshotRoot) -> None:
    """Keep the snapshots ``fn(conn)`` names alive (e.g. the layers of local images).

    ``fn`` runs inside the write transaction of every prune and check, so what it reads is
    consistent with what GC deletes. It must be registered in every process that prunes; a
    table ``image_layers(snapshot_id)`` in ``meta.db`` is honoured by every process without
    registration, which makes it the safer way for a persistent store of references.
    """
    with _roots_lock:
        if fn not in _roots:
            _roots.append(fn)


def unregister_snapshot_root(fn: SnapshotRoot) -> None:
    """Undo :func:`register_snapshot_root`."""
    with _roots_lock:
        if fn in _roots:
            _roots.remove(fn)


def snapshot_roots(conn: sqlite3.Connection) -> set[str]:
    """Every snapshot id kept alive from outside the cache (images)."""
    ids: set[str] = set()
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'image_layers'"
    ).fetchone()
    if has_table:
        ids.update(r[0] for r in conn.execute("SELECT snapshot_id FROM image_layers"))
    with _roots_lock:
        hooks = list(_roots)
    for fn in hooks:
        ids.update(fn(conn))
    return ids
