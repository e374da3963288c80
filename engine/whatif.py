"""What if I changed this? Predict which steps a build would run, without building.

:func:`whatif` plans the build exactly as :func:`engine.build.build` would (same conversion,
same keys), with build-arg overrides and with some context paths treated as changed — their new
content is unknown, so every key whose content candidate covers them is a miss. It then walks
the graph from the target down as the solver does and looks each key up in the store without
taking a lease:

* ``cached`` — the key is in the store (or the step is not needed: a later step is cached);
* ``will run`` — the key is absent because of the step's own op or files, or because the input
  it builds on (a RUN's root, a COPY's destination) will run;
* ``depends on output`` — the key is absent only because an input will run that this step reads
  by *content* (``COPY --from``, a read-only mount): if that input's output does not change, the
  step stays cached (early cutoff).

Reasons come from :mod:`engine.explain`: each predicted step's preimage is diffed against the
same step of the last build of the same name.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engine.cache.keys import VertexKey, cache_map_of, compute_keys
from engine.context.checksum import contains_wildcards, go_path_pattern
from engine.context.dockerignore import IgnoreRules, load_ignore_rules
from engine.context.source import ContextHasher
from engine.digest import sha256_of_json
from engine.errors import UsageError
from engine.explain import Explanation, compact_manifest, explain
from engine.graph.ops import ContentSpec, GitSource, HttpSource, ImageSource, LocalSource
from engine.graph.vertex import Definition, Vertex
from engine.store.history import BuildRecord, StepRecord
from engine.store.store import Store

if TYPE_CHECKING:
    from engine.build import BuildRequest
    from engine.plan import PlanRequest

__all__ = ["Prediction", "Verdict", "whatif"]

Verdict = Literal["will run", "cached", "depends on output"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a build would do with one step."""

    step_name: str
    verdict: Verdict
    reason: str
    digest: str = ""  # the vertex digest (the same one the build reports)
    key: str | None = None  # the predicted primary key (None when it depends on a result)


# Internal outcomes of the simulated solve.
_CACHED, _SKIPPED, _RUN, _MAYBE, _SOURCE = "cached", "skipped", "run", "maybe", "source"


def whatif(
    request: BuildRequest | PlanRequest,
    *,
    root: Path,
    changed_paths: Sequence[str] = (),
    build_args: Mapping[str, str] | None = None,
    name: str | None = None,
) -> list[Prediction]:
    """Predict, without building, what building ``request`` into ``root`` would do.

    Args:
        request: a :class:`~engine.build.BuildRequest` or :class:`~engine.plan.PlanRequest`.
        root: the store.
        changed_paths: context paths (relative to the context, or absolute inside it) to treat
            as changed, with unknown new content; a path that does not exist counts as about to
            be created; ``"."`` is everything.
        build_args: overrides merged over the request's build args.
        name: the build name whose last build explains the reasons (default: as ``build``).

    Returns:
        one prediction per step (vertices with a step number, and remote sources), in the
        definition's order.

    Raises:
        DockerfileError, ContextError, UsageError: as planning the build would.
    """
    if not request.context.is_dir():
        raise UsageError(f"build context {str(request.context)!r} is not a directory")
    changed = _normalise(changed_paths, request.context)
    args = {**request.build_args, **(build_args or {})}
    store = Store.open(root)
    try:
        definition, dockerfile = _definition(request, args, store)
        hasher = ContextHasher(
            store_root=root,
            dockerfile_path=request.dockerfile_path,
            extra_excludes=request.context_excludes,
        )
        try:
            keys, tainted, manifests = _keys(
                definition,
                hasher,
                changed,
                request.context,
                request.dockerfile_path,
                request.context_excludes,
            )
        finally:
            hasher.close()
        previous = store.last_build(name or _build_name(request))
        sim = _Simulation(definition, keys, store)
        sim.solve()
    finally:
        store.close()
    return _predictions(definition, keys, sim, tainted, manifests, previous, dockerfile)


# ------------------------------------------------------------------------------ planning


def _build_name(request: BuildRequest | PlanRequest) -> str:
    explicit = getattr(request, "name", "")
    if explicit:
        return str(explicit)
    tags = getattr(request, "tags", ())
    if tags:
        return str(tags[0])
    base = Path(os.path.abspath(request.context)).name or "context"
    return f"{base}:{request.target}" if request.target else base


def _definition(
    request: BuildRequest | PlanRequest, build_args: Mapping[str, str], store: Store
) -> tuple[Definition, Any]:
    """The build's definition, converted as :func:`engine.build.build` converts it."""
    from engine.build import _with_network
    from engine.frontend.convert import BuildOptions, convert
    from engine.frontend.namedcontext import prepare_contexts
    from engine.frontend.parser import parse
    from engine.images.layout import context_resolver
    from engine.images.store import ImageStore, resolver

    images = ImageStore(store)
    dockerfile = parse(request.dockerfile, filename=request.dockerfile_name)
    options = BuildOptions(
        target=request.target,
        build_args=dict(build_args),
        build_contexts=prepare_contexts(request.build_contexts),
        no_cache=request.no_cache,
        no_cache_filter=request.no_cache_filter,
        labels=dict(request.labels),
        context_dir=str(request.context.resolve()),
    )
    definition = convert(
        dockerfile,
        options,
        resolve_image=resolver(images),
        resolve_context=context_resolver(images),
    )
    network = getattr(request, "network", None)
    if network:
        definition = _with_network(definition, network)
    return definition, dockerfile


def _normalise(paths: Sequence[str], context: Path) -> tuple[str, ...]:
    """Context-relative paths ("" is the whole context); absolute ones must be inside it."""
    root = Path(os.path.abspath(context))
    out = []
    for p in paths:
        if os.path.isabs(p):
            try:
                p = str(Path(os.path.abspath(p)).relative_to(root))
            except ValueError:
                raise UsageError(f"{p!r} is not inside the build context {str(root)!r}") from None
        out.append(posixpath.normpath("/" + p).lstrip("/"))
    return tuple(dict.fromkeys(out))


def _covered(
    changed: Sequence[str],
    spec: ContentSpec,
    manifest: Mapping[str, str],
    context: Path,
    ignore: IgnoreRules,
) -> list[str]:
    """The changed paths a content candidate covers.

    An existing path is covered when the selection hashed it (or something below it): the
    manifest already applied .dockerignore, wildcards and --exclude. A path that does not
    exist yet is covered when .dockerignore keeps it and a selector names it or a directory
    above it, or its wildcard matches it or a directory above it.
    """
    hits: list[str] = []
    for p in changed:
        if p == "":
            hits.append(".")
            continue
        if p in manifest or p + "/" in manifest or any(k.startswith(p + "/") for k in manifest):
            hits.append(p)
            continue
        if os.path.lexists(context / p) or ignore.excluded(p):
            continue  # exists, and the selection left it out; or will not be in the context
        for sel in spec.selectors:
            base = posixpath.normpath("/" + sel.path).lstrip("/")
            if sel.wildcard and contains_wildcards(base):
                glob = go_path_pattern("/" + base)
                parts = p.split("/")
                prefixes = ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
                if any(glob.match(x) for x in prefixes):
                    hits.append(p)
                    break
            elif base in ("", ".") or p == base or p.startswith(base + "/"):
                hits.append(p)
                break
    return hits


def _keys(
    definition: Definition,
    hasher: ContextHasher,
    changed: Sequence[str],
    context: Path,
    dockerfile_path: Path | None,
    extra_excludes: Sequence[str],
) -> tuple[dict[str, VertexKey], dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Keys as the build computes them, with covered changed paths making content unknown.

    Returns:
        (keys, tainted: vertex digest → changed paths its content covers, manifests per step).
    """
    by_digest = definition.by_digest()
    context_dir = context.resolve()
    tainted: dict[str, list[str]] = {}
    manifests: dict[str, dict[str, Any]] = {}
    ignore: IgnoreRules | None = None

    def resolve_content(vertex: Vertex, index: int, spec: ContentSpec) -> str | None:
        source = by_digest[vertex.inputs[index]]
        if not isinstance(source.op, LocalSource):
            return None
        checksum = hasher.checksum(source.op, spec)
        manifest = hasher.manifest(source.op, spec)
        manifests.setdefault(vertex.digest, {})[str(index)] = compact_manifest(manifest)
        if changed and source.op.name == "context" and Path(source.op.path) == context_dir:
            nonlocal ignore
            if ignore is None:
                ignore = load_ignore_rules(context_dir, dockerfile_path, extra_excludes)
            hits = _covered(changed, spec, manifest, context_dir, ignore)
            if hits:
                tainted.setdefault(vertex.digest, []).extend(hits)
                # New content, unknown: a checksum nothing was ever stored under.
                return sha256_of_json({"whatif": checksum, "changed": hits})
        return checksum

    return compute_keys(definition, resolve_content), tainted, manifests


# ------------------------------------------------------------------------------ the solve


class _Simulation:
    """The solver's walk (engine/solver/solver.py), with lookups only."""

    def __init__(self, definition: Definition, keys: Mapping[str, VertexKey], store: Store):
        self.definition = definition
        self.by_digest = definition.by_digest()
        self.keys = keys
        self.store = store
        self.outcome: dict[str, str] = {}  # what a load of the vertex does
        self.settled: dict[str, str] = {}  # vertices not loaded: cached or skipped
        self.blame: dict[str, list[int]] = {}  # inputs that make a step run or depend
        self._present: dict[str, bool] = {}

    def present(self, key: str | None) -> bool:
        if key is None:
            return False
        found = self._present.get(key)
        if found is None:
            found = _present(self.store, key)
            self._present[key] = found
        return found

    def solve(self) -> None:
        if self.definition.target is not None:
            self.load(self.definition.target)
        for v in self.definition:
            if v.digest not in self.outcome and v.digest not in self.settled:
                self.settled[v.digest] = self._settle(v)

    def final(self, digest: str) -> str:
        return self.outcome.get(digest) or self.settled.get(digest) or _SKIPPED

    def _settle(self, vertex: Vertex) -> str:
        if isinstance(vertex.op, ImageSource):
            return _CACHED if not vertex.op.provisional else _SKIPPED
        key = self.keys[vertex.digest].cache_key
        if (
            key is not None
            and not vertex.meta.ignore_cache
            and vertex.meta.step is not None
            and self.present(key)
        ):
            return _CACHED
        return _SKIPPED

    def _settle_ancestors(self, vertex: Vertex) -> None:
        stack = list(vertex.inputs)
        seen: set[str] = set()
        while stack:
            digest = stack.pop()
            if digest in seen:
                continue
            seen.add(digest)
            stack.extend(self.by_digest[digest].inputs)
            if digest not in self.outcome and digest not in self.settled:
                self.settled[digest] = self._settle(self.by_digest[digest])

    def load(self, digest: str) -> str:
        found = self.outcome.get(digest)
        if found is not None:
            return found
        vertex = self.by_digest[digest]
        result = self._load(vertex)
        self.outcome[digest] = result
        self.settled.pop(digest, None)
        return result

    def _load(self, vertex: Vertex) -> str:
        op = vertex.op
        if isinstance(op, LocalSource):
            return _SOURCE
        if isinstance(op, ImageSource):
            return _RUN if op.provisional else _CACHED
        if isinstance(op, HttpSource | GitSource):
            return _RUN  # fetched whenever it is loaded
        key = self.keys[vertex.digest].cache_key
        if key is not None and not vertex.meta.ignore_cache and self.present(key):
            self._settle_ancestors(vertex)
            return _CACHED
        outcomes = [self.load(d) for d in vertex.inputs]
        if vertex.meta.ignore_cache:
            return _RUN
        deps = cache_map_of(vertex).deps
        hard: list[int] = []  # will run, and only its key can match
        soft: list[int] = []  # will run or may, but may match by content
        for i, (outcome, dep) in enumerate(zip(outcomes, deps, strict=True)):
            if outcome == _RUN and dep.content is None:
                hard.append(i)
            elif outcome in (_RUN, _MAYBE):
                soft.append(i)
        if hard:
            self.blame[vertex.digest] = hard
            return _RUN
        if soft:
            self.blame[vertex.digest] = soft
            return _MAYBE  # unless its own op or files changed (decided with the history)
        return _RUN  # every input is as before: its own key is missing


def _present(store: Store, key: str) -> bool:
    """Whether a usable result is stored under ``key`` (no lease, nothing bumped)."""
    with store.db.reading() as conn:
        rows = conn.execute("SELECT result_id FROM cache_keys WHERE key = ?", (key,)).fetchall()
    for (result_id,) in rows:
        result = store.result(result_id)
        if result is not None and all(
            os.path.isdir(store.snapshots_dir / s) for s in result.layers
        ):
            return True
    return False


# ------------------------------------------------------------------------------ predictions


def _predictions(
    definition: Definition,
    keys: Mapping[str, VertexKey],
    sim: _Simulation,
    tainted: Mapping[str, list[str]],
    manifests: Mapping[str, dict[str, Any]],
    previous: BuildRecord | None,
    dockerfile: Any,
) -> list[Prediction]:
    from engine.explain import arg_names

    by_digest = definition.by_digest()
    records = [
        StepRecord(
            digest=v.digest,
            name=v.meta.name,
            step=v.meta.step,
            stage=v.meta.stage,
            line=v.meta.line,
            instruction=v.meta.instruction,
            key=keys[v.digest].cache_key,
            status="executed" if sim.final(v.digest) in (_RUN, _MAYBE) else "cached",
            preimage=dict(keys[v.digest].preimage),
            manifests=manifests.get(v.digest, {}),
        )
        for v in definition.vertices
    ]
    reasons = explain(
        records,
        previous,
        arg_names=arg_names(dockerfile),
        ignored={v.digest for v in definition.vertices if v.meta.ignore_cache},
        inputs={v.digest: v.inputs for v in definition.vertices},
    )
    out: list[Prediction] = []
    for v in definition.vertices:
        if v.meta.step is None and not isinstance(v.op, HttpSource | GitSource):
            continue
        outcome = sim.final(v.digest)
        why = reasons.get(v.digest, Explanation("", (), ""))
        own = _own_reason(v, tainted, why)
        blamed = [by_digest[v.inputs[i]] for i in sim.blame.get(v.digest, [])]
        verdict: Verdict
        if outcome == _CACHED:
            verdict, reason = "cached", "in the cache"
        elif outcome == _SKIPPED:
            verdict, reason = "cached", "not needed: a later step is cached"
        elif outcome == _MAYBE and own is None:
            verdict = "depends on output"
            reason = (
                _input_text(blamed, sim)
                + ": may stay cached if that output does not change (early cutoff)"
            )
        elif own is not None:
            verdict, reason = "will run", own
        elif blamed:
            verdict, reason = "will run", _input_text(blamed, sim)
        else:
            verdict, reason = "will run", _base_reason(v, why)
        out.append(Prediction(v.meta.name, verdict, reason, v.digest, keys[v.digest].cache_key))
    return out


def _own_reason(vertex: Vertex, tainted: Mapping[str, list[str]], why: Explanation) -> str | None:
    """Why a step will miss whatever its inputs produce: its files or its op changed."""
    if vertex.meta.ignore_cache:
        return "--no-cache"
    hits = tainted.get(vertex.digest)
    if hits:
        shown = ", ".join(f"`{p}`" for p in hits[:3])
        more = f" and {len(hits) - 3} more" if len(hits) > 3 else ""
        return f"{shown}{more} changed"
    if why.cause == "changed":
        return why.reason
    return None


def _input_text(blamed: Sequence[Vertex], sim: _Simulation) -> str:
    def label(v: Vertex) -> str:
        name = v.meta.name
        return name[: name.index("]") + 1] if name.startswith("[") and "]" in name else name

    parts = []
    for v in blamed:
        if isinstance(v.op, ImageSource):
            parts.append(f"base image {v.op.ref} is not in the local image store")
        elif sim.final(v.digest) == _MAYBE:
            parts.append(f"input from step {label(v)} depends on output")
        else:
            parts.append(f"input from step {label(v)} will run")
    return "; ".join(parts)


def _base_reason(vertex: Vertex, why: Explanation) -> str:
    if isinstance(vertex.op, ImageSource):
        return f"{vertex.op.ref} is not in the local image store: the build cannot start"
    if isinstance(vertex.op, HttpSource | GitSource):
        return "remote source: fetched whenever it is needed"
    if why.cause in ("first build", "new step"):
        return f"not in cache ({why.cause})"
    if why.reason:
        return why.reason
    return "not in cache"
