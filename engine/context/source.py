"""Content checksums of local sources (the build context, named local contexts).

One :class:`ContextHasher` serves a whole plan or build: each context directory is opened
once (its ``.dockerignore`` read once, one stat-cache session for all its selectors), so a
no-op rebuild re-reads no unchanged file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

from engine.context import checksum as _checksum
from engine.context.dockerignore import load_ignore_rules
from engine.context.statcache import StatCache, StatCacheSession
from engine.context.tree import ContextTree
from engine.digest import sha256_digest
from engine.graph.ops import ContentSpec, LocalSource
from engine.store.metadb import MetaDB, open_meta_db

__all__ = ["ContextHasher"]


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

    def _open(self, source: LocalSource) -> tuple[ContextTree, StatCacheSession | None]:
        tree_key = (source.name == "context", source.path)
        opened = self._trees.get(tree_key)
        if opened is None:
            root = Path(source.path)
            # Only the main context honours the Dockerfile's own .dockerignore.
            dockerfile = self._dockerfile_path if source.name == "context" else None
            extra = self._extra_excludes if source.name == "context" else ()
            tree = ContextTree(root, load_ignore_rules(root, dockerfile, extra))
            session = (
                self._stack.enter_context(self._cache.session(tree.root)) if self._cache else None
            )
            opened = (tree, session)
            self._trees[tree_key] = opened
        return opened

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
            self._stack.close()
        finally:
            if self._db is not None and self._owns_db:
                self._db.close()
            self._db = None
