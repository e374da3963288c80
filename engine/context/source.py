"""Content checksums of local sources (the build context, named local contexts).

One :class:`ContextHasher` serves a whole plan or build: each context directory is opened
once (its ``.dockerignore`` read once, one stat-cache session for all its selectors), so a
no-op rebuild re-reads no unchanged file.

In a process that watches contexts (:mod:`engine.context.watch`), what a hasher computed is
kept for the next ones: a checksum (with its manifest) is reused without walking while the
watch vouches that nothing under the root changed since the walk began. Everything else that
decides the answer is in the key: the root, main or named context, the Dockerfile path, the
bytes of ``<Dockerfile>.dockerignore`` (it may lie outside the root, where no watch sees it;
``<root>/.dockerignore`` is inside, so its change is an event), the extra excludes and the
selection. In a fork server's child, the watch and the kept checksums are the server's
(:mod:`engine.context.remote`): what a child computes is handed to the server for the next ones.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.context import checksum as _checksum
from engine.context import watch as _watch
from engine.context.dockerignore import ignore_rules, read_dockerfile_ignore
from engine.context.statcache import StatCache, StatCacheSession
from engine.context.tree import ContextTree
from engine.digest import sha256_digest
from engine.graph.ops import ContentSpec, LocalSource
from engine.store.metadb import MetaDB, open_meta_db

__all__ = ["ContextHasher", "keep"]

# Process-wide: reuse key (see _reuse_key) -> (watch generation, checksum, manifest).
_KEPT: dict[tuple[Any, ...], tuple[int, str, dict[str, str]]] = {}
_KEPT_MAX = 64  # selections; a manifest is one entry per file
_kept_lock = threading.Lock()


def keep(
    key: tuple[Any, ...],
    generation: int,
    result: str,
    manifest: dict[str, str],
    *,
    max_files: int | None = None,
) -> None:
    """Keep a checksum and its manifest (computed under the watch generation ``generation``)
    for reuse: the most recently kept last, at most ``_KEPT_MAX`` selections and, when
    ``max_files`` is given (the fork server holds them for all its commands), at most that
    many manifest entries in all."""
    with _kept_lock:
        _KEPT.pop(key, None)
        _KEPT[key] = (generation, result, manifest)
        while len(_KEPT) > _KEPT_MAX:
            del _KEPT[next(iter(_KEPT))]
        if max_files is not None:
            while len(_KEPT) > 1 and sum(len(m) for _, _, m in _KEPT.values()) > max_files:
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
        if kept is not None and not _watch.changed_since(reuse_key[0], kept[0]):
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
            keep(reuse_key, walk.generation, result, manifest)
            # A fork server's child hands it to the server, for the next commands.
            _watch.kept(reuse_key, walk.generation, result, manifest)
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
