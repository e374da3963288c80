"""The persistent metadata database, ``NBBUILD_ROOT/meta.db``.

One SQLite file in WAL mode holds every small piece of state that must survive the process: the
stat cache now, cache keys, results, images and history later. The schema version is SQLite's
``PRAGMA user_version``; :data:`MIGRATIONS` is the ordered list of schema steps, and migration
``i`` (0-based) takes the schema from version ``i`` to ``i + 1``. Adding a table is appending one
function to that list; each runs in its own transaction together with the version bump, so a
crash never leaves a half-migrated file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import StoreError

__all__ = ["DB_FILENAME", "MIGRATIONS", "MetaDB", "Migration", "open_meta_db"]

DB_FILENAME = "meta.db"

Migration = Callable[[sqlite3.Connection], None]


def _m001_stat_cache(conn: sqlite3.Connection) -> None:
    # Content digests of regular files, trusted while the stat tuple is unchanged. Keyed by
    # absolute path: the same file seen through two contexts is hashed once.
    conn.execute(
        """
        CREATE TABLE stat_cache (
            path        BLOB PRIMARY KEY,
            dev         INTEGER NOT NULL,
            ino         INTEGER NOT NULL,
            size        INTEGER NOT NULL,
            mtime_ns    INTEGER NOT NULL,
            ctime_ns    INTEGER NOT NULL,
            mode        INTEGER NOT NULL,
            digest      TEXT NOT NULL,
            recorded_ns INTEGER NOT NULL
        ) WITHOUT ROWID
        """
    )


def _m002_preimages(conn: sqlite3.Connection) -> None:
    # Every cache key's preimage (type + fields), so "why did this re-run?" can diff two keys
    # field by field long after the build that made them.
    conn.execute(
        """
        CREATE TABLE preimages (
            key         TEXT PRIMARY KEY,
            type        TEXT NOT NULL,
            preimage    TEXT NOT NULL,
            recorded_ns INTEGER NOT NULL
        ) WITHOUT ROWID
        """
    )


MIGRATIONS: list[Migration] = [
    _m001_stat_cache,
    _m002_preimages,
]


class MetaDB:
    """An open ``meta.db``.

    The connection is shared between threads behind one lock; use :meth:`transaction` for
    every read-modify-write so a batch is one SQLite transaction.

    Attributes:
        path: the database file.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()

    @property
    def schema_version(self) -> int:
        """The schema version stored in the file."""
        with self._lock:
            row = self._conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block in one immediate (write-locking) transaction; roll back on error.

        Raises:
            StoreError: SQLite failed (locked too long, disk full, corrupt file).
        """
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot start a transaction: {exc}") from None
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"{self.path}: commit failed: {exc}") from None

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Run read-only statements under the connection lock (one consistent snapshot)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> MetaDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_meta_db(root: Path, migrations: list[Migration] | None = None) -> MetaDB:
    """Open (creating and migrating as needed) ``root/meta.db``.

    Args:
        root: the nbbuild state directory; created with mode 0700 if missing.
        migrations: the schema steps (tests may pass a shorter or longer list);
            defaults to :data:`MIGRATIONS`.

    Raises:
        StoreError: the directory or file cannot be used, the file is not an SQLite database,
            or its schema is newer than this nbbuild knows.
    """
    steps = MIGRATIONS if migrations is None else migrations
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create state directory {root}: {exc.strerror or exc}") from None
    path = root / DB_FILENAME
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so a migration and its version
        # bump are one transaction.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from None
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        db = MetaDB(path, conn)
        _migrate(db, steps)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path} is not a usable nbbuild database: {exc}") from None
    except BaseException:
        conn.close()
        raise
    # Best effort: a file owned by someone else may still be usable if permissions allow.
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    return db


def _migrate(db: MetaDB, steps: list[Migration]) -> None:
    known = len(steps)
    while True:
        with db.transaction() as conn:
            # Re-read inside the write lock: another process may have migrated meanwhile.
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if current > known:
                raise StoreError(
                    f"{db.path} has schema version {current}, but this nbbuild only knows "
                    f"versions up to {known}: it was written by a newer nbbuild. Upgrade nbbuild, "
                    "or point NBBUILD_ROOT at another directory."
                )
            if current == known:
                return
            steps[current](conn)
            conn.execute(f"PRAGMA user_version = {current + 1}")
