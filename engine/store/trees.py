"""Directory trees of the store: ids, sizes and removal that tolerates a concurrent remover.

Snapshots are overlayfs upper directories written by containers: they hold read-only
directories, whiteout devices and files owned by anyone. These helpers are plain functions of
paths so that, once builds run rootless, they can run inside the user-namespace helper that owns
those files.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import queue
import secrets
import stat
import threading
from pathlib import Path

__all__ = ["drain_removals", "new_id", "remove_later", "remove_tree", "tree_size"]

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id() -> str:
    """A random 128-bit id in base 36, 25 characters (the shape of BuildKit's record ids)."""
    n = secrets.randbits(128)
    out = []
    for _ in range(25):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(out)


def tree_size(path: Path) -> int:
    """Disk space used by a tree: allocated blocks, each hard-linked inode counted once.

    Like containerd's ``fs.DiskUsage`` (what BuildKit reports for a snapshot). A missing path
    has size 0; entries vanishing during the walk are skipped.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    total += st.st_blocks * 512
    if not stat.S_ISDIR(st.st_mode):
        return total
    stack = [os.fspath(path)]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                est = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if est.st_nlink > 1 and not stat.S_ISDIR(est.st_mode):
                ino = (est.st_dev, est.st_ino)
                if ino in seen:
                    continue
                seen.add(ino)
            total += est.st_blocks * 512
            if stat.S_ISDIR(est.st_mode):
                stack.append(entry.path)
    return total


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree; a concurrent remover or a missing path is fine.

    Directories without write or search permission (``chmod 0`` inside a container) are made
    accessible first so even a non-root owner can remove them.

    Raises:
        OSError: an entry could not be removed for another reason (EBUSY on a mount point).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink(path)
        return
    _remove_dir(os.fspath(path))


def _unlink(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_dir(top: str) -> None:
    # Iterative post-order walk: deep trees must not hit Python's recursion limit.
    stack: list[tuple[str, bool]] = [(top, False)]
    while stack:
        current, expanded = stack.pop()
        if expanded:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(current)
            continue
        try:
            entries = list(os.scandir(current))
        except FileNotFoundError:
            continue
        except PermissionError:
            _make_accessible(current)
            try:
                entries = list(os.scandir(current))
            except FileNotFoundError:
                continue
        # A directory we can list but not write: fix it before its entries are unlinked.
        if not os.access(current, os.W_OK | os.X_OK):
            _make_accessible(current)
        stack.append((current, True))
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if is_dir:
                stack.append((entry.path, False))
            else:
                _unlink(entry.path)


def _make_accessible(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
        os.chmod(path, stat.S_IMODE(mode) | stat.S_IRWXU)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.EPERM:
            raise


# -- removal off the critical path ---------------------------------------------------------

_later: queue.SimpleQueue[Path] = queue.SimpleQueue()
_later_lock = threading.Lock()
_later_idle = threading.Condition(_later_lock)
_later_pending = [0]
_later_started: list[threading.Thread] = []


def remove_later(path: Path) -> None:
    """Remove ``path`` (as :func:`remove_tree`, errors ignored) in a background thread.

    For what nothing reads any more and whose removal would only delay the caller (a finished
    step's bundle or overlay work dir: unlinks on a journaled filesystem cost milliseconds).
    The queue is drained at interpreter exit; what a killed process leaves is found by the
    sweeps that already handle a crash at that point.
    """
    with _later_lock:
        _later_pending[0] += 1
        if not _later_started:
            worker = threading.Thread(target=_remove_worker, name="nbbuild-remove", daemon=True)
            worker.start()
            _later_started.append(worker)
            atexit.register(drain_removals)
    _later.put(path)


def _remove_worker() -> None:
    while True:
        path = _later.get()
        with contextlib.suppress(OSError):
            remove_tree(path)
        with _later_lock:
            _later_pending[0] -= 1
            if not _later_pending[0]:
                _later_idle.notify_all()


def drain_removals(timeout: float = 10.0) -> None:
    """Wait until what :func:`remove_later` was given is gone."""
    with _later_lock:
        _later_idle.wait_for(lambda: not _later_pending[0], timeout=timeout)
