"""A long-lived helper process inside a user namespace, for callers that cannot enter one.

A notebook kernel has threads, and a process with threads cannot ``unshare`` a user
namespace; besides, the kernel must keep the user's own view of the files. So, as rootless
BuildKit keeps ``buildkitd`` inside ``rootlesskit``, a kernel's builds run in a helper: a
fresh interpreter (``python -m engine.userns.helper``) that enters a namespace with the user's
mapping as its first act (while it has no threads), then serves calls over a socket pair.

Protocol: length-prefixed pickles, both ways.

* caller → helper: ``("call", "module:function", args, kwargs, cwd, environ, flags)``, then
  at any time ``("cancel",)``;
* helper → caller: ``("event", event)`` for each reporter event, ``("callback", name, args)``
  for each call of a callable argument (``on_output=``), ``("out", fd, text)`` for output
  when asked to capture it, then ``("result", value)`` or ``("error", exception)``.

One call at a time per helper; :func:`call` keeps a small pool, so two builds of one kernel
run side by side in two helpers. A helper ends when its caller closes the socket or dies
(``PR_SET_PDEATHSIG``), and everything it mounted goes with its mount namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import io
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from engine.errors import BuildCanceled, InternalError, NbbuildError
from engine.userns.idmap import IdMapping, current_mapping

__all__ = ["Helper", "call", "dies_with"]

_HEADER = struct.Struct("!I")
_PR_SET_PDEATHSIG = 1


def _send(sock: socket.socket, lock: threading.Lock, message: Any) -> None:
    try:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        data = pickle.dumps(("error", InternalError(f"cannot send {message[0]!r}: {exc!r}")))
    with lock:
        sock.sendall(_HEADER.pack(len(data)) + data)


def _recv(sock: socket.socket) -> Any:
    """One message, or None at the end of the stream."""
    header = _read_exact(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    body = _read_exact(sock, size)
    if body is None:
        return None
    return pickle.loads(body)


def _readable(sock: socket.socket, timeout: float) -> bool:
    """A whole message is read only once its first byte is there: a timeout in the middle of
    one would lose its framing."""
    return bool(select.select([sock], [], [], timeout)[0])


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


# -- the caller's side ------------------------------------------------------------------------


class _RelayReporter:
    """The reporter a forwarded call gets: sends each event back to the caller."""

    def __init__(self, sock: socket.socket, lock: threading.Lock) -> None:
        self._sock, self._lock = sock, lock

    def emit(self, event: Any) -> None:
        _send(self._sock, self._lock, ("event", event))


def _relay_callback(sock: socket.socket, lock: threading.Lock, name: str) -> Callable[..., None]:
    def relay(*args: Any) -> None:
        _send(sock, lock, ("callback", name, args))

    return relay


class _RelayStream(io.TextIOBase):
    def __init__(self, sock: socket.socket, lock: threading.Lock, fd: int) -> None:
        self._sock, self._lock, self._fd = sock, lock, fd

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            _send(self._sock, self._lock, ("out", self._fd, text))
        return len(text)

    def isatty(self) -> bool:
        return False


class Helper:
    """One helper process (see the module doc).

    Raises:
        UsernsUnavailable: the helper could not enter its namespace (with its reason).
    """

    def __init__(self, mapping: IdMapping | None = None) -> None:
        mapping = mapping if mapping is not None else current_mapping()
        self.mapping = mapping
        parent, child = socket.socketpair()
        # The caller's import path, whatever put it there (a notebook's sys.path.insert, an
        # editable install): the helper must import the same engine.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.userns.helper",
                str(child.fileno()),
                mapping.encode(),
                str(os.getpid()),
            ],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        child.close()
        self._sock = parent
        self._lock = threading.Lock()
        self.busy = False
        first = _recv(parent)
        if first is None or first[0] != "ready":
            self.close()
            from engine.userns.errors import UsernsUnavailable

            if first is not None and first[0] == "error":
                raise first[1]
            raise UsernsUnavailable("the rootless helper process exited before it was ready")
        self.pid: int = first[1]

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def call(
        self,
        target: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        reporter: Any = None,
        cancel: threading.Event | None = None,
        capture: bool = False,
    ) -> Any:
        """Run ``target(*args, **kwargs)`` in the helper; events go to ``reporter``; setting
        ``cancel`` cancels it there; with ``capture`` its stdout/stderr come back here."""
        # Callables (``on_output=``) stay here; the helper gets stand-ins that call back.
        callbacks = {k: v for k, v in kwargs.items() if callable(v) and not isinstance(v, type)}
        kwargs = {k: v for k, v in kwargs.items() if k not in callbacks}
        flags = {
            "reporter": reporter is not None,
            "cancel": cancel is not None,
            "capture": capture,
            "callbacks": sorted(callbacks),
        }
        _send(
            self._sock,
            self._lock,
            ("call", target, args, kwargs, os.getcwd(), dict(os.environ), flags),
        )
        cancel_sent = False
        while True:
            try:
                if cancel is not None and cancel.is_set() and not cancel_sent:
                    _send(self._sock, self._lock, ("cancel",))
                    cancel_sent = True
                if not _readable(self._sock, 0.05):
                    continue
                message = _recv(self._sock)
            except KeyboardInterrupt:
                # Ctrl-C while waiting: cancel there, and still wait for it to finish so
                # the store is left consistent.
                if cancel is None:
                    cancel = threading.Event()
                cancel.set()
                continue
            if message is None:
                raise InternalError(
                    f"the rootless helper (pid {self.pid}) died during {target}; "
                    "its output is in this process's standard error"
                )
            kind = message[0]
            if kind == "event":
                if reporter is not None:
                    reporter.emit(message[1])
            elif kind == "callback":
                callbacks[message[1]](*message[2])
            elif kind == "out":
                (sys.stdout if message[1] == 1 else sys.stderr).write(message[2])
            elif kind == "result":
                return message[1]
            elif kind == "error":
                raise message[1]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


_pool: list[Helper] = []
_pool_lock = threading.Lock()


def call(
    target: str,
    *args: Any,
    reporter: Any = None,
    cancel: threading.Event | None = None,
    capture: bool = False,
    **kwargs: Any,
) -> Any:
    """Run ``target`` (``"module:function"``) in an idle helper of this process's pool."""
    with _pool_lock:
        _pool[:] = [h for h in _pool if h.alive]
        helper = next((h for h in _pool if not h.busy), None)
        if helper is None:
            helper = Helper()
            _pool.append(helper)
        helper.busy = True
    try:
        return helper.call(target, args, kwargs, reporter=reporter, cancel=cancel, capture=capture)
    finally:
        helper.busy = False


@atexit.register
def _close_pool() -> None:
    for helper in _pool:
        helper.close()
    _pool.clear()


# -- the helper's side ------------------------------------------------------------------------


def _work(
    target: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    cwd: str,
    capture: bool,
    sock: socket.socket,
    lock: threading.Lock,
    outcome: list[Any],
    done: int,
) -> None:
    """Run one call; append ``("result", value)`` or ``("error", exception)`` to ``outcome``,
    then write to and close the pipe ``done``."""
    try:
        _call(target, args, kwargs, cwd, capture, sock, lock, outcome)
    finally:
        os.write(done, b"1")
        os.close(done)


def _call(
    target: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    cwd: str,
    capture: bool,
    sock: socket.socket,
    lock: threading.Lock,
    outcome: list[Any],
) -> None:
    saved = sys.stdout, sys.stderr
    try:
        os.chdir(cwd)
        if capture:
            sys.stdout = _RelayStream(sock, lock, 1)
            sys.stderr = _RelayStream(sock, lock, 2)
        outcome.append(("result", _resolve(target)(*args, **kwargs)))
    except SystemExit as exc:
        outcome.append(("result", exc.code))
    except NbbuildError as exc:
        outcome.append(("error", exc))
    except KeyboardInterrupt:
        outcome.append(("error", BuildCanceled("canceled")))
    except BaseException as exc:
        import traceback

        detail = "".join(traceback.format_exception(exc)).strip()
        outcome.append(("error", InternalError(f"{exc!r} in {target}\n{detail}")))
    finally:
        sys.stdout, sys.stderr = saved
        with contextlib.suppress(AttributeError, ValueError):
            saved[0].flush()


def _serve(sock: socket.socket) -> None:
    lock = threading.Lock()
    while True:
        message = _recv(sock)
        if message is None:
            return
        if message[0] != "call":
            continue  # a cancel that arrived after its call ended
        _, target, args, kwargs, cwd, environ, flags = message
        keep = {k: v for k, v in os.environ.items() if k.startswith("NBBUILD_USERNS")}
        os.environ.clear()
        os.environ.update(environ)
        os.environ.update(keep)
        cancel = threading.Event()
        if flags["reporter"]:
            kwargs["reporter"] = _RelayReporter(sock, lock)
        if flags["cancel"]:
            kwargs["cancel"] = cancel
        for name in flags["callbacks"]:
            kwargs[name] = _relay_callback(sock, lock, name)
        outcome: list[Any] = []
        # The worker's end wakes the loop below (through a pipe it selects on with the
        # socket): polling for it cost every call up to a poll interval.
        done_r, done_w = os.pipe()

        worker = threading.Thread(
            target=_work,
            args=(target, args, kwargs, cwd, flags["capture"], sock, lock, outcome, done_w),
            name=f"nbbuild-helper:{target}",
            daemon=True,
        )
        worker.start()
        # Read while the call runs: a cancel sets the event; the end of the stream (the caller
        # is gone) cancels too, and the helper exits once the call has cleaned up.
        gone = False
        while True:
            ready = select.select([sock.fileno(), done_r], [], [])[0]
            if done_r in ready:
                break  # a cancel still unread is skipped by the next turn
            incoming = _recv(sock)
            if incoming is None:
                gone = True
                cancel.set()
                break
            if incoming[0] == "cancel":
                cancel.set()
        worker.join()
        os.close(done_r)
        if gone:
            return
        _send(sock, lock, outcome[0])


def dies_with(parent: int) -> bool:
    """Arm SIGKILL on the death of this process's parent (``PR_SET_PDEATHSIG``); False when
    ``parent`` died before it was armed (this process was already reparented). Used by the
    helper and by the CLI server's children (nbbuild/server.py)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent


def main(argv: list[str]) -> int:
    fd, mapping_text, parent = int(argv[1]), argv[2], int(argv[3])
    if not dies_with(parent):
        return 1  # the caller died before the death signal was armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides; it sends "cancel"
    sock = socket.socket(fileno=fd)
    lock = threading.Lock()
    from engine.userns.namespace import enter

    try:
        enter(IdMapping.decode(mapping_text))
    except NbbuildError as exc:
        _send(sock, lock, ("error", exc))
        return 1
    _send(sock, lock, ("ready", os.getpid()))
    from engine.context import watch

    watch.enable()  # a helper serves build after build: watch contexts from the first walk
    _serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
