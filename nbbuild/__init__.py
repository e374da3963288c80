"""nbbuild: Dockerfile builds with BuildKit's caching model, where data scientists work.

The notebook layer (``%load_ext nbbuild``) arrives with the notebook extension; the engine lives
in the ``engine`` package and the CLI in :mod:`nbbuild.cli`.
"""

from __future__ import annotations

from engine.errors import DockerfileError, NbbuildError

__all__ = ["DockerfileError", "NbbuildError"]
