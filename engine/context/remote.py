"""A context watch shared by a warm server and the children it forks (``nbbuild.server``).

A fork server's child runs one command and exits: a watch or a kept checksum of its own would
die with it. So the server holds them for its children: one :class:`~engine.context.watch.Watcher`
(its inotify descriptor in the server's poll loop, drained whenever readable) and the kept
checksums (``engine.context.source``'s memo, which each child inherits at ``fork``). A child
never reads the inherited inotify queue (that would steal the server's events); it talks to
the server over a private socket pair made for it at fork (:class:`Channel` is the server's
end, :class:`RemoteWatcher` the child's):

- ``changed``: before reusing an inherited checksum, the child checks the stat of every file
  and directory it covers (the record came with the checksum at fork:
  :func:`engine.context.source.unchanged`, no round trip; inotify sees no write through a
  shared ``mmap``), then asks whether the root changed since the checksum's generation; the
  server drains its queue first, then answers.
- ``begin`` / ``dir`` / ``file`` / ``ignore`` / ``close``: a walk in the child is a walk of
  the server's watcher. The server adds each watch before it answers, and the child lists a
  directory only after the answer, so a change racing the walk is an event in the server's
  queue (the watch rule of :mod:`engine.context.watch`, unchanged). All watches are added and
  all events read by the server, one thread: an event is always matched against every watch
  it may be about.
- ``keep``: a walk's checksum, manifest and stat record, with its reuse key and generation,
  stored by the server for the children forked after it (the server answers ``changed`` for
  them later, so a result whose walk raced a change is never reused).

Messages are length-prefixed pickles (the peer is our own forked child over a socket pair
nobody else holds). Any failure on the child's side (the server died, a message could not be
sent) makes the child behave as a process without a watch: it walks and keeps nothing.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
from typing import Any

from engine.context import watch as _watch

__all__ = ["Channel", "RemoteWatcher", "Service", "install"]

_HEADER = struct.Struct("!I")
_MAX_MESSAGE = 256 << 20
_REPLY_TIMEOUT = 30.0  # seconds a child waits for an answer before it stops asking
_READ_TIMEOUT = 10.0  # seconds the server waits for the rest of a message it started reading


def _send(sock: socket.socket, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the channel")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _receive(sock: socket.socket) -> Any:
    (size,) = _HEADER.unpack(_read_exactly(sock, _HEADER.size))
    if size > _MAX_MESSAGE:
        raise ValueError("a message too large")
    return pickle.loads(_read_exactly(sock, size))


def _ident(root: str) -> tuple[int, int] | None:
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


# -- the server's side -------------------------------------------------------------------------


class Service:
    """What the server keeps for its children: the watcher (the process's own, watching from
    a root's first walk) and counts of what the children did, for ``nbbuild server status``.

    Single-threaded, as the server is. ``keep_files`` bounds the kept manifests' total number
    of entries (on top of the memo's bound on selections).
    """

    def __init__(self, keep_files: int = 200_000) -> None:
        self.watcher = _watch._WATCHER
        self.keep_files = keep_files
        self.walks = 0  # walks the children started (each asked for its watches)
        self.reused = 0  # kept checksums the children reused without walking
        self.kept = 0  # checksums the children handed over
        self.changed = False  # the counts changed since last asked

    def fileno(self) -> int | None:
        """The inotify descriptor to poll (made now if need be), None when there is none."""
        return self.watcher.fileno()

    def drain(self) -> None:
        """Read the queued events (the descriptor was readable)."""
        self.watcher.drain()

    def summary(self) -> str:
        return f"context walks {self.walks}, reused {self.reused}, kept {self.kept}"


class Channel:
    """The server's end of one child's socket pair, and the child's walks in progress."""

    def __init__(self, service: Service, sock: socket.socket) -> None:
        self.service = service
        self.sock = sock
        self._walks: dict[int, _watch.Walk] = {}
        self._next = 1

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle(self) -> bool:
        """Answer one message (the socket is readable); False when the channel is over (the
        child closed it, or it broke): the caller closes it."""
        try:
            self.sock.setblocking(False)
            try:
                if not self.sock.recv(1, socket.MSG_PEEK):
                    return False  # the child closed its end
            except BlockingIOError:
                return True  # nothing to read after all
            self.sock.settimeout(_READ_TIMEOUT)
            message = _receive(self.sock)
        except (OSError, EOFError, ValueError, pickle.UnpicklingError, struct.error):
            return False
        except Exception:  # a message that does not unpickle: never the server's end
            return False
        try:
            reply = self._answer(message)
        except Exception:
            # Whatever went wrong, the walks of this child are not to be trusted.
            self._untrust()
            reply = ("error",)
        if reply is None:
            return True
        try:
            _send(self.sock, reply)
        except OSError:
            return False
        return True

    def pending(self) -> None:
        """Answer what the child wrote before it ended (a kept checksum must not be lost)."""
        while True:
            try:
                self.sock.setblocking(False)
                if not self.sock.recv(1, socket.MSG_PEEK):
                    return
            except OSError:  # nothing more (BlockingIOError), or broken
                return
            if not self.handle():
                return

    def close(self) -> None:
        """The child is gone: its unfinished walks are dropped (never trusted: nothing of
        theirs was kept)."""
        self._walks.clear()
        self.sock.close()

    def _untrust(self) -> None:
        for walk in self._walks.values():
            self.service.watcher.forget(walk)

    def _answer(self, message: tuple[Any, ...]) -> tuple[Any, ...] | None:
        op = message[0]
        service = self.service
        if op == "changed":
            _, root, generation, ident = message
            changed = ident != _ident(root) or service.watcher.changed_since(root, generation)
            if not changed:
                service.reused += 1
                service.changed = True
            return ("ok", changed)
        if op == "dir":
            _, handle, rel, dev = message
            self._walks[handle].directory(rel, dev)
            return ("ok",)
        if op == "file":
            _, handle, rel = message
            self._walks[handle].file(rel)
            return ("ok",)
        if op == "ignore":
            _, handle, patterns = message
            from engine.context.dockerignore import IgnoreRules

            self._walks[handle].ignore(IgnoreRules.from_patterns(patterns))
            return None
        if op == "close":
            walk = self._walks.pop(message[1], None)
            if walk is not None:
                walk.close()
            return None
        if op == "keep":
            _, key, generation, result, manifest, stamped = message
            from engine.context import source

            source.keep(key, generation, result, manifest, stamped, max_files=service.keep_files)
            service.kept += 1
            service.changed = True
            return None
        if op == "begin":
            _, root, ident = message
            service.walks += 1
            service.changed = True
            walk = service.watcher.begin(root, auto=False)
            if walk is None or ident != walk.ident:
                return ("ok", None, 0)
            handle = self._next
            self._next += 1
            self._walks[handle] = walk
            return ("ok", handle, walk.generation)
        raise ValueError(f"unknown request {op!r}")


# -- the child's side ------------------------------------------------------------------------


class RemoteWatcher(_watch.Watcher):
    """A forked child's watcher: every question goes to the server (see the module)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock: socket.socket | None = sock
        self._pid = os.getpid()
        self._rpc = threading.Lock()  # a build hashes from several threads

    def _ask(self, message: tuple[Any, ...], *, reply: bool = True) -> Any:
        """The server's answer (its fields after "ok"), None if there is none to be had."""
        with self._rpc:
            sock = self._sock
            if sock is None or os.getpid() != self._pid:
                return None
            try:
                _send(sock, message)
                if not reply:
                    return ()
                answer = _receive(sock)
            except Exception:
                # The server went away or the channel broke: no watch from now on.
                self._sock = None
                return None
            if not isinstance(answer, tuple) or not answer or answer[0] != "ok":
                return None
            return answer[1:]

    def begin(self, root: str, *, auto: bool) -> _watch.Walk | None:
        del auto  # the server watches from a root's first walk: it serves build after build
        ident = _ident(root)
        if ident is None:
            return None
        answer = self._ask(("begin", root, ident))
        if not answer or answer[0] is None:
            return None
        return RemoteWalk(self, int(answer[0]), int(answer[1]))

    def changed_since(self, root: str, generation: int) -> bool:
        answer = self._ask(("changed", root, generation, _ident(root)))
        return True if not answer else bool(answer[0])

    def kept(
        self,
        key: tuple[Any, ...],
        generation: int,
        result: str,
        manifest: dict[str, str],
        stamped: Any,
    ) -> None:
        self._ask(("keep", key, generation, result, manifest, stamped), reply=False)

    def clear(self) -> None:
        with self._rpc:
            sock, self._sock = self._sock, None
        if sock is not None and os.getpid() == self._pid:
            sock.close()

    def fileno(self) -> int | None:
        return None

    def drain(self) -> None:
        return None


class RemoteWalk(_watch.Walk):
    """A walk of the server's watcher, from a child (see :class:`engine.context.watch.Walk`)."""

    __slots__ = ("_handle", "_remote", "_trusted")

    def __init__(self, remote: RemoteWatcher, handle: int, generation: int) -> None:
        self._remote = remote
        self._handle = handle
        self._seen: set[str] = {""}  # the server watched the root in begin
        self._trusted = True
        self.generation = generation

    @property
    def ident(self) -> tuple[int, int] | None:
        return None

    def _watched(self, message: tuple[Any, ...]) -> None:
        if self._trusted and self._remote._ask(message) is None:
            self._trusted = False  # told to the hasher through trusted()

    def directory(self, rel: str, dev: int) -> None:
        if rel not in self._seen:
            self._seen.add(rel)
            self._watched(("dir", self._handle, rel, dev))

    def file(self, rel: str) -> None:
        key = "\0" + rel
        if key not in self._seen:
            self._seen.add(key)
            self._watched(("file", self._handle, rel))

    def ignore(self, rules: Any) -> None:
        self._remote._ask(("ignore", self._handle, rules.patterns), reply=False)

    def close(self) -> None:
        self._remote._ask(("close", self._handle), reply=False)

    def trusted(self) -> bool:
        return self._trusted


def install(sock: socket.socket) -> None:
    """In a server's child: use the server's watch and kept checksums through ``sock``."""
    _watch._WATCHER = RemoteWatcher(sock)
