"""Read-only file trees scoped to their root: the protocol, and the build context's tree.

A :class:`ReadTree` is anything the content checksum and the file operations can read: the build
context (:class:`ContextTree`), a result's merged layers or a downloaded directory (see
:mod:`engine.fileops.tree`). Paths are slash-separated and relative to the root (``""`` is the
root). Symlinks are resolved the way BuildKit's ``contenthash.getFollowLinks`` and containerd's
``fs.RootPath`` do (:func:`resolve_links`): component by component, ``..`` stops at the root and
an absolute link target restarts at the root. No path is ever opened through a symlink, so
nothing outside the root is read.

The context view also applies the ``.dockerignore`` rules: an ignored path simply does not exist.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine.context.dockerignore import IgnoreRules, go_clean
from engine.errors import ContextError

if TYPE_CHECKING:
    from engine.context.watch import Walk

__all__ = [
    "MAX_SYMLINKS",
    "ContextTree",
    "ReadTree",
    "Resolved",
    "read_xattrs",
    "resolve_links",
]

# BuildKit's maxSymlinkLimit.
MAX_SYMLINKS = 255


@dataclass(frozen=True, slots=True)
class Resolved:
    """The outcome of resolving a path in the tree.

    Attributes:
        rel: the resolved, symlink-free (except possibly the last component) relative path.
        st: its ``lstat`` result, or None when the path does not exist in the context.
    """

    rel: str
    st: os.stat_result | None


class ReadTree(Protocol):
    """What the checksum and the file operations read: a tree of entries below a root.

    Methods take *resolved* relative paths (no symlink among the parent components), as
    returned by :meth:`resolve` or built from :meth:`children`; only :meth:`resolve` follows
    links.
    """

    @property
    def normalize_owner(self) -> bool:
        """Whether entries count (and copy) as owned by 0:0, as a local context does."""
        ...

    @property
    def fake_root_header(self) -> bool:
        """Whether the root directory's own metadata is left out of checksums (local sources)."""
        ...

    def lstat(self, rel: str) -> os.stat_result | None:
        """``lstat`` of an entry, or None when the tree has nothing there."""
        ...

    def children(self, rel: str) -> list[str]:
        """Names in directory ``rel``, sorted by their bytes; [] for a non-directory."""
        ...

    def readlink(self, rel: str) -> str:
        """Target text of the symlink ``rel`` (never followed)."""
        ...

    def real(self, rel: str) -> str:
        """Host path of an existing entry, to open (with ``O_NOFOLLOW``) and read xattrs from."""
        ...

    def xattrs(self, rel: str) -> dict[str, bytes]:
        """Extended attributes of an existing entry that belong to its content."""
        ...

    def resolve(self, path: str, follow_trailing: bool) -> Resolved:
        """Resolve ``path`` inside the root (see :func:`resolve_links`)."""
        ...


def read_xattrs(path: str, error: type[Exception] = ContextError) -> dict[str, bytes]:
    """All extended attributes of ``path`` (a symlink's own), {} where xattrs are unsupported.

    Raises:
        error: the names cannot be listed.
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            return {}
        raise error(f"cannot list xattrs of {path}: {exc.strerror or exc}") from None
    out: dict[str, bytes] = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue  # vanished or unreadable: BuildKit skips it too
    return out


def resolve_links(
    lstat: Callable[[str], os.stat_result | None],
    readlink: Callable[[str], str],
    path: str,
    follow_trailing: bool,
    *,
    base: str = "",
    error: type[Exception] = ContextError,
) -> str:
    """Resolve ``path`` to a symlink-free relative path, every link followed inside ``base``.

    ``base`` (a resolved relative directory, ``""`` for the root) acts as the root, as
    ``chroot`` would: ``path`` is relative to it, ``..`` never climbs above it and an absolute
    link target restarts at it. Missing components are kept literally, so the result may not
    exist. Only the final component may remain a symlink (``follow_trailing=False``).

    Raises:
        error: more than :data:`MAX_SYMLINKS` links on the way (a loop).
    """
    floor = [p for p in base.split("/") if p]
    current = list(floor)
    remaining = go_clean("/" + path).lstrip("/")
    links = 0
    while remaining:
        part, _, remaining = remaining.partition("/")
        if part in ("", "."):
            continue
        if part == "..":
            # Lexical, clamped at the base: the current path holds no symlinks.
            if len(current) > len(floor):
                current.pop()
            continue
        nxt = "/".join([*current, part])
        st = lstat(nxt)
        if st is None or not stat.S_ISLNK(st.st_mode):
            current.append(part)
            continue
        if not follow_trailing and not remaining.strip("/"):
            current.append(part)
            break
        links += 1
        if links > MAX_SYMLINKS:
            raise error(f"{path}: too many links")
        target = readlink(nxt)
        remaining = f"{target}/{remaining}" if remaining else target
        if target.startswith("/"):
            current = list(floor)
    return "/".join(current)


@dataclass(slots=True)
class ContextTree:
    """The build context below ``root``, minus ignored paths.

    Attributes:
        root: the context directory (made absolute).
        ignore: the ``.dockerignore`` rules, or None.
        watch: told about every directory before it is listed or anything in it is looked
            up, and about every file with several links (:mod:`engine.context.watch`).
    """

    root: Path
    ignore: IgnoreRules | None = None
    watch: Walk | None = None
    _lstat: dict[str, os.stat_result | None] = field(default_factory=dict, repr=False)
    _children: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _disk_cache: dict[str, os.stat_result | None] = field(default_factory=dict, repr=False)
    _prefix: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.root = Path(os.path.abspath(self.root))
        # real() is called several times per file: join by concatenation (rel is relative)
        self._prefix = str(self.root).rstrip("/") + "/"
        try:
            st = os.stat(self.root)
        except OSError as exc:
            raise ContextError(
                f"cannot read build context {self.root}: {exc.strerror or exc}"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise ContextError(f"build context {self.root} is not a directory")

    @property
    def normalize_owner(self) -> bool:
        """Context files count as owned by 0:0: the buildx client resets uid/gid on transfer."""
        return True

    @property
    def fake_root_header(self) -> bool:
        """The local source hashes a constant for the context root's own header."""
        return True

    def real(self, rel: str) -> str:
        """Filesystem path of a relative path (only meaningful for resolved paths)."""
        return self._prefix + rel if rel else str(self.root)

    def xattrs(self, rel: str) -> dict[str, bytes]:
        """Extended attributes of the entry ``rel``."""
        return read_xattrs(self.real(rel))

    def lstat(self, rel: str) -> os.stat_result | None:
        """``lstat`` of ``rel`` if it is in the context; None when missing or ignored.

        ``rel`` must have no symlink in its parent components (as returned by :meth:`resolve`
        or :meth:`children`).
        """
        if rel in self._lstat:
            return self._lstat[rel]
        result = self._disk(rel)
        if result is not None and rel and not self._present(rel, result):
            result = None
        self._lstat[rel] = result
        return result

    def _disk(self, rel: str) -> os.stat_result | None:
        # What is on disk, ignore rules aside; parents must be real directories (never symlinks).
        if rel in self._disk_cache:
            return self._disk_cache[rel]
        result: os.stat_result | None
        if rel == "":
            result = os.lstat(self.root)
        else:
            parent = rel.rpartition("/")[0]
            pst = self._disk(parent)
            if pst is None or not stat.S_ISDIR(pst.st_mode):
                result = None
            else:
                watch = self.watch
                if watch is not None:
                    watch.directory(parent, pst.st_dev)
                try:
                    result = os.lstat(self.real(rel))
                except (FileNotFoundError, NotADirectoryError):
                    result = None
                except OSError as exc:
                    raise ContextError(f"cannot stat {rel}: {exc.strerror or exc}") from None
                if (
                    watch is not None
                    and result is not None
                    and result.st_nlink > 1
                    and not stat.S_ISDIR(result.st_mode)
                ):
                    watch.file(rel)
        self._disk_cache[rel] = result
        return result

    def _present(self, rel: str, st: os.stat_result) -> bool:
        ignore = self.ignore
        if ignore is None or not ignore.excluded(rel, stat.S_ISDIR(st.st_mode)):
            return True
        # An excluded directory is still sent when a "!" line re-includes something below it
        # (fsutil walks into it and emits it as a parent of what it finds).
        if stat.S_ISDIR(st.st_mode) and ignore.has_exclusions:
            return bool(self._scan_children(rel))
        return False

    def children(self, rel: str) -> list[str]:
        """Names of the entries of directory ``rel`` in the context, in byte order."""
        st = self.lstat(rel)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return []
        return self._scan_children(rel)

    def _scan_children(self, rel: str) -> list[str]:
        # ``rel`` is a directory on disk here (children() and _present() check it first), so
        # each child's lstat is taken directly, as _disk() would after finding its parent.
        cached = self._children.get(rel)
        if cached is not None:
            return cached
        base = self.real(rel)
        watch = self.watch
        if watch is not None:
            # Before listing: a change racing the listing is then an event, never missed.
            dst = self._disk(rel)  # known by now: the caller checked it is a directory
            assert dst is not None
            watch.directory(rel, dst.st_dev)
        try:
            with os.scandir(base) as it:
                names = [e.name for e in it]
        except OSError as exc:
            raise ContextError(
                f"cannot read directory {rel or '.'}: {exc.strerror or exc}"
            ) from None
        # BuildKit keys are byte strings: sort by the encoded name, not by code points (the
        # same order for ASCII names).
        if all(name.isascii() for name in names):
            names.sort()
        else:
            names.sort(key=os.fsencode)
        base += "/"
        disk, known = self._disk_cache, self._lstat
        # Rules without patterns (no .dockerignore) exclude nothing: no per-entry matching.
        ignore = self.ignore if self.ignore is not None and self.ignore.matcher.patterns else None
        present: list[str] = []
        for name in names:
            child = f"{rel}/{name}" if rel else name
            if child in known:
                st = known[child]
            else:
                if child in disk:
                    st = disk[child]
                else:
                    try:
                        st = os.lstat(base + name)
                    except (FileNotFoundError, NotADirectoryError):
                        st = None
                    except OSError as exc:
                        raise ContextError(f"cannot stat {child}: {exc.strerror or exc}") from None
                    disk[child] = st
                    if (
                        watch is not None
                        and st is not None
                        and st.st_nlink > 1
                        and not stat.S_ISDIR(st.st_mode)
                    ):
                        # Another link may be outside the root: its writes make no event here.
                        watch.file(child)
                if st is not None and ignore is not None and not self._present(child, st):
                    st = None
                known[child] = st
            if st is not None:
                present.append(name)
        self._children[rel] = present
        return present

    def listing(self, rel: str) -> list[tuple[str, os.stat_result]]:
        """The entries of directory ``rel`` in the context with their ``lstat``, in byte
        order (what :meth:`children` and :meth:`lstat` give, in one call)."""
        names = self.children(rel)
        known = self._lstat
        out = []
        for name in names:
            st = known[f"{rel}/{name}" if rel else name]
            assert st is not None
            out.append((name, st))
        return out

    def readlink(self, rel: str) -> str:
        """Target of the symlink ``rel`` (its text; never followed here)."""
        try:
            return os.readlink(self.real(rel))
        except OSError as exc:
            raise ContextError(f"cannot read symlink {rel}: {exc.strerror or exc}") from None

    def resolve(self, path: str, follow_trailing: bool) -> Resolved:
        """Resolve ``path`` inside the root, following symlinks in every component.

        Args:
            path: a slash path; leading ``/`` and ``..`` are relative to the context root.
            follow_trailing: also follow a symlink in the final component.

        Raises:
            ContextError: more than :data:`MAX_SYMLINKS` links on the way.
        """
        rel = resolve_links(self.lstat, self.readlink, path, follow_trailing)
        return Resolved(rel, self.lstat(rel))
