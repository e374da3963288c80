"""Cache keys: BuildKit's hit/miss decisions, computed from cache maps.

A vertex's key combines its op's cache preimage with one *candidate* per input:

* a **definition** candidate: the input vertex's key plus the selector of the paths the op
  reads from it — available as soon as the input's key is, without touching any data;
* a **content** candidate: the checksum of the selected paths of the input's result — for the
  build context it can be computed up front (that is the only way a context COPY ever hits),
  for another step's result only once that result exists (*pending* until then).

A result is stored under every combination of candidates it was built with, and a lookup hits
when any combination matches (BuildKit's link graph, flattened: each op has at most a handful of
inputs). The *primary* key is the one made of definition candidates wherever they exist; it is
what ``nbbuild plan`` prints and what a build looks up first.

Every key keeps its preimage (type + fields) so a later view can diff two keys field by field.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine.digest import sha256_of_json
from engine.graph.ops import (
    CacheMap,
    ContentSpec,
    ExecOp,
    FileOp,
    GitSource,
    HttpSource,
    ImageSource,
    LocalSource,
    MergeOp,
)
from engine.graph.vertex import Definition, Vertex

__all__ = [
    "Candidate",
    "ContentResolver",
    "KeyStatus",
    "VertexKey",
    "cache_map_of",
    "candidate_keys",
    "compute_keys",
    "key_from",
]

KeyStatus = Literal["known", "pending"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way an input can take part in a key."""

    kind: Literal["definition", "content"]
    value: str  # the input's key (definition) or the checksum of the selected paths (content)
    selector: str | None = None  # only for definition candidates

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "value": self.value}
        if self.selector is not None:
            out["selector"] = self.selector
        return out


@dataclass(frozen=True, slots=True)
class ContentCandidate:
    """The content candidate of one input, as far as it is known now."""

    input: int
    spec: ContentSpec
    status: KeyStatus
    checksum: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "status": self.status,
            "checksum": self.checksum,
            "selectors": self.spec.to_json(),
        }


@dataclass(frozen=True, slots=True)
class VertexKey:
    """A vertex's primary cache key, its status and preimage."""

    digest: str  # the vertex (op) digest
    cache_key: str | None  # None when it cannot be known before something runs
    status: KeyStatus
    provisional: bool  # depends on an image reference not resolved yet
    preimage: dict[str, Any]  # {"op": cache preimage, "deps": [candidate...]}
    content: tuple[ContentCandidate, ...] = ()
    propagate: bool = True  # False for --no-cache vertices: consumers cannot use this key

    def to_json(self) -> dict[str, Any]:
        return {
            "cache_key": self.cache_key,
            "key_status": self.status,
            "provisional": self.provisional,
            "preimage": self.preimage,
            "content_keys": [c.to_json() for c in self.content],
        }


# Resolves the content checksum of a vertex's input for a spec; returns None when that input's
# result does not exist yet (the candidate is then pending).
ContentResolver = Callable[[Vertex, int, ContentSpec], "str | None"]


def cache_map_of(vertex: Vertex) -> CacheMap:
    """The cache map of a vertex's op (sources need no input count)."""
    op = vertex.op
    if isinstance(op, ExecOp | FileOp | MergeOp):
        return op.cache_map(len(vertex.inputs))
    return op.cache_map()


def key_from(cache_map: CacheMap, candidates: Sequence[Candidate]) -> str:
    """The key of an op whose inputs take part as ``candidates`` (one per input)."""
    if not candidates:
        return sha256_of_json({"digest": cache_map.digest, "output": 0})
    return sha256_of_json(
        {"digest": cache_map.digest, "output": 0, "deps": [c.to_json() for c in candidates]}
    )


def candidate_keys(cache_map: CacheMap, per_input: Sequence[Sequence[Candidate]]) -> list[str]:
    """Every key a result of this op is stored under and looked up by (one per combination)."""
    if any(not options for options in per_input):
        return []
    return [key_from(cache_map, combo) for combo in itertools.product(*per_input)]


def _unresolved_source(vertex: Vertex) -> bool:
    op = vertex.op
    if isinstance(op, HttpSource):
        return op.checksum is None
    if isinstance(op, GitSource):
        return op.commit is None
    return False


def compute_keys(
    definition: Definition,
    resolve_content: ContentResolver,
    *,
    known: Mapping[str, VertexKey] | None = None,
) -> dict[str, VertexKey]:
    """Primary keys of every vertex of ``definition``, in its order.

    Args:
        definition: the build graph.
        resolve_content: gives content checksums that can be known now (the build context's
            files), None for the rest.
        known: keys already computed for some vertices (the solver passes keys it learned).

    Returns:
        vertex digest → :class:`VertexKey`.
    """
    keys: dict[str, VertexKey] = dict(known or {})
    by_digest = definition.by_digest()
    for vertex in definition.vertices:
        if vertex.digest in keys:
            continue
        cache_map = cache_map_of(vertex)
        chosen: list[Candidate | None] = []
        contents: list[ContentCandidate] = []
        provisional = isinstance(vertex.op, ImageSource) and vertex.op.provisional
        for index, (input_digest, dep) in enumerate(
            zip(vertex.inputs, cache_map.deps, strict=True)
        ):
            source = by_digest[input_digest]
            input_key = keys[input_digest]
            provisional = provisional or input_key.provisional
            checksum: str | None = None
            if dep.content is not None:
                checksum = resolve_content(vertex, index, dep.content)
                contents.append(
                    ContentCandidate(
                        input=index,
                        spec=dep.content,
                        status="known" if checksum is not None else "pending",
                        checksum=checksum,
                    )
                )
            if isinstance(source.op, LocalSource):
                # A local source never matches by itself: only its content can.
                chosen.append(Candidate("content", checksum) if checksum else None)
            elif input_key.cache_key is not None and input_key.propagate:
                chosen.append(Candidate("definition", input_key.cache_key, dep.selector))
            elif checksum is not None:
                chosen.append(Candidate("content", checksum))
            else:
                chosen.append(None)
        complete = [c for c in chosen if c is not None]
        pending = len(complete) != len(chosen) or _unresolved_source(vertex)
        preimage: dict[str, Any] = {
            "op": cache_map.preimage,
            "deps": [c.to_json() if c else None for c in chosen],
        }
        if isinstance(vertex.op, LocalSource):
            # Session-bound: never a key of its own (BuildKit's random: prefix).
            keys[vertex.digest] = VertexKey(
                vertex.digest, None, "pending", False, preimage, propagate=False
            )
            continue
        keys[vertex.digest] = VertexKey(
            digest=vertex.digest,
            cache_key=None if pending else key_from(cache_map, complete),
            status="pending" if pending else "known",
            provisional=provisional,
            preimage=preimage,
            content=tuple(contents),
            propagate=not vertex.meta.ignore_cache,
        )
    return keys
