"""Executor: run one RUN step's process in a real sandbox over a snapshot.

``OciExecutor().run(ProcessSpec(("sh", "-c", "echo hi")), OverlayMount(lowers, upper, work))``
runs the command with crun (or runc) on an overlay of ``lowers`` and leaves the step's diff in
``upper``. See :mod:`engine.executor.oci` for how, and :mod:`engine.snapshot` for the diff.

The names below load with their module when first asked for: importing
:mod:`engine.executor.errors` (every rootless error derives from it) or building nothing that
runs a container does not load the process model, the snapshot code or the OCI executor.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.executor.errors import (
        CapabilityError,
        ExecutorError,
        SandboxError,
        UserLookupError,
    )
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

_WHERE = {
    "CapabilityError": "errors",
    "ExecutorError": "errors",
    "SandboxError": "errors",
    "UserLookupError": "errors",
    "OciExecutor": "oci",
    "DEFAULT_HOSTNAME": "process",
    "DEFAULT_PATH": "process",
    "Executor": "process",
    "ExitResult": "process",
    "Mount": "process",
    "Network": "process",
    "ProcessSpec": "process",
    "RootFS": "process",
    "Runtime": "runtime",
    "detect_runtimes": "runtime",
    "find_runtime": "runtime",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


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
