"""The persistent store: one directory holding everything a build keeps.

Layout under ``root`` (``--root`` > ``NBBUILD_ROOT`` > ``~/.cache/nbbuild``)::

    meta.db                 SQLite (WAL): cache keys, results, snapshots, leases, images, history
    blobs/sha256/<hex>      content-addressed blobs (OCI layout compatible)
    blobs/ingest/           partial blob writes (temp → fsync → rename)
    snapshots/<id>/         committed layer diffs (overlayfs upper dirs: whiteouts are 0/0 char
                            devices, opaque dirs carry trusted.overlay.opaque=y)
    snapshots/tmp/<id>/     diffs being written by a live build (swept when their owner is dead)
    quarantine/             what ``cache check --repair`` took out of service

A *result* is what a vertex produced: an ordered chain of layer diffs (bottom first), the time
it took to make, and the keys it is stored under. Exec and file results are the input chain plus
one new diff; a merge is the concatenation of its inputs' chains; an image is its layers.

Crash safety: a diff is written under ``snapshots/tmp``, renamed to ``snapshots/<id>``, made
durable (content and rename) with one ``syncfs``, and only then published in one SQLite
transaction together with its result and keys. A kill at any moment leaves either an unpublished directory (swept) or a
complete, published result. The sweep (on :meth:`Store.open` and by ``check --repair``) relies on
one ordering rule: a snapshot id is recorded for its lease (``lease_snapshots``) *before* its
directory is created, and that row is replaced by the ``snapshots`` row in the publishing
transaction. So a directory is garbage exactly when, read *after* listing the directory, no row
of a live lease and no ``snapshots`` row explains it.

Concurrency: SQLite serialises writers (``BEGIN IMMEDIATE``); lookups take a lease in the same
transaction, so a concurrent prune never removes what a running build holds. Several processes
may build into one root at once; a process must open its own :class:`Store` (do not share one
across ``fork``).

GC roots outside the cache (local images) keep snapshots alive through
:func:`register_snapshot_root`, or through a table ``image_layers(snapshot_id)`` when it exists.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from engine.errors import StoreError
from engine.store import history
from engine.store.blobs import BlobStore
from engine.store.fsync import fsync_dir, syncfs
from engine.store.history import BuildRecord, StepRecord
from engine.store.leases import create_lease, current_owner, drop_lease, reclaim_stale
from engine.store.metadb import MetaDB, open_meta_db
from engine.store.roots import (
    SnapshotRoot,
    register_snapshot_root,
    snapshot_roots,
    unregister_snapshot_root,
)
from engine.store.trees import new_id, remove_tree, tree_size

__all__ = [
    "BuildRecord",
    "Lease",
    "Result",
    "SnapshotRoot",
    "StepRecord",
    "Store",
    "SweepReport",
    "register_snapshot_root",
    "snapshot_roots",
    "unregister_snapshot_root",
]

_ID = re.compile(r"[0-9a-z]{1,64}")
TMP_DIRNAME = "tmp"
# overlay_xattrs of a store made by the degraded PRoot worker (engine.userns.degraded); root's
# is "trusted", a rootless build's "user"
_DEGRADED = "degraded"


@dataclass(frozen=True, slots=True)
class Result:
    """A stored result: a chain of layer diffs."""

    id: str
    layers: tuple[str, ...]  # snapshot ids, bottom first
    exec_ns: int  # how long making it took (so a cache hit can say what it saved)
    created_ns: int
    description: str = ""  # the vertex's name when it was made


@dataclass(frozen=True, slots=True)
class Lease:
    """Holds results and snapshots for a running build (never removed while its owner lives)."""

    id: str


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What a sweep removed: dead owners' leases, their unpublished dirs, partial blobs."""

    leases: int = 0
    tmp_dirs: int = 0
    orphan_dirs: int = 0
    ingests: int = 0


# -- the store ------------------------------------------------------------------------------


class Store:
    """An open store. Thread-safe; several processes may open the same root at once.

    Attributes:
        root: the store directory.
        db: its ``meta.db``.
        blobs: its content-addressed blobs.
    """

    root: Path

    def __init__(self, root: Path, db: MetaDB) -> None:
        self.root = root
        self.db = db
        self.snapshots_dir = root / "snapshots"
        self.tmp_dir = self.snapshots_dir / TMP_DIRNAME
        self.quarantine_dir = root / "quarantine"
        self._degraded_claimed = False
        for d in (self.snapshots_dir, self.tmp_dir):
            try:
                d.mkdir(mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {d}: {exc.strerror}") from None
        self.blobs = BlobStore(root)

    @classmethod
    def open(cls, root: Path) -> Store:
        """Open (creating with mode 0700) the store at ``root``; sweeps dead owners' leftovers.

        Raises:
            StoreError: the directory or database cannot be used.
        """
        root = Path(root)
        db = open_meta_db(root)
        try:
            store = cls(root, db)
            if not _outside_namespace():
                store._check_flavour()
                store.sweep()
            elif _degraded() and store._flavour() == _DEGRADED:
                # The degraded PRoot worker's store: every file is the user's to remove.
                store.sweep()
        except BaseException:
            db.close()
            raise
        return store

    def _check_flavour(self) -> None:
        """Refuse a store whose layers were made in another mode (root / rootless / the
        degraded PRoot worker): their opaque-directory markers are xattrs of a namespace this
        mode's overlays do not read, so deleted directories would silently come back (and a
        degraded store's files all belong to one user)."""
        from engine.userns.namespace import mode

        here = "trusted" if mode() == "root" else "user"
        with self.db.transaction() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = 'overlay_xattrs'").fetchone()
            if row is None:
                conn.execute("INSERT INTO settings VALUES ('overlay_xattrs', ?)", (here,))
                return
        if row[0] != here:
            self._refuse(row[0], here)

    def _flavour(self) -> str | None:
        """The mode that made this store's layers (``overlay_xattrs``), None if not yet set."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = 'overlay_xattrs'").fetchone()
        return None if row is None else str(row[0])

    def _claim_degraded(self) -> None:
        """Before the degraded PRoot worker writes its first layer: the store must be one of
        its own (files the user owns, owners squashed to root), or a new one, which becomes
        one. Read-only uses (plan, history, explain, what-if) never claim a store."""
        if self._degraded_claimed:
            return
        with self.db.transaction() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = 'overlay_xattrs'").fetchone()
            if row is None:
                conn.execute("INSERT INTO settings VALUES ('overlay_xattrs', ?)", (_DEGRADED,))
        if row is not None and row[0] != _DEGRADED:
            self._refuse(str(row[0]), _DEGRADED)
        self._degraded_claimed = True

    def _refuse(self, made_by: str, here: str) -> NoReturn:
        made = {
            "trusted": "real root",
            "user": "a rootless build (a user namespace)",
            _DEGRADED: "the degraded PRoot worker (no user namespace; owners squashed to root)",
        }.get(made_by, f"an unknown mode ({made_by!r})")
        now = {
            "trusted": "as real root",
            "user": "in a user namespace (rootless)",
            _DEGRADED: "by the degraded PRoot worker",
        }[here]
        why = (
            "its files all belong to one user, with owners squashed to root"
            if _DEGRADED in (made_by, here)
            else "their layers mark deleted directories differently"
        )
        raise StoreError(
            f"the store at {self.root} was made by {made} and cannot be used {now}: {why}; "
            "point NBBUILD_ROOT (or --root) at another directory"
        )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- leases ---------------------------------------------------------------------------

    @contextmanager
    def lease(self, description: str = "") -> Iterator[Lease]:
        """A lease owned by this process (pid + process start time, so a reused pid is stale).

        On exit the lease's references go and the diff directories it was handed and did not
        publish are removed.
        """
        owner = current_owner()
        with self.db.transaction() as conn:
            lease = Lease(create_lease(conn, owner, description))
        try:
            yield lease
        finally:
            self.release(lease)

    def release(self, lease: Lease) -> None:
        """End a lease now (what leaving :meth:`lease` does)."""
        with self.db.transaction() as conn:
            unpublished = drop_lease(conn, lease.id)
        self._remove_unpublished(unpublished)

    def hold(self, result: Result, lease: Lease) -> None:
        """Add ``result`` to ``lease`` (a result obtained other than through lookup/commit).

        Raises:
            StoreError: the result or the lease no longer exists.
        """
        with self.db.transaction() as conn:
            self._hold(conn, result.id, lease, time.time_ns())

    # -- snapshots ------------------------------------------------------------------------

    def new_diff_dir(self, lease: Lease) -> Path:
        """A fresh, empty directory under ``snapshots/tmp`` to write one diff into."""
        return self.new_diff_dirs(lease, 1)[0]

    def new_diff_dirs(self, lease: Lease, count: int) -> list[Path]:
        """``count`` fresh, empty directories as :meth:`new_diff_dir` makes them, registered
        in one transaction (a RUN step's upper and work dirs)."""
        if _outside_namespace():
            if _degraded():
                self._claim_degraded()  # the PRoot worker's own store (engine.userns.degraded)
            else:
                # Snapshot files must belong to the build's user namespace: made out here as
                # the user, their owners would be wrong (and chown refused): say why, not EPERM.
                from engine.userns.degraded import hint
                from engine.userns.errors import UsernsUnavailable
                from engine.userns.forward import NO_USERNS_HINT
                from engine.userns.namespace import userns_error

                raise UsernsUnavailable(
                    f"cannot write snapshots outside a user namespace "
                    f"({userns_error() or 'none was entered'}); {NO_USERNS_HINT}{hint()}"
                )
        snapshot_ids = [new_id() for _ in range(count)]
        try:
            with self.db.transaction() as conn:
                # The rows first: a sweep that lists the directory afterwards sees them.
                conn.executemany(
                    "INSERT INTO lease_snapshots (snapshot_id, lease_id) VALUES (?, ?)",
                    [(snapshot_id, lease.id) for snapshot_id in snapshot_ids],
                )
        except sqlite3.IntegrityError:
            raise StoreError(f"lease {lease.id} is no longer held") from None
        paths = []
        for snapshot_id in snapshot_ids:
            path = self.tmp_dir / snapshot_id
            try:
                path.mkdir(mode=0o755)
                os.chmod(path, 0o755)  # the rootfs's "/" in an overlay: not subject to umask
            except OSError as exc:
                raise StoreError(f"cannot create {path}: {exc.strerror}") from None
            paths.append(path)
        return paths

    def discard_diff_dir(self, lease: Lease, path: Path) -> None:
        """Give back a directory from :meth:`new_diff_dir` that will not be committed."""
        snapshot_id = self._tmp_id(path)
        remove_tree(path)
        with self.db.transaction() as conn:
            conn.execute(
                "DELETE FROM lease_snapshots WHERE snapshot_id = ? AND lease_id = ?",
                (snapshot_id, lease.id),
            )

    def diff_path(self, snapshot_id: str) -> Path:
        """The directory of a committed diff."""
        if not _ID.fullmatch(snapshot_id):
            raise StoreError(f"invalid snapshot id {snapshot_id!r}")
        return self.snapshots_dir / snapshot_id

    def layer_paths(self, result: Result) -> list[Path]:
        """The diff directories of a result's chain, bottom first (overlay lowerdirs reversed)."""
        return [self.diff_path(s) for s in result.layers]

    def snapshot_size(self, snapshot_id: str) -> int | None:
        """The recorded size of a committed snapshot, None if there is no such snapshot."""
        with self.db.reading() as conn:
            row = conn.execute("SELECT size FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        return None if row is None else int(row[0])

    def snapshots_created_ns(self, snapshot_ids: Sequence[str]) -> list[int | None]:
        """When each snapshot was committed (None: no such snapshot), in the given order: a
        layer's creation time, which a cached layer keeps (BuildKit's ``buildkit/createdat``)."""
        with self.db.reading() as conn:
            found = {
                str(sid): int(created)
                for sid, created in conn.execute(
                    "SELECT id, created_ns FROM snapshots WHERE id IN "
                    f"({','.join('?' * len(snapshot_ids))})",
                    tuple(snapshot_ids),
                )
            }
        return [found.get(sid) for sid in snapshot_ids]

    def snapshot_diff_id(self, snapshot_id: str) -> str | None:
        """The remembered digest of the snapshot's uncompressed layer tar (None: not known)."""
        with self.db.reading() as conn:
            row = conn.execute(
                "SELECT diff_id FROM snapshots WHERE id = ?", (snapshot_id,)
            ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def set_snapshot_diff_id(self, snapshot_id: str, diff_id: str) -> None:
        """Remember the digest of the snapshot's layer tar (exporters compute it once)."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE snapshots SET diff_id = ? WHERE id = ?", (diff_id, snapshot_id))

    # -- results --------------------------------------------------------------------------

    def lookup(self, keys: Sequence[str], lease: Lease) -> Result | None:
        """The first result stored under any of ``keys``, added to ``lease`` in the same
        transaction (and its last-used time bumped); None when there is none.

        Keys are tried in order; under one key the newest result wins. A result whose layer
        directories are missing (damage that ``cache check`` reports) is skipped.
        """
        if not keys:
            return None
        with self.db.transaction() as conn:
            found = self._find(conn, keys)
            if found is not None:
                self._hold(conn, found.id, lease, time.time_ns())
        return found

    def lookup_each(self, key_lists: Sequence[Sequence[str]], lease: Lease) -> list[Result | None]:
        """:meth:`lookup` of each list of keys, all in one transaction (a no-op rebuild looks
        up every step below its target)."""
        if not any(key_lists):
            return [None] * len(key_lists)
        out: list[Result | None] = []
        with self.db.transaction() as conn:
            now = time.time_ns()
            for keys in key_lists:
                found = self._find(conn, keys) if keys else None
                if found is not None:
                    self._hold(conn, found.id, lease, now)
                out.append(found)
        return out

    def commit(
        self,
        *,
        keys: Sequence[str],
        base: Sequence[str],
        diff: Path | None,
        exec_ns: int,
        description: str,
        lease: Lease,
        fresh: bool = False,
        on_renamed: Callable[[str], None] | None = None,
    ) -> Result:
        """Publish a result: ``base`` layers plus ``diff`` (a dir from :meth:`new_diff_dir`, or
        None for a result that adds no layer). ``syncfs`` once, rename, then one transaction
        that inserts the snapshot, the result, every key and the lease reference. When a
        result with the same key already exists (another process won the race) the new diff is
        discarded and the existing result returned.

        Args:
            fresh: publish the new result even when one exists under a key (``--no-cache``:
                the step re-ran on purpose and its output is what the build uses); the key
                then names both results and lookups prefer the newer.
            on_renamed: called with the new snapshot's ID once the diff is at its final path,
                before the flush (a reader may start on it: a diff is never written again;
                its row does not exist yet, and never will if the commit then fails).

        Raises:
            StoreError: ``diff`` was not handed out by this store, a base layer does not exist,
                the lease is gone, or the filesystem/database failed.
        """
        unique_keys = list(dict.fromkeys(keys))
        snapshot_id: str | None = None
        final: Path | None = None
        size = 0
        if diff is not None:
            snapshot_id = self._tmp_id(diff)
            if not fresh and unique_keys:
                # Cheap check first: if another process already published, skip the flush.
                existing = self._adopt(unique_keys, lease)
                if existing is not None:
                    self.discard_diff_dir(lease, diff)
                    return existing
            size = tree_size(diff)
            final = self.snapshots_dir / snapshot_id
            try:
                os.rename(diff, final)
            except OSError as exc:
                raise StoreError(f"cannot commit {diff}: {exc.strerror}") from None
            if on_renamed is not None:
                on_renamed(snapshot_id)
            # The diff and its rename must be on disk before the row that points at it: one
            # syncfs flushes both (a crash before it leaves a rowless dir, which is swept);
            # the fallback flushes the tree only, so the rename needs its own.
            if not syncfs(final):
                fsync_dir(self.snapshots_dir)
        layers = (*base, snapshot_id) if snapshot_id is not None else tuple(base)
        now = time.time_ns()
        discard = False
        try:
            with self.db.transaction() as conn:
                existing = None if fresh else self._find(conn, unique_keys)
                if existing is not None:
                    discard = True
                    self._add_keys(conn, existing.id, unique_keys, now)
                    self._hold(conn, existing.id, lease, now)
                    if snapshot_id is not None:
                        conn.execute(
                            "DELETE FROM lease_snapshots WHERE snapshot_id = ?", (snapshot_id,)
                        )
                    result = existing
                else:
                    result = self._publish(
                        conn,
                        snapshot_id=snapshot_id,
                        size=size,
                        layers=layers,
                        keys=unique_keys,
                        exec_ns=exec_ns,
                        description=description,
                        lease=lease,
                        now=now,
                    )
        except sqlite3.IntegrityError as exc:
            raise StoreError(
                f"cannot commit {description or 'result'}: a base layer or the lease is gone "
                f"({exc})"
            ) from None
        if discard and final is not None:
            remove_tree(final)
        return result

    def add_keys(self, result: Result, keys: Sequence[str]) -> None:
        """Store ``result`` under more keys (content keys learned after it was made).

        Raises:
            StoreError: the result no longer exists.
        """
        try:
            with self.db.transaction() as conn:
                self._add_keys(conn, result.id, list(dict.fromkeys(keys)), time.time_ns())
        except sqlite3.IntegrityError:
            raise StoreError(f"result {result.id} no longer exists") from None

    def get_checksum(self, result: Result, spec_digest: str) -> str | None:
        """A remembered content checksum of ``result`` for a selector spec."""
        with self.db.reading() as conn:
            row = conn.execute(
                "SELECT checksum FROM result_checksums WHERE result_id = ? AND spec = ?",
                (result.id, spec_digest),
            ).fetchone()
        return None if row is None else str(row[0])

    def set_checksum(self, result: Result, spec_digest: str, checksum: str) -> None:
        """Remember a content checksum (ignored if the result is gone: it is only a cache)."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO result_checksums (result_id, spec, checksum) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM results WHERE id = ?)",
                (result.id, spec_digest, checksum, result.id),
            )

    def result(self, result_id: str) -> Result | None:
        """A result by id (no lease taken)."""
        with self.db.reading() as conn:
            return self._load(conn, result_id)

    def keys_of(self, result: Result) -> list[str]:
        """The keys ``result`` is stored under, sorted."""
        with self.db.reading() as conn:
            rows = conn.execute(
                "SELECT key FROM cache_keys WHERE result_id = ? ORDER BY key", (result.id,)
            ).fetchall()
        return [r[0] for r in rows]

    # -- history --------------------------------------------------------------------------

    def record_build(self, record: BuildRecord) -> None:
        """Append a build to the history."""
        with self.db.transaction() as conn:
            history.record_build(conn, record)

    def last_build(self, name: str) -> BuildRecord | None:
        """The most recent build recorded under ``name``."""
        with self.db.reading() as conn:
            return history.last_build(conn, name)

    def builds(self, limit: int = 50) -> list[BuildRecord]:
        """The most recent builds, newest first."""
        with self.db.reading() as conn:
            return history.builds(conn, limit)

    # -- sweeping -------------------------------------------------------------------------

    def sweep(self) -> SweepReport:
        """Reclaim dead owners' leases and remove what nothing explains (see module doc)."""
        with self.db.transaction() as conn:
            before = conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0]
            reclaim_stale(conn)
            after = conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0]
        tmp, orphans = self.garbage_dirs()
        for path in (*tmp, *orphans):
            remove_tree(path)
        ingests = self.blobs.sweep_ingest()
        return SweepReport(
            leases=int(before) - int(after),
            tmp_dirs=len(tmp),
            orphan_dirs=len(orphans),
            ingests=ingests,
        )

    def garbage_dirs(self) -> tuple[list[Path], list[Path]]:
        """Directories nothing explains: (under ``snapshots/tmp``, under ``snapshots``).

        Lists first and reads the rows afterwards (the ordering rule of the module doc), so a
        live build's directory is never reported. Leases of dead owners count as explanations
        until reclaimed, so call after :func:`reclaim_stale` for a complete answer.
        """
        tmp_names = _listdir(self.tmp_dir)
        names = [n for n in _listdir(self.snapshots_dir) if n != TMP_DIRNAME]
        with self.db.reading() as conn:
            leased = {r[0] for r in conn.execute("SELECT snapshot_id FROM lease_snapshots")}
            published = {r[0] for r in conn.execute("SELECT id FROM snapshots")}
        tmp = [self.tmp_dir / n for n in tmp_names if n not in leased]
        orphans = [self.snapshots_dir / n for n in names if n not in published and n not in leased]
        return tmp, orphans

    # -- internals ------------------------------------------------------------------------

    def _tmp_id(self, path: Path) -> str:
        path = Path(path)
        if path.parent != self.tmp_dir or not _ID.fullmatch(path.name):
            raise StoreError(f"{path} is not a diff directory handed out by this store")
        return path.name

    def _remove_unpublished(self, snapshot_ids: Sequence[str]) -> None:
        for snapshot_id in snapshot_ids:
            remove_tree(self.tmp_dir / snapshot_id)
            # A crash (or error) between rename and publish leaves the dir committed, rowless.
            remove_tree(self.snapshots_dir / snapshot_id)

    def _adopt(self, keys: Sequence[str], lease: Lease) -> Result | None:
        with self.db.transaction() as conn:
            existing = self._find(conn, keys)
            if existing is not None:
                now = time.time_ns()
                self._add_keys(conn, existing.id, keys, now)
                self._hold(conn, existing.id, lease, now)
        return existing

    def _find(self, conn: sqlite3.Connection, keys: Sequence[str]) -> Result | None:
        for key in keys:
            rows = conn.execute(
                "SELECT r.id FROM cache_keys k JOIN results r ON r.id = k.result_id "
                "WHERE k.key = ? ORDER BY r.created_ns DESC, r.id",
                (key,),
            ).fetchall()
            for (result_id,) in rows:
                result = self._load(conn, result_id)
                if result is not None and self._usable(result):
                    return result
        return None

    def _usable(self, result: Result) -> bool:
        return all(os.path.isdir(self.snapshots_dir / s) for s in result.layers)

    def _load(self, conn: sqlite3.Connection, result_id: str) -> Result | None:
        row = conn.execute(
            "SELECT exec_ns, created_ns, description FROM results WHERE id = ?", (result_id,)
        ).fetchone()
        if row is None:
            return None
        layers = tuple(
            r[0]
            for r in conn.execute(
                "SELECT snapshot_id FROM result_layers WHERE result_id = ? ORDER BY position",
                (result_id,),
            )
        )
        return Result(result_id, layers, int(row[0]), int(row[1]), str(row[2]))

    def _hold(self, conn: sqlite3.Connection, result_id: str, lease: Lease, now: int) -> None:
        try:
            conn.execute(
                "INSERT OR IGNORE INTO lease_results (lease_id, result_id) VALUES (?, ?)",
                (lease.id, result_id),
            )
        except sqlite3.IntegrityError:
            raise StoreError(
                f"lease {lease.id} is no longer held (or result {result_id} is gone)"
            ) from None
        conn.execute(
            "UPDATE results SET last_used_ns = ?, usage_count = usage_count + 1 WHERE id = ?",
            (now, result_id),
        )

    @staticmethod
    def _add_keys(conn: sqlite3.Connection, result_id: str, keys: Sequence[str], now: int) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO cache_keys (key, result_id, created_ns) VALUES (?, ?, ?)",
            [(k, result_id, now) for k in keys],
        )

    def _publish(
        self,
        conn: sqlite3.Connection,
        *,
        snapshot_id: str | None,
        size: int,
        layers: tuple[str, ...],
        keys: Sequence[str],
        exec_ns: int,
        description: str,
        lease: Lease,
        now: int,
    ) -> Result:
        if snapshot_id is not None:
            gone = conn.execute(
                "DELETE FROM lease_snapshots WHERE snapshot_id = ? AND lease_id = ?",
                (snapshot_id, lease.id),
            ).rowcount
            if gone != 1:
                raise StoreError(f"snapshot {snapshot_id} is not held by lease {lease.id}")
            conn.execute(
                "INSERT INTO snapshots (id, size, created_ns) VALUES (?, ?, ?)",
                (snapshot_id, size, now),
            )
        result_id = new_id()
        conn.execute(
            "INSERT INTO results (id, diff, exec_ns, created_ns, last_used_ns, usage_count, "
            "description) VALUES (?, ?, ?, ?, ?, 0, ?)",
            (result_id, snapshot_id, exec_ns, now, now, description),
        )
        conn.executemany(
            "INSERT INTO result_layers (result_id, position, snapshot_id) VALUES (?, ?, ?)",
            [(result_id, i, s) for i, s in enumerate(layers)],
        )
        self._add_keys(conn, result_id, keys, now)
        conn.execute(
            "INSERT INTO lease_results (lease_id, result_id) VALUES (?, ?)", (lease.id, result_id)
        )
        return Result(result_id, layers, exec_ns, now, description)


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _degraded() -> bool:
    """Builds of this (unprivileged) process run under the degraded PRoot worker."""
    from engine.userns.degraded import active

    return active()


def _outside_namespace() -> bool:
    """An unprivileged process outside any user namespace (a notebook kernel reading history):
    a rootless store's snapshots belong to the user's subordinate IDs, so it must not remove
    them (half a tree would go); the sweep runs in the next build's namespace instead.
    (``engine.userns.namespace.mode() == "outside"``, which is exactly this test, without
    reading /proc/self/uid_map on every new diff directory.)"""
    return os.geteuid() != 0
