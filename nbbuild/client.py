"""The ``nbbuild`` command: the command runs in a child of a warm fork server when one fits.

A build command's own work on a no-op rebuild is ~15 ms; starting Python and importing the CLI
and the engine is ~100 ms more, on every run. Like ``docker`` talking to ``dockerd`` (or
Gradle's daemon, mypy's ``dmypy``), the command therefore hands itself to a long-lived process
that has already imported everything (:mod:`nbbuild.server`), which ``fork``\\ s a child per
command. The child is made to be the process this one would have been: it receives this
process's open file descriptors (stdin/stdout/stderr, a ``/dev/fd/63`` of ``<(…)``) with their
numbers, its working directory, environment, umask and ``argv``, and runs
:func:`nbbuild.cli.main` as this process would have; signals sent here (Ctrl-C, ``kill``) are
passed on, and this process ends the way the child ended (its exit code, or the same signal).
If this process is killed (SIGKILL), the server kills the child at once: a build dies with its
command, as it would in-process.

Everything that decides how a Python process behaves before it runs a line of ours is part of
the server's *key* (the name of its socket): the interpreter and its flags, the package files
(sizes and modification times: an edited or reinstalled nbbuild gets a new server), the
``sys.path`` directories, user and groups, capabilities, no_new_privs, seccomp, cgroup,
namespaces, resource limits, and the environment variables Python reads at start-up
(``PYTHON*``, locale). A command whose key has no server yet runs here, and starts one in the
background for the next command. The server imports as the console script does, without the
working directory on ``sys.path`` (``python -m nbbuild`` adds it; a directory there shadowing
nbbuild or engine is detected, one shadowing a dependency is not).

``NBBUILD_SERVER=0`` runs every command here (no server); ``NBBUILD_SERVER_DIR`` moves the
sockets (default: ``$XDG_RUNTIME_DIR/nbbuild-server``, ``/run/nbbuild/server`` as root, else
``~/.cache/nbbuild-run/server``); ``NBBUILD_SERVER_IDLE`` is how many seconds a server with
nothing to do waits before it exits (default 900). ``nbbuild server status|stop`` lists or stops
this user's servers.

This module must stay light: it is imported on every run, before anything else of nbbuild's
(``nbbuild/__init__`` imports only what :mod:`engine.errors` needs).
"""

from __future__ import annotations

# socket.py imports selectors and enum, milliseconds on every command: the C module does here.
import _socket as socket
import os
import sys

__all__ = ["main", "server_dir", "server_key"]

PROTOCOL = 1
DEFAULT_IDLE = 900.0
# SCM_RIGHTS carries at most 253 descriptors in one message (SCM_MAX_FD)
MAX_FDS = 250
# Signals a terminal or a supervisor sends to a command: passed on to the child.
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
_STARTUP_ENV = ("PYTHON", "LC_", "LANG")  # what Python reads before running any code


def main() -> None:
    """The console script's and ``python -m nbbuild``'s entry point; does not return."""
    code = None
    if _wanted(sys.argv):
        try:
            code = _run_in_server(sys.argv)
        except OSError:
            code = None  # no server to be had: run here
        except KeyboardInterrupt:  # before the command started: as the CLI answers Ctrl-C
            sys.stderr.write("interrupted\n")
            os._exit(130)
    if code is None:
        from nbbuild.cli import main as cli_main

        cli_main()  # ends the process
        return
    if code < 0:
        _die_by(-code)
    sys.stdout.flush()
    os._exit(code)


def _wanted(argv: list[str]) -> bool:
    if os.environ.get("NBBUILD_SERVER", "1").lower() in ("0", "off", "no", "false"):
        return False
    if len(argv) > 1 and argv[1] in ("server", "unshare"):
        # managing the servers runs here; so does `unshare`, whose command (an interactive
        # shell, by default) needs this process's controlling terminal
        return False
    return sys.platform == "linux" and hasattr(socket, "SCM_RIGHTS") and hasattr(socket, "AF_UNIX")


def server_dir() -> str:
    """Where this user's server sockets live."""
    chosen = os.environ.get("NBBUILD_SERVER_DIR")
    if chosen:
        return chosen
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return os.path.join(runtime, "nbbuild-server")
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        return "/run/nbbuild/server"
    return os.path.join(os.path.expanduser("~"), ".cache", "nbbuild-run", "server")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _package_dirs() -> list[str]:
    import engine
    import nbbuild

    return [os.path.realpath(p) for p in (*nbbuild.__path__, *engine.__path__)]


def _code_fingerprint(dirs: list[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every Python file of the packages: editing or reinstalling
    nbbuild changes the key."""
    found: list[tuple[str, int, int]] = []
    stack = list(dirs)
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(".py"):
                st = entry.stat(follow_symlinks=True)
                found.append((entry.path, st.st_size, st.st_mtime_ns))
            elif entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                stack.append(entry.path)
    found.sort()
    return found


def search_path() -> list[str]:
    """``sys.path`` without the script's directory or the working directory that Python
    puts first: the server imports as the console script does."""
    return [os.path.abspath(p) for p in sys.path[1:]]


def server_key(path: list[str] | None = None) -> str:
    """What decides how this process would run the command, hashed: the server's name.
    ``path``: the import path (by default :func:`search_path`; the server passes its own)."""
    import resource

    status = _read("/proc/self/status").splitlines()
    if path is None:
        path = search_path()
    parts: list[object] = [
        PROTOCOL,
        sys.executable,
        sys.version,
        tuple(sys.flags),
        sorted(sys._xoptions.items()),
        sys.warnoptions,
        path,
        [(p, _mtime(p)) for p in path],
        _package_dirs(),
        _code_fingerprint(_package_dirs()),
        (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups())),
        [line for line in status if line.startswith((b"Cap", b"NoNewPrivs", b"Seccomp"))],
        _read("/proc/self/cgroup"),
        [_readlink(f"/proc/self/ns/{ns}") for ns in _NAMESPACES],
        _readlink("/proc/self/root"),
        [
            resource.getrlimit(getattr(resource, n))
            for n in sorted(dir(resource))
            if n.startswith("RLIMIT_")
        ],
        sorted((k, v) for k, v in os.environ.items() if k.startswith(_STARTUP_ENV)),
    ]
    return _digest(repr(parts).encode())[:32]


_NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _digest(data: bytes) -> str:
    # hashlib loads OpenSSL (milliseconds); the built-in sha256 module is enough for a name.
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - Python 3.12 renamed it
        from hashlib import sha256
    return str(sha256(data).hexdigest())


def _run_in_server(argv: list[str]) -> int | None:
    """Run ``argv`` in a server's child; returns its exit code (negative: the signal that
    ended it), or None when no server could take it (then one is started for next time)."""
    fds = _open_fds()
    if fds is None:
        return None
    directory = server_dir()
    key = server_key()
    path = os.path.join(directory, key + ".sock")
    if len(path.encode()) > 107 or not _private_dir(directory):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        _start_server(directory, path, key)
        return None
    try:
        if _peer_uid(conn) != os.geteuid():
            return None  # not ours: never hand it our descriptors
        return _session(conn, argv, fds)
    finally:
        conn.close()


def _open_fds() -> list[int] | None:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    fds = []
    for name in names:
        fd = int(name)
        try:
            os.fstat(fd)  # the listing's own directory descriptor is gone by now
        except OSError:
            continue
        fds.append(fd)
    fds.sort()
    return fds if len(fds) <= MAX_FDS and all(fd in fds for fd in (0, 1, 2)) else None


def _private_dir(directory: str) -> bool:
    """The socket directory, made if missing; only one that is ours alone is used."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.lstat(directory)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077 == 0


def _peer_uid(conn: socket.socket) -> int:
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _session(conn: socket.socket, argv: list[str], fds: list[int]) -> int | None:
    import fcntl
    import marshal
    import signal
    import struct

    request = marshal.dumps(
        {
            "protocol": PROTOCOL,
            "argv": list(argv),
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "umask": _umask(),
            "fds": fds,
            "cloexec": [fd for fd in fds if fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC],
        }
    )
    header = struct.pack("!I", len(request))
    conn.sendmsg(
        [header, request],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))],
    )
    first = _read_exactly(conn, 9)
    if len(first) != 9 or first[:1] != b"P":
        return None  # the server went away before it took the command: run here
    (child,) = struct.unpack("!q", first[1:])

    def forward(signum: int, _frame: object) -> None:
        try:  # noqa: SIM105 - contextlib is one import more on every command
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for name in FORWARDED_SIGNALS:
        signal.signal(getattr(signal, name), forward)
    last = _read_exactly(conn, 9)
    if len(last) != 9 or last[:1] != b"S":
        # The server died (its children die with it): say so, as a shell would of a crash.
        sys.stderr.write("nbbuild: the build server went away during the command\n")
        return 1
    (status,) = struct.unpack("!q", last[1:])
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    """``n`` bytes, or fewer when the other side closed first."""
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _die_by(signum: int) -> None:
    """End this process by ``signum``, as the child ended (a shell then reports 128+n)."""
    import signal

    sys.stdout.flush()
    if signum not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught anyway
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # a signal whose default is to ignore it


def _start_server(directory: str, path: str, key: str) -> None:
    """Start a server for ``key`` in the background (this command runs here meanwhile). Its
    standard streams are /dev/null and it inherits no other descriptor: nothing waiting for
    this command's output waits for the server."""
    if os.path.exists(os.path.join(directory, key + ".refused")):
        return  # a server cannot reproduce this process (see nbbuild.server)
    import subprocess

    idle = os.environ.get("NBBUILD_SERVER_IDLE", str(DEFAULT_IDLE))
    code = (
        "import sys; sys.path[:] = " + repr(search_path()) + "; "
        "from nbbuild.server import main; main()"
    )
    # the same interpreter options (-X, -W, -O, ...), as multiprocessing starts its children
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    argv = [sys.executable, *flags, "-c", code]
    argv += ["--socket", path, "--key", key, "--idle", idle]
    argv += ["--packages", *_package_dirs()]
    try:  # noqa: SIM105 - as above
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            cwd="/",
        )
    except OSError:
        pass
