"""The persistent stat cache: a file whose stat tuple has not changed is never read again.

Entries live in the ``stat_cache`` table of ``meta.db``, keyed by absolute path, and map
``(dev, inode, size, mtime_ns, ctime_ns, mode)`` to the sha256 of the file's bytes. A checksum
run opens one :class:`StatCacheSession`: it loads the entries below the context root in one
query and writes what changed in one transaction at the end.

Racy entries: a file modified within the timestamp granularity right after it was hashed keeps
its mtime, so, like git's index, an entry recorded less than ``racy_window_ns`` after the file's
last change is not trusted; the next run hashes it again and records a trustworthy entry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.store.metadb import MetaDB

__all__ = ["DEFAULT_RACY_WINDOW_NS", "StatCache", "StatCacheSession", "StatKey"]

DEFAULT_RACY_WINDOW_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class StatKey:
    """The parts of ``stat`` that change whenever a file's bytes may have changed."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    mode: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        """The key of an ``os.stat_result``."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


# An entry, kept as plain tuples (a context of thousands of files loads thousands of rows):
# ((dev, ino, size, mtime_ns, ctime_ns, mode), digest, recorded_ns); the key's fields are
# StatKey's, in its order.
_Key = tuple[int, int, int, int, int, int]
_Entry = tuple[_Key, str, int]


def _key_of(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


class StatCache:
    """Content digests of files, persisted in ``meta.db``.

    Args:
        db: the open metadata database.
        racy_window_ns: how long after a file's last change an entry must have been recorded
            to be trusted (see the module docstring).
    """

    def __init__(self, db: MetaDB, *, racy_window_ns: int = DEFAULT_RACY_WINDOW_NS) -> None:
        self.db = db
        self.racy_window_ns = racy_window_ns

    @contextmanager
    def session(self, root: Path) -> Iterator[StatCacheSession]:
        """Open a batch for the files below ``root``; writes are committed on exit."""
        prefix = os.fsencode(os.path.abspath(root)).rstrip(b"/") + b"/"
        # Every path starting with "<root>/" sorts in [prefix, prefix with "/" bumped to "0").
        upper = prefix[:-1] + b"0"

        def load() -> dict[bytes, _Entry]:
            with self.db.reading() as conn:
                rows = conn.execute(
                    "SELECT path, dev, ino, size, mtime_ns, ctime_ns, mode, digest, recorded_ns "
                    "FROM stat_cache WHERE path >= ? AND path < ?",
                    (prefix, upper),
                ).fetchall()
            return {
                bytes(path): ((dev, ino, size, mtime_ns, ctime_ns, mode), digest, recorded)
                for path, dev, ino, size, mtime_ns, ctime_ns, mode, digest, recorded in rows
            }

        # The rows are read in one query, at the first lookup: a run whose files are all
        # known to the process (checksum._FILE_DIGESTS) reads none.
        sess = StatCacheSession(load, self.racy_window_ns)
        yield sess
        if sess.dirty:
            with self.db.transaction() as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO stat_cache "
                    "(path, dev, ino, size, mtime_ns, ctime_ns, mode, digest, recorded_ns) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (p, *key, digest, recorded)
                        for p, (key, digest, recorded) in sess.dirty.items()
                    ],
                )


class StatCacheSession:
    """One checksum run's view of the stat cache (not thread-safe; one per run)."""

    def __init__(
        self,
        entries: dict[bytes, _Entry] | Callable[[], dict[bytes, _Entry]],
        racy_window_ns: int,
    ) -> None:
        self._load = entries if callable(entries) else None
        self._loaded: dict[bytes, _Entry] | None = None if callable(entries) else entries
        self._racy = racy_window_ns
        self.dirty: dict[bytes, _Entry] = {}
        self.hits = 0
        self.misses = 0

    @property
    def racy_window_ns(self) -> int:
        """How long after its last change a file's digest may be trusted."""
        return self._racy

    @property
    def _entries(self) -> dict[bytes, _Entry]:
        if self._loaded is None:
            assert self._load is not None
            self._loaded = self._load()
        return self._loaded

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        """The cached content digest of ``path`` if its stat is unchanged and the entry is safe."""
        entry = self._entries.get(os.fsencode(path))
        if entry is not None and entry[0] == _key_of(st):
            changed = max(st.st_mtime_ns, st.st_ctime_ns)
            if entry[2] - changed >= self._racy:
                self.hits += 1
                return entry[1]
        self.misses += 1
        return None

    def record(self, path: str, st: os.stat_result, digest: str) -> None:
        """Remember that ``path`` with stat ``st`` has content ``digest``."""
        entry: _Entry = (_key_of(st), digest, time.time_ns())
        key = os.fsencode(path)
        self._entries[key] = entry
        self.dirty[key] = entry
