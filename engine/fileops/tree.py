"""Read trees the file operations copy from and checksum: layers, plain directories, nothing.

* :class:`LayerTree` — a result's chain of layer directories merged with overlayfs's rules
  (whiteouts, opaque directories, a non-directory hiding a directory below), read without
  mounting. Owners count as they are and the root's own header counts, as for BuildKit's refs
  (under the degraded PRoot worker, the user's own uid/gid count as 0: owners are squashed to
  root, :func:`engine.userns.ownership.squashed`).
* :class:`DirTree` — a plain directory (a downloaded file, a git checkout): read like the
  build context, without ``.dockerignore``, owners normalised to 0:0.
* :class:`EmptyTree` — ``scratch``: a root directory and nothing else.

All implement :class:`~engine.context.tree.ReadTree`, so the content checksum
(:mod:`engine.context.checksum`) and the copy read every source the same way. Symlinks are
resolved inside the tree (:func:`~engine.context.tree.resolve_links`); no host path is ever
opened through a symlink.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from engine.context.tree import ContextTree, ReadTree, Resolved, read_xattrs, resolve_links
from engine.fileops.errors import FileOpError
from engine.snapshot.layers import LayerView, is_opaque_dir, is_whiteout

__all__ = [
    "OVERLAY_XATTR_PREFIXES",
    "DirTree",
    "EmptyTree",
    "LayerTree",
    "ReadTree",
    "as_read_tree",
    "content_xattrs",
]

# overlayfs's own bookkeeping (opaque markers, redirects, origins): never content, never copied.
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


def content_xattrs(xattrs: dict[str, bytes]) -> dict[str, bytes]:
    """``xattrs`` without overlayfs's own attributes."""
    return {k: v for k, v in xattrs.items() if not k.startswith(OVERLAY_XATTR_PREFIXES)}


def _squashed(st: os.stat_result) -> os.stat_result:
    """``st`` with owners as results count them: under the degraded PRoot worker the user's
    own uid/gid read as 0 (:func:`engine.userns.ownership.squashed`); else ``st`` itself."""
    if st.st_uid == 0 and st.st_gid == 0:
        return st
    from engine.userns.ownership import squashed as squash

    return squash(st)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise FileOpError(f"cannot stat {path}: {exc.strerror or exc}") from None


class LayerTree:
    """The merged, read-only view of layer directories (bottom first), as overlayfs shows it.

    Lookups are cached: layers handed to a tree must not change while it is used (results are
    immutable; the file op's own output is read through :class:`~engine.fileops.upper.Upper`).

    Args:
        layers: the chain bottom first, as :class:`~engine.snapshot.layers.LayerView` takes it.
    """

    def __init__(self, layers: Sequence[Path]) -> None:
        if not layers:
            raise FileOpError("a layer tree needs at least one layer")
        self._top_first = [str(p) for p in reversed(layers)]
        # For each merged directory: the host directories that contribute entries, top first.
        self._dirs: dict[str, list[str] | None] = {"": list(self._top_first)}
        self._entries: dict[str, tuple[str, os.stat_result] | None] = {}
        self._children: dict[str, list[str]] = {}

    @property
    def layers(self) -> list[Path]:
        """The layer directories, bottom first."""
        return [Path(p) for p in reversed(self._top_first)]

    @property
    def normalize_owner(self) -> bool:
        """Owners of a result count as they are (``testFileOpCopyUIDCache``)."""
        return False

    @property
    def fake_root_header(self) -> bool:
        """The root directory of a result is hashed like any directory."""
        return False

    def _dir_hosts(self, rel: str) -> list[str] | None:
        if rel in self._dirs:
            return self._dirs[rel]
        parent, _, name = rel.rpartition("/")
        parents = self._dir_hosts(parent)
        hosts: list[str] = []
        for pdir in parents or ():
            path = f"{pdir}/{name}"
            st = _lstat(path)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # a whiteout or a non-directory hides everything below it
            hosts.append(path)
            if is_opaque_dir(path):
                break
        result = hosts or None
        self._dirs[rel] = result
        return result

    def _entry(self, rel: str) -> tuple[str, os.stat_result] | None:
        if rel in self._entries:
            return self._entries[rel]
        result: tuple[str, os.stat_result] | None = None
        if rel == "":
            top = self._top_first[0]
            st = _lstat(top)
            if st is None:
                raise FileOpError(f"layer {top} does not exist")
            result = (top, _squashed(st))
        else:
            parent, _, name = rel.rpartition("/")
            for pdir in self._dir_hosts(parent) or ():
                path = f"{pdir}/{name}"
                st = _lstat(path)
                if st is None:
                    continue
                if not is_whiteout(st):
                    result = (path, _squashed(st))
                break
        self._entries[rel] = result
        return result

    def lstat(self, rel: str) -> os.stat_result | None:
        """``lstat`` of the merged entry ``rel``; None when absent or deleted."""
        entry = self._entry(rel)
        return entry[1] if entry else None

    def real(self, rel: str) -> str:
        """Host path of the topmost layer's entry for ``rel``."""
        entry = self._entry(rel)
        if entry is None:
            raise FileOpError(f"/{rel}: not found")
        return entry[0]

    def children(self, rel: str) -> list[str]:
        """Merged directory listing (whiteouts applied), sorted by the names' bytes."""
        cached = self._children.get(rel)
        if cached is not None:
            return cached
        hosts = self._dir_hosts(rel) if self.lstat(rel) is not None else None
        seen: set[str] = set()
        names: list[str] = []
        for host in hosts or ():
            try:
                with os.scandir(host) as it:
                    found = [(e.name, e.path) for e in it]
            except OSError as exc:
                raise FileOpError(f"cannot read /{rel}: {exc.strerror or exc}") from None
            for name, path in found:
                if name in seen:
                    continue
                seen.add(name)  # the topmost layer decides, a whiteout included
                st = _lstat(path)
                if st is not None and not is_whiteout(st):
                    names.append(name)
        names.sort(key=os.fsencode)
        self._children[rel] = names
        return names

    def readlink(self, rel: str) -> str:
        """Target text of the symlink ``rel``."""
        try:
            return os.readlink(self.real(rel))
        except OSError as exc:
            raise FileOpError(f"readlink /{rel}: {exc.strerror or exc}") from None

    def xattrs(self, rel: str) -> dict[str, bytes]:
        """Extended attributes of ``rel`` minus overlayfs's own."""
        return content_xattrs(read_xattrs(self.real(rel), FileOpError))

    def resolve(self, path: str, follow_trailing: bool) -> Resolved:
        """Resolve ``path`` with every symlink followed inside the merged tree."""
        rel = resolve_links(self.lstat, self.readlink, path, follow_trailing, error=FileOpError)
        return Resolved(rel, self.lstat(rel))


class DirTree(ContextTree):
    """A plain directory read as a source (a download, a checkout): owners count as 0:0.

    Its root stands for a fresh snapshot's root (``0755``), whatever mode the temporary
    directory it was fetched into has: ``ADD <git repo> /dest`` creates ``/dest`` like that.
    """

    __slots__ = ()

    def __init__(self, root: Path) -> None:
        super().__init__(root, None)

    def lstat(self, rel: str) -> os.stat_result | None:
        """``lstat`` of ``rel``; the root reports mode ``0755``."""
        st = ContextTree.lstat(self, rel)
        if rel or st is None:
            return st
        return os.stat_result(
            (stat.S_IFDIR | 0o755, *st[1:10]),
            {
                "st_atime_ns": st.st_atime_ns,
                "st_mtime_ns": st.st_mtime_ns,
                "st_ctime_ns": st.st_ctime_ns,
            },
        )


_EMPTY_ROOT = os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0))


class EmptyTree:
    """``scratch``: only the root directory exists."""

    @property
    def normalize_owner(self) -> bool:
        """Nothing to own."""
        return False

    @property
    def fake_root_header(self) -> bool:
        """An empty root's header is as constant as it gets."""
        return True

    def lstat(self, rel: str) -> os.stat_result | None:
        """The root, else nothing."""
        return _EMPTY_ROOT if rel == "" else None

    def children(self, rel: str) -> list[str]:
        """Nothing."""
        return []

    def readlink(self, rel: str) -> str:
        """There are no symlinks."""
        raise FileOpError(f"readlink /{rel}: no such file or directory")

    def real(self, rel: str) -> str:
        """There is nothing on disk."""
        raise FileOpError(f"/{rel}: not found")

    def xattrs(self, rel: str) -> dict[str, bytes]:
        """No attributes."""
        return {}

    def resolve(self, path: str, follow_trailing: bool) -> Resolved:
        """Lexical resolution: nothing can be a link."""
        rel = resolve_links(self.lstat, self.readlink, path, follow_trailing, error=FileOpError)
        return Resolved(rel, self.lstat(rel))


def as_read_tree(tree: ReadTree | LayerView) -> ReadTree:
    """``tree`` itself, or a :class:`LayerTree` over the layers of a ``LayerView``."""
    if isinstance(tree, LayerView):
        layers = getattr(tree, "layers", None)
        if layers is None:
            # LayerView keeps its chain top first and has no public accessor (yet).
            layers = list(reversed(tree._top_first))
        return LayerTree(list(layers))
    return tree
