"""``--output type=local``: the final filesystem of a build written into a directory.

Owners, modes, times, xattrs (except overlayfs's own, ``system.*`` and ``security.*`` other than
``security.capability``), symlinks, hardlinks, devices and fifos are kept; whiteouts are applied
(:mod:`engine.exporters.merged`). With ``SOURCE_DATE_EPOCH`` every entry's time *is* the epoch
(BuildKit's local exporter, ``exporter/local/fs.go``: ``st.ModTime = epoch`` for each entry; only
image layers clamp, with ``rewrite-timestamp``); without it times are kept to the nanosecond.

Rootless (any mode but real root, :func:`engine.userns.mode`), files are written as the user,
as BuildKit's filesync receiver writes every file as the client's user: owners are not kept
(files owned by the user's subordinate IDs could not even be deleted by the user), and device
nodes, which a user namespace cannot create, are skipped.

``dest`` may already exist: entries are written over what is there (like BuildKit's local
exporter). Writing never follows a symlink in ``dest``: each directory is checked to be a real
directory (and replaced if it is not) before anything is written into it, and files are created
with ``O_EXCL | O_NOFOLLOW`` after the old entry is removed.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from engine.exporters.merged import walk_merged
from engine.images.errors import ImageError
from engine.images.tarwriter import read_xattrs
from engine.userns.namespace import mode as userns_mode

__all__ = ["export_local"]

_CHUNK = 1 << 20


def _remove(path: bytes) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _copy_file(src: bytes, dst: bytes) -> None:
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd_out = os.open(
            dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            while chunk := os.read(fd_in, _CHUNK):
                os.write(fd_out, chunk)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def export_local(
    layers: Sequence[Path], dest: Path, *, source_date_epoch: int | None = None
) -> None:
    """Write the merged filesystem of ``layers`` (bottom first) into ``dest``.

    Raises:
        ImageError: a layer cannot be read or ``dest`` cannot be written.
    """
    try:
        # A missing destination is created 0700, as BuildKit's local exporter does. As real
        # root, owners are kept, unlike Docker 20.10's client, which writes everything as
        # itself: a notebook user inspecting an output wants to see who owns what. Rootless,
        # everything is the user's (see the module doc).
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.mkdir(mode=0o700)
        root = os.fsencode(dest.resolve())
        # Owners and devices need real root; a rootless export writes everything as the user.
        rootful = userns_mode() == "root"
        links: dict[tuple[int, int], bytes] = {}
        dirs: list[tuple[bytes, int]] = []
        for entry in walk_merged(layers):
            target = os.path.join(root, entry.rel)
            st = entry.st
            mode = st.st_mode
            mtime_ns = (
                max(0, st.st_mtime_ns)
                if source_date_epoch is None
                else source_date_epoch * 1_000_000_000
            )
            if stat.S_ISSOCK(mode):
                continue
            if not rootful and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
                _remove(target)  # what the build's filesystem has there is not this
                continue
            if stat.S_ISDIR(mode):
                try:
                    existing = os.lstat(target)
                    if not stat.S_ISDIR(existing.st_mode):
                        os.unlink(target)
                        os.mkdir(target, 0o700)
                except FileNotFoundError:
                    os.mkdir(target, 0o700)
                dirs.append((target, mtime_ns))
            else:
                _remove(target)
                inode = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and inode in links:
                    os.link(links[inode], target, follow_symlinks=False)
                    continue
                if st.st_nlink > 1:
                    links[inode] = target
                if stat.S_ISREG(mode):
                    _copy_file(entry.host, target)
                elif stat.S_ISLNK(mode):
                    os.symlink(os.readlink(entry.host), target)
                elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    os.mknod(target, stat.S_IFMT(mode) | 0o600, st.st_rdev)
                elif stat.S_ISFIFO(mode):
                    os.mkfifo(target, 0o600)
                else:
                    continue
            _set_metadata(entry.host, target, st, mtime_ns, owners=rootful)
        for target, mtime_ns in reversed(dirs):
            os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    except OSError as exc:
        raise ImageError(f"cannot export to {dest}: {exc}") from None


def _set_metadata(
    src: bytes, target: bytes, st: os.stat_result, mtime_ns: int, *, owners: bool
) -> None:
    if owners:
        os.lchown(target, st.st_uid, st.st_gid)
    for name, value in read_xattrs(src).items():
        try:
            os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode))
    if not stat.S_ISDIR(st.st_mode):
        os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
