"""Vertices and the build definition: the graph the frontend gives the solver."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.digest import sha256_of_json
from engine.graph.image import ImageConfig
from engine.graph.ops import Op

__all__ = ["Definition", "Vertex", "VertexMeta", "with_default_network"]


@dataclass(frozen=True, slots=True)
class VertexMeta:
    """What a vertex means to a person: where it came from and how progress names it."""

    name: str  # BuildKit's progress name, e.g. "[builder 2/4] WORKDIR /app"
    stage: str  # stage name as shown ("builder", "stage-1", or "" for a single-stage build)
    step: int | None  # k in "[stage k/n]", None for vertices that are not steps (sources)
    total: int | None  # n in "[stage k/n]"
    line: int | None  # 1-based Dockerfile line of the instruction
    instruction: str  # the instruction as written (first line)
    ignore_cache: bool = False  # --no-cache / --no-cache-filter applies


@dataclass(frozen=True, slots=True)
class Vertex:
    """One node of the build graph: an op over its inputs' outputs."""

    op: Op
    inputs: tuple[str, ...]  # digests of input vertices, in the op's input order
    meta: VertexMeta
    digest: str = field(default="")

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(
                self, "digest", op_digest(self.op, self.inputs, self.meta.ignore_cache)
            )


def op_digest(op: Op, inputs: tuple[str, ...], ignore_cache: bool = False) -> str:
    """The op digest: the op's definition and its inputs' digests (BuildKit's vertex digest).

    An ignore-cache vertex gets its own digest so it is never merged with a normal one
    (BuildKit's ``-ignorecache`` suffix in the job's vertex map).
    """
    body: dict[str, Any] = {"op": op.definition(), "inputs": list(inputs)}
    if ignore_cache:
        body["ignore_cache"] = True
    return sha256_of_json(body)


@dataclass(frozen=True, slots=True)
class Definition:
    """The build graph of one target: vertices in dependency order, and the image config."""

    vertices: tuple[Vertex, ...]  # topological order: inputs before consumers
    target: str | None  # digest of the target's final vertex; None for an empty scratch stage
    config: ImageConfig
    target_stage: str
    # SOURCE_DATE_EPOCH as the build resolved it: a --build-arg, else the Dockerfile's global
    # ARG default (BuildKit reads both); as written, validated by the build.
    source_date_epoch: str | None = None

    def __iter__(self) -> Iterator[Vertex]:
        return iter(self.vertices)

    def by_digest(self) -> dict[str, Vertex]:
        return {v.digest: v for v in self.vertices}


def with_default_network(definition: Definition, network: str) -> Definition:
    """The definition with ``--network`` as the default of every RUN (those that name their
    own ``--network`` keep it). The network is part of a RUN's key, so plan and build must
    apply it alike.

    Raises:
        UsageError: ``network`` is not default, none or host.
    """
    from dataclasses import replace

    from engine.errors import UsageError
    from engine.graph.ops import ExecOp

    if network not in ("default", "none", "host"):
        raise UsageError(f"invalid --network {network!r}: use default, none or host")
    if network == "default":
        return definition
    digests: dict[str, str] = {}
    vertices: list[Vertex] = []
    for v in definition.vertices:
        op = v.op
        if isinstance(op, ExecOp) and op.network == "default":
            op = replace(op, network=network)  # type: ignore[arg-type]
        inputs = tuple(digests.get(d, d) for d in v.inputs)
        nv = Vertex(op=op, inputs=inputs, meta=v.meta)
        digests[v.digest] = nv.digest
        vertices.append(nv)
    target = digests.get(definition.target, definition.target) if definition.target else None
    return replace(definition, vertices=tuple(vertices), target=target)
