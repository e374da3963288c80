"""Executor: run one RUN step's process in a real sandbox over a snapshot.

``OciExecutor().run(ProcessSpec(("sh", "-c", "echo hi")), OverlayMount(lowers, upper, work))``
runs the command with crun (or runc) on an overlay of ``lowers`` and leaves the step's diff in
``upper``. See :mod:`engine.executor.oci` for how, and :mod:`engine.snapshot` for the diff.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.executor.errors import CapabilityError, ExecutorError, SandboxError, UserLookupError
from engine.executor.process import (
    DEFAULT_HOSTNAME,
    DEFAULT_PATH,
    Executor,
    ExitResult,
    Mount,
    Network,
    ProcessSpec,
    RootFS,
)
from engine.executor.runtime import Runtime, detect_runtimes, find_runtime

if TYPE_CHECKING:
    from engine.executor.oci import OciExecutor


def __getattr__(name: str) -> Any:
    # The OCI executor (subprocess, signal handling, bundles) loads when first asked for: a
    # build that runs no container, or imports engine.executor.errors, does not pay for it.
    if name == "OciExecutor":
        from engine.executor.oci import OciExecutor

        return OciExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_HOSTNAME",
    "DEFAULT_PATH",
    "CapabilityError",
    "Executor",
    "ExecutorError",
    "ExitResult",
    "Mount",
    "Network",
    "OciExecutor",
    "ProcessSpec",
    "RootFS",
    "Runtime",
    "SandboxError",
    "UserLookupError",
    "detect_runtimes",
    "find_runtime",
]
