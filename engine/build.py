"""The engine's build API: a request in, a result with every vertex's story out.

``build()`` is what the CLI (``nbbuild build``) and the notebook call. It plans (the same keys
``nbbuild plan`` prints), solves against the persistent store, records the build in the history,
tags and exports the result, and reports progress events all along.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeGuard

from engine.cache.keys import compute_keys
from engine.cache.preimages import record_preimages
from engine.context.source import ContextHasher
from engine.errors import BuildCanceled, NbbuildError, UsageError
from engine.events import (
    BuildFinished,
    BuildStarted,
    Event,
    NullReporter,
    Reporter,
    VertexEvent,
    VertexLog,
)
from engine.frontend.convert import BuildOptions
from engine.graph.ops import ContentSpec, LocalSource
from engine.graph.vertex import Definition, Vertex
from engine.solver.runner import OpRunner
from engine.solver.solver import Solver, VertexState
from engine.store.store import BuildRecord, StepRecord, Store

__all__ = ["BuildRequest", "BuildResult", "OutputSpec", "StepResult", "build"]


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One ``--output``: ``type=local|tar|oci|docker`` with its attributes."""

    type: str
    dest: str
    attrs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> OutputSpec:
        """Parse buildx's ``type=local,dest=out`` (a bare path means ``type=local``).

        Raises:
            UsageError: unknown type or missing ``dest``.
        """
        if "=" not in text:
            return cls("local", text)
        fields: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise UsageError(f"invalid output {text!r}: {part!r} is not key=value")
            fields[key.strip()] = value
        kind = fields.pop("type", "local")
        if kind not in ("local", "tar", "oci", "docker", "image"):
            raise UsageError(f"unsupported output type {kind!r} (local, tar, oci, docker, image)")
        dest = fields.pop("dest", "")
        if not dest and kind != "image":
            raise UsageError(f"output type={kind} needs dest=")
        return cls(kind, dest, tuple(sorted(fields.items())))


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """Everything a build takes (buildx's flags)."""

    dockerfile: str
    context: Path
    dockerfile_name: str = "Dockerfile"
    dockerfile_path: Path | None = None
    target: str = ""
    build_args: Mapping[str, str] = field(default_factory=dict)
    build_contexts: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    no_cache_filter: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    allow: frozenset[str] = frozenset()
    network: str | None = None  # default network for RUN: default|none|host
    name: str = ""  # build name for history; default: the tag, else context dir + target
    context_excludes: tuple[str, ...] = ()  # left out of the context before .dockerignore


@dataclass(frozen=True, slots=True)
class StepResult:
    """One vertex of a finished build."""

    digest: str
    name: str
    step: int | None
    stage: str
    line: int | None
    instruction: str
    key: str | None
    keys: tuple[str, ...]
    preimage: Mapping[str, Any]
    status: str
    started_ns: int
    duration_ns: int
    saved_ns: int
    logs: bytes
    error: str = ""


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A finished build."""

    name: str
    target: str
    steps: tuple[StepResult, ...]
    definition: Definition
    config: Mapping[str, Any]  # the OCI image config of the target
    layers: tuple[str, ...]  # the target's layer chain (snapshot ids)
    image_id: str | None = None
    tags: tuple[str, ...] = ()
    # the image manifest's descriptor (mediaType, digest, size) when an image was made (a tag,
    # type=image/oci/docker): buildx's ``containerimage.descriptor``
    descriptor: Mapping[str, Any] | None = None
    # why each step that did not hit ran (step digest → one line, engine.explain), against the
    # previous build of the same name
    reasons: Mapping[str, str] = field(default_factory=dict)
    # what runs RUN steps here, as BuildKit names its worker: "oci: crun" as root,
    # "oci: runc, rootless (0→1001, 1-65536→100000-165535)" in a user namespace; RUN steps
    # that ran over copies add ", snapshotter: native (copy; overlayfs refused here)"; where no
    # user namespace can be made, "proot (degraded: filesystem view only, not a security
    # boundary; …)" (engine.userns.degraded)
    worker: str = ""

    def step(self, name_prefix: str) -> StepResult:
        """The step whose name starts with ``name_prefix`` (``"[builder 4/6]"``)."""
        for s in self.steps:
            if s.name.startswith(name_prefix):
                return s
        raise KeyError(name_prefix)


def default_build_name(request: BuildRequest) -> str:
    """The tag if given, else the context directory's name and the target."""
    if request.name:
        return request.name
    if request.tags:
        return request.tags[0]
    base = Path(os.path.abspath(request.context)).name or "context"
    return f"{base}:{request.target}" if request.target else base


def build(
    request: BuildRequest,
    *,
    root: Path,
    reporter: Reporter | None = None,
    cancel: threading.Event | None = None,
) -> BuildResult:
    """Build ``request`` with the embedded engine into the store at ``root``.

    Raises:
        DockerfileError: the Dockerfile is not valid.
        ContextError: the context cannot be read.
        StepFailed: a step failed (names the step, line, exit code and last log lines).
        BuildCanceled: ``cancel`` was set; the store is left consistent.
        NbbuildError: any other failure.
    """
    from engine.userns.namespace import mode

    outside = mode() == "outside"
    degraded = False
    if outside:
        from engine.userns.degraded import active

        # Where no user namespace can be made, the degraded PRoot worker builds here, in
        # process (engine.userns.degraded), when proot is installed and not turned off.
        degraded = active()
    if outside and not degraded:
        # Not root: the build runs as root of a user namespace, in a helper process (snapshot
        # files then belong to the user's subordinate IDs, which only the namespace may touch).
        from engine.userns.forward import forward

        result: BuildResult = forward(
            "engine.build:build", request, root=root, reporter=reporter, cancel=cancel
        )
        return result
    from engine.executor.runtime import find_runtime
    from engine.images.store import ImageStore, normalize_name, resolver

    reporter = reporter or NullReporter()
    cancel = cancel or threading.Event()
    if not request.context.is_dir():
        raise UsageError(f"build context {str(request.context)!r} is not a directory")
    name = default_build_name(request)
    for ref in (*request.tags, *(dict(o.attrs).get("name", "") for o in request.outputs)):
        for part in filter(None, ref.split(",")):
            normalize_name(part)  # a bad --tag fails before the build, not after it
    # Named contexts are checked before the build, as buildx does (a relative path is relative
    # to the working directory).
    build_contexts: dict[str, str] = {}
    if request.build_contexts:
        from engine.frontend.namedcontext import prepare_contexts

        build_contexts = prepare_contexts(request.build_contexts)
    build_id = os.urandom(16).hex()  # uuid4's randomness, without importing uuid (platform)
    store = Store.open(root)
    if not degraded:
        _sweep_runtime_leftovers()
    try:
        images = ImageStore(store)
        options = BuildOptions(
            target=request.target,
            build_args=dict(request.build_args),
            build_contexts=build_contexts,
            no_cache=request.no_cache,
            no_cache_filter=request.no_cache_filter,
            labels=dict(request.labels),
            context_dir=str(request.context.resolve()),
        )
        definition, build_arg_names = _converted(
            request.dockerfile,
            request.dockerfile_name,
            options,
            resolve_image=resolver(images),
            resolve_context=_lazy_context_resolver(images),
            root=root,
        )
        if request.network:
            definition = _with_network(definition, request.network)
        # Checked before anything runs, as BuildKit does: a bad epoch or a missing entitlement
        # must not leave half a build behind (nor reuse a cached host-network step).
        epoch = _source_date_epoch(definition.source_date_epoch)
        _check_entitlements(definition, request.allow)
        if degraded:
            _check_degraded(definition)
        hasher = ContextHasher(
            dockerfile_path=request.dockerfile_path,
            extra_excludes=request.context_excludes,
            db=store.db,
        )
        started = time.time_ns()
        reporter.emit(
            BuildStarted(
                build_id=build_id, name=name, target=definition.target_stage, time_ns=started
            )
        )
        states: dict[str, VertexState] = {}
        try:
            with store.lease() as lease:
                # Downloads and checkouts live here: a diff directory of the build's lease, so
                # a build killed on the way leaves nothing that the next open does not sweep.
                workdir = store.new_diff_dir(lease)
                by_digest = definition.by_digest()

                def resolve_content(vertex: Vertex, index: int, spec: ContentSpec) -> str | None:
                    source = by_digest[vertex.inputs[index]]
                    if isinstance(source.op, LocalSource):
                        return hasher.checksum(source.op, spec)
                    return None

                fast_keys = compute_keys(definition, resolve_content)
                if hasher.db is not None:
                    record_preimages(hasher.db, fast_keys.values())

                def on_change(vertex: Vertex, state: VertexState) -> None:
                    reporter.emit(_vertex_event(vertex, state, fast_keys[vertex.digest].preimage))

                def on_log(vertex: Vertex, stream: int, data: bytes) -> None:
                    reporter.emit(
                        VertexLog(
                            digest=vertex.digest, stream=stream, data=data, time_ns=time.time_ns()
                        )
                    )

                runner = OpRunner(
                    store,
                    images,
                    _proot_executor if degraded else lambda: _executor(find_runtime),
                    allow=request.allow,
                    filename=request.dockerfile_name,
                    on_log=on_log,
                    workdir=workdir,
                )
                runner.dockerfile_path = request.dockerfile_path
                runner.context_excludes = request.context_excludes
                # A tag needs every layer's diff ID: new layers are hashed while the build
                # goes on (the image store remembers them; put() waits for one under way).
                prehasher = _prehasher(images, epoch) if request.tags else None
                solver = Solver(
                    definition,
                    fast_keys,
                    store=store,
                    lease=lease,
                    hasher=hasher,
                    runner=runner,
                    on_change=on_change,
                    cancel=cancel,
                    on_layer=prehasher.submit if prehasher is not None else None,
                )
                states = solver.states
                status = "executed"
                error: NbbuildError | None = None
                layers: tuple[str, ...] | None = None
                try:
                    loaded = solver.solve()
                    layers = loaded.layers
                except BuildCanceled as exc:
                    status, error = "canceled", exc
                except NbbuildError as exc:
                    status, error = "failed", exc
                finally:
                    if prehasher is not None:
                        if layers is not None:
                            prehasher.keep(layers)  # the image's layers only; then it ends
                        else:
                            prehasher.close()
                steps = _steps(definition, states, fast_keys)
                manifests = _manifests(definition, fast_keys, hasher)
                records = [
                    StepRecord(
                        digest=s.digest,
                        name=s.name,
                        step=s.step,
                        stage=s.stage,
                        line=s.line,
                        instruction=s.instruction,
                        key=s.key,
                        status=s.status,
                        duration_ns=s.duration_ns,
                        saved_ns=s.saved_ns,
                        preimage=dict(s.preimage),
                        manifests=manifests.get(s.digest, {}),
                    )
                    for s in steps
                ]
                # Why each step ran: against the previous build of this name, read before
                # this one is recorded.
                reasons = _reasons(records, store.last_build(name), build_arg_names, definition)
                store.record_build(
                    BuildRecord(
                        name=name,
                        time_ns=started,
                        target=definition.target_stage,
                        status=status,
                        steps=tuple(replace(r, reason=reasons.get(r.digest, "")) for r in records),
                        tag=request.tags[0] if request.tags else "",
                        context=str(request.context.resolve()),
                    )
                )
                if error is not None:
                    reporter.emit(
                        BuildFinished(
                            build_id=build_id,
                            status=status,
                            time_ns=time.time_ns(),
                            error=str(error),
                        )
                    )
                    raise error
                config = _image_config(definition)
                try:
                    image_id, descriptor = _finish_outputs(
                        request, store, images, loaded.layers, config, epoch
                    )
                finally:
                    if prehasher is not None:
                        prehasher.close()
                reporter.emit(
                    BuildFinished(
                        build_id=build_id, status=status, time_ns=time.time_ns(), image_id=image_id
                    )
                )
                return BuildResult(
                    name=name,
                    target=definition.target_stage,
                    steps=steps,
                    definition=definition,
                    config=config,
                    layers=loaded.layers,
                    image_id=image_id,
                    tags=request.tags,
                    descriptor=descriptor,
                    reasons=reasons,
                    worker=_degraded_worker() if degraded else _worker(find_runtime, store.tmp_dir),
                )
        finally:
            hasher.close()
    finally:
        store.close()


# Conversions of this process, newest last: (Dockerfile text, name, options) -> the definition,
# the ARG names explain needs, and every image lookup the conversion made with its answer.
_Conversion = tuple[Definition, frozenset[str] | None, tuple[tuple[str, Any, Any], ...]]
_CONVERTED: dict[tuple[Any, ...], _Conversion] = {}
_CONVERTED_MAX = 32
_converted_lock = threading.Lock()


def _conversion_key(text: str, name: str, options: BuildOptions) -> tuple[Any, ...]:
    from engine.frontend.convert import host_platform

    return (
        text,
        name,
        options.target,
        tuple(sorted(options.build_args.items())),
        tuple(sorted(options.build_contexts.items())),
        options.no_cache,
        options.no_cache_filter,
        tuple(sorted(options.labels.items())),
        options.context_dir,
        options.platform,
        host_platform(),
    )


def _converted(
    text: str,
    name: str,
    options: BuildOptions,
    *,
    resolve_image: Any,
    resolve_context: Any,
    root: Path,
) -> tuple[Definition, frozenset[str] | None]:
    """The Dockerfile's definition and its stage ARG names (for explain; None when they could
    not be read), converted once for the same text, options and host: remembered in this
    process (a notebook kernel, the API) and in the store (engine.frontend.convcache: a CLI
    build of an unchanged Dockerfile loads neither the parser nor the converter).

    Conversion reads nothing but its arguments, the host platform and what the resolvers
    answer, so a remembered one is used only when every image it looked up resolves to the
    same image now (each lookup is made again and compared); one that resolved a named
    ``docker-image://``/``oci-layout://`` context (which may load a layout into the store) is
    not remembered. Definitions are immutable, so builds may share one."""
    from engine.frontend import convcache

    def still_valid(conversion: Any) -> bool:
        lookups = conversion[2]
        return all(resolve_image(*args) == answer for _, args, answer in lookups)

    key = _conversion_key(text, name, options)
    with _converted_lock:
        found = _CONVERTED.get(key)
    if found is not None and still_valid(found):
        return found[0], found[1]
    file_key = convcache.entry_key(key)
    stored = convcache.load(root, file_key)
    if _is_conversion(stored) and still_valid(stored):
        _remember(key, stored)
        return stored[0], stored[1]

    from engine.explain import arg_names
    from engine.frontend.convert import convert
    from engine.frontend.parser import parse

    lookups: list[tuple[str, Any, Any]] = []
    remember = True

    def recording_image(*args: Any) -> Any:
        answer = resolve_image(*args)
        lookups.append(("image", args, answer))
        return answer

    def recording_context(*args: Any) -> Any:
        nonlocal remember
        remember = False
        return resolve_context(*args)

    dockerfile = parse(text, filename=name)
    definition = convert(
        dockerfile, options, resolve_image=recording_image, resolve_context=recording_context
    )
    try:
        names = arg_names(dockerfile)
    except Exception:  # for explain only, which must never fail the build it describes
        names = None
    if remember:
        conversion: _Conversion = (definition, names, tuple(lookups))
        _remember(key, conversion)
        convcache.save(root, file_key, conversion)
    return definition, names


def _is_conversion(value: Any) -> TypeGuard[_Conversion]:
    return (
        isinstance(value, tuple)
        and len(value) == 3
        and isinstance(value[0], Definition)
        and (value[1] is None or isinstance(value[1], frozenset))
        and isinstance(value[2], tuple)
        and all(isinstance(x, tuple) and len(x) == 3 and x[0] == "image" for x in value[2])
    )


def _remember(key: tuple[Any, ...], conversion: _Conversion) -> None:
    with _converted_lock:
        _CONVERTED.pop(key, None)
        _CONVERTED[key] = conversion
        while len(_CONVERTED) > _CONVERTED_MAX:
            del _CONVERTED[next(iter(_CONVERTED))]


def _lazy_context_resolver(images: Any) -> Any:
    """``engine.images.layout.context_resolver``, imported (with the archive and tar code)
    only when a named context asks for an image or a layout."""
    made: list[Any] = []

    def resolve(*args: Any) -> Any:
        if not made:
            from engine.images.layout import context_resolver

            made.append(context_resolver(images))
        return made[0](*args)

    return resolve


def _prehasher(images: Any, epoch: int | None) -> Any:
    from engine.images.store import LayerPrehasher

    return LayerPrehasher(images, source_date_epoch=epoch)


def _sweep_runtime_leftovers() -> None:
    """Bundles and runtime state of killed engines go with every build, not only with the
    executor's creation: a build of cache hits never makes one (see engine.executor.leftovers)."""
    from engine.executor.leftovers import default_state_dir, sweep

    sweep(default_state_dir())


def _executor(find_runtime: Any) -> Any:
    """The OCI executor, None where this host cannot run containers. Made by the runner when
    the first RUN needs it: a build that runs nothing probes no runtime."""
    from engine.executor.oci import OciExecutor

    try:
        return OciExecutor(find_runtime())
    except NbbuildError:
        return None


def _proot_executor() -> Any:
    """The degraded worker's executor (PRoot over copies of the layers), None where it
    cannot start; its first step's log says what it is."""
    from engine.executor.proot import ProotExecutor
    from engine.userns.degraded import WARNING

    try:
        return ProotExecutor(banner=WARNING)
    except NbbuildError:
        return None


def _degraded_worker() -> str:
    from engine.userns.degraded import WORKER

    return WORKER


def _check_degraded(definition: Definition) -> None:
    """What the degraded PRoot worker cannot do, refused before anything runs (as BuildKit
    checks entitlements): ``--network=none`` (PRoot shares the host's network) and
    ``--security=insecure``."""
    from engine.graph.ops import ExecOp
    from engine.userns.degraded import refusal

    for vertex in definition.vertices:
        op = vertex.op
        if isinstance(op, ExecOp):
            error = refusal(
                vertex.meta.name, network=op.network, insecure=op.security == "insecure"
            )
            if error is not None:
                raise error


def _worker(find_runtime: Any, snapshots: Path | None = None) -> str:
    """The worker's description (which runtime, rootless or not, and the copy snapshotter when
    RUN steps on ``snapshots``' filesystem use it): no process is started."""
    from engine.snapshot.snapshotter import chosen
    from engine.userns.namespace import current

    try:
        runtime = find_runtime().name
    except NbbuildError:
        return "none (no container runtime)"
    choice = chosen(snapshots) if snapshots is not None else None
    note = choice.note() if choice is not None else ""
    mapping = current()
    if mapping is None:
        return f"oci: {runtime}{note}"
    return f"oci: {runtime}, rootless ({mapping.describe()}){note}"


def _with_network(definition: Definition, network: str) -> Definition:
    from engine.graph.vertex import with_default_network

    return with_default_network(definition, network)


def _vertex_event(vertex: Vertex, state: VertexState, preimage: Mapping[str, Any]) -> Event:
    return VertexEvent(
        digest=vertex.digest,
        inputs=vertex.inputs,
        name=vertex.meta.name,
        step=vertex.meta.step,
        total=vertex.meta.total,
        stage=vertex.meta.stage,
        line=vertex.meta.line,
        instruction=vertex.meta.instruction,
        started_ns=state.started_ns or None,
        completed_ns=state.completed_ns or None,
        cached=state.status == "cached",
        error=state.error or None,
        status=state.status,
        key=state.key,
        preimage=dict(preimage),
        saved_ns=state.saved_ns,
    )


def _steps(
    definition: Definition, states: Mapping[str, VertexState], fast_keys: Mapping[str, Any]
) -> tuple[StepResult, ...]:
    out = []
    for v in definition.vertices:
        st = states.get(v.digest) or VertexState(status="skipped")
        fk = fast_keys[v.digest]
        out.append(
            StepResult(
                digest=v.digest,
                name=v.meta.name,
                step=v.meta.step,
                stage=v.meta.stage,
                line=v.meta.line,
                instruction=v.meta.instruction,
                key=st.key or fk.cache_key,
                keys=st.keys,
                preimage=fk.preimage,
                status=st.status,
                started_ns=st.started_ns,
                duration_ns=max(0, st.completed_ns - st.started_ns) if st.completed_ns else 0,
                saved_ns=st.saved_ns,
                logs=b"".join(st.logs),
                error=st.error,
            )
        )
    return tuple(out)


def _manifests(
    definition: Definition, fast_keys: Mapping[str, Any], hasher: ContextHasher
) -> dict[str, dict[str, Any]]:
    """Per step, per input index: the context files its content candidate covered (capped).

    The compact form is remembered by the selection's checksum (which covers every path and
    digest it lists): a warm process does not compact an unchanged context's manifest again
    (5,000 files: ~5 ms)."""
    from engine.explain import compact_manifest

    by_digest = definition.by_digest()
    out: dict[str, dict[str, Any]] = {}
    for v in definition.vertices:
        for c in fast_keys[v.digest].content:
            source = by_digest[v.inputs[c.input]]
            if isinstance(source.op, LocalSource) and c.checksum is not None:
                memo_key = (source.op.name, source.op.path, c.spec, c.checksum)
                with _converted_lock:
                    compact = _COMPACT_MANIFESTS.get(memo_key)
                if compact is None:
                    try:
                        files = hasher.manifest(source.op, c.spec)
                    except NbbuildError:
                        continue
                    compact = compact_manifest(files)
                    with _converted_lock:
                        _COMPACT_MANIFESTS.pop(memo_key, None)
                        _COMPACT_MANIFESTS[memo_key] = compact
                        while len(_COMPACT_MANIFESTS) > _CONVERTED_MAX:
                            del _COMPACT_MANIFESTS[next(iter(_COMPACT_MANIFESTS))]
                out.setdefault(v.digest, {})[str(c.input)] = compact
    return out


# selection (source name, path, spec, checksum) -> its compact manifest (engine.explain's form)
_COMPACT_MANIFESTS: dict[tuple[Any, ...], dict[str, Any]] = {}


def _reasons(
    records: list[StepRecord],
    previous: BuildRecord | None,
    build_arg_names: frozenset[str] | None,
    definition: Definition,
) -> dict[str, str]:
    """One line per step that ran saying why (engine.explain); {} if explaining fails."""
    if build_arg_names is None or all(r.status in ("cached", "skipped") for r in records):
        return {}  # (nothing ran: nothing to explain, and engine.explain is not loaded)
    from engine.explain import explain

    try:
        explained = explain(
            records,
            previous,
            arg_names=build_arg_names,
            ignored={v.digest for v in definition.vertices if v.meta.ignore_cache},
            inputs={v.digest: v.inputs for v in definition.vertices},
        )
    except Exception:  # a diagnostic must never fail the build it describes
        return {}
    return {digest: e.reason for digest, e in explained.items()}


def _image_config(definition: Definition) -> dict[str, Any]:
    return definition.config.to_json()


def _finish_outputs(
    request: BuildRequest,
    store: Store,
    images: Any,
    layers: tuple[str, ...],
    config: dict[str, Any],
    epoch: int | None,
) -> tuple[str | None, dict[str, Any] | None]:
    """Tag and export the result; returns the image ID and manifest descriptor (None, None
    when no image was made: only local/tar outputs, or none)."""
    from engine.images.config import MEDIA_TYPE_OCI_MANIFEST

    image_id: str | None = None
    named: str | None = None  # an image the store now holds: its manifest is the descriptor
    if epoch is None:
        # BuildKit's times: a layer's history entry gets its layer's creation time (a layer
        # taken from the cache keeps the time it was made), the image the last entry's - so a
        # fully cached rebuild is the same image, as BuildKit's is. Set once here: every tag
        # and image output of the build then has the same ID (exporters only fill in gaps).
        from engine.images.config import stamp_times

        config = stamp_times(config, store.snapshots_created_ns(layers), time.time_ns())
    for tag in request.tags:
        image = images.put(tag, layers=layers, config=config, source_date_epoch=epoch)
        image_id = image.config_digest
        named = named or image.name
    for output in request.outputs:
        from engine.exporters import export  # (archives, tar): only for --output

        image_id = (
            export(
                store,
                images,
                output.type,
                output.dest,
                dict(output.attrs),
                layers=layers,
                config=config,
                source_date_epoch=epoch,
                name=",".join(request.tags),
            )
            or image_id
        )
        if output.type == "image" and named is None:
            named = next(filter(None, dict(output.attrs).get("name", "").split(",")), None)
    if image_id is None:
        return None, None
    stored = images.get(named) if named else None
    if stored is not None:
        # The image the store names (its layers uncompressed, made on demand).
        manifest_digest = stored.manifest_digest
        manifest_size = len(images.read_blob(manifest_digest))
    else:
        # Only archive outputs: they assembled the same config and (compressed) layers.
        assembled = images.assemble(layers=layers, config=config, source_date_epoch=epoch)
        manifest_digest, manifest_size = assembled.manifest_digest, len(assembled.manifest_bytes)
    descriptor = {
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "digest": manifest_digest,
        "size": manifest_size,
    }
    return image_id, descriptor


def _check_entitlements(definition: Definition, allow: frozenset[str]) -> None:
    from engine.errors import EntitlementError
    from engine.graph.ops import ExecOp

    for vertex in definition.vertices:
        op = vertex.op
        if not isinstance(op, ExecOp):
            continue
        if op.network == "host" and "network.host" not in allow:
            raise EntitlementError(
                f"{vertex.meta.name}: network.host is not allowed: "
                "pass --allow network.host to grant it"
            )
        if op.security == "insecure" and "security.insecure" not in allow:
            raise EntitlementError(
                f"{vertex.meta.name}: security.insecure is not allowed: "
                "pass --allow security.insecure to grant it"
            )


def _source_date_epoch(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(
            f"invalid SOURCE_DATE_EPOCH {value!r}: expected seconds since the epoch"
        ) from None
