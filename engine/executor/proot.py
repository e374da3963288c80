"""Running a step under PRoot: the degraded worker's executor (:mod:`engine.userns.degraded`).

Where a normal user may not create a user namespace, no OCI runtime can isolate a step. PRoot
(ptrace-based) can still give each step its own root filesystem: every path a step's processes
use is translated into the step's directory. It is a filesystem *view*, not a security
boundary, and the worker says so everywhere it is used.

One run, start to end:

1. The root filesystem is a plain directory: the copy snapshotter's materialized copy of the
   step's layers (:mod:`engine.snapshot.native`); overlayfs cannot be mounted without a
   namespace, so an :class:`~engine.snapshot.overlay.OverlayMount` is refused.
2. What the spec asks that PRoot cannot give is refused: ``--network=none`` (the step would
   share the host's network) and ``--security=insecure``.
3. ``USER`` is resolved with the rootfs's ``/etc/passwd`` and ``/etc/group`` (as the OCI
   executor does); the working directory is created in the rootfs when missing (``0755``, as
   runc makes it), resolving its symlinks inside the rootfs.
4. A scratch directory beside the rootfs holds what BuildKit's sandbox provides besides the
   image: ``/etc/hosts`` (with BuildKit's ``buildkitsandbox`` name; the hostname itself cannot
   be set: there is no UTS namespace) and ``/etc/resolv.conf``, fresh for each run (mode
   ``0444``; what a step writes there anyway, as fake root, is thrown away), and a private
   ``/dev`` with the host's ``null``, ``zero``, ``full``, ``random``, ``urandom`` and ``tty``
   bound in, ``shm`` (``1777``) and the ``fd``/``std*`` links; the host's ``/proc`` and
   ``/sys`` are bound (no PID namespace: a step sees the host's processes). Read-only extra
   mounts are bound from copies (PRoot cannot make a bind read-only), writable ones as they
   are.
5. ``setpriv --pdeathsig QUIT -- proot -v -1 -0|-i UID:GID -r ROOTFS -w CWD -b … ARGS`` runs
   in its own session with exactly the step's environment (``spec.env``, with ``PATH`` and
   ``HOME`` defaults as the OCI bundle's; PRoot adds ``PWD``). ``-0`` (fake root) makes the
   user's files appear as root's and fakes ``chown``; ``-i`` shows them as the ``USER``'s.
6. PRoot's own exit status is the *last* traced process's, and its tracees outlive it when it
   is killed (untraced: on the host as they are). So the executor never kills PRoot first: it
   watches the step's main process (PRoot's first child, through a pidfd) and, when that has
   exited, sends PRoot ``SIGQUIT``, on which PRoot kills every tracee and exits (newer PRoot's
   ``--kill-on-exit``, which Debian's 5.1 lacks). The step's exit status is the main process's
   own: where the root filesystem has ``/bin/sh`` (every image whose RUN steps use the shell
   form), the step runs under ``/bin/sh -c '"$@"; …'``, which writes the command's status into
   a bound scratch directory; otherwise it is read from the main process's pidfd
   (``PIDFD_GET_INFO``, Linux 6.15+, when the watcher got it in time), else PRoot's own (the
   main process's, once the others are gone, unless one exited normally in the same instant).
   When the engine dies, ``SIGQUIT`` (the parent-death signal) does the same.
7. Cancel is a ladder like the OCI executor's: ``SIGINT``, then ``SIGTERM`` to the session (the
   step's processes; PRoot ignores both), then ``SIGQUIT`` to PRoot (``SIGKILL`` to every
   tracee), repeated until PRoot is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shutil
import signal
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

from engine.executor.bundle import build_env, hosts_file, resolv_conf
from engine.executor.errors import CapabilityError, SandboxError
from engine.executor.output import StderrTail, pump, validate
from engine.executor.process import ExitResult, OutputSink, ProcessSpec, RootFS
from engine.executor.user import resolve_user
from engine.snapshot.layers import LayerView
from engine.snapshot.overlay import OverlayMount

__all__ = ["ProotExecutor"]

_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)
_STDERR_TAIL = 8192
_MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# struct pidfd_info (Linux 6.15): u64 mask, u64 cgroupid, 11 x u32 (pid, tgid, ppid, ruid, rgid,
# euid, egid, suid, sgid, fsuid, fsgid), s32 exit_code: 64 bytes; _IOWR(0xFF, 11, that)
_PIDFD_INFO_SIZE = 64
_PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO_SIZE << 16) | (0xFF << 8) | 11
_PIDFD_INFO_EXIT = 1 << 3
_EXIT_CODE_OFFSET = 60
_QUIT_EVERY = 0.5  # seconds between SIGQUITs while PRoot still has tracees
_SCAN_EVERY = 0.02  # seconds between looks for a main process that was not seen
_LAST_RESORT = 30.0  # seconds of SIGQUITs before the session gets SIGKILL
# Where the step's shell writes its exit status (a bind of a scratch directory; never in the
# step's root filesystem, so never in its diff).
_STATUS_DIR = "/.nbbuild-status"
# It is invisible to the step otherwise: SHLVL is unset again (a shell-form step's sh must
# start at 1, as under runc), and a program that is not there is a setup failure, reported as
# "notfound", as runc's exec failure is.
_STATUS_SCRIPT = (
    "unset SHLVL; "
    'case $1 in */*) [ -x "$1" ] ;; *) command -v "$1" >/dev/null 2>&1 ;; esac || '
    f'{{ echo notfound > {_STATUS_DIR}/code; exit 127; }}; '
    f'"$@"; s=$?; echo "$s" > {_STATUS_DIR}/code; exit "$s"'
)


class ProotExecutor:
    """:class:`~engine.executor.process.Executor` on PRoot, over a plain directory.

    Args:
        proot: the ``proot`` program (default: the one on ``PATH``).
        grace: seconds to wait after SIGINT and after SIGTERM before the next step of a cancel.
        banner: written to the first run's stderr (the degraded worker's warning), once.

    Raises:
        CapabilityError: ``proot`` or ``setpriv`` (util-linux) is missing.
    """

    def __init__(self, proot: str | None = None, *, grace: float = 0.5, banner: str = "") -> None:
        found = proot or shutil.which("proot")
        if found is None:
            raise CapabilityError("proot is not installed (apt-get install proot)")
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise CapabilityError(
                "setpriv (util-linux) is needed so that no step outlives a killed build"
            )
        self.proot = found
        self._setpriv = setpriv
        self.grace = grace
        self._banner = banner.encode()
        self._banner_lock = threading.Lock()

    def run(
        self,
        spec: ProcessSpec,
        rootfs: RootFS,
        *,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
        cancel: threading.Event | None = None,
    ) -> ExitResult:
        if isinstance(rootfs, OverlayMount):
            raise SandboxError(
                "the PRoot worker runs steps over a copy of their layers (overlayfs cannot be "
                "mounted without a user namespace): unset NBBUILD_SNAPSHOTTER=overlay"
            )
        validate(spec)
        from engine.userns.degraded import refusal

        refused = refusal("", network=spec.network, insecure=spec.privileged)
        if refused is not None:
            raise refused
        user = resolve_user(LayerView([rootfs]), spec.user)
        _make_cwd(rootfs, spec.cwd)
        scratch = Path(_scratch_dir(rootfs))
        try:
            binds = _prepare(scratch, spec)
            status = scratch / "status"
            status.mkdir(mode=0o700)
            args = list(spec.args)
            if os.path.lexists(os.path.join(rootfs, "bin", "sh")):
                # The step's own shell reports its exit status: PRoot's is the *last* traced
                # process's (a failing step that left a background child would "succeed"),
                # and a main process that exits in the first milliseconds can end before the
                # watcher has its pidfd. "$@" keeps exec-form arguments exactly.
                binds.append((str(status), _STATUS_DIR))
                args = ["/bin/sh", "-c", _STATUS_SCRIPT, "nbbuild-step", *args]
            identity = (
                ["-0"] if (user.uid, user.gid) == (0, 0) else ["-i", f"{user.uid}:{user.gid}"]
            )
            argv = [
                self._setpriv,
                "--pdeathsig",
                "QUIT",
                "--",
                self.proot,
                "-v",
                "-1",
                *identity,
                "-r",
                str(rootfs),
                "-w",
                spec.cwd,
                *(arg for host, guest in binds for arg in ("-b", f"{host}:{guest}")),
                *args,
            ]
            env: dict[str, str] = {}
            for item in build_env(spec, user):
                key, _, value = item.partition("=")
                env[key] = value
            if stderr is not None and self._banner:
                with self._banner_lock:
                    banner, self._banner = self._banner, b""
                if banner:
                    stderr(banner)
            result = self._supervise(argv, env, scratch, stdout, stderr, cancel)
            if _read_status(status / "code") == "notfound" and not result.cancelled:
                raise SandboxError(
                    "proot could not start the step",
                    detail=f"{spec.args[0]!r} not found (PATH={env.get('PATH', '')})",
                )
            reported = _reported_status(status / "code")
            if reported is not None and not result.cancelled:
                result = ExitResult(
                    exit_code=reported, cancelled=False, duration=result.duration
                )
            return result
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _supervise(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        stdout: OutputSink | None,
        stderr: OutputSink | None,
        cancel: threading.Event | None,
    ) -> ExitResult:
        keep_tail = StderrTail(stderr, _STDERR_TAIL)

        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            cwd=cwd,
            env=env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            threading.Thread(target=pump, args=(proc.stdout, stdout), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, keep_tail), daemon=True),
        ]
        for t in readers:
            t.start()
        watch = _Watch(proc, self.grace)
        try:
            watch.loop(cancel)
        except BaseException:
            watch.kill()  # KeyboardInterrupt or the like: never leave the step running
            raise
        finally:
            for t in readers:
                t.join(timeout=5)
            status = watch.close()
        duration = time.monotonic() - start
        rc = proc.returncode
        exit_code = status if status is not None else (128 - rc if rc < 0 else rc)
        if not watch.cancelled and watch.main is None and rc != 0:
            words = keep_tail.text()
            if "proot error:" in words or "proot fatal error" in words:
                # PRoot never started the step (an executable that is not there, a ptrace
                # refused): a setup failure, not the step's exit.
                lines = [ln for ln in words.strip().splitlines() if "see `proot --help`" not in ln]
                raise SandboxError(
                    f"proot could not start the step (exit {exit_code})",
                    detail="\n".join(lines[-5:]),
                )
        return ExitResult(exit_code=exit_code, cancelled=watch.cancelled, duration=duration)


class _Watch:
    """Waits for a PRoot process and its main tracee; ends it the safe way (see the module
    doc): its tracees first, by ``SIGQUIT`` to PRoot, never PRoot alone."""

    def __init__(self, proc: subprocess.Popen[bytes], grace: float) -> None:
        self.proc = proc
        self.grace = grace
        self.main: int | None = None
        self.pidfd: int | None = None
        self.main_done = False
        self.cancelled = False
        self._quit_at: float | None = None
        self._quit_since: float | None = None
        self._ladder: list[tuple[signal.Signals, float]] = []
        self._next_at = 0.0

    def loop(self, cancel: threading.Event | None) -> None:
        proc = self.proc
        started = time.monotonic()
        next_scan = started
        while proc.poll() is None:
            now = time.monotonic()
            if not self.main_done and self.pidfd is None:
                # The main process is not watched yet: find it, or find that it has gone
                # (a short one may exit before it is seen; what it left must go then too).
                if self.main is None:
                    self._find_main()
                if self.pidfd is None and now >= next_scan:
                    next_scan = now + _SCAN_EVERY
                    if self._main_gone():
                        self.main_done = True
                        self._quit()
            if self.pidfd is not None and not self.main_done:
                ready, _, _ = select.select([self.pidfd], [], [], 0.05)
                if ready:
                    self.main_done = True
                    self._quit()  # the step is over: its leftovers go (kill-on-exit)
            else:
                # not watched yet: look again soon (it may be very short-lived)
                soon = not self.main_done and now - started < 2.0
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.001 if soon else 0.05)
            now = time.monotonic()
            if cancel is not None and cancel.is_set() and not self.cancelled:
                self.cancelled = True
                self._ladder = [(signal.SIGINT, self.grace), (signal.SIGTERM, self.grace)]
                self._next_at = now
            if self.cancelled and self._ladder and now >= self._next_at:
                sig, wait = self._ladder.pop(0)
                _killpg(proc.pid, sig)  # the step's processes; PRoot ignores INT and TERM
                self._next_at = now + wait
            elif self.cancelled and not self._ladder and now >= self._next_at:
                self._quit()
            if self._quit_at is not None and now - self._quit_at >= _QUIT_EVERY:
                self._quit()

    def _main_gone(self) -> bool:
        """Whether PRoot traces processes but none is its child: the main process (its only
        child) has exited, and what runs on are its orphans. Before PRoot has forked, and
        once every tracee is gone, it traces nothing: False. A main process found here is
        watched from now on."""
        proot = self.proc.pid
        tracees = _tracees_of(proot)
        if not tracees:
            return False
        for pid, parent in tracees:
            if parent == proot:
                self._watch(pid)
                return False
        return True

    def _find_main(self) -> None:
        pid = _first_child(self.proc.pid)
        if pid is not None:
            self._watch(pid)

    def _watch(self, pid: int) -> None:
        self.main = pid
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            return  # gone already (or no pidfds): PRoot's own status is used
        parent = _parent_of(pid)
        if parent is not None and parent != self.proc.pid:
            os.close(fd)  # the pid was reused at once by another process: not ours to watch
            return
        self.pidfd = fd

    def _quit(self) -> None:
        """``SIGQUIT`` to PRoot: it kills all its tracees and exits (again every
        :data:`_QUIT_EVERY` until it has; after :data:`_LAST_RESORT` the session is killed)."""
        now = time.monotonic()
        if self.proc.poll() is not None:
            return
        if self._quit_since is None:
            self._quit_since = now
        if now - self._quit_since >= _LAST_RESORT:
            _killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGQUIT)
        self._quit_at = now

    def kill(self) -> None:
        """End the step now (the caller is being interrupted) and wait for PRoot."""
        while self.proc.poll() is None:
            self._quit()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(_QUIT_EVERY)

    def close(self) -> int | None:
        """Wait for PRoot; the main process's exit status if the kernel kept it (128+N for a
        signal, as a shell says), else None."""
        self.proc.wait()
        if self.pidfd is None:
            return None
        try:
            return _exit_status(self.pidfd)
        finally:
            os.close(self.pidfd)
            self.pidfd = None


def _read_status(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _reported_status(path: Path) -> int | None:
    """The exit status the step's shell wrote, if it got that far (a cancelled or killed
    step's did not)."""
    text = _read_status(path)
    return int(text) if text.isdigit() and int(text) < 256 else None


def _exit_status(pidfd: int) -> int | None:
    """The exit status of the (reaped) process behind ``pidfd`` (``PIDFD_GET_INFO``, Linux
    6.15+), None where the kernel cannot tell."""
    buf = bytearray(_PIDFD_INFO_SIZE)
    struct.pack_into("=Q", buf, 0, _PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buf, True)
    except OSError:
        return None
    (mask,) = struct.unpack_from("=Q", buf, 0)
    if not mask & _PIDFD_INFO_EXIT:
        return None
    (status,) = struct.unpack_from("=i", buf, _EXIT_CODE_OFFSET)
    try:
        code = os.waitstatus_to_exitcode(status)
    except ValueError:
        return None
    return 128 - code if code < 0 else code


def _first_child(pid: int) -> int | None:
    """A child of ``pid`` (PRoot has one: the step's main process), None if none yet."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            words = f.read().split()
    except OSError:
        if not os.path.isdir(f"/proc/{pid}/task/{pid}"):
            return None  # gone
        # a kernel without CONFIG_PROC_CHILDREN
        words = [str(p).encode() for p in _children_by_scan(pid)]
    return int(words[0]) if words else None


def _children_by_scan(pid: int) -> list[int]:
    """Children of ``pid`` from every process's stat (kernels without ``children`` files)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _parent_of(int(name)) == pid:
            found.append(int(name))
    return sorted(found)


def _tracees_of(tracer: int) -> list[tuple[int, int]]:
    """(pid, parent) of the live processes that ``tracer`` traces."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(b":", 1) for line in status.splitlines() if b":" in line)
        try:
            if int(fields[b"TracerPid"]) != tracer or fields[b"State"].split()[0] in (b"Z", b"X"):
                continue
            found.append((int(name), int(fields[b"PPid"])))
        except (KeyError, ValueError, IndexError):
            continue
    return found


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)






def _scratch_dir(rootfs: Path) -> str:
    """A fresh directory beside the rootfs (in a build, the step's scratch dir, which the
    store sweeps if the engine dies), else in the temp dir."""
    import tempfile

    try:
        return tempfile.mkdtemp(prefix=".nbbuild-proot-", dir=rootfs.parent)
    except OSError:
        return tempfile.mkdtemp(prefix="nbbuild-proot-")


def _prepare(scratch: Path, spec: ProcessSpec) -> list[tuple[str, str]]:
    """The sandbox's files in ``scratch``; returns the binds (host, guest), in order."""
    binds: list[tuple[str, str]] = [("/proc", "/proc"), ("/sys", "/sys")]
    dev = scratch / "dev"
    dev.mkdir(mode=0o755)
    (dev / "shm").mkdir()
    os.chmod(dev / "shm", 0o1777)
    for name, target in _DEV_LINKS:
        os.symlink(target, dev / name)
    binds.append((str(dev), "/dev"))
    for name in _DEVICES:
        host = f"/dev/{name}"
        if os.path.exists(host):
            binds.append((host, host))
    etc = scratch / "etc"
    etc.mkdir()
    for name, text in (("hosts", hosts_file(spec.hostname)), ("resolv.conf", resolv_conf())):
        path = etc / name
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o444)  # read-only, as BuildKit binds them (a fresh copy per run)
        binds.append((str(path), f"/etc/{name}"))
    for index, mount in enumerate(spec.mounts):
        source = mount.source
        if mount.readonly:
            # PRoot cannot make a bind read-only: the step gets a copy it may scribble on.
            copy = scratch / "mounts" / str(index)
            copy.parent.mkdir(exist_ok=True)
            _copy_tree(source, copy)
            source = copy
        binds.append((str(source), mount.destination))
    return binds


def _copy_tree(src: Path, dst: Path) -> None:
    """Directories, regular files and symlinks of ``src`` into the new ``dst`` (modes and
    times kept); anything else (devices, whiteouts, sockets) is left out."""
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        return
    if stat.S_ISREG(st.st_mode):
        shutil.copy2(src, dst, follow_symlinks=False)
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    os.mkdir(dst, 0o700)
    for name in sorted(os.listdir(src)):
        _copy_tree(src / name, dst / name)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _make_cwd(rootfs: Path, cwd: str) -> None:
    """Create the working directory in ``rootfs`` where it is missing (``0755``, as runc
    does), resolving symlinks inside the rootfs: an absolute target restarts at its root and
    ``..`` never climbs above it.

    Raises:
        SandboxError: a component is not a directory, or symlinks loop.
    """
    parts = [p for p in cwd.split("/") if p not in ("", ".")]
    stack = [os.open(rootfs, _DIR_FLAGS)]
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                st = os.lstat(name, dir_fd=stack[-1])
            except FileNotFoundError:
                os.mkdir(name, 0o755, dir_fd=stack[-1])
                fd = os.open(name, _DIR_FLAGS, dir_fd=stack[-1])
                os.fchmod(fd, 0o755)  # not subject to the umask
                stack.append(fd)
                continue
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise SandboxError(f"working directory {cwd}: too many levels of symlinks")
                target = os.readlink(name, dir_fd=stack[-1])
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise SandboxError(f"working directory {cwd}: {name} is not a directory")
            stack.append(os.open(name, _DIR_FLAGS, dir_fd=stack[-1]))
    finally:
        for fd in stack:
            os.close(fd)
