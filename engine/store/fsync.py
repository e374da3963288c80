"""Durability primitives: ``syncfs`` for a whole diff, ``fsync`` for files and directories.

A diff written by a build may hold thousands of files; fsyncing each costs one disk flush per
file. Linux's ``syncfs(fd)`` flushes every dirty page of the filesystem holding ``fd`` in one
call, so committing a result costs one flush however many files it wrote. Where ``syncfs`` is
not available (a libc without it, or a kernel answering ENOSYS) we fall back to fsyncing every
regular file and directory of the tree.

These are plain functions of paths so they can later run inside a user-namespace helper (rootless
snapshots belong to mapped IDs).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from engine.errors import StoreError

__all__ = ["fsync_dir", "fsync_file", "fsync_tree", "syncfs"]

_SyncFs = Callable[[int], int]
_syncfs_fn: _SyncFs | None = None
_syncfs_loaded = False


def _load_syncfs() -> _SyncFs | None:
    global _syncfs_fn, _syncfs_loaded
    if _syncfs_loaded:
        return _syncfs_fn
    _syncfs_loaded = True
    try:
        # The process's own symbols, libc's among them: ctypes.util.find_library("c") would
        # run `ldconfig -p` (a process start) in every engine that commits a result.
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    _syncfs_fn = fn
    return fn


def syncfs(path: Path) -> bool:
    """Make everything written under ``path`` durable: one ``syncfs`` of its filesystem.

    Falls back to :func:`fsync_tree` when ``syncfs`` is unavailable. Returns True when the
    whole filesystem was flushed (so also every directory entry changed on it, e.g. a rename
    into ``path``'s parent), False after the fallback (only the tree itself).

    Raises:
        StoreError: the path cannot be opened or the flush failed (EIO: data is lost).
    """
    fn = _load_syncfs()
    if fn is not None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"cannot open {path} to sync it: {exc.strerror}") from None
        try:
            if fn(fd) == 0:
                return True
            err = ctypes.get_errno()
        finally:
            os.close(fd)
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise StoreError(f"syncfs({path}) failed: {os.strerror(err)}")
    fsync_tree(path)
    return False


def fsync_file(path: Path) -> None:
    """fsync one regular file.

    Raises:
        StoreError: the file cannot be opened or flushed.
    """
    _fsync(path, os.O_RDONLY)


def fsync_dir(path: Path) -> None:
    """fsync a directory, making the entries created or renamed in it durable.

    Raises:
        StoreError: the directory cannot be opened or flushed.
    """
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def fsync_tree(path: Path) -> None:
    """fsync every regular file and directory under ``path`` (the slow, portable way).

    Devices, fifos, sockets and symlinks are skipped: opening a fifo would block, and a
    whiteout (a 0:0 character device) cannot be opened at all; their metadata is flushed with
    the directory that holds them.

    Raises:
        StoreError: a file or directory cannot be flushed.
    """
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise StoreError(f"cannot sync {path}: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        fsync_file(path)
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            full = Path(dirpath, name)
            try:
                mode = os.lstat(full).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISREG(mode):
                fsync_file(full)
        fsync_dir(Path(dirpath))


def _fsync(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"cannot open {path} to sync it: {exc.strerror}") from None
    try:
        os.fsync(fd)
    except OSError as exc:
        # EINVAL: the file lives on something that cannot sync (a pipe-like special file);
        # nothing to make durable there.
        if exc.errno != errno.EINVAL:
            raise StoreError(f"fsync({path}) failed: {exc.strerror}") from None
    finally:
        os.close(fd)
