"""Persisted key preimages: what each cache key was made of, for diffs between builds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from engine.cache.keys import VertexKey
from engine.store.metadb import MetaDB

__all__ = ["load_preimage", "record_preimages"]


def record_preimages(db: MetaDB, keys: Iterable[VertexKey]) -> int:
    """Store the preimage of every known key in one transaction; returns how many were new."""
    now = time.time_ns()
    rows = [
        (
            k.cache_key,
            str(k.preimage["op"].get("type", "")),
            json.dumps(k.preimage, sort_keys=True),
            now,
        )
        for k in keys
        if k.cache_key is not None
    ]
    with db.transaction() as conn:
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO preimages (key, type, preimage, recorded_ns) VALUES (?, ?, ?, ?)",
            rows,
        )
        return conn.total_changes - before


def load_preimage(db: MetaDB, key: str) -> Mapping[str, Any] | None:
    """The preimage stored for ``key``, or None."""
    with db.reading() as conn:
        row = conn.execute("SELECT preimage FROM preimages WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    value: Mapping[str, Any] = json.loads(row[0])
    return value
