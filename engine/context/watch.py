"""Context watch: inotify watches on the directories of walked build contexts.

A warm process (a notebook kernel, the rootless helper) hashes the same context build after
build. Walking and ``lstat``-ing every file to find that nothing changed costs tens of
milliseconds for 5,000 files; the kernel can tell us instead. While a walk lists a directory
(or looks anything up in it) the directory gets a watch first, so a change racing the walk
shows up as an event and the walk's result is not trusted (conservative). A file with more than
one link gets a watch of its own: written through a name outside the context, it makes no
event on the watched directory.

A root's watches form an *epoch* with a generation number: :func:`begin` starts one (or joins
the current one) before a walk, and :func:`changed_since` answers "has anything under this root
changed since generation G?" by draining the inotify queue. Any event under the root ends the
epoch, except for names that every walk of the epoch leaves out (the ``.dockerignore`` rules
each walk registers, :meth:`Walk.ignore`): a notebook saved beside its Dockerfile does not undo
the next build's reuse. ``IN_Q_OVERFLOW`` ends every epoch, ``IN_IGNORED`` of a watched
directory (deleted, unmounted) ends its roots', and a root whose ``(st_dev, st_ino)`` changed (a
parent directory renamed or replaced) is not the root that was watched.

Only local filesystems are trusted (``statfs`` type: ext2/3/4, xfs, btrfs, tmpfs, f2fs, overlay,
zfs, …): on NFS, CIFS, FUSE or 9p a change made by another host or by the file server makes
no event. There, and whenever a watch cannot be added (``ENOSPC``/``EMFILE``: the watch limits;
such a root is not tried again by this process), the root is simply not watched and every
build walks it, as without this module. Nothing here ever fails a build.

What inotify does not see: a write through a shared writable ``mmap`` makes no event
(``numpy.memmap(path, mode="r+")`` maps and closes its descriptor; the mapping keeps the file
open, so even ``IN_CLOSE_WRITE`` waits for the unmap), nor does a write through a hard link
made *from outside the context after the walk*, nor a mount over a directory inside it. So a
generation vouches only for the structure (names, directories, ``.dockerignore``):
:mod:`engine.context.source` keeps with each checksum the stat of every file and directory it
covers and compares it (one ``lstat`` each) before reusing it, as the stat cache does, which
sees all three. What stays blind is what no stat comparison sees (see that module).

Which processes watch: a short CLI process would pay for adding watches and never use them, so
the default is to watch a root only from the second time this process hashes it (the first
build of a warm process walks as before; the second adds the watches; later ones reuse).
Long-lived callers call :func:`enable` to watch from the first walk; :func:`disable` turns it
off for the process, and ``NBBUILD_CONTEXT_WATCH=0`` turns it off everywhere. A fork server's
child uses the server's watcher instead of one of its own (:mod:`engine.context.remote`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Protocol

    from engine.context.dockerignore import IgnoreRules
    from engine.context.source import Stamp

    class _Kernel(Protocol):
        # What the watcher needs of Inotify (tests pass a subclass that fails on purpose).
        def add_watch(self, path: str, mask: int) -> int: ...
        def rm_watch(self, wd: int) -> None: ...
        def read(self) -> bytes: ...
        def close(self) -> None: ...


__all__ = [
    "Inotify",
    "Walk",
    "Watcher",
    "begin",
    "changed_since",
    "disable",
    "enable",
    "filesystem_type",
    "kept",
    "local_filesystem",
    "parse_events",
]

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

# What changes a directory's listing, an entry's metadata or a file's bytes. IN_ONLYDIR and
# IN_DONT_FOLLOW: a path swapped for a file or a symlink since its lstat fails to be watched
# (then nothing is trusted) rather than watching something else.
_DIR_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
)
_FILE_MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_DONT_FOLLOW

# statfs f_type of filesystems whose every change goes through this kernel's VFS (so makes an
# event). Not here, on purpose: NFS 0x6969, SMB 0xFE534D42 / CIFS 0xFF534D42, FUSE 0x65735546,
# 9p 0x01021997, and anything unknown.
_LOCAL_FILESYSTEMS = frozenset(
    {
        0xEF53,  # ext2, ext3, ext4
        0x58465342,  # xfs
        0x9123683E,  # btrfs
        0x01021994,  # tmpfs
        0x858458F6,  # ramfs
        0xF2F52010,  # f2fs
        0x794C7630,  # overlayfs
        0x2FC12FC1,  # zfs
        0xCA451A4E,  # bcachefs
        0x3153464A,  # jfs
        0x52654973,  # reiserfs
        0x3434,  # nilfs2
    }
)

_READ_SIZE = 64 * 1024  # whole events only: any event (16 + NAME_MAX + 1 bytes) fits
_MAX_ROOTS = 32  # roots watched at once; the least recently used one is dropped
_OFF_VALUES = frozenset({"0", "false", "no", "off"})
_LIMIT_ERRORS = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM})
# Process-wide, never reused: a result kept under a generation cannot be vouched for by an
# epoch of another watcher (a forked child's, a test's).
_GENERATIONS = itertools.count(1)


def parse_events(buf: bytes) -> Iterator[tuple[int, int, str]]:
    """The ``(wd, mask, name)`` of each ``struct inotify_event`` in ``buf`` (as ``read`` returns
    them: whole events), the name decoded as :func:`os.fsdecode` does and ``""`` when the
    event is about the watched inode itself."""
    import struct  # here: a build that gets no event (the CLI's) never imports it

    event = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
    offset, end = 0, len(buf)
    while offset + event.size <= end:
        wd, mask, _cookie, length = event.unpack_from(buf, offset)
        offset += event.size
        raw = buf[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        yield wd, mask, os.fsdecode(raw) if raw else ""


class Inotify:
    """One inotify instance through libc (``ctypes``): the only part that talks to the kernel.

    Raises:
        OSError: the instance cannot be made (``EMFILE``: the per-user instance limit).
    """

    def __init__(self) -> None:
        # ctypes is imported here: `import nbbuild` and the CLI never pay for it.
        import ctypes

        libc = _libc()
        self._get_errno = ctypes.get_errno
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm.restype = ctypes.c_int
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise self._error("inotify_init1")
        self.fd: int = fd

    def _error(self, what: str) -> OSError:
        code = self._get_errno()
        return OSError(code, f"{what}: {os.strerror(code)}")

    def add_watch(self, path: str, mask: int) -> int:
        """Watch ``path``; the watch descriptor (the same one again for an inode already
        watched by this instance)."""
        wd = int(self._add(self.fd, os.fsencode(path), mask))
        if wd < 0:
            raise self._error(f"inotify_add_watch {path}")
        return wd

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; one already gone (its inode deleted) is no error."""
        self._rm(self.fd, wd)

    def read(self) -> bytes:
        """Every event queued now, b"" when none (never blocks)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """Close the instance (the kernel drops its watches)."""
        os.close(self.fd)


def filesystem_type(path: str) -> int | None:
    """``statfs(path).f_type``, None when it cannot be read."""
    import ctypes

    # struct statfs starts with f_type (__fsword_t, a long on Linux's 64-bit ABIs); the rest of
    # the buffer is room for the other fields, which are not read. The low 32 bits are the
    # magic number, whatever the sign extension.
    buf = ctypes.create_string_buffer(512)
    if _libc().statfs(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


@functools.cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def local_filesystem(fs_type: int | None) -> bool:
    """Whether inotify can be trusted on a filesystem of this ``statfs`` type."""
    return fs_type is not None and fs_type in _LOCAL_FILESYSTEMS


class _Root:
    """One epoch of one root's watches: trusted while ``changed`` is False."""

    # A plain class, not a dataclass: this module is imported by every build, the CLI's too.
    __slots__ = (
        "changed",
        "dev",
        "dirs",
        "files",
        "generation",
        "ident",
        "ignores",
        "path",
        "rel_of",
        "stale",
        "trusted_devs",
        "wds",
    )

    def __init__(self, path: str, generation: int, st: os.stat_result) -> None:
        self.path = path
        self.generation = generation
        self.ident = (st.st_dev, st.st_ino)  # the root when the epoch began
        self.dev = st.st_dev
        self.dirs: dict[str, int] = {}  # watched directory (rel) -> wd
        self.files: dict[str, int] = {}  # watched hard-linked file (rel) -> wd
        self.rel_of: dict[int, str] = {}  # wd -> rel of a watched directory
        self.wds: set[int] = set()
        # Watches of earlier epochs: kept (re-adding one returns the same wd, so an unchanged
        # directory costs no remove and add), removed at the end of the first walk if unclaimed.
        self.stale: set[int] = set()
        self.trusted_devs: dict[int, bool] = {st.st_dev: True}
        # The ignore rules of the epoch's walks, by their patterns.
        self.ignores: dict[tuple[str, ...], IgnoreRules] = {}
        self.changed = False


class Watcher:
    """The process's watches: one inotify instance, the watched roots, their epochs.

    Thread-safe: concurrent builds of one process share it.

    Args:
        kernel: the inotify instance to use (tests); by default one is made on first use.
    """

    def __init__(self, kernel: _Kernel | None = None) -> None:
        self._lock = threading.Lock()
        self._kernel: _Kernel | None = kernel
        self._unavailable = False  # inotify_init1 failed: no watching in this process
        self._roots: dict[str, _Root] = {}  # least recently used first
        self._users: dict[int, set[_Root]] = {}  # wd -> the epochs that rely on it
        self._refused: set[str] = set()  # roots that hit a watch limit: never watched again
        self._seen: dict[str, None] = {}  # roots hashed once (auto mode)

    # -- the API behind the module functions ----------------------------------------------

    def begin(self, root: str, *, auto: bool) -> Walk | None:
        """A walk of ``root`` starting now, in the current epoch or a new one; None when the
        root is not watched (``auto`` and its first walk in this process, not a local
        filesystem, a watch limit hit before, no inotify)."""
        with self._lock:
            if auto and root not in self._seen and root not in self._roots:
                self._seen[root] = None
                while len(self._seen) > 4 * _MAX_ROOTS:
                    del self._seen[next(iter(self._seen))]
                return None
            if root in self._refused or not self._ensure_kernel():
                return None
            self._drain()
            if self._kernel is None:
                return None  # the queue failed: no watching any more
            state = self._roots.get(root)
            if state is not None and self._trusted(state):
                self._roots[root] = self._roots.pop(root)  # most recently used
                return Walk(self, state)
            try:
                st = os.stat(root)
            except OSError:
                self._drop(root)
                return None
            if not local_filesystem(filesystem_type(root)):
                self._drop(root)
                return None
            new = _Root(root, next(_GENERATIONS), st)
            if state is not None:
                # The old epoch's watches become the new one's stale set (see _Root.stale).
                del self._roots[root]
                new.stale = state.stale | state.wds
                for wd in state.wds:
                    self._unuse(wd, state, remove=False)
            self._roots[root] = new
            while len(self._roots) > _MAX_ROOTS:
                self._drop(next(iter(self._roots)))
        walk = Walk(self, new)
        # The root first: the walk reads its .dockerignore before listing anything.
        walk.directory("", new.dev)
        return walk

    def changed_since(self, root: str, generation: int) -> bool:
        """Whether anything under ``root`` may have changed since ``generation`` began (True
        whenever that cannot be vouched for)."""
        with self._lock:
            if self._kernel is None:
                return True
            self._drain()
            state = self._roots.get(root)
            return state is None or state.generation != generation or not self._trusted(state)

    def fileno(self) -> int | None:
        """The inotify descriptor (the instance made now if need be), None without one: a
        process that polls it (the fork server) calls :meth:`drain` when it is readable."""
        with self._lock:
            if not self._ensure_kernel():
                return None
            kernel: Any = self._kernel
            return int(kernel.fd) if kernel is not None else None

    def drain(self) -> None:
        """Read and apply every queued event now."""
        with self._lock:
            if self._kernel is not None:
                self._drain()

    def forget(self, walk: Walk) -> None:
        """End ``walk``'s epoch: nothing computed in it is trusted any more."""
        with self._lock:
            state = walk._state
            if self._roots.get(state.path) is state:
                self._drop(state.path)

    def kept(
        self,
        key: tuple[Any, ...],
        generation: int,
        result: str,
        manifest: dict[str, str],
        stamped: Stamp | None,
    ) -> None:
        """A checksum computed under one of this watcher's walks was kept, with the stat of
        what it covers (a server's child hands it to the server, see
        :mod:`engine.context.remote`; nothing to do here)."""

    def clear(self) -> None:
        """Drop every watch (and the inotify instance)."""
        with self._lock:
            for root in list(self._roots):
                self._drop(root)
            if self._kernel is not None:
                self._kernel.close()
            self._kernel = None
            self._users.clear()

    # -- for Walk ----------------------------------------------------------------------------

    def add(self, state: _Root, rel: str, dev: int, is_dir: bool) -> None:
        """Watch the directory or hard-linked file ``rel`` of ``state``'s root (nothing when the
        epoch is over); a failure ends the epoch, and a watch limit refuses the root."""
        with self._lock:
            if state.changed or self._roots.get(state.path) is not state:
                return  # the epoch is over: nothing of this walk will be trusted anyway
            table = state.dirs if is_dir else state.files
            if rel in table:
                return
            path = state.path.rstrip("/") + "/" + rel if rel else state.path
            if is_dir and dev != state.dev:
                # A mount inside the context: its filesystem must be local too.
                trusted = state.trusted_devs.get(dev)
                if trusted is None:
                    trusted = local_filesystem(filesystem_type(path))
                    state.trusted_devs[dev] = trusted
                if not trusted:
                    self._drop(state.path)
                    return
            assert self._kernel is not None
            try:
                wd = self._kernel.add_watch(path, _DIR_MASK if is_dir else _FILE_MASK)
            except OSError as exc:
                if exc.errno in _LIMIT_ERRORS:
                    self._refused.add(state.path)
                self._drop(state.path)
                return
            table[rel] = wd
            if is_dir:
                state.rel_of[wd] = rel
            state.wds.add(wd)
            state.stale.discard(wd)
            self._users.setdefault(wd, set()).add(state)

    def ignore(self, state: _Root, rules: IgnoreRules) -> None:
        """Register a walk's ignore rules with its epoch."""
        with self._lock:
            state.ignores.setdefault(rules.patterns, rules)

    def settle(self, state: _Root) -> None:
        """After a walk: remove the earlier epochs' watches it did not claim."""
        with self._lock:
            stale, state.stale = state.stale, set()
            for wd in stale:
                if wd not in self._users:
                    self._remove(wd)

    # -- internals (under the lock) ---------------------------------------------------------

    def _ensure_kernel(self) -> bool:
        if self._kernel is None and not self._unavailable:
            try:
                self._kernel = Inotify()
            except (OSError, AttributeError):  # no instance left; a libc without inotify
                self._unavailable = True
        return self._kernel is not None

    def _trusted(self, state: _Root) -> bool:
        if state.changed:
            return False
        try:
            st = os.stat(state.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == state.ident

    def _drain(self) -> None:
        assert self._kernel is not None
        try:
            buf = self._kernel.read()
        except OSError:
            # Events may be lost for good: stop watching in this process (walks as before).
            for root in list(self._roots):
                self._drop(root)
            self._kernel.close()
            self._kernel, self._unavailable = None, True
            self._users.clear()
            return
        if buf:
            self._apply(buf)

    def handle(self, buf: bytes) -> None:
        """Apply events as ``read`` returns them: end the epochs they touch (what every
        :meth:`begin` and :meth:`changed_since` does with the queue first)."""
        with self._lock:
            self._apply(buf)

    def _apply(self, buf: bytes) -> None:
        for wd, mask, name in parse_events(buf):
            if mask & IN_Q_OVERFLOW:
                # Events were lost: nothing is known any more.
                for state in self._roots.values():
                    state.changed = True
                continue
            users = self._users.get(wd)
            if mask & IN_IGNORED:
                # The watch is gone (its directory deleted or unmounted), or we removed it (then
                # it is no longer in _users).
                for state in users or ():
                    state.changed = True
                    state.wds.discard(wd)
                self._users.pop(wd, None)
                for state in self._roots.values():
                    state.stale.discard(wd)
                continue
            for state in users or ():
                if not state.changed and not self._ignorable(state, wd, name, mask):
                    state.changed = True

    @staticmethod
    def _ignorable(state: _Root, wd: int, name: str, mask: int) -> bool:
        # An event about a named entry that every walk of the epoch leaves out changes nothing
        # any walk saw. Events about the watched inode itself (no name) always count.
        rel = state.rel_of.get(wd)
        if not name or rel is None or not state.ignores:
            return False
        path = f"{rel}/{name}" if rel else name
        is_dir = bool(mask & IN_ISDIR)
        return all(_left_out(rules, path, is_dir) for rules in state.ignores.values())

    def _unuse(self, wd: int, state: _Root, *, remove: bool) -> None:
        users = self._users.get(wd)
        if users is None:
            return
        users.discard(state)
        if not users:
            del self._users[wd]
            if remove:
                self._remove(wd)

    def _remove(self, wd: int) -> None:
        if self._kernel is not None:
            self._kernel.rm_watch(wd)

    def _drop(self, root: str) -> None:
        state = self._roots.pop(root, None)
        if state is None:
            return
        state.changed = True
        for wd in state.wds:
            self._unuse(wd, state, remove=True)
        for wd in state.stale:
            if wd not in self._users:
                self._remove(wd)
        state.wds.clear()
        state.stale.clear()


def _left_out(rules: IgnoreRules, path: str, is_dir: bool) -> bool:
    # Whether a walk with ``rules`` never sees ``path``. The root's .dockerignore always counts
    # (it makes the rules, even when it excludes itself); so does an excluded directory when a
    # "!" line may bring back something below it.
    if not rules.matcher.patterns or path == ".dockerignore" or (is_dir and rules.has_exclusions):
        return False
    return rules.excluded(path, is_dir)


class Walk:
    """One walk's handle on its root's epoch: the walker calls :meth:`directory` before listing
    a directory or looking anything up in it, and :meth:`file` for a file with several links.

    Attributes:
        generation: the epoch's generation; a result of this walk is trusted while
            :func:`changed_since` says nothing changed since it.
    """

    __slots__ = ("_seen", "_state", "_watcher", "generation")

    def __init__(self, watcher: Watcher, state: _Root) -> None:
        self._watcher = watcher
        self._state = state
        self._seen: set[str] = set()
        self.generation = state.generation

    def directory(self, rel: str, dev: int) -> None:
        """Watch directory ``rel`` (relative to the root, ``""`` for the root; ``dev`` its
        ``st_dev``): before it is listed or anything in it is looked up."""
        if rel not in self._seen:
            self._seen.add(rel)
            self._watcher.add(self._state, rel, dev, True)

    def file(self, rel: str) -> None:
        """Watch the non-directory ``rel`` itself (it has other links, maybe outside the root)."""
        key = "\0" + rel  # apart from the directories
        if key not in self._seen:
            self._seen.add(key)
            self._watcher.add(self._state, rel, 0, False)

    def ignore(self, rules: IgnoreRules) -> None:
        """What this walk leaves out (told before it lists anything): an event about a name
        that every walk of the epoch leaves out does not end it."""
        self._watcher.ignore(self._state, rules)

    def close(self) -> None:
        """The walk is over (its results may be kept): tidy the root's watches."""
        self._watcher.settle(self._state)

    @property
    def ident(self) -> tuple[int, int] | None:
        """The root's ``(st_dev, st_ino)`` when its epoch began."""
        return self._state.ident

    def trusted(self) -> bool:
        """Whether every watch this walk asked for could be asked for (False: keep nothing)."""
        return True


# -- the process's watcher and mode ---------------------------------------------------------

_WATCHER = Watcher()
_MODE: bool | None = None  # None: auto (watch from a root's second walk)


def enable() -> None:
    """This process is long-lived (a kernel, a helper): watch contexts from their first walk."""
    global _MODE
    _MODE = True


def disable() -> None:
    """Never watch in this process (and drop the watches made so far)."""
    global _MODE
    _MODE = False
    _WATCHER.clear()


def _off() -> bool:
    return _MODE is False or os.environ.get("NBBUILD_CONTEXT_WATCH", "").lower() in _OFF_VALUES


def begin(root: str) -> Walk | None:
    """A watched walk of ``root`` (an absolute path) starting now, None when this process does
    not watch it (then walk as usual and keep nothing)."""
    if _off():
        return None
    return _WATCHER.begin(root, auto=_MODE is None)


def changed_since(root: str, generation: int) -> bool:
    """Whether anything under ``root`` may have changed since the walk of ``generation``
    began; True whenever it cannot be vouched for."""
    if _off():
        return True
    return _WATCHER.changed_since(root, generation)


def kept(
    key: tuple[Any, ...],
    generation: int,
    result: str,
    manifest: dict[str, str],
    stamped: Stamp | None,
) -> None:
    """A hasher kept a checksum computed under a watched walk (see :meth:`Watcher.kept`)."""
    if not _off():
        _WATCHER.kept(key, generation, result, manifest, stamped)


def _after_fork_in_child() -> None:
    # A forked child shares the parent's inotify instance: reading it would steal the parent's
    # events, and removing a watch would remove the parent's. Start afresh without touching it.
    global _WATCHER
    old = _WATCHER
    _WATCHER = Watcher()
    kernel: Any = old._kernel
    if kernel is not None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(kernel.fd)


os.register_at_fork(after_in_child=_after_fork_in_child)
