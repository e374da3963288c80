"""Content checksums of local sources (the build context, named local contexts).

One :class:`ContextHasher` serves a whole plan or build: each context directory is opened
once (its ``.dockerignore`` read once, one stat-cache session for all its selectors), so a
no-op rebuild re-reads no unchanged file.

In a process that watches contexts (:mod:`engine.context.watch`), what a hasher computed is
kept for the next ones: a checksum (with its manifest) is reused without walking while the
watch vouches that nothing under the root was added, removed or renamed since the walk began
*and* every file and directory it covers has the stat it had when hashed. inotify sees no
write through a shared ``mmap`` (``numpy.memmap``); the kernel updates mtime and ctime for
it. So the walk's own ``lstat`` results are recorded with the checksum (:func:`stamp`: the
relative paths and one sha256 of their packed ``(ino, size, mtime_ns, ctime_ns, mode, dev)``,
a directory's ``(ino, mode, dev)``), and :func:`unchanged` compares them with one ``lstat``
each before a reuse, as the stat cache compares a file's. Racy entries as in the stat cache
(:mod:`engine.context.statcache`): a checksum whose files changed less than the racy window
before its walk began is kept but not trusted, the next hash walks.

Blind, as for the stat cache, git and BuildKit: the kernel updates a mapped file's mtime and
ctime only when it makes a page writable (the first write after the page was mapped or written
back; on tmpfs, the first write to each page of a mapping), so a write to a page that an
earlier write left dirty changes no stat (until writeback and another write; on tmpfs, until
the file is mapped again). A change that keeps all of the compared fields cannot be made
without privileges (ctime is always set to the present).

Everything else that decides the answer is in the key: the root, main or named context, the
Dockerfile path, the bytes of ``<Dockerfile>.dockerignore`` (it may lie outside the root, where
no watch sees it; ``<root>/.dockerignore`` is inside, so its change is an event), the extra
excludes and the selection. In a fork server's child, the watch and the kept checksums are the server's
(:mod:`engine.context.remote`): the child checks the inherited stat record itself, and what
it computes (with its record) is handed to the server for the next ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import threading
import time
from collections.abc import Mapping
from itertools import starmap
from operator import attrgetter
from pathlib import Path
from typing import Any

from engine.context import checksum as _checksum
from engine.context import watch as _watch
from engine.context.dockerignore import ignore_rules, read_dockerfile_ignore
from engine.context.statcache import DEFAULT_RACY_WINDOW_NS, StatCache, StatCacheSession
from engine.context.tree import ContextTree
from engine.digest import sha256_digest
from engine.graph.ops import ContentSpec, LocalSource
from engine.store.metadb import MetaDB, open_meta_db

__all__ = ["ContextHasher", "Stamp", "keep", "stamp", "unchanged"]

# What a kept checksum covers, as it was when hashed: ``(files, dirs, digest)``, the relative
# paths of its non-directories and directories (the manifest's) and the sha256 of their lstat
# fields packed in that order (``_FILE_STAT`` for a non-directory, ``_DIR_STAT`` for a
# directory). None: not verifiable (a file changed within the racy window before it was
# hashed), the next hash walks.
Stamp = tuple[tuple[str, ...], tuple[str, ...], bytes]

# Process-wide: reuse key (see _reuse_key) -> (watch generation, checksum, manifest, stamp).
_KEPT: dict[tuple[Any, ...], tuple[int, str, dict[str, str], Stamp | None]] = {}
_KEPT_MAX = 64  # selections; a manifest is one entry per file
_kept_lock = threading.Lock()
# A kept checksum is trusted only if every file it covers had not changed for this long when
# its walk began (as the stat cache's entries, see engine.context.statcache).
_RACY_WINDOW_NS = DEFAULT_RACY_WINDOW_NS

# Everything of a file's stat that a write changes (a write through a shared mapping too: the
# kernel updates mtime and ctime when it makes the page writable), as the stat cache compares;
# of a directory, what a mount over it or a replacement changes (its listing and metadata
# changes are inotify events). Packed without a Python object per file.
_FILE_STAT = attrgetter("st_ino", "st_size", "st_mtime_ns", "st_ctime_ns", "st_mode", "st_dev")
_FILE_PACK = struct.Struct("=QqqqQQ").pack
_DIR_STAT = attrgetter("st_ino", "st_mode", "st_dev")
_DIR_PACK = struct.Struct("=QQQ").pack


def _stat_digest(stat: Any, prefix: str, files: tuple[str, ...], dirs: tuple[str, ...]) -> bytes:
    h = hashlib.sha256(
        b"".join(starmap(_FILE_PACK, map(_FILE_STAT, map(stat, [prefix + r for r in files]))))
    )
    h.update(b"".join(starmap(_DIR_PACK, map(_DIR_STAT, map(stat, [prefix + r for r in dirs])))))
    return h.digest()


def stamp(tree: ContextTree, manifest: Mapping[str, str], walk_began_ns: int) -> Stamp | None:
    """What a checksum of ``tree`` with this ``manifest`` covers, from the walk's own lstat
    results (no new system call); None when a file had changed less than the racy window
    before the walk began (its entry is not trusted: the next hash walks)."""
    files: list[str] = []
    dirs: list[str] = []
    for rel in manifest:
        if rel.endswith("/"):
            dirs.append(rel[:-1])
        else:
            files.append(rel)
    known = tree.lstat
    stats = list(map(known, files))
    if None in stats or None in map(known, dirs):
        return None
    newest = max((max(t) for t in map(attrgetter("st_mtime_ns", "st_ctime_ns"), stats)), default=0)
    if walk_began_ns - newest < _RACY_WINDOW_NS:
        return None
    files_t, dirs_t = tuple(files), tuple(dirs)
    return files_t, dirs_t, _stat_digest(known, "", files_t, dirs_t)


def unchanged(root: str, kept: Stamp | None) -> bool:
    """Whether every file and directory a kept checksum of ``root`` covers still has the stat
    it had when hashed (one ``lstat`` each): inotify sees no write through a shared mapping,
    the stat does."""
    if kept is None:
        return False
    files, dirs, digest = kept
    try:
        return _stat_digest(os.lstat, root.rstrip("/") + "/", files, dirs) == digest
    except (OSError, ValueError, struct.error):
        return False


def keep(
    key: tuple[Any, ...],
    generation: int,
    result: str,
    manifest: dict[str, str],
    stamped: Stamp | None,
    *,
    max_files: int | None = None,
) -> None:
    """Keep a checksum and its manifest (computed under the watch generation ``generation``,
    its files' stat as ``stamped``) for reuse: the most recently kept last, at most
    ``_KEPT_MAX`` selections and, when ``max_files`` is given (the fork server holds them for
    all its commands), at most that many manifest entries in all."""
    with _kept_lock:
        _KEPT.pop(key, None)
        _KEPT[key] = (generation, result, manifest, stamped)
        while len(_KEPT) > _KEPT_MAX:
            del _KEPT[next(iter(_KEPT))]
        if max_files is not None:
            while len(_KEPT) > 1 and sum(len(k[2]) for k in _KEPT.values()) > max_files:
                del _KEPT[next(iter(_KEPT))]


class ContextHasher:
    """Computes and memoises content checksums of local sources.

    Args:
        store_root: the store whose ``meta.db`` holds the stat cache; None for no persistence.
        dockerfile_path: the Dockerfile, for ``<Dockerfile>.dockerignore`` precedence.
        extra_excludes: patterns left out of the main context before its .dockerignore
            (the notebook leaves out its own ``*.ipynb`` files).
        db: an open ``meta.db`` to use instead of opening ``store_root``'s (a build passes
            its store's: one connection, one open and one close less); the caller closes it.
    """

    def __init__(
        self,
        store_root: Path | None = None,
        dockerfile_path: Path | None = None,
        extra_excludes: tuple[str, ...] = (),
        *,
        db: MetaDB | None = None,
    ) -> None:
        self._dockerfile_path = dockerfile_path
        self._extra_excludes = extra_excludes
        self._owns_db = db is None and store_root is not None
        self._db: MetaDB | None = (
            db if db is not None else open_meta_db(store_root) if store_root is not None else None
        )
        self._cache = StatCache(self._db) if self._db is not None else None
        self._stack = contextlib.ExitStack()
        # Keyed by (is main context, path): a named context at the main context's directory
        # has its own ignore rules.
        self._trees: dict[tuple[bool, str], tuple[ContextTree, StatCacheSession | None]] = {}
        # When each tree's walk began (time.time_ns()): before any of its files was read.
        self._began: dict[tuple[bool, str], int] = {}
        self._memo: dict[tuple[bool, str, ContentSpec], str] = {}
        self._manifests: dict[tuple[bool, str, ContentSpec], dict[str, str]] = {}
        # <Dockerfile>.dockerignore, read once per hasher: the rules and the reuse key both
        # come from these bytes.
        self._own_ignore: tuple[Path, bytes] | None = None
        self._own_read = False

    def _own(self, root: Path) -> tuple[Path, bytes] | None:
        if not self._own_read:
            self._own_ignore = read_dockerfile_ignore(root, self._dockerfile_path)
            self._own_read = True
        return self._own_ignore

    def _open(self, source: LocalSource) -> tuple[ContextTree, StatCacheSession | None]:
        tree_key = (source.name == "context", source.path)
        opened = self._trees.get(tree_key)
        if opened is None:
            root = Path(source.path)
            self._began[tree_key] = time.time_ns()
            # Watched from before the .dockerignore is read and anything is listed.
            walk = _watch.begin(os.path.abspath(root))
            try:
                # Only the main context honours the Dockerfile's own .dockerignore.
                if source.name == "context":
                    rules = ignore_rules(root, self._own(root), self._extra_excludes)
                else:
                    rules = ignore_rules(root, None)
                tree = ContextTree(root, rules, watch=walk)
            except BaseException:
                if walk is not None:
                    walk.close()
                raise
            if walk is not None:
                walk.ignore(rules)
            session = (
                self._stack.enter_context(self._cache.session(tree.root)) if self._cache else None
            )
            opened = (tree, session)
            self._trees[tree_key] = opened
        return opened

    def _reuse_key(self, source: LocalSource, spec: ContentSpec) -> tuple[Any, ...]:
        root = os.path.abspath(source.path)
        if source.name != "context":
            return (root, False, None, None, (), spec)
        own = self._own(Path(source.path))
        dockerfile = str(self._dockerfile_path) if self._dockerfile_path is not None else None
        return (root, True, dockerfile, own, self._extra_excludes, spec)

    @property
    def db(self) -> MetaDB | None:
        """The open metadata database, if this hasher has a store."""
        return self._db

    def checksum(self, source: LocalSource, spec: ContentSpec) -> str:
        """The checksum of ``spec``'s selectors in ``source``.

        Raises:
            ContextError: a selected path is missing or unreadable.
        """
        memo_key = (source.name == "context", source.path, spec)
        found = self._memo.get(memo_key)
        if found is not None:
            return found
        reuse_key = self._reuse_key(source, spec)
        with _kept_lock:
            kept = _KEPT.get(reuse_key)
        # Every covered file's stat first (a write through a shared mapping makes no inotify
        # event), then the watch: nothing added, removed or renamed since the generation.
        if (
            kept is not None
            and unchanged(reuse_key[0], kept[3])
            and not _watch.changed_since(reuse_key[0], kept[0])
        ):
            self._memo[memo_key] = kept[1]
            self._manifests[memo_key] = kept[2]
            return kept[1]
        tree, session = self._open(source)
        manifest: dict[str, str] = {}
        digests = [
            _checksum._checksum(
                tree,
                sel.path,
                sel.wildcard,
                sel.follow_links,
                sel.include,
                sel.exclude,
                True,  # a local context's owners are normalised to 0, as buildx does
                session,
                manifest=manifest,
            )
            for sel in spec.selectors
        ]
        result = digests[0] if len(digests) == 1 else sha256_digest("\0".join(digests).encode())
        self._memo[memo_key] = result
        self._manifests[memo_key] = manifest
        walk = tree.watch
        if walk is not None and walk.trusted():
            tree_key = (source.name == "context", source.path)
            stamped = stamp(tree, manifest, self._began[tree_key])
            keep(reuse_key, walk.generation, result, manifest, stamped)
            # A fork server's child hands it to the server, for the next commands.
            _watch.kept(reuse_key, walk.generation, result, manifest, stamped)
        return result

    def manifest(self, source: LocalSource, spec: ContentSpec) -> Mapping[str, str]:
        """What :meth:`checksum` hashed for ``spec``: ``{relpath: digest}`` per file (and
        ``{relpath + "/": header digest}`` per directory), paths relative to the context root.

        Collected while checksumming, so asking after :meth:`checksum` hashes nothing again.

        Raises:
            ContextError: as :meth:`checksum`.
        """
        memo_key = (source.name == "context", source.path, spec)
        if memo_key not in self._manifests:
            self._memo.pop(memo_key, None)
            self.checksum(source, spec)
        return self._manifests[memo_key]

    def close(self) -> None:
        """Write stat-cache updates and close the database."""
        try:
            for tree, _session in self._trees.values():
                if tree.watch is not None:
                    tree.watch.close()
            self._stack.close()
        finally:
            if self._db is not None and self._owns_db:
                self._db.close()
            self._db = None
