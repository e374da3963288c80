"""The new diff layer of a file op, written with overlayfs's rules over the destination's layers.

A file op never mounts anything: it writes its changes into ``out``, an empty directory that
becomes an overlayfs *upper* layer over the destination's chain, and reads the destination as
overlayfs would show ``layers + [out]``. Every change is written the way the kernel would have
written it through an overlay mount:

* writing into a directory that only exists below copies it up first: the directory (and its
  missing parents) is created in ``out`` with the lower one's mode, owner, xattrs and times
  (the parent's times are restored afterwards, as overlayfs does);
* changing an entry's metadata (chmod, chown, times, xattrs, a hard link to it) copies the
  entry up, a regular file with its content;
* removing something that exists below leaves a whiteout (character device 0:0);
* creating a directory where something below was removed makes it opaque
  (``trusted.overlay.opaque=y``; ``user.overlay.opaque=y`` in a user namespace, where overlayfs
  is mounted with ``userxattr``), so the lower directory's contents stay hidden.

In a user namespace (rootless builds) owners must be mapped IDs and device nodes cannot be
created: :mod:`engine.userns.ownership` turns the first into a clear error and skips the second.

Paths are the image's paths as relative slash paths (``""`` is ``/``); callers pass resolved
paths (:meth:`Upper.resolve`), so every parent component is a real directory in ``out`` or
below it, and ``out`` itself (private to the op) never contains a symlink in a parent position:
nothing is ever written outside ``out``.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine.context.tree import Resolved, read_xattrs, resolve_links
from engine.errors import InternalError
from engine.fileops.errors import FileOpError, os_error
from engine.fileops.tree import LayerTree, content_xattrs
from engine.snapshot.layers import is_whiteout
from engine.snapshot.overlay import opaque_xattr as _current_opaque_xattr
from engine.userns import ownership

__all__ = ["OPAQUE_XATTR", "Upper", "copy_content", "display"]

OPAQUE_XATTR = "trusted.overlay.opaque"  # as real root; see engine.snapshot.overlay.opaque_xattr
_CHUNK = 1 << 20


def display(rel: str) -> str:
    """The image path of a relative path (``""`` → ``/``)."""
    return "/" + rel


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def open_source(real: str, st: os.stat_result, shown: str) -> int:
    """Open the regular file ``real`` of a source tree for reading, refusing a swapped file.

    ``O_NOFOLLOW`` refuses a symlink put in its place, and the inode must be the one ``st``
    describes, so what is read is what was resolved inside the tree.
    """
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error("open", shown, exc) from None
    fst = os.fstat(fd)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(fst.st_mode):
        os.close(fd)
        raise FileOpError(f"{shown} changed while it was being copied")
    return fd


def copy_content(src_fd: int, dst_fd: int) -> None:
    """Copy all bytes from ``src_fd`` to ``dst_fd`` (in-kernel where possible)."""
    try:
        while os.copy_file_range(src_fd, dst_fd, _CHUNK):
            pass
        return
    except OSError:
        # Cross-device on old kernels, or a filesystem without it: copy through userspace,
        # from where the kernel copy stopped.
        pass
    while chunk := os.read(src_fd, _CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view) :]


class Upper:
    """Writes ``out`` as the upper layer over ``lowers`` (None: over ``scratch``).

    Args:
        out: the (empty) directory that becomes the new layer.
        lowers: the destination's layers, bottom first; None or empty for ``scratch``.
        opaque_xattr: the opaque marker's name; None (the default): the one overlayfs uses
            where this process runs (``trusted.overlay.opaque`` as real root,
            ``user.overlay.opaque`` in a user namespace), looked up when first needed.
    """

    def __init__(
        self, out: Path, lowers: Sequence[Path] | None, *, opaque_xattr: str | None = None
    ) -> None:
        self.out = os.path.abspath(out)
        self.lower = LayerTree(lowers) if lowers else None
        self._opaque_xattr = opaque_xattr
        # Directories of out made opaque by this op: lower entries below them are hidden.
        self._opaque: set[str] = set()

    # -- paths ------------------------------------------------------------------------

    def host(self, rel: str) -> str:
        """Host path in ``out`` of the (resolved, relative) image path ``rel``."""
        if not rel:
            return self.out
        if any(p in ("", ".", "..") for p in rel.split("/")):
            raise InternalError(f"unresolved path {rel!r} reached the layer writer")
        return f"{self.out}/{rel}"

    def init_root(self) -> None:
        """Give ``out``'s root the merged root's metadata, as overlayfs's upper root must have.

        An overlay shows the upper directory's own mode and owner at ``/``: a fresh ``out``
        (often ``0700``) must look like the image's root, or ``scratch``'s ``0755 root:root``.
        """
        if self.lower is None:
            # root: mapped in every namespace (and the user, seen as root, without one)
            ownership.chown(self.out, 0, 0, what="the root directory needs {id}")
            os.chmod(self.out, 0o755)
            return
        st = self.lower.lstat("")
        assert st is not None
        self._copy_meta("", self.out, st, self.lower.xattrs(""))
        os.utime(self.out, ns=(st.st_atime_ns, st.st_mtime_ns))

    # -- reading the merged view ------------------------------------------------------

    def _hidden(self, rel: str) -> bool:
        # Is a lower entry at rel hidden by a directory this op made opaque above it?
        if not self._opaque:
            return False
        parent = _parent(rel)
        while parent:
            if parent in self._opaque:
                return True
            parent = _parent(parent)
        return False

    def _lower(self, rel: str) -> os.stat_result | None:
        if self.lower is None or self._hidden(rel):
            return None
        return self.lower.lstat(rel)

    def lstat(self, rel: str) -> os.stat_result | None:
        """``lstat`` of ``rel`` in the merged view (``layers + [out]``)."""
        try:
            st = os.lstat(self.host(rel))
        except FileNotFoundError:
            return self._lower(rel)
        except NotADirectoryError:
            return None  # a non-directory (or whiteout) in out hides everything below it
        return None if is_whiteout(st) else st

    def real(self, rel: str) -> str:
        """Host path of the merged entry ``rel`` (in ``out`` or in a lower layer)."""
        if self.lstat(rel) is None:
            raise os_error("lstat", display(rel), 2)
        path = self.host(rel)
        if _lstat(path) is not None:
            return path
        assert self.lower is not None
        return self.lower.real(rel)

    def readlink(self, rel: str) -> str:
        """Target text of the merged symlink ``rel``."""
        try:
            return os.readlink(self.real(rel))
        except OSError as exc:
            raise os_error("readlink", display(rel), exc) from None

    def xattrs(self, rel: str) -> dict[str, bytes]:
        """Content xattrs of the merged entry ``rel``."""
        return content_xattrs(read_xattrs(self.real(rel), FileOpError))

    def resolve(self, path: str, follow_trailing: bool = True, *, base: str = "") -> str:
        """Resolve an image path in the merged view, symlinks followed inside ``base``.

        Like containerd's ``fs.RootPath`` (``base=""``) or a path seen from a ``chroot`` into
        ``base`` (tar extraction). Missing components stay literal.
        """
        return resolve_links(
            self.lstat, self.readlink, path, follow_trailing, base=base, error=FileOpError
        )

    def resolved(self, path: str, follow_trailing: bool = True) -> Resolved:
        """:meth:`resolve` with the entry's ``lstat``."""
        rel = self.resolve(path, follow_trailing)
        return Resolved(rel, self.lstat(rel))

    # -- copy-up ----------------------------------------------------------------------

    def _copy_meta(
        self, rel: str, path: str, st: os.stat_result, xattrs: Mapping[str, bytes]
    ) -> None:
        ownership.chown(
            path, st.st_uid, st.st_gid, what=f"the image's {display(rel)} is owned by {{id}}"
        )
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        self._set_xattrs(path, xattrs)

    def copy_up_dir(self, rel: str) -> None:
        """Make sure the merged directory ``rel`` exists as a directory in ``out``."""
        chain: list[str] = []  # deepest first
        cur = rel
        while cur:
            st = _lstat(self.host(cur))
            if st is None:
                chain.append(cur)
                cur = _parent(cur)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise os_error("mkdir", display(cur), 20)  # ENOTDIR: callers resolved first
            break
        if not chain:
            return
        anchor = self.host(cur)
        anchor_st = os.lstat(anchor)
        lowers: list[os.stat_result] = []
        for d in reversed(chain):
            lst = self._lower(d)
            if lst is None or not stat.S_ISDIR(lst.st_mode):
                raise os_error("lstat", display(d), 2)
            assert self.lower is not None
            os.mkdir(self.host(d), 0o700)
            self._copy_meta(d, self.host(d), lst, self.lower.xattrs(d))
            lowers.append(lst)
        for d, lst in zip(reversed(chain), lowers, strict=True):
            os.utime(self.host(d), ns=(lst.st_atime_ns, lst.st_mtime_ns))
        # overlayfs keeps the parent's times across a copy-up.
        os.utime(anchor, ns=(anchor_st.st_atime_ns, anchor_st.st_mtime_ns))

    def _copy_up_file(self, rel: str, lst: os.stat_result) -> None:
        assert self.lower is not None
        parent = _parent(rel)
        self.copy_up_dir(parent)
        anchor = self.host(parent)
        anchor_st = os.lstat(anchor)
        path = self.host(rel)
        real = self.lower.real(rel)
        mode = lst.st_mode
        if stat.S_ISREG(mode):
            src = open_source(real, lst, display(rel))
            try:
                dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    copy_content(src, dst)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(real), path)
        elif not ownership.mknod(path, mode, lst.st_rdev):
            # Only a layer unpacked as real root has devices; a user namespace cannot copy one.
            raise FileOpError(
                f"cannot change the device node {display(rel)}: a rootless build cannot "
                "create device nodes"
            )
        self._copy_meta(rel, path, lst, self.lower.xattrs(rel))
        os.utime(path, ns=(lst.st_atime_ns, lst.st_mtime_ns), follow_symlinks=False)
        os.utime(anchor, ns=(anchor_st.st_atime_ns, anchor_st.st_mtime_ns))

    def ensure_upper(self, rel: str) -> str:
        """Copy the merged entry ``rel`` up into ``out`` if needed; return its host path."""
        path = self.host(rel)
        st = _lstat(path)
        if st is not None and not is_whiteout(st):
            return path
        lst = self._lower(rel) if st is None else None
        if lst is None:
            raise os_error("lstat", display(rel), 2)
        if stat.S_ISDIR(lst.st_mode):
            self.copy_up_dir(rel)
        else:
            self._copy_up_file(rel, lst)
        return path

    # -- changes ----------------------------------------------------------------------

    def remove(self, rel: str) -> None:
        """Remove ``rel`` and everything below it from the merged view (``os.RemoveAll``)."""
        if not rel:
            raise FileOpError("cannot remove /")
        if self.lstat(rel) is None:
            return
        self.copy_up_dir(_parent(rel))
        path = self.host(rel)
        st = _lstat(path)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        self._opaque = {d for d in self._opaque if d != rel and not d.startswith(rel + "/")}
        if self._lower(rel) is not None:
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))

    def _prepare_new(self, rel: str) -> tuple[str, bool]:
        """Make room for a new entry at ``rel`` (absent from the merged view).

        Returns its host path and whether it replaces something deleted below (a directory
        created there must then be opaque).
        """
        if not rel:
            raise os_error("mkdir", "/", 17)
        self.copy_up_dir(_parent(rel))
        path = self.host(rel)
        st = _lstat(path)
        if st is not None:
            if not is_whiteout(st):
                raise os_error("create", display(rel), 17)  # EEXIST: callers remove first
            os.unlink(path)
            return path, True
        return path, self._lower(rel) is not None

    def mkdir(self, rel: str, mode: int) -> None:
        """Create the directory ``rel`` with ``mode`` (plus a setgid bit inherited as mkdir does)."""
        path, replaces = self._prepare_new(rel)
        os.mkdir(path, 0o700)
        if replaces:
            if self._opaque_xattr is None:
                self._opaque_xattr = _current_opaque_xattr()
            os.setxattr(path, self._opaque_xattr, b"y", follow_symlinks=False)
            self._opaque.add(rel)
        inherited = os.lstat(path).st_mode & stat.S_ISGID
        os.chmod(path, (mode & 0o7777) | inherited)

    def create_file(self, rel: str) -> int:
        """Create the regular file ``rel`` (mode 0600 until set); return a write descriptor."""
        path, _ = self._prepare_new(rel)
        return os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )

    def truncate_file(self, rel: str) -> int:
        """Open the existing regular file ``rel`` for rewriting, keeping its metadata."""
        path = self.host(rel)
        st = _lstat(path)
        if st is None or is_whiteout(st):
            lst = self._lower(rel) if st is None else None
            if lst is None or not stat.S_ISREG(lst.st_mode):
                raise os_error("open", display(rel), 2)
            assert self.lower is not None
            self.copy_up_dir(_parent(rel))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            self._copy_meta(rel, path, lst, self.lower.xattrs(rel))
            return fd
        if not stat.S_ISREG(st.st_mode):
            raise FileOpError(f"open {display(rel)}: not a regular file")
        return os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)

    def symlink(self, target: str, rel: str) -> None:
        """Create the symlink ``rel`` → ``target`` (the text is never interpreted here)."""
        path, _ = self._prepare_new(rel)
        os.symlink(target, path)

    def mknod(self, rel: str, mode: int, rdev: int) -> bool:
        """Create a device node or FIFO at ``rel``.

        Returns:
            False when ``rel`` is a device and this is a user namespace, where devices cannot
            be created: it is skipped (as rootless containerd and BuildKit do), and whatever
            was at ``rel`` before is gone.
        """
        path, _ = self._prepare_new(rel)
        if ownership.mknod(path, mode, rdev):
            return True
        if self._lower(rel) is not None:
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))  # _prepare_new made room: keep it
        return False

    def link(self, existing: str, rel: str) -> None:
        """Hard-link ``rel`` to the merged entry ``existing`` (copied up first if lower)."""
        st = self.lstat(existing)
        if st is None:
            raise os_error("link", display(existing), 2)
        if stat.S_ISDIR(st.st_mode):
            raise os_error("link", display(existing), 1)  # EPERM, as link(2) on a directory
        source = self.ensure_upper(existing)
        path, _ = self._prepare_new(rel)
        os.link(source, path, follow_symlinks=False)

    # -- metadata ---------------------------------------------------------------------

    def chown(self, rel: str, uid: int, gid: int, *, what: str | None = None) -> None:
        """``lchown`` the merged entry ``rel``.

        Args:
            what: what needs the owner, for the error a user namespace that does not map it
                gives (see :func:`engine.userns.ownership.chown`); default ``/rel needs {id}``.

        Raises:
            IdMappingError: this is a user namespace that does not map ``uid`` or ``gid``.
        """
        ownership.chown(
            self.ensure_upper(rel), uid, gid, what=what or f"{display(rel)} needs {{id}}"
        )

    def chmod(self, rel: str, mode: int) -> None:
        """``chmod`` the merged entry ``rel``; a symlink is left alone (there is no lchmod)."""
        path = self.ensure_upper(rel)
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            os.chmod(path, mode & 0o7777)

    def utime(self, rel: str, atime_ns: int, mtime_ns: int) -> None:
        """Set the times of the merged entry ``rel`` (a symlink's own)."""
        os.utime(self.ensure_upper(rel), ns=(atime_ns, mtime_ns), follow_symlinks=False)

    def set_xattrs(self, rel: str, xattrs: Mapping[str, bytes]) -> None:
        """Set content xattrs on ``rel``; failures are ignored, as BuildKit's copy does."""
        if xattrs:
            self._set_xattrs(self.ensure_upper(rel), xattrs)

    def _set_xattrs(self, path: str, xattrs: Mapping[str, bytes]) -> None:
        for key, value in content_xattrs(dict(xattrs)).items():
            try:
                os.setxattr(path, key, value, follow_symlinks=False)
            except OSError:
                continue  # BuildKit logs and goes on (e.g. security.* refused)
