"""Writing a file with given content: the mkfile action (``COPY <<EOF``'s inline documents).

As BuildKit's ``os.WriteFile`` under a zero umask: a new file gets ``mode & 0o777``; an existing
regular file is truncated and rewritten and keeps its mode and owner; the path resolves through
symlinks inside the destination. ``--chown`` then sets the owner. A ``chmod`` string (an nbbuild
extension of the action) is applied last. A directory, or a device node, is never written to.
"""

from __future__ import annotations

import os
import stat

from engine.fileops.chmod import parse_chmod
from engine.fileops.chown import Owner
from engine.fileops.errors import FileOpError, os_error
from engine.fileops.upper import Upper, display
from engine.graph.ops import MkfileAction

__all__ = ["make_file"]


def make_file(
    upper: Upper, action: MkfileAction, owner: Owner | None, created_ns: int | None
) -> None:
    """Write ``action.data`` to ``action.path`` in the layer.

    Raises:
        FileOpError: the parent is missing or not a directory, or the path is a directory.
    """
    rel = upper.resolve(action.path, True)
    parent = upper.lstat(rel.rpartition("/")[0])
    if parent is None:
        raise os_error("open", display(rel), 2)
    if not stat.S_ISDIR(parent.st_mode):
        raise os_error("open", display(rel), 20)
    st = upper.lstat(rel)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise os_error("open", display(rel), 21)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise FileOpError(f"open {display(rel)}: not a regular file")
    data = action.data.encode("utf-8", "surrogateescape")
    fd = upper.create_file(rel) if st is None else upper.truncate_file(rel)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    if st is None:
        upper.chmod(rel, action.mode & 0o777)
    if owner is not None:
        upper.chown(rel, owner.uid, owner.gid, what=owner.needs(rel))
    chmod = parse_chmod(action.chmod)
    if chmod is not None:
        current = upper.lstat(rel)
        assert current is not None
        upper.chmod(rel, chmod.apply(current.st_mode, False))
    if created_ns is not None:
        upper.utime(rel, created_ns, created_ns)
