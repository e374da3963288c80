"""The warm fork server behind the ``nbbuild`` command (the client side: :mod:`nbbuild.client`).

One server per *key* (see :func:`nbbuild.client.server_key`), started in the background by the
first command that found none, listening on ``<server dir>/<key>.sock``. It imports the CLI and
the engine once, then ``fork``\\ s a child per connection and goes on waiting; it never runs a
command itself and starts no thread, so each child is a single-threaded copy of a freshly
started, fully imported CLI process (a rootless command enters its user namespace in-process,
which a threaded process could not).

The child takes over the client's process state before running :func:`nbbuild.cli.main`: the
client's open descriptors under their own numbers (their close-on-exec flags too), working
directory, environment (``putenv`` included: containers and tools see it), umask, ``argv``, and
new ``sys.std*`` streams over descriptors 0-2 buffered as Python's start-up would buffer them.
It starts its own session (the server's signals are not its signals), and dies with the server
(``PR_SET_PDEATHSIG``). The server watches each client's connection: when the client goes away
before its child has ended (it was killed), the child gets SIGKILL - a build dies with its
command, as it would in-process. When a child ends, the server sends its wait status to the
client, which ends the same way.

Start-up checks that refuse to serve (the client then runs its commands itself; a
``<key>.refused`` marker stops it from starting servers for that key): this process's key
differs from the one it was started for (it cannot reproduce the client), or an import started
a thread. A second server for a key exits at once (``<key>.lock`` is held by the first). A
server with no child exits after ``--idle`` seconds, or as soon as its socket is removed or
replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import io
import marshal
import os
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.context import remote
from nbbuild import client

__all__ = ["ServerInfo", "main", "servers", "stop"]

_ERRORS = Path("/nonexistent")  # <key>.error: why the last child could not start its command
_CHECK_EVERY = 10.0  # seconds between checks (socket still ours, code unchanged) when idle

# What a command may import on its way (function-level imports of the engine and the standard
# library), loaded once here: a command in a child imports nothing.
_PRELOAD_STDLIB = (
    "argparse",
    "ctypes",
    "datetime",
    "difflib",
    "errno",
    "fnmatch",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "json",
    "locale",
    "pickle",
    "queue",
    "secrets",
    "selectors",
    "shlex",
    "shutil",
    "sqlite3",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "zlib",
)
# The notebook's modules (they import IPython) are not the CLI's.
_NOT_PRELOADED = ("nbbuild._magics", "nbbuild._widgets", "nbbuild._live", "nbbuild._session")


@dataclass(frozen=True)
class ServerInfo:
    """A running server: its key, process id, and why its last child could not start a
    command (the command then ran in its own process), if one could not."""

    key: str
    pid: int
    last_error: str = ""
    contexts: str = ""  # what its children did with the context watch it holds for them


def main(argv: list[str] | None = None) -> None:
    """Serve until idle (the entry point ``nbbuild.client`` starts in the background)."""
    options = _options(sys.argv[1:] if argv is None else argv)
    path = Path(options["--socket"][0])
    key = options["--key"][0]
    idle = float(options["--idle"][0])
    packages = options.get("--packages", [])
    os.chdir("/")
    global _ERRORS
    _ERRORS = path.with_suffix(".error")
    lock = _lock(path.with_suffix(".lock"))
    if lock is None:
        return  # another server has this key
    with contextlib.suppress(OSError):
        path.with_suffix(".contexts").unlink()  # an earlier server's
    if client.server_key(path=sys.path) != key or client._package_dirs() != packages:
        _refuse(path, "this process's key differs from the client's")
        return
    _preload()
    if threading.active_count() != 1:
        _refuse(path, "an import started a thread")
        return
    # Everything imported so far lives as long as the server: out of the collector's sight,
    # a child's collections do not touch (and copy) the pages of the server's objects.
    gc.collect()
    gc.freeze()
    code = client._code_fingerprint(packages)
    listener = _listen(path)
    ours = _socket_ids(path)
    try:
        _serve(
            listener,
            path,
            ours,
            idle,
            lambda: client._code_fingerprint(packages) == code,
            service=remote.Service(),
        )
    finally:
        with contextlib.suppress(OSError):
            if _socket_ids(path) == ours:
                path.unlink()
        with contextlib.suppress(OSError):
            path.with_suffix(".contexts").unlink()
        listener.close()
        os.close(lock)


def _options(argv: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = ""
    for arg in argv:
        if arg.startswith("--"):
            current = arg
            out[current] = []
        elif current:
            out[current].append(arg)
    return out


def _lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _refuse(path: Path, why: str) -> None:
    with contextlib.suppress(OSError):
        path.with_suffix(".refused").write_text(why + "\n")


def _preload() -> None:
    import importlib
    import pkgutil

    import engine
    import nbbuild
    from nbbuild._fastimport import compiled_dataclasses

    with compiled_dataclasses():
        for name in _PRELOAD_STDLIB:
            importlib.import_module(name)
        for package in (engine, nbbuild):
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                if info.name.startswith(_NOT_PRELOADED) or info.name == "nbbuild.__main__":
                    continue
                with contextlib.suppress(ImportError):
                    importlib.import_module(info.name)


def _listen(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead server's (we hold the lock: no live server listens there)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(64)
    return listener


def _socket_ids(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISSOCK(st.st_mode) else None


@dataclass
class _Child:
    """A command being run: the child's pid, its pidfd and the client's connection."""

    pid: int
    pidfd: int
    conn: socket.socket
    client_gone: bool = False
    channel: remote.Channel | None = None  # the child's questions about contexts


def _serve(
    listener: socket.socket,
    path: Path,
    ours: tuple[int, int] | None,
    idle: float,
    current: Callable[[], bool],
    *,
    service: remote.Service | None = None,
) -> None:
    """Fork a child per connection until idle for ``idle`` seconds, the socket is no longer
    ours, or (checked when idle) ``current()`` says the package's code changed: commands of
    the new code have a new key, so this server would only wait out its idle time.

    ``service``: the context watch and kept checksums held for the children
    (:mod:`engine.context.remote`): its inotify descriptor is drained whenever readable, and
    each child gets a socket pair to ask it."""
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    by_pidfd: dict[int, _Child] = {}
    by_conn: dict[int, _Child] = {}
    channels: dict[int, remote.Channel] = {}
    inotify_fd = _watch_fd(service, poller, None)
    last_active = time.monotonic()
    while True:
        if by_pidfd:
            timeout = None
        else:
            left = idle - (time.monotonic() - last_active)
            if left <= 0:
                return
            timeout = min(left, _CHECK_EVERY)
        events = poller.poll(None if timeout is None else int(timeout * 1000) + 1)
        if not events and not by_pidfd and (_socket_ids(path) != ours or not current()):
            return  # removed or replaced (`nbbuild server stop`), or its code is outdated
        for fd, event in events:
            if fd == listener.fileno():
                child = _accept(listener, by_pidfd, by_conn, service, channels)
                if child is not None:
                    by_pidfd[child.pidfd] = child
                    by_conn[child.conn.fileno()] = child
                    poller.register(child.pidfd, select.POLLIN)
                    poller.register(child.conn, select.POLLRDHUP)
                    if child.channel is not None:
                        channels[child.channel.fileno()] = child.channel
                        poller.register(child.channel.fileno(), select.POLLIN)
            elif fd in by_pidfd:
                child = by_pidfd.pop(fd)
                by_conn.pop(child.conn.fileno(), None)
                poller.unregister(fd)
                with contextlib.suppress(KeyError):
                    poller.unregister(child.conn)
                if child.channel is not None:
                    # What the child said before it ended is answered (kept) before its
                    # command's end is reported: the next command's child inherits it.
                    child.channel.pending()
                    _close_channel(child.channel, channels, poller)
                _reap(child)
                last_active = time.monotonic()
            elif fd == inotify_fd and service is not None:
                service.drain()
            elif fd in channels:
                channel = channels[fd]
                if not channel.handle():
                    _close_channel(channel, channels, poller)
            elif fd in by_conn and event & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                # The client went away before its command ended: it was killed. The command
                # dies with it, as it would have in-process.
                child = by_conn.pop(fd)
                poller.unregister(fd)
                child.client_gone = True
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
        if service is not None:
            inotify_fd = _watch_fd(service, poller, inotify_fd)
            if service.changed:
                service.changed = False
                with contextlib.suppress(OSError):
                    path.with_suffix(".contexts").write_text(service.summary() + "\n")


def _watch_fd(
    service: remote.Service | None, poller: select.poll, registered: int | None
) -> int | None:
    """Keep the watcher's inotify descriptor (made on first use, gone when its queue broke)
    registered with the poller."""
    fd = service.fileno() if service is not None else None
    if fd != registered:
        if registered is not None:
            with contextlib.suppress(KeyError):
                poller.unregister(registered)
        if fd is not None:
            poller.register(fd, select.POLLIN)
    return fd


def _close_channel(
    channel: remote.Channel, channels: dict[int, remote.Channel], poller: select.poll
) -> None:
    fd = channel.fileno()
    if channels.get(fd) is channel:
        del channels[fd]
        with contextlib.suppress(KeyError):
            poller.unregister(fd)
    channel.close()


def _accept(
    listener: socket.socket,
    by_pidfd: dict[int, _Child],
    by_conn: dict[int, _Child],
    service: remote.Service | None = None,
    channels: dict[int, remote.Channel] | None = None,
) -> _Child | None:
    try:
        conn, _ = listener.accept()
    except OSError:
        return None
    if client._peer_uid(conn) != os.geteuid():
        conn.close()  # only its own user's commands
        return None
    parent = os.getpid()
    pair: tuple[socket.socket, socket.socket] | None = None
    if service is not None:
        try:
            pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            pair = None  # the child walks as it would on its own
    keep = {listener.fileno(), *by_pidfd, *by_conn, *(channels or ())}
    if pair is not None:
        keep.add(pair[0].fileno())
    try:
        pid = os.fork()
    except OSError:
        conn.close()  # the client runs the command itself
        if pair is not None:
            pair[0].close()
            pair[1].close()
        return None
    if pid == 0:
        try:
            _child(conn, parent, keep, pair[1] if pair is not None else None)
        finally:
            os._exit(70)  # not reached: _child ends the process
    channel = None
    if pair is not None and service is not None:
        pair[1].close()
        channel = remote.Channel(service, pair[0])
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        # cannot watch it: it must not run unwatched
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        conn.close()
        if channel is not None:
            channel.close()
        return None
    return _Child(pid=pid, pidfd=pidfd, conn=conn, channel=channel)


def _reap(child: _Child) -> None:
    _, status = os.waitpid(child.pid, 0)
    os.close(child.pidfd)
    if not child.client_gone:
        with contextlib.suppress(OSError):
            child.conn.sendall(b"S" + struct.pack("!q", status))
    child.conn.close()


# -- the child -------------------------------------------------------------------------------


def _child(
    conn: socket.socket, parent: int, server_fds: set[int], channel: socket.socket | None = None
) -> None:
    """Become the client's process and run its command; never returns. ``channel``: this
    child's end of its socket pair with the server (the context watch, see
    :mod:`engine.context.remote`)."""
    try:
        _die_with(parent)
        os.setsid()
        for fd in server_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        request, received = _receive(conn)
        conn, channel = _take_over(request, received, conn, channel)
        if channel is not None:
            remote.install(channel)
        conn.sendall(b"P" + struct.pack("!q", os.getpid()))
        conn.close()
    except BaseException as exc:  # the command has not started: the client runs it itself
        # (silently: its output must not change); why is kept for `nbbuild server status`
        with contextlib.suppress(OSError):
            _ERRORS.write_text(f"{type(exc).__name__}: {exc}\n")
        os._exit(70)
    _run()


def _die_with(parent: int) -> None:
    from engine.userns.helper import dies_with

    if not dies_with(parent):
        os._exit(70)  # the server died before the death signal was armed


def _receive(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    conn.settimeout(30)
    data = b""
    fds: list[int] = []
    want = 4
    space = socket.CMSG_SPACE(client.MAX_FDS * struct.calcsize("i"))
    while len(data) < want:
        chunk, ancdata, _, _ = conn.recvmsg(65536, space if not fds else 0)
        if not chunk:
            raise ConnectionError("the client went away")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                n = len(payload) // struct.calcsize("i")
                fds += struct.unpack(f"{n}i", payload[: n * struct.calcsize("i")])
        data += chunk
        if len(data) >= 4:
            want = 4 + struct.unpack("!I", data[:4])[0]
    request = marshal.loads(data[4:want])
    if not isinstance(request, dict) or request.get("protocol") != client.PROTOCOL:
        raise ValueError("a client of another protocol")
    return request, fds


def _take_over(
    request: dict[str, object],
    received: list[int],
    conn: socket.socket,
    channel: socket.socket | None = None,
) -> tuple[socket.socket, socket.socket | None]:
    """Lay out the client's descriptors under their numbers (closing every other one of the
    server's), then take its directory, environment, umask and argv; returns the connection
    and the channel, moved out of the way."""
    targets = list(request["fds"])  # type: ignore[call-overload]
    cloexec = set(request["cloexec"])  # type: ignore[call-overload]
    if len(targets) != len(received):
        raise ValueError("descriptors were lost on the way")
    # Parked above the client's highest number, where laying the client's out cannot reach
    # them (and within the descriptor limit: the client had that number open).
    above = max(targets) + 1
    moved = fcntl.fcntl(conn.fileno(), fcntl.F_DUPFD_CLOEXEC, above)
    conn.close()
    conn = socket.socket(fileno=moved)
    keep = {moved}
    if channel is not None:
        channel_fd = fcntl.fcntl(channel.fileno(), fcntl.F_DUPFD_CLOEXEC, above)
        channel.close()
        channel = socket.socket(fileno=channel_fd)
        keep.add(channel_fd)
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above) for fd in received]
    keep.update(parked)
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            with contextlib.suppress(OSError):
                os.close(int(name))
    for fd, target in zip(parked, targets, strict=True):
        os.dup2(fd, target, inheritable=target not in cloexec)
        os.close(fd)
    os.chdir(str(request["cwd"]))
    os.umask(int(request["umask"]))  # type: ignore[call-overload]
    env = request["env"]
    if not isinstance(env, dict):
        raise ValueError("a malformed request")
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    time.tzset()
    sys.argv = list(request["argv"])  # type: ignore[call-overload]
    _new_std_streams()
    return conn, channel


def _new_std_streams() -> None:
    """``sys.stdin/stdout/stderr`` over descriptors 0-2, as start-up makes them: stdout
    line-buffered on a terminal, stderr always; the encoding and error handler are the
    server's (the key holds the locale and ``PYTHONIOENCODING``)."""
    template = sys.__stdout__ or sys.stdout
    err_template = sys.__stderr__ or sys.stderr
    write_through = bool(getattr(template, "write_through", False))

    def stream(fd: int, writing: bool, line: bool, errors: str | None) -> io.TextIOWrapper:
        raw = io.FileIO(fd, "w" if writing else "r", closefd=False)
        return io.TextIOWrapper(
            io.BufferedWriter(raw) if writing else io.BufferedReader(raw),
            encoding=template.encoding,
            errors=errors,
            line_buffering=line,
            write_through=write_through if writing else False,
        )

    for name, made in (
        ("stdin", stream(0, False, False, template.errors)),
        ("stdout", stream(1, True, os.isatty(1), template.errors)),
        ("stderr", stream(2, True, True, err_template.errors)),
    ):
        setattr(sys, name, made)
        setattr(sys, f"__{name}__", made)


def _run() -> None:
    code = 1
    try:
        from nbbuild.cli import main as cli_main

        cli_main()  # ends the process itself
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # as the interpreter would: a traceback, exit 1
        import traceback

        traceback.print_exc()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


# -- managing servers ------------------------------------------------------------------------


def servers(directory: str | None = None) -> list[ServerInfo]:
    """The running servers of this user (of ``directory``, by default the client's)."""
    top = Path(directory or client.server_dir())
    found = []
    for lock in sorted(top.glob("*.lock")):
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                pid = int(os.read(fd, 32).split()[0] or 0)
                try:
                    error = lock.with_suffix(".error").read_text().strip()
                except OSError:
                    error = ""
                try:
                    contexts = lock.with_suffix(".contexts").read_text().strip()
                except OSError:
                    contexts = ""
                found.append(
                    ServerInfo(key=lock.stem, pid=pid, last_error=error, contexts=contexts)
                )
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)  # nobody holds it: no server
        except (ValueError, IndexError):
            pass
        finally:
            os.close(fd)
    return found


def stop(directory: str | None = None, timeout: float = 10.0) -> list[ServerInfo]:
    """Stop this user's servers (their socket goes first: no new command reaches them;
    commands running in their children are killed with them); returns those stopped."""
    top = Path(directory or client.server_dir())
    stopped = servers(str(top))
    for info in stopped:
        with contextlib.suppress(OSError):
            (top / f"{info.key}.sock").unlink()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and servers(str(top)):
        time.sleep(0.02)
    return stopped
