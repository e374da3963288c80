"""nbbuild's embedded build engine.

It turns Dockerfiles into a build graph with BuildKit's cache keys, and (later) runs it. It
imports nothing from IPython, ipywidgets or graphviz: the notebook layer lives in ``nbbuild``.
"""

from __future__ import annotations

from engine.errors import (
    ContextError,
    DockerfileError,
    InternalError,
    NbbuildError,
    SourceError,
    StoreError,
    UsageError,
)

__all__ = [
    "ContextError",
    "DockerfileError",
    "InternalError",
    "NbbuildError",
    "SourceError",
    "StoreError",
    "UsageError",
]
