"""Executor: run one RUN step's process in a real sandbox over a snapshot.

``OciExecutor().run(ProcessSpec(("sh", "-c", "echo hi")), OverlayMount(lowers, upper, work))``
runs the command with crun (or runc) on an overlay of ``lowers`` and leaves the step's diff in
``upper``. See :mod:`engine.executor.oci` for how, and :mod:`engine.snapshot` for the diff.
"""

from __future__ import annotations

from engine.executor.errors import CapabilityError, ExecutorError, SandboxError, UserLookupError
from engine.executor.oci import OciExecutor
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
