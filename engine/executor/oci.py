"""Running a step with an OCI runtime (crun, or runc) inside a throwaway mount namespace.

One run, start to end:

1. Read the rootfs *without mounting it* (:class:`~engine.snapshot.layers.LayerView`) to resolve
   ``USER`` and to note which mount points (``/etc/hosts``, ``/etc/resolv.conf``, extra mounts)
   the runtime will have to create as stubs.
2. Write a bundle (``config.json``, ``hosts``, ``resolv.conf``) under ``state_dir``.
3. Start ``unshare --mount --propagation private --pid --fork`` running a tiny ``sh`` script
   that mounts the overlay at ``<bundle>/rootfs`` and ``exec``\\ s ``crun run``: the overlay
   exists only in that namespace and disappears with it, however the run ends (see
   :mod:`engine.snapshot.overlay`). The runtime is PID 1 of a PID namespace of its own, and the
   container's PID namespace is nested in it; ``setpriv --pdeathsig KILL`` (on ``unshare``) and
   ``--kill-child`` (on the runtime) chain the runtime's life to the engine's. So when the
   engine dies - even by SIGKILL - the runtime gets SIGKILL, and with the death of a PID
   namespace's init the kernel kills everything in it and in the namespaces nested in it: no
   container outlives its build. (A runtime killed by SIGKILL does *not* take its container
   with it on its own: the container is its child in another PID namespace.) The script checks
   that the engine is still its grandparent once both death signals are armed, which closes the
   window of a kill between ``fork`` and ``prctl``.
   On a cgroup v1 "hybrid" host the script also hides ``/sys/fs/cgroup/unified`` - in its
   private namespace only - because crun 1.8 refuses that layout: it detaches it as real root,
   and in a user namespace (where that mount is locked to what it covers) it covers it with an
   empty read-only tmpfs, which crun then sees as no v2 hierarchy; cgroups are not used at all
   (``--cgroup-manager=disabled``), so a killed run leaves no cgroup behind either.
   The script runs in busybox's ``sh`` when busybox is installed: its ``mount`` and
   ``umount`` are applets of the same (on Debian static) binary, a few milliseconds less per
   step than ``dash`` starting util-linux's ``mount`` twice and ``umount`` once.
4. The runtime runs in its own session (``start_new_session``): a terminal's Ctrl-C reaches the
   notebook or CLI, which decides to cancel; it never hits the container directly.
5. Cancel is a ladder, like ``docker stop`` with a short grace: SIGINT, then SIGTERM to the
   runtime, which forwards them to the container (``crun kill`` cannot be used from outside:
   the runtime's state holds pids of its own PID namespace), then SIGKILL to the runtime's
   session, which ends the namespaces. The process is PID 1 of its PID namespace, so a
   ``sleep`` ignores INT/TERM and only the KILL ends it. The runtime's state of a container it
   could not clean up (it was killed) is removed by the executor.
6. Empty stubs are removed from the upper dir (:mod:`engine.executor.stubs`), the bundle dir is
   removed. The upper dir is left as the step's diff; the caller owns it and the work dir.
7. What a killed engine leaves in ``state_dir`` (a bundle, the runtime's state of a container
   that no longer runs) is named after its owner (``nbbuild-<pid>-<start ticks>-<random>``)
   and removed by the next build after the owner is gone (:mod:`engine.executor.leftovers`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from engine.executor.bundle import write_bundle
from engine.executor.errors import CapabilityError, SandboxError
from engine.executor.leftovers import DEFAULT_STATE_DIR, default_state_dir
from engine.executor.leftovers import sweep as sweep_leftovers
from engine.executor.output import StderrTail, validate
from engine.executor.process import ExitResult, OutputSink, ProcessSpec, RootFS
from engine.executor.runtime import Runtime, cgroup_layout, find_runtime
from engine.executor.stubs import find_stubs, remove_stubs
from engine.executor.user import ResolvedUser, resolve_user
from engine.snapshot.layers import LayerView, chain_view
from engine.snapshot.overlay import OverlayMount, volatile_supported
from engine.store.leases import process_start_ticks
from engine.store.trees import drain_removals, remove_later
from engine.userns.idmap import IdMapping

__all__ = ["DEFAULT_STATE_DIR", "OciExecutor", "default_state_dir"]

# $1: the engine's pid (must be our grandparent: unshare's parent), $2: file to write our pid
# (as the engine sees it) into, $3: "1" to hide the v2 unified hierarchy, $4: overlay options
# or "", $5: mount target, then the runtime's argv. /proc is still the engine's here, so
# /proc/self/stat gives pids in the engine's PID namespace; then a /proc of the new PID
# namespace is mounted for the runtime. `exec` keeps one pid from the script to the runtime:
# killing it ends both namespaces, and the mounts with them.
_NAMESPACE_SCRIPT = """set -e
read -r self _ _ parent _ < /proc/self/stat
read -r _ _ _ grandparent _ < "/proc/$parent/stat"
[ "$grandparent" = "$1" ] || exit 125
echo "$self" > "$2"
mount -t proc proc /proc
if [ -n "$3" ]; then
  umount -l /sys/fs/cgroup/unified 2>/dev/null ||
    mount -t tmpfs -o ro,nosuid,nodev,noexec,size=0 none /sys/fs/cgroup/unified 2>/dev/null ||
    true
fi
if [ -n "$4" ]; then mount -t overlay overlay -o "$4" "$5"; fi
shift 5
exec "$@"
"""
_STDERR_TAIL = 8192
_CANCEL_POLL = 0.05  # seconds between looks at a step's cancel event
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


class OciExecutor:
    """:class:`~engine.executor.process.Executor` on crun or runc, as root.

    Args:
        runtime: the runtime to use; by default crun if installed, else runc.
        state_dir: where bundles and the runtime's state live (a tmpfs like /run is best).
        grace: seconds to wait after SIGINT and after SIGTERM before the next signal.
        recursive_stubs: also remove missing parent dirs created for mount points.
    """

    def __init__(
        self,
        runtime: Runtime | None = None,
        *,
        state_dir: Path | None = None,
        grace: float = 0.5,
        recursive_stubs: bool = False,
    ) -> None:
        from engine.userns.namespace import current, mode

        if mode() == "outside":
            from engine.userns.errors import UsernsUnavailable
            from engine.userns.forward import NO_USERNS_HINT

            raise UsernsUnavailable(f"RUN cannot run here as a normal user: {NO_USERNS_HINT}")
        # Root of a user namespace (a rootless build): IDs outside the mapping cannot be used.
        self.mapping = current()
        self.runtime = runtime if runtime is not None else find_runtime()
        if not self.runtime.is_oci:
            raise CapabilityError(f"{self.runtime.name} is not an OCI runtime")
        unshare = shutil.which("unshare")
        if unshare is None:
            raise CapabilityError(
                "unshare (util-linux) is needed to run steps in a private mount namespace"
            )
        self._unshare = unshare
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise CapabilityError(
                "setpriv (util-linux) is needed so that no container outlives a killed build"
            )
        self._setpriv = setpriv
        # The sandbox script's shell (see the module doc): busybox's when there is one.
        busybox = shutil.which("busybox")
        self._shell = [busybox, "sh"] if busybox is not None else ["/bin/sh"]
        self.state_dir = state_dir if state_dir is not None else default_state_dir()
        self.grace = grace
        self.recursive_stubs = recursive_stubs
        self._runtime_root = self.state_dir / f"state-{self.runtime.name}"
        self._hide_unified = self.runtime.name == "crun" and cgroup_layout() == "hybrid"
        self.sweep()

    def sweep(self) -> int:
        """Remove bundles and runtime state left by engines that are gone (killed); returns
        how many entries went. Their containers died with them (see the module doc)."""
        return sweep_leftovers(self.state_dir)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until the bundles of finished steps (removed in the background) are gone."""
        drain_removals(timeout)

    def _runtime_argv(self, *args: str) -> list[str]:
        argv = [str(self.runtime.path), "--root", str(self._runtime_root)]
        if self.runtime.name == "crun":
            argv.append("--cgroup-manager=disabled")
        return [*argv, *args]

    def run(
        self,
        spec: ProcessSpec,
        rootfs: RootFS,
        *,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
        cancel: threading.Event | None = None,
    ) -> ExitResult:
        validate(spec)
        if isinstance(rootfs, OverlayMount):
            view = chain_view(rootfs.lowers)
            stub_root = rootfs.upper
        else:
            view = LayerView([rootfs])
            stub_root = rootfs
        user = resolve_user(view, spec.user)
        if self.mapping is not None:
            _check_mapped(self.mapping, user, spec.user)
        stubs = find_stubs(
            view,
            ["/etc/hosts", "/etc/resolv.conf", *(m.destination for m in spec.mounts)],
            recursive=self.recursive_stubs,
        )

        container_id = f"nbbuild-{os.getpid()}-{_own_start_ticks()}-{secrets.token_hex(6)}"
        bundle = self.state_dir / "bundles" / container_id
        bundle.mkdir(parents=True, mode=0o700)
        self._runtime_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            if isinstance(rootfs, OverlayMount):
                target = bundle / "rootfs"
                target.mkdir()
                rootfs.upper.mkdir(parents=True, exist_ok=True)
                rootfs.work.mkdir(parents=True, exist_ok=True)
                # the step's upper dir is committed with a syncfs (or thrown away)
                options = rootfs.options(volatile=volatile_supported())
            else:
                target, options = rootfs, ""
            write_bundle(bundle, spec, user, target, mapping=self.mapping)
            pid_file = bundle / "pid"
            argv = [
                self._setpriv,
                "--pdeathsig",
                "KILL",
                "--",
                self._unshare,
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                "--kill-child",
                "--",
                *self._shell,
                "-c",
                _NAMESPACE_SCRIPT,
                "nbbuild-sandbox",
                str(os.getpid()),
                str(bundle / "runtime-pid"),
                "1" if self._hide_unified else "",
                options,
                str(target),
                *self._runtime_argv(
                    "run", "--bundle", str(bundle), "--pid-file", str(pid_file), container_id
                ),
            ]
            return self._supervise(
                argv, container_id, pid_file, bundle / "runtime-pid", stdout, stderr, cancel
            )
        finally:
            try:
                remove_stubs(stub_root, stubs)
            finally:
                # Nothing reads the bundle once the runtime is gone: it is removed off the
                # step's path (unlinks on a journaled /run cost as much as starting crun).
                remove_later(bundle)

    def _supervise(
        self,
        argv: list[str],
        container_id: str,
        pid_file: Path,
        runtime_pid_file: Path,
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
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        assert proc.stdout is not None and proc.stderr is not None
        cancelled = False
        try:
            # The calling thread pumps both pipes, notices the exit and turns `cancel` into
            # the signal ladder, all from one poll loop: no reader or watcher threads to start
            # and join for each step (their start-up alone was ~1 ms of a step).
            cancelled = self._pump(proc, stdout, keep_tail, cancel, runtime_pid_file)
        except BaseException:
            # KeyboardInterrupt or the like: never leave the container running
            self._stop(proc, runtime_pid_file)
            raise
        finally:
            proc.stdout.close()
            proc.stderr.close()
            self._delete(container_id)
        duration = time.monotonic() - start
        rc = proc.returncode
        exit_code = 128 - rc if rc < 0 else rc
        if not cancelled and rc != 0 and not pid_file.exists():
            # the runtime never created the container: a setup failure, not the step's exit
            detail = keep_tail.text().strip().splitlines()
            raise SandboxError(
                f"{self.runtime.name} could not start the container (exit {exit_code})",
                detail="\n".join(detail[-5:]),
            )
        return ExitResult(exit_code=exit_code, cancelled=cancelled, duration=duration)

    def _pump(
        self,
        proc: subprocess.Popen[bytes],
        stdout: OutputSink | None,
        stderr: OutputSink,
        cancel: threading.Event | None,
        runtime_pid_file: Path,
    ) -> bool:
        """Copy the process's output to the sinks until both pipes end and it has exited
        (reaped: ``proc.returncode`` is set); returns whether ``cancel`` stopped it.

        The pipes end when the last process holding them is gone: the runtime and the
        container die with the PID namespace, so that is at the step's end - unless the step
        closed them early, and then the process's pidfd (or a short ``wait`` poll where there
        is none) tells its exit. ``cancel`` is polled every 50 ms, as a watcher thread did; the
        ladder (INT, TERM, KILL) runs in :meth:`_stop`, output is drained again afterwards.
        """
        assert proc.stdout is not None and proc.stderr is not None
        sinks = {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr}
        poller = select.poll()
        for fd in sinks:
            poller.register(fd, select.POLLIN)
        pidfd = _pidfd_open(proc.pid)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        cancelled = False
        try:
            while sinks or proc.returncode is None:
                if cancel is not None and not cancelled and cancel.is_set():
                    cancelled = True
                    self._stop(proc, runtime_pid_file)
                    continue
                if not sinks and pidfd is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=_CANCEL_POLL)
                    continue
                for fd, _ in poller.poll(_CANCEL_POLL * 1000 if cancel is not None else None):
                    if fd == pidfd:
                        poller.unregister(pidfd)
                        proc.wait()
                        continue
                    chunk = os.read(fd, 1 << 16)
                    sink = sinks[fd]
                    if not chunk:
                        poller.unregister(fd)
                        del sinks[fd]
                    elif sink is not None:
                        sink(chunk)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return cancelled

    def _stop(self, proc: subprocess.Popen[bytes], runtime_pid_file: Path) -> None:
        waits = (self.grace, self.grace, 5.0)
        for sig, wait in zip(_SIGNALS, waits, strict=True):
            if proc.poll() is not None:
                return
            runtime = _runtime_pid(runtime_pid_file, proc.pid)
            if sig != signal.SIGKILL and runtime is not None:
                # The runtime forwards INT and TERM to the container's process.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(runtime, sig)
            elif sig == signal.SIGKILL or not runtime_pid_file.exists():
                # The session: unshare and the runtime (PID 1 of the namespace the container is
                # nested in). Before the runtime runs there is nothing to ask nicely.
                self._kill(proc, runtime)
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], runtime: int | None) -> None:
        ticks = process_start_ticks(runtime) if runtime is not None else None
        _killpg(proc.pid)
        proc.wait()
        # unshare is gone; wait for the namespace's init too, so that no process of the step
        # still holds the overlay when the caller takes the upper dir.
        if runtime is not None and ticks is not None:
            _wait_gone(runtime, ticks)

    def _delete(self, container_id: str) -> None:
        # The runtime removes its state when it ends normally; when it was killed the state
        # stays. Its processes are gone by now (see _wait_gone), and its pids are those of a
        # PID namespace that no longer exists, so `delete -f` from here could only hit a wrong
        # process: remove the directory instead.
        shutil.rmtree(self._runtime_root / container_id, ignore_errors=True)


def _own_start_ticks() -> int:
    return _start_ticks_of(os.getpid())  # by pid: a forked child is another owner


@functools.cache
def _start_ticks_of(pid: int) -> int:
    ticks = process_start_ticks(pid)
    return ticks if ticks is not None else 0


def _runtime_pid(path: Path, session: int) -> int | None:
    """The runtime's pid (the namespace's init) if it is still a child of ``session``."""
    try:
        pid = int(path.read_text().strip())
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 2 or fields[0] in (b"Z", b"X") or int(fields[1]) != session:
        return None
    return pid


def _wait_gone(pid: int, ticks: int, timeout: float = 10.0) -> None:
    """Wait until the namespace's init has died (a zombie is dead enough: the kernel kills and
    reaps every process of a PID namespace before its init becomes a zombie)."""
    deadline = time.monotonic() + timeout
    while process_start_ticks(pid) == ticks and time.monotonic() < deadline:
        time.sleep(0.005)


def _pidfd_open(pid: int) -> int | None:
    """A pidfd of ``pid`` (readable once it has exited), or None without pidfds (Linux < 5.3)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)






def _check_mapped(mapping: IdMapping, user: ResolvedUser, name: str) -> None:
    """A rootless step's user must exist in the namespace, else the runtime fails with a bare
    EINVAL: say which ID it needs and how to get a range."""
    from engine.userns.errors import IdMappingError

    if not mapping.maps_uid(user.uid):
        raise IdMappingError(f"USER {name or user.uid} runs as uid {user.uid}")
    for gid in (user.gid, *user.additional_gids):
        if not mapping.maps_gid(gid):
            raise IdMappingError(f"USER {name or user.uid} needs gid {gid}")
