"""The degraded worker: RUN steps under PRoot where no user namespace can be made.

Some hosts refuse user namespaces to a normal user (a container's seccomp profile, as on most
hosted notebooks such as mybinder.org; the sysctls). Rootless builds cannot isolate a step
there, and nbbuild never runs a step on the host as it is. What it can do, when the ``proot``
program is installed (Debian's ``proot``), is run each step under PRoot (ptrace-based: every
path a step uses is translated into the step's own root filesystem). That gives each step its
own filesystem *view*; it is **not a security boundary** (a step can reach the host through
the kernel interfaces PRoot does not translate), and it cannot represent what a user namespace
gives a rootless build:

* owners: every file of the store belongs to the user, so owners are *squashed to root*, as
  Podman's ``ignore_chown_errors``: ``chown`` to any ID is skipped (in file operations,
  archives, image layers, and inside steps, where ``proot -0`` fakes it), device nodes are
  skipped (whiteouts, ``c 0 0``, are allowed since Linux 5.8), and every reader of owners for
  outputs and keys (layer tars, tar/oci/docker exports, result checksums) reports the user's
  own uid/gid as ``0:0``, so outputs look like a root-owned tree. Modes, set-id bits included,
  are kept. ``USER`` changes the identity a step sees (``proot -i uid:gid``), not what it may
  touch;
* network: steps share the host's network; ``--network=none`` cannot be honoured and such a
  step is refused, as is ``--security=insecure``;
* processes: no PID or UTS namespace (a step sees the host's processes and hostname).

The worker is used automatically, and only, when all of these hold: the process is a normal
user (:func:`engine.userns.namespace.mode` is ``outside``), creating a user namespace fails
(:func:`engine.userns.namespace.userns_error`), ``proot`` is on ``PATH``, and
``NBBUILD_DEGRADED`` is not ``0`` (which turns it off: builds are then refused, as without
``proot``). Real root and rootless builds never use it. Builds then run in-process (there is
no namespace for a helper to enter), on a store of their own flavour (``overlay_xattrs`` =
``degraded`` in its settings, see :mod:`engine.store.store`), which neither a root nor a
rootless build will use, nor this worker theirs. Everything says so: ``BuildResult.worker``,
a warning line in the progress of the first step that runs, and ``nbbuild doctor``.
"""

from __future__ import annotations

import os
import shutil
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.userns.errors import DegradedUnsupported

__all__ = [
    "ENV",
    "LIMITS",
    "WARNING",
    "WORKER",
    "active",
    "disabled",
    "hint",
    "proot_path",
    "refusal",
    "unavailable",
]

ENV = "NBBUILD_DEGRADED"

LIMITS = (
    "filesystem view only, not a security boundary; owners squashed to root; no network isolation"
)
WORKER = f"proot (degraded: {LIMITS})"
WARNING = (
    "nbbuild: warning: degraded worker: this host refuses user namespaces, so RUN steps run "
    f"under PRoot ({LIMITS}; no PID namespace, hostname not set); `nbbuild doctor` says more\n"
)

_lock = threading.Lock()
# (NBBUILD_DEGRADED, PATH) -> why not (None: active); userns_error() is probed once anyway
_cache: dict[tuple[str | None, str | None], str | None] = {}


def disabled() -> bool:
    """``NBBUILD_DEGRADED=0`` turns the degraded worker off."""
    return os.environ.get(ENV, "").strip() == "0"


def proot_path() -> str | None:
    """The ``proot`` program on ``PATH``, if any."""
    return shutil.which("proot")


def unavailable() -> str | None:
    """Why builds of this process do not use the degraded worker; None when they do."""
    if os.geteuid() == 0:
        return "not needed: this process is root (of the host or of a user namespace)"
    key = (os.environ.get(ENV), os.environ.get("PATH"))
    with _lock:
        if key in _cache:
            return _cache[key]
    why = _why_not()
    with _lock:
        _cache[key] = why
    return why


def _why_not() -> str | None:
    if disabled():
        return f"{ENV}=0 turns it off"
    if proot_path() is None:
        return "proot is not installed (apt-get install proot)"
    from engine.userns.namespace import userns_error

    if userns_error() is None:
        return "not needed: user namespaces are available (rootless builds are isolated)"
    return None


def active() -> bool:
    """Builds of this process run under PRoot (see the module doc). Cheap: one ``geteuid``
    as root; for a normal user the answer is kept per ``NBBUILD_DEGRADED`` and ``PATH``."""
    if os.geteuid() == 0:
        return False
    return unavailable() is None


def hint() -> str:
    """What to add to a refusal for lack of a user namespace: how the degraded worker could
    run the build, or why it does not."""
    if os.geteuid() == 0:
        return ""
    if disabled():
        return (
            f"; {ENV}=0 turned off the degraded PRoot worker (filesystem view only, not a "
            "security boundary)"
        )
    if proot_path() is None:
        return (
            "; installing proot (apt-get install proot) would let builds run degraded "
            "(filesystem view only, not a security boundary)"
        )
    if active():
        return "; the degraded PRoot worker here runs build steps only, not images"
    return ""


def refusal(step: str, *, network: str, insecure: bool) -> DegradedUnsupported | None:
    """The error for a RUN the degraded worker cannot run as asked (None: it can): PRoot
    shares the host's network, so ``--network=none`` cannot be honoured, and it has no
    privileges to give ``--security=insecure``."""
    from engine.userns.errors import DegradedUnsupported

    where = f"{step}: " if step else ""
    if network == "none":
        return DegradedUnsupported(
            f"{where}RUN --network=none cannot be isolated by the degraded PRoot worker: this "
            "host refuses user namespaces, so there is no network namespace and the step "
            "would reach the network; build where user namespaces are allowed (`nbbuild "
            "doctor` says why they are not here), or drop --network=none"
        )
    if insecure:
        return DegradedUnsupported(
            f"{where}RUN --security=insecure cannot run under the degraded PRoot worker: this "
            "host refuses user namespaces, so there are no privileges to grant"
        )
    return None
