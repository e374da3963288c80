"""Running a step with an OCI runtime (crun, or runc) inside a throwaway mount namespace.

One run, start to end:

1. Read the rootfs *without mounting it* (:class:`~engine.snapshot.layers.LayerView`) to resolve
   ``USER`` and to note which mount points (``/etc/hosts``, ``/etc/resolv.conf``, extra mounts)
   the runtime will have to create as stubs.
2. Write a bundle (``config.json``, ``hosts``, ``resolv.conf``) under ``state_dir``.
3. Start ``unshare --mount --propagation private`` running a tiny ``sh`` script that mounts the
   overlay at ``<bundle>/rootfs`` and ``exec``\\ s ``crun run``: the overlay exists only in that
   namespace and disappears with it, however the run ends (see :mod:`engine.snapshot.overlay`).
   On a cgroup v1 "hybrid" host the script also detaches ``/sys/fs/cgroup/unified`` - in its
   private namespace only - because crun 1.8 refuses that layout; cgroups are not used at all
   (``--cgroup-manager=disabled``), so a killed run leaves no cgroup behind either.
4. The runtime runs in its own session (``start_new_session``): a terminal's Ctrl-C reaches the
   notebook or CLI, which decides to cancel; it never hits the container directly.
5. Cancel is a ladder, like ``docker stop`` with a short grace: ``kill SIGINT``, then ``SIGTERM``,
   then ``SIGKILL`` through the runtime, ``delete -f`` at the end. The process is PID 1 of its
   PID namespace, so a ``sleep`` ignores INT/TERM and only the KILL ends it.
6. Empty stubs are removed from the upper dir (:mod:`engine.executor.stubs`), the bundle dir is
   removed. The upper dir is left as the step's diff; the caller owns it and the work dir.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO

from engine.executor.bundle import write_bundle
from engine.executor.errors import CapabilityError, SandboxError
from engine.executor.process import ExitResult, OutputSink, ProcessSpec, RootFS
from engine.executor.runtime import Runtime, cgroup_layout, find_runtime
from engine.executor.stubs import find_stubs, remove_stubs
from engine.executor.user import resolve_user
from engine.snapshot.layers import LayerView
from engine.snapshot.overlay import OverlayMount

__all__ = ["DEFAULT_STATE_DIR", "OciExecutor"]

DEFAULT_STATE_DIR = Path("/run/nbbuild")

# $1: "1" to detach the v2 unified hierarchy, $2: overlay options or "", $3: mount target,
# then the runtime's argv. `exec` keeps one pid from unshare to the runtime: killing it ends the
# namespace, and its mounts with it.
_NAMESPACE_SCRIPT = """set -e
if [ -n "$1" ]; then umount -l /sys/fs/cgroup/unified 2>/dev/null || true; fi
if [ -n "$2" ]; then mount -t overlay overlay -o "$2" "$3"; fi
shift 3
exec "$@"
"""
_STDERR_TAIL = 8192
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
        state_dir: Path = DEFAULT_STATE_DIR,
        grace: float = 0.5,
        recursive_stubs: bool = False,
    ) -> None:
        if os.geteuid() != 0:
            raise CapabilityError(
                "the OCI executor needs root (rootless execution is not built yet)"
            )
        self.runtime = runtime if runtime is not None else find_runtime()
        if not self.runtime.is_oci:
            raise CapabilityError(f"{self.runtime.name} is not an OCI runtime")
        unshare = shutil.which("unshare")
        if unshare is None:
            raise CapabilityError(
                "unshare (util-linux) is needed to run steps in a private mount namespace"
            )
        self._unshare = unshare
        self.state_dir = state_dir
        self.grace = grace
        self.recursive_stubs = recursive_stubs
        self._runtime_root = state_dir / f"state-{self.runtime.name}"
        self._hide_unified = self.runtime.name == "crun" and cgroup_layout() == "hybrid"

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
        _validate(spec)
        if isinstance(rootfs, OverlayMount):
            view = LayerView(rootfs.lowers)
            stub_root = rootfs.upper
        else:
            view = LayerView([rootfs])
            stub_root = rootfs
        user = resolve_user(view, spec.user)
        stubs = find_stubs(
            view,
            ["/etc/hosts", "/etc/resolv.conf", *(m.destination for m in spec.mounts)],
            recursive=self.recursive_stubs,
        )

        container_id = f"nbbuild-{secrets.token_hex(8)}"
        bundle = self.state_dir / "bundles" / container_id
        bundle.mkdir(parents=True, mode=0o700)
        self._runtime_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            if isinstance(rootfs, OverlayMount):
                target = bundle / "rootfs"
                target.mkdir()
                rootfs.upper.mkdir(parents=True, exist_ok=True)
                rootfs.work.mkdir(parents=True, exist_ok=True)
                options = rootfs.options()
            else:
                target, options = rootfs, ""
            write_bundle(bundle, spec, user, target)
            pid_file = bundle / "pid"
            argv = [
                self._unshare,
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                _NAMESPACE_SCRIPT,
                "nbbuild-sandbox",
                "1" if self._hide_unified else "",
                options,
                str(target),
                *self._runtime_argv(
                    "run", "--bundle", str(bundle), "--pid-file", str(pid_file), container_id
                ),
            ]
            return self._supervise(argv, container_id, pid_file, stdout, stderr, cancel)
        finally:
            try:
                remove_stubs(stub_root, stubs)
            finally:
                shutil.rmtree(bundle, ignore_errors=True)

    def _supervise(
        self,
        argv: list[str],
        container_id: str,
        pid_file: Path,
        stdout: OutputSink | None,
        stderr: OutputSink | None,
        cancel: threading.Event | None,
    ) -> ExitResult:
        tail: deque[bytes] = deque()
        tail_size = [0]

        def keep_tail(chunk: bytes) -> None:
            tail.append(chunk)
            tail_size[0] += len(chunk)
            while tail_size[0] > _STDERR_TAIL and len(tail) > 1:
                tail_size[0] -= len(tail.popleft())
            if stderr is not None:
                stderr(chunk)

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
        readers = [
            threading.Thread(target=_pump, args=(proc.stdout, stdout), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, keep_tail), daemon=True),
        ]
        for t in readers:
            t.start()
        # The main thread blocks in wait() so a normal exit is noticed at once; a watcher
        # thread turns `cancel` into the signal ladder.
        exited = threading.Event()
        cancelled = threading.Event()

        def watch_cancel(event: threading.Event) -> None:
            while not exited.is_set():
                if event.wait(0.05):
                    if not exited.is_set():
                        cancelled.set()
                        self._stop(proc, container_id)
                    return

        watcher = None
        if cancel is not None:
            watcher = threading.Thread(target=watch_cancel, args=(cancel,), daemon=True)
            watcher.start()
        try:
            proc.wait()
        except BaseException:
            # KeyboardInterrupt or the like: never leave the container running
            self._stop(proc, container_id)
            raise
        finally:
            exited.set()
            if watcher is not None:
                watcher.join()
            self._delete(container_id)
            for t in readers:
                t.join(timeout=5)
        duration = time.monotonic() - start
        rc = proc.returncode
        exit_code = 128 - rc if rc < 0 else rc
        if not cancelled.is_set() and rc != 0 and not pid_file.exists():
            # the runtime never created the container: a setup failure, not the step's exit
            detail = b"".join(tail).decode("utf-8", "replace").strip().splitlines()
            raise SandboxError(
                f"{self.runtime.name} could not start the container (exit {exit_code})",
                detail="\n".join(detail[-5:]),
            )
        return ExitResult(exit_code=exit_code, cancelled=cancelled.is_set(), duration=duration)

    def _stop(self, proc: subprocess.Popen[bytes], container_id: str) -> None:
        waits = (self.grace, self.grace, 5.0)
        for sig, wait in zip(_SIGNALS, waits, strict=True):
            if proc.poll() is not None:
                return
            sent = subprocess.run(
                self._runtime_argv("kill", container_id, sig.name.removeprefix("SIG")),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            if sent.returncode != 0 and sig == signal.SIGKILL:
                # no container yet (still mounting) or the runtime is stuck: kill the session
                _killpg(proc.pid)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
        _killpg(proc.pid)
        proc.wait()

    def _delete(self, container_id: str) -> None:
        if not (self._runtime_root / container_id).exists():
            return
        subprocess.run(
            self._runtime_argv("delete", "-f", container_id),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _pump(pipe: IO[bytes], sink: OutputSink | None) -> None:
    fd = pipe.fileno()
    try:
        while chunk := os.read(fd, 1 << 16):
            if sink is not None:
                sink(chunk)
    finally:
        pipe.close()


def _validate(spec: ProcessSpec) -> None:
    if not spec.args:
        raise SandboxError("a process needs at least one argument")
    if not spec.cwd.startswith("/"):
        raise SandboxError(f"working directory must be absolute: {spec.cwd}")
    for m in spec.mounts:
        if not m.destination.startswith("/"):
            raise SandboxError(f"mount destination must be absolute: {m.destination}")
    if spec.network not in ("default", "none", "host"):
        raise SandboxError(f"unknown network mode: {spec.network}")
