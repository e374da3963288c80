"""What to run and what came out: the executor's value objects and its protocol."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from engine.snapshot.overlay import OverlayMount

__all__ = [
    "DEFAULT_HOSTNAME",
    "DEFAULT_PATH",
    "Executor",
    "ExitResult",
    "Mount",
    "Network",
    "OutputSink",
    "ProcessSpec",
    "RootFS",
]

# BuildKit's defaults (executor/oci/hosts.go, util/system.DefaultPathEnvUnix)
DEFAULT_HOSTNAME = "buildkitsandbox"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Network = Literal["default", "none", "host"]
"""``default`` is the host's network namespace here: BuildKit's runc worker with no CNI config
(``--oci-worker-net=auto``) falls back to the host provider too. ``none`` gets a fresh network
namespace with only ``lo``."""

OutputSink = Callable[[bytes], None]
"""Receives raw output chunks as they arrive (not split into lines)."""

RootFS = Path | OverlayMount
"""A plain directory (written in place) or an overlay whose upper dir collects the diff."""


@dataclass(frozen=True)
class Mount:
    """An extra bind mount into the container (placeholder for RUN --mount).

    Attributes:
        destination: absolute in-container path.
        source: host path to bind.
        readonly: mount read-only (BuildKit's default for bind mounts).
    """

    destination: str
    source: Path
    readonly: bool = True


@dataclass(frozen=True)
class ProcessSpec:
    """One process to run in a sandbox (a RUN step's ``Meta`` in BuildKit terms).

    Attributes:
        args: argv; ``args[0]`` is looked up in the container's PATH.
        env: ``KEY=value`` strings; ``PATH`` defaults to :data:`DEFAULT_PATH` and ``HOME`` to
            the user's home from /etc/passwd (else ``/``) when absent.
        cwd: absolute in-container working directory; created by the runtime if missing.
        user: ``""`` (root), ``name``, ``uid``, ``name:group`` or ``uid:gid``, resolved with the
            rootfs's /etc/passwd and /etc/group.
        hostname: the UTS hostname.
        network: ``default``, ``none`` or ``host``.
        mounts: extra bind mounts.
        privileged: every capability, writable /sys, no masked paths (``--security=insecure``).
    """

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""
    hostname: str = DEFAULT_HOSTNAME
    network: Network = "default"
    mounts: tuple[Mount, ...] = ()
    privileged: bool = False  # RUN --security=insecure (needs the security.insecure entitlement)


@dataclass(frozen=True)
class ExitResult:
    """How a process ended.

    Attributes:
        exit_code: the process's exit status (128+N when killed by signal N, as a shell says).
        cancelled: the run was cancelled by the caller and the process killed.
        duration: wall-clock seconds from start to exit.
    """

    exit_code: int
    cancelled: bool
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.cancelled


class Executor(Protocol):
    """Runs one process in a sandbox over a root filesystem."""

    def run(
        self,
        spec: ProcessSpec,
        rootfs: RootFS,
        *,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
        cancel: threading.Event | None = None,
    ) -> ExitResult:
        """Run ``spec`` to completion (or until ``cancel`` is set) and return how it ended.

        Raises:
            SandboxError: the sandbox could not be started.
            UserLookupError: ``spec.user`` does not exist in the rootfs.
        """
        ...
