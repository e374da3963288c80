"""Which snapshotter a RUN step uses: overlayfs where it mounts, else copies ("native").

overlayfs stacks the layers without copying them (:mod:`engine.snapshot.overlay`); it needs a
kernel that allows it where the step runs (rootless: Linux 5.11+, with ``userxattr``) and a
store on a filesystem it accepts as upper dir. Where it is refused, a step runs over a copy of
its layers instead (:mod:`engine.snapshot.native`): slower, more space while it runs, the same
layers afterwards.

The choice is made once per process and filesystem, when the first RUN step needs it: a child
``unshare --mount`` mounts an overlay of tiny directories inside the step's scratch dir (the
store's filesystem) with the options steps use, writes a file through it and is gone, with its
mount (a few milliseconds). ``NBBUILD_SNAPSHOTTER=overlay`` or ``=native`` forces one (``auto``
or unset: probe). A build that used the copy says so in ``BuildResult.worker``. The degraded
PRoot worker (:mod:`engine.userns.degraded`: no user namespace, so no mount) always copies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

from engine.snapshot.errors import SnapshotError
from engine.snapshot.overlay import OverlayMount

if TYPE_CHECKING:
    from engine.executor.process import Executor, ExitResult, OutputSink, ProcessSpec

__all__ = ["ENV", "Choice", "Kind", "choose", "chosen", "forced", "probe_overlay", "run_step"]

ENV = "NBBUILD_SNAPSHOTTER"
DEGRADED_REASON = "the degraded PRoot worker cannot mount overlayfs (no user namespace)"
Kind: TypeAlias = Literal["overlay", "native"]

# $1: the mount point, then mount(8)'s argv. The mount dies with the namespace.
_PROBE_SCRIPT = 'target=$1; shift; "$@" && : > "$target/probe" && umount "$target"'
_PROBE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Choice:
    """A snapshotter and why.

    Attributes:
        kind: ``overlay`` or ``native`` (copy-based).
        reason: ``overlayfs mounts here``, ``overlayfs refused here: …`` or
            ``NBBUILD_SNAPSHOTTER=…``.
    """

    kind: Kind
    reason: str

    def note(self) -> str:
        """What a build's worker description adds: nothing for overlayfs."""
        if self.kind == "overlay":
            return ""
        why = self.reason if self.reason.startswith(ENV) else "overlayfs refused here"
        return f", snapshotter: native (copy; {why})"


_lock = threading.Lock()
_probed: dict[int, Choice] = {}


def forced() -> Kind | None:
    """The snapshotter ``NBBUILD_SNAPSHOTTER`` forces, None for ``auto`` or unset.

    Raises:
        SnapshotError: another value.
    """
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value == "overlay":
        return "overlay"
    if value == "native":
        return "native"
    raise SnapshotError(f"{ENV}={value!r} is not a snapshotter: use overlay, native or auto")


def choose(scratch: Path) -> Choice:
    """The snapshotter for a step whose scratch dir (empty, on the store's filesystem) is
    ``scratch``; probed once per process and filesystem (see the module doc)."""
    if _degraded():
        # No mount namespace to mount anything in: the PRoot worker runs over copies.
        return Choice("native", DEGRADED_REASON)
    kind = forced()
    if kind is not None:
        return Choice(kind, f"{ENV}={kind}")
    scratch.mkdir(parents=True, exist_ok=True)
    device = os.stat(scratch).st_dev
    with _lock:
        found = _probed.get(device)
        if found is None:
            why = probe_overlay(scratch)
            found = (
                Choice("overlay", "overlayfs mounts here")
                if not why
                else Choice("native", f"overlayfs refused here: {why}")
            )
            _probed[device] = found
        return found


def chosen(where: Path) -> Choice | None:
    """The choice already made for ``where``'s filesystem (forced, or probed by a step of
    this process); None when no step has needed one. Never probes."""
    if _degraded():
        return Choice("native", DEGRADED_REASON)
    try:
        kind = forced()
    except SnapshotError:
        return None
    if kind is not None:
        return Choice(kind, f"{ENV}={kind}")
    try:
        device = os.stat(where).st_dev
    except OSError:
        return None
    with _lock:
        return _probed.get(device)


def _degraded() -> bool:
    if os.geteuid() == 0:
        return False
    from engine.userns.degraded import active

    return active()


def probe_overlay(scratch: Path) -> str:
    """Mount an overlay of empty directories made in ``scratch`` (in a private mount namespace
    of a child) and write through it: "" when that worked, else why not."""
    from engine.store.trees import remove_tree

    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare (util-linux) is missing"
    trial = scratch / ".overlay-probe"
    try:
        dirs = {name: trial / name for name in ("lower", "upper", "work", "merged")}
        for path in dirs.values():
            path.mkdir(parents=True)
        overlay = OverlayMount((dirs["lower"],), dirs["upper"], dirs["work"])
        argv = [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            _PROBE_SCRIPT,
            "nbbuild-probe",
            str(dirs["merged"]),
            *overlay.mount_argv(dirs["merged"]),
        ]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        if done.returncode == 0 and (dirs["upper"] / "probe").exists():
            return ""
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        return lines[0] if lines else f"mount exited with {done.returncode}"
    except (OSError, SnapshotError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        with contextlib.suppress(OSError):
            remove_tree(trial)


def run_step(
    executor: Executor,
    spec: ProcessSpec,
    mount: OverlayMount,
    *,
    stdout: OutputSink | None = None,
    stderr: OutputSink | None = None,
    cancel: threading.Event | None = None,
    keep_diff: bool = True,
) -> ExitResult:
    """Run ``spec`` over ``mount`` with the snapshotter chosen here: the overlay itself, or a
    copy of its layers whose changes end up in ``mount.upper`` all the same.

    ``mount.work`` must be the step's own scratch dir (the probe and the copy use it).
    ``keep_diff=False``: the upper dir is thrown away afterwards (the copy need not be diffed).
    """
    choice = choose(mount.work)
    if choice.kind == "overlay":
        return executor.run(spec, mount, stdout=stdout, stderr=stderr, cancel=cancel)
    from engine.snapshot.native import run_native

    return run_native(
        executor, spec, mount, stdout=stdout, stderr=stderr, cancel=cancel, keep_diff=keep_diff
    )
