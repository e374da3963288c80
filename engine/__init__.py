"""nbbuild's embedded build engine.

It turns Dockerfiles into a build graph with BuildKit's cache keys, and (later) runs it. It
imports nothing from IPython, ipywidgets or graphviz: the notebook layer lives in ``nbbuild``.
"""

from __future__ import annotations

from engine.errors import (
    BuildCanceled,
    BuildError,
    ContextError,
    DockerfileError,
    EntitlementError,
    InternalError,
    NbbuildError,
    SourceError,
    StepFailed,
    StoreError,
    UsageError,
)

__all__ = [
    "BuildCanceled",
    "BuildError",
    "ContextError",
    "DockerfileError",
    "EntitlementError",
    "InternalError",
    "NbbuildError",
    "SourceError",
    "StepFailed",
    "StoreError",
    "UsageError",
]
