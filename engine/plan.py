"""Plan a build without running it: the graph, every vertex's cache key and its status.

``plan()`` is what ``nbbuild plan`` prints and what a build looks up first: the keys here are
computed by the same code the solver uses (:mod:`engine.cache.keys`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.cache.keys import VertexKey, compute_keys
from engine.cache.preimages import record_preimages
from engine.context.source import ContextHasher
from engine.errors import UsageError
from engine.frontend.convert import BuildOptions, ImageResolver, convert
from engine.frontend.parser import parse
from engine.graph.ops import ContentSpec, LocalSource
from engine.graph.vertex import Definition, Vertex, with_default_network

__all__ = ["PLAN_SCHEMA", "Plan", "PlanRequest", "plan"]

PLAN_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """What to plan: the same inputs a build takes."""

    dockerfile: str  # the Dockerfile's text
    context: Path
    dockerfile_name: str = "Dockerfile"
    dockerfile_path: Path | None = None  # where the Dockerfile lives (for <name>.dockerignore)
    target: str = ""
    build_args: Mapping[str, str] = field(default_factory=dict)
    build_contexts: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    no_cache_filter: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    context_excludes: tuple[str, ...] = ()  # left out of the context before .dockerignore
    network: str | None = None  # --network: the default network of every RUN


@dataclass(frozen=True, slots=True)
class Plan:
    """A planned build: the definition and each vertex's key."""

    request: PlanRequest
    definition: Definition
    keys: Mapping[str, VertexKey]

    def vertex_key(self, vertex: Vertex) -> VertexKey:
        return self.keys[vertex.digest]

    def steps(self) -> list[Vertex]:
        """Vertices that are steps (have a step number), in order."""
        return [v for v in self.definition.vertices if v.meta.step is not None]

    def to_json(self) -> dict[str, Any]:
        """The documented JSON form (docs/plan-format.md)."""
        vertices = []
        for v in self.definition.vertices:
            key = self.keys[v.digest]
            vertices.append(
                {
                    "id": v.digest,
                    "name": v.meta.name,
                    "step": v.meta.step,
                    "stage": v.meta.stage,
                    "line": v.meta.line,
                    "instruction": v.meta.instruction,
                    "op": v.op.definition()["type"],
                    "op_digest": v.digest,
                    "inputs": list(v.inputs),
                    "ignore_cache": v.meta.ignore_cache,
                    **key.to_json(),
                }
            )
        return {
            "schema": PLAN_SCHEMA,
            "target": self.definition.target_stage,
            "target_vertex": self.definition.target,
            "vertices": vertices,
            "image_config": self.definition.config.to_json(),
        }


def plan(
    request: PlanRequest,
    *,
    store_root: Path | None = None,
    resolve_image: ImageResolver | None = None,
) -> Plan:
    """Plan ``request``: parse, convert and key every vertex.

    Args:
        request: the build inputs.
        store_root: the store whose stat cache spares re-hashing unchanged context files;
            None means no persistent stat cache.
        resolve_image: resolves ``FROM`` references; unresolved ones are provisional.

    Raises:
        DockerfileError: the Dockerfile is not valid.
        ContextError: the context (or a file a COPY names) cannot be read.
    """
    if not request.context.is_dir():
        raise UsageError(f"build context {str(request.context)!r} is not a directory")
    dockerfile = parse(request.dockerfile, filename=request.dockerfile_name)
    options = BuildOptions(
        target=request.target,
        build_args=dict(request.build_args),
        build_contexts=dict(request.build_contexts),
        no_cache=request.no_cache,
        no_cache_filter=request.no_cache_filter,
        labels=dict(request.labels),
        context_dir=str(request.context.resolve()),
    )
    definition = convert(dockerfile, options, resolve_image=resolve_image)
    if request.network:
        definition = with_default_network(definition, request.network)
    hasher = ContextHasher(
        store_root=store_root,
        dockerfile_path=request.dockerfile_path,
        extra_excludes=request.context_excludes,
    )
    try:
        by_digest = definition.by_digest()

        def resolve_content(vertex: Vertex, index: int, spec: ContentSpec) -> str | None:
            source = by_digest[vertex.inputs[index]]
            if isinstance(source.op, LocalSource):
                return hasher.checksum(source.op, spec)
            return None  # another step's result: known only once it exists

        keys = compute_keys(definition, resolve_content)
        if hasher.db is not None:
            record_preimages(hasher.db, keys.values())
    finally:
        hasher.close()
    return Plan(request=request, definition=definition, keys=keys)


def default_store_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--root`` > ``NBBUILD_ROOT`` > ``~/.cache/nbbuild``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("NBBUILD_ROOT")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "nbbuild"

    return None
