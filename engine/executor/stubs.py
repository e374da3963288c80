"""Mount-point stubs: the empty files and dirs a runtime creates for mounts, removed afterwards.

To bind ``/etc/hosts`` into a rootfs that has no such file, the runtime first creates an empty
one to mount on; left in place it would end up in the step's diff. Like BuildKit's
``executor/stubs.go`` we note *before* the run which mount destinations are missing, and
remove them *after* it - but only if they are still an empty file or an empty directory.

The removal is where CVE-2024-23652 lived: BuildKit's cleaner could be tricked into deleting a
host file when the process replaced a stub's parent with a symlink. Here every step from the
root to the stub is opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to the previous
directory's fd and the stub is removed with ``unlinkat``/``rmdir`` on that fd, so a symlink
anywhere on the way simply makes us skip that stub; nothing outside the root can be reached.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from engine.snapshot.layers import LayerView

__all__ = ["find_stubs", "remove_stubs"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def find_stubs(
    view: LayerView, destinations: Iterable[str], *, recursive: bool = False
) -> list[str]:
    """In-container paths the runtime will have to create for ``destinations``.

    Parents are resolved inside the view (a stub for ``/etc/hosts`` when ``/etc`` is a symlink to
    ``/private/etc`` is ``/private/etc/hosts``). With ``recursive``, missing parent directories
    count too (BuildKit's ``RemoveMountStubsRecursive``).
    """
    stubs: list[str] = []
    for dest in destinations:
        resolved, host = view.resolve(dest, follow_final=False)
        if host is not None or resolved == "/":
            continue
        path = PurePosixPath(resolved)
        while True:
            if str(path) not in stubs:
                stubs.append(str(path))
            if not recursive:
                break
            path = path.parent
            if str(path) == "/" or view.exists(str(path)):
                break
    return stubs


def remove_stubs(root: Path, stubs: Sequence[str]) -> list[str]:
    """Remove the stubs under ``root`` that are still empty; return the ones removed.

    ``root`` is where the stubs were written: the overlay's upper dir, or a plain rootfs dir.
    Deeper paths go first, so a recursive stub's parents are empty by the time they are tried.
    """
    removed: list[str] = []
    for stub in sorted(stubs, key=lambda p: (-len(PurePosixPath(p).parts), p)):
        if _remove_one(root, stub):
            removed.append(stub)
    return removed


def _remove_one(root: Path, stub: str) -> bool:
    parts = [p for p in PurePosixPath(stub).parts[1:] if p not in ("", ".")]
    if not parts or ".." in parts:
        return False
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError:
        return False
    try:
        for name in parts[:-1]:
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                return False  # gone, or a parent is now a symlink: not ours to touch
            os.close(fd)
            fd = nxt
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return False
        parent_st = os.fstat(fd)
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                return False
            try:
                if os.listdir(child):
                    return False
            finally:
                os.close(child)
        elif not (stat.S_ISREG(st.st_mode) and st.st_size == 0):
            return False  # written to, or replaced by a symlink or device: leave it
        try:
            if is_dir:
                os.rmdir(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
        except OSError:
            return False
        # keep the parent's timestamps, for reproducible layers (BuildKit issue 3148)
        with contextlib.suppress(OSError):
            os.utime(fd, ns=(parent_st.st_atime_ns, parent_st.st_mtime_ns))
        return True
    finally:
        os.close(fd)
