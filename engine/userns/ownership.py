"""File owners and device nodes where a user namespace limits them.

Inside a user namespace (``mode() == "inside"``) two things that are plain for real root are
not:

* an owner must be a *mapped* ID: ``chown`` to anything else fails with ``EINVAL``. Without a
  subordinate range only container root is mapped, so ``COPY --chown``, an archive or an image
  layer with several owners cannot be written; :func:`chown` turns that ``EINVAL`` into an
  :class:`~engine.userns.errors.IdMappingError` that names what needed the ID and how to set
  up a range, instead of a bare "Invalid argument";
* character and block devices cannot be created (``EPERM``), except overlayfs's whiteout
  (``c 0 0``, allowed since Linux 5.8). As containerd and BuildKit do when rootless,
  :func:`mknod` skips such devices (images ship a few under ``/dev``, which the runtime mounts
  over anyway) and says so with its result.

Both try the operation first and look at the namespace only when it failed, so the root path
costs no extra system call.

Without any user namespace, under the degraded PRoot worker (:mod:`engine.userns.degraded`),
every file belongs to the user and owners are *squashed to root*: :func:`chown` does nothing
(not even a chown to a supplementary group of the user, which would put a real gid on disk),
:func:`mknod` skips devices, and :func:`squashed` is what readers of owners for outputs and
keys see: the user's own uid and gid as 0.
"""

from __future__ import annotations

import errno
import os
import stat

from engine.executor.errors import CapabilityError
from engine.userns.errors import IdMappingError

__all__ = ["IdRangeError", "chown", "is_device", "mknod", "squashed", "unmapped_error"]

_UNCHANGED = (-1, 0xFFFFFFFF)  # chown(2)'s "leave this one as it is"


class IdRangeError(IdMappingError):
    """An ID beyond the user's subordinate range (the namespace maps a range, too small)."""

    def __init__(self, what: str, mapping: str = "") -> None:
        self.what = what
        self.mapping = mapping
        CapabilityError.__init__(
            self,
            f"{what}, but this rootless build maps only container IDs {mapping}: give your "
            "user a larger subordinate range in /etc/subuid and /etc/subgid (`nbbuild doctor` "
            "shows this host's)",
        )


def unmapped_error(uid: int, gid: int, what: str) -> IdMappingError | None:
    """The error for a ``chown(uid, gid)`` that failed with ``EINVAL``, if this process is
    root of a user namespace that does not map one of the IDs (None otherwise).

    ``what`` says what needed the ID, with ``{id}`` where ``uid 1000`` (or ``gid 50``) goes;
    without ``{id}``, `` needs {id}`` is appended.
    """
    from engine.userns.namespace import current

    mapping = current()
    if mapping is None:
        return None
    if uid not in _UNCHANGED and not mapping.maps_uid(uid):
        missing = f"uid {uid}"
    elif gid not in _UNCHANGED and not mapping.maps_gid(gid):
        missing = f"gid {gid}"
    else:
        return None
    template = what if "{id}" in what else what + " needs {id}"
    text = template.replace("{id}", missing)
    if mapping.single:
        return IdMappingError(text)
    return IdRangeError(text, mapping.describe())


def chown(
    target: str | bytes | os.PathLike[str] | int,
    uid: int,
    gid: int,
    *,
    follow_symlinks: bool = False,
    what: str,
) -> None:
    """``lchown`` (``chown`` with ``follow_symlinks``; ``fchown`` for a descriptor).

    Args:
        target: a path, or an open descriptor.
        uid: the new owner (-1: unchanged).
        gid: the new group (-1: unchanged).
        follow_symlinks: change a symlink's target instead of the link (paths only).
        what: what needs the IDs, for the error (see :func:`unmapped_error`), e.g.
            ``"--chown=1000:1000 needs {id} (/app)"``.

    Raises:
        IdMappingError: this is a user namespace that does not map ``uid`` or ``gid``.
        OSError: any other failure, as ``os.chown`` raised it.
    """
    if _squashing():
        return  # the degraded worker: every owner is the user's, seen as root (module doc)
    try:
        if isinstance(target, int):
            os.fchown(target, uid, gid)
        else:
            os.chown(target, uid, gid, follow_symlinks=follow_symlinks)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        error = unmapped_error(uid, gid, what)
        if error is None:
            raise
        raise error from None


def mknod(path: str | bytes | os.PathLike[str], mode: int, device: int = 0) -> bool:
    """``os.mknod``, skipping a device node that a user namespace may not create.

    Returns:
        True when the node was created; False when it is a character or block device (not a
        ``c 0 0`` whiteout) and this process is root of a user namespace, where the kernel
        refuses devices: nothing was created.

    Raises:
        OSError: any other failure (a whiteout is never skipped).
    """
    try:
        os.mknod(path, mode, device)
    except PermissionError:
        if not is_device(mode, device):
            raise
        from engine.userns.namespace import mode as ns_mode

        if ns_mode() != "inside" and not _squashing():
            raise
        return False
    return True


def _squashing() -> bool:
    """Owners are squashed to root here (the degraded worker); False at once as root."""
    if os.geteuid() == 0:
        return False
    from engine.userns.degraded import active

    return active()


def squashed(st: os.stat_result) -> os.stat_result:
    """``st`` as readers of owners for outputs and keys must see it: under the degraded
    worker, the user's own uid and gid read as 0 (a root-owned tree); anywhere else ``st``
    itself."""
    uid, gid = st.st_uid, st.st_gid
    if (uid == 0 and gid == 0) or not _squashing():
        return st
    me, my_group = os.getuid(), os.getgid()
    if uid != me and gid != my_group:
        return st
    fields = list(st[:10])  # mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime
    fields[4] = 0 if uid == me else uid
    fields[5] = 0 if gid == my_group else gid
    extra = {name: getattr(st, name) for name in _STAT_EXTRA if hasattr(st, name)}
    return os.stat_result(fields, extra)


_STAT_EXTRA = (
    "st_atime",
    "st_mtime",
    "st_ctime",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
    "st_blksize",
    "st_blocks",
    "st_rdev",
)


def is_device(mode: int, device: int) -> bool:
    """A character or block device other than overlayfs's whiteout (``c 0 0``)."""
    if stat.S_ISBLK(mode):
        return True
    return stat.S_ISCHR(mode) and device != 0
