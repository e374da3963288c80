"""Creating directories: ``WORKDIR``'s mkdir action and the parents a copy creates.

:func:`mkdir_all` is fsutil's ``copy.MkdirAll`` on an already resolved path: missing
directories are created with the given permission bits, the ``--chown`` owner (else the
builder's own, root) and, when given, a fixed time; existing directories are left untouched.
"""

from __future__ import annotations

import stat

from engine.fileops.chown import Owner
from engine.fileops.errors import os_error
from engine.fileops.upper import Upper, display
from engine.graph.ops import MkdirAction

__all__ = ["make_dir", "mkdir_all", "restore_times"]

_ENOENT, _ENOTDIR = 2, 20


def mkdir_all(
    upper: Upper, rel: str, perm: int, owner: Owner | None, created_ns: int | None
) -> list[str]:
    """Create ``rel`` and its missing parents; return the created directories, top first.

    Args:
        upper: the layer being written.
        rel: a resolved image path (no symlinks in it).
        perm: permission bits of created directories.
        owner: owner of created directories (None: the builder's, uid/gid 0).
        created_ns: the time of created directories (None: now).

    Raises:
        FileOpError: a component exists and is not a directory (``mkdir /a: not a directory``).
    """
    st = upper.lstat(rel)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            return []
        raise os_error("mkdir", display(rel), _ENOTDIR)
    created = mkdir_all(upper, rel.rpartition("/")[0], perm, owner, created_ns) if rel else []
    upper.mkdir(rel, perm & 0o777)
    if owner is not None:
        upper.chown(rel, owner.uid, owner.gid, what=owner.needs(rel))
    if created_ns is not None:
        upper.utime(rel, created_ns, created_ns)
    created.append(rel)
    return created


def restore_times(upper: Upper, created: list[str], created_ns: int | None) -> None:
    """Re-apply a fixed time to created directories whose contents changed since."""
    if created_ns is None:
        return
    for rel in reversed(created):
        if upper.lstat(rel) is not None:
            upper.utime(rel, created_ns, created_ns)


def make_dir(
    upper: Upper, action: MkdirAction, owner: Owner | None, created_ns: int | None
) -> None:
    """BuildKit's mkdir action (``WORKDIR``, cache-mount permissions).

    The path resolves through symlinks inside the destination. With ``make_parents`` it is
    ``MkdirAll``; without, an existing path (of any type) is fine and a missing parent fails.
    """
    rel = upper.resolve(action.path, True)
    if action.make_parents:
        created = mkdir_all(upper, rel, action.mode & 0o777, owner, created_ns)
        restore_times(upper, created, created_ns)
        return
    if upper.lstat(rel) is not None:
        return  # os.Mkdir's EEXIST is not an error here
    parent = upper.lstat(rel.rpartition("/")[0])
    if parent is None:
        raise os_error("mkdir", display(rel), _ENOENT)
    if not stat.S_ISDIR(parent.st_mode):
        raise os_error("mkdir", display(rel), _ENOTDIR)
    upper.mkdir(rel, action.mode & 0o777)
    if owner is not None:
        upper.chown(rel, owner.uid, owner.gid, what=owner.needs(rel))
    if created_ns is not None:
        upper.utime(rel, created_ns, created_ns)
