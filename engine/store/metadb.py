"""The persistent metadata database, ``NBBUILD_ROOT/meta.db``.

One SQLite file in WAL mode holds every small piece of state that must survive the process: the
stat cache, key preimages, snapshots, results and their keys, leases, build history and the
quarantine of ``cache check --repair`` (images are added by the image store). The schema
version is SQLite's ``PRAGMA user_version``; :data:`MIGRATIONS` is the ordered list of schema
steps, and migration ``i`` (0-based) takes the schema from version ``i`` to ``i + 1``. Adding a
table is appending one function to that list; each runs in its own transaction together with
the version bump, so a crash never leaves a half-migrated file.
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


def _m003_results(conn: sqlite3.Connection) -> None:
    # Snapshots are committed layer diffs (snapshots/<id>); a result is a chain of them (bottom
    # first, in result_layers) plus what it cost to make. ``results.diff`` is the snapshot the
    # result itself added (NULL for a result that added no layer): GC treats the result as that
    # snapshot's owner. A key may name several results and a result may have several keys.
    conn.execute(
        """
        CREATE TABLE snapshots (
            id          TEXT PRIMARY KEY,
            size        INTEGER NOT NULL,
            created_ns  INTEGER NOT NULL,
            diff_id     TEXT
        ) WITHOUT ROWID
        """
    )
    conn.execute(
        """
        CREATE TABLE results (
            id           TEXT PRIMARY KEY,
            diff         TEXT REFERENCES snapshots(id),
            exec_ns      INTEGER NOT NULL,
            created_ns   INTEGER NOT NULL,
            last_used_ns INTEGER NOT NULL,
            usage_count  INTEGER NOT NULL DEFAULT 0,
            description  TEXT NOT NULL DEFAULT ''
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX results_diff ON results(diff)")
    conn.execute(
        """
        CREATE TABLE result_layers (
            result_id   TEXT NOT NULL REFERENCES results(id) ON DELETE CASCADE,
            position    INTEGER NOT NULL,
            snapshot_id TEXT NOT NULL REFERENCES snapshots(id),
            PRIMARY KEY (result_id, position)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX result_layers_snapshot ON result_layers(snapshot_id)")
    conn.execute(
        """
        CREATE TABLE cache_keys (
            key         TEXT NOT NULL,
            result_id   TEXT NOT NULL REFERENCES results(id) ON DELETE CASCADE,
            created_ns  INTEGER NOT NULL,
            PRIMARY KEY (key, result_id)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX cache_keys_result ON cache_keys(result_id)")
    conn.execute(
        """
        CREATE TABLE result_checksums (
            result_id   TEXT NOT NULL REFERENCES results(id) ON DELETE CASCADE,
            spec        TEXT NOT NULL,
            checksum    TEXT NOT NULL,
            PRIMARY KEY (result_id, spec)
        ) WITHOUT ROWID
        """
    )


def _m004_leases(conn: sqlite3.Connection) -> None:
    # A lease belongs to a process (pid + start ticks + boot id; see engine.store.leases).
    # lease_results has no ON DELETE CASCADE towards results on purpose: deleting a leased
    # result is a bug, and the foreign key turns it into an error instead of a lost layer.
    conn.execute(
        """
        CREATE TABLE leases (
            id          TEXT PRIMARY KEY,
            pid         INTEGER NOT NULL,
            start_ticks INTEGER NOT NULL,
            boot_id     TEXT NOT NULL,
            created_ns  INTEGER NOT NULL,
            description TEXT NOT NULL DEFAULT ''
        ) WITHOUT ROWID
        """
    )
    conn.execute(
        """
        CREATE TABLE lease_results (
            lease_id    TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
            result_id   TEXT NOT NULL REFERENCES results(id),
            PRIMARY KEY (lease_id, result_id)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX lease_results_result ON lease_results(result_id)")
    conn.execute(
        """
        CREATE TABLE lease_snapshots (
            snapshot_id TEXT PRIMARY KEY,
            lease_id    TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX lease_snapshots_lease ON lease_snapshots(lease_id)")


def _m005_builds(conn: sqlite3.Connection) -> None:
    # Build history: one row per build, its steps as JSON (key, status, timings, preimage).
    conn.execute(
        """
        CREATE TABLE builds (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            name        TEXT NOT NULL,
            time_ns     INTEGER NOT NULL,
            target      TEXT NOT NULL,
            tag         TEXT NOT NULL,
            context     TEXT NOT NULL,
            status      TEXT NOT NULL,
            steps       TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX builds_name_time ON builds(name, time_ns)")


def _m006_quarantine(conn: sqlite3.Connection) -> None:
    # Rows ``cache check --repair`` took out of service, kept (as JSON) for a post-mortem;
    # ``path`` is where a damaged directory or blob was moved, if anything was.
    conn.execute(
        """
        CREATE TABLE quarantine (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            kind            TEXT NOT NULL,
            item            TEXT NOT NULL,
            reason          TEXT NOT NULL,
            data            TEXT NOT NULL,
            path            TEXT,
            quarantined_ns  INTEGER NOT NULL
        )
        """
    )


def _m007_images(conn: sqlite3.Connection) -> None:
    # The local image store's tables live with the image store (engine/images/store.py).
    from engine.images.store import migration_images

    migration_images(conn)


def _m008_settings(conn: sqlite3.Connection) -> None:
    # Facts about the store as a whole. ``overlay_xattrs``: "trusted" when its layers were made
    # by real root, "user" when made in a user namespace (a rootless build): overlayfs reads
    # opaque-directory markers from that namespace of xattrs only. A store made before this
    # table existed was made by root (rootless builds came later).
    conn.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    has_snapshots = conn.execute("SELECT 1 FROM snapshots LIMIT 1").fetchone() is not None
    if has_snapshots:
        conn.execute("INSERT INTO settings VALUES ('overlay_xattrs', 'trusted')")


MIGRATIONS: list[Migration] = [
    _m001_stat_cache,
    _m002_preimages,
    _m003_results,
    _m004_leases,
    _m005_builds,
    _m006_quarantine,
    _m007_images,
    _m008_settings,
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
    # The common case, an up-to-date file, needs no write lock: a schema version only grows,
    # so one read that sees ours is final.
    if db.schema_version == known:
        return
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
