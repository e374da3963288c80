"""The solver: from the target down, reuse what the cache has, run what it must.

For each vertex, starting at the target (BuildKit's edge states, simplified):

1. **fast path** — look up the vertex's definition key (the key ``nbbuild plan`` prints). A hit
   means nothing below it is loaded at all: those vertices are ``skipped``.
2. **slow path** — on a miss, load the inputs (independent inputs in parallel), then build every
   candidate key: each input's keys plus a selector, and, where the op reads selected paths of an
   input, the content checksum of those paths in the input's result. A hit here is BuildKit's
   *early cutoff*: an input re-ran but produced the same bytes, so this vertex stays cached.
3. **execute** — run the op, then publish the result under every candidate key.

``ignore_cache`` vertices (``--no-cache``, ``--no-cache-filter``) skip both lookups, still save
their result, and do not hand their keys to consumers, which can then only match by content.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.cache.keys import Candidate, VertexKey, cache_map_of, candidate_keys
from engine.context.source import ContextHasher
from engine.errors import BuildCanceled, BuildError, NbbuildError
from engine.events import Status
from engine.graph.ops import (
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
from engine.solver.runner import OpRunner, Output
from engine.store.store import Lease, Result, Store

__all__ = ["Loaded", "Solver", "VertexState"]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A vertex's output as its consumers see it."""

    layers: tuple[str, ...] = ()  # snapshot ids, bottom first (results and images)
    directory: Path | None = None  # a plain directory (context, download, checkout)
    local: LocalSource | None = None  # the build context or a named local context
    keys: tuple[str, ...] = ()  # keys consumers may use for definition candidates
    propagate: bool = True
    result: Result | None = None  # the stored result, for remembered checksums


@dataclass
class VertexState:
    """What happened to one vertex in this build (fed to events, history and the result)."""

    status: Status = "pending"
    key: str | None = None
    keys: tuple[str, ...] = ()
    started_ns: int = 0
    completed_ns: int = 0
    saved_ns: int = 0
    error: str = ""
    logs: list[bytes] = field(default_factory=list)


class _Once:
    """One vertex's load, shared by every consumer that asks while (or after) the first one
    does the work: what ``concurrent.futures.Future`` offers here, without importing
    ``concurrent.futures`` (and ``logging``) on every build."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Loaded | None = None
        self._error: BaseException | None = None

    def set_result(self, value: Loaded) -> None:
        self._value = value
        self._done.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def result(self) -> Loaded:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class Solver:
    """Solves one definition against a store.

    Args:
        definition: the graph.
        fast_keys: each vertex's primary key (from :func:`engine.cache.keys.compute_keys`).
        store: the persistent store.
        lease: the build's lease.
        hasher: content checksums of local sources.
        runner: executes ops (containers, file operations, downloads).
        on_change: called with (vertex, state) whenever a vertex's state changes.
        cancel: set to cancel the build.
        on_layer: called (in the solving thread) with the snapshot ID of each new layer
            as soon as its diff is at its final path (:meth:`Store.commit`'s ``on_renamed``:
            before the flush and the row).
    """

    def __init__(
        self,
        definition: Definition,
        fast_keys: Mapping[str, VertexKey],
        *,
        store: Store,
        lease: Lease,
        hasher: ContextHasher,
        runner: OpRunner,
        on_change: Callable[[Vertex, VertexState], None],
        cancel: threading.Event,
        on_layer: Callable[[str], None] | None = None,
    ) -> None:
        self.definition = definition
        # called with the snapshot ID of every new layer being committed (the tag's diff IDs
        # are computed from them in the background, during the commit's flush)
        self.on_layer = on_layer
        self.by_digest = definition.by_digest()
        self.fast_keys = fast_keys
        self.store = store
        self.lease = lease
        self.hasher = hasher
        self.runner = runner
        self.on_change = on_change
        # One event stops every running step: set by the caller's cancel, or by the first
        # failure (BuildKit cancels the whole solve on the first error).
        self.user_cancel = cancel
        self.cancel = threading.Event()
        self.failed = False
        self.states: dict[str, VertexState] = {v.digest: VertexState() for v in definition}
        self._futures: dict[str, _Once] = {}
        self._lock = threading.Lock()

    # -- public -----------------------------------------------------------------------

    def solve(self) -> Loaded:
        """Solve the target; returns its output (empty layers for an empty scratch target)."""
        if self.definition.target is None:
            return Loaded()
        done = threading.Event()

        def relay() -> None:
            # Polls the caller's event, but waits on ``done``: the solve's end wakes it at once
            # (waiting on the cancel event made every build end up to one poll late).
            while not done.wait(0.05):
                if self.user_cancel.is_set():
                    self.cancel.set()
                    return

        watcher = threading.Thread(target=relay, name="nbbuild-cancel", daemon=True)
        watcher.start()
        try:
            loaded = self.load(self.definition.target)
        except BaseException:
            self.cancel.set()
            raise
        finally:
            done.set()
            watcher.join()
            self._settle_all(
                [v for v in self.definition if self.states[v.digest].status == "pending"]
            )
        return loaded

    def _settle_ancestors(self, vertex: Vertex) -> None:
        needed: set[str] = set()
        stack = list(vertex.inputs)
        while stack:
            digest = stack.pop()
            if digest not in needed:
                needed.add(digest)
                stack.extend(self.by_digest[digest].inputs)
        settle = []
        for v in self.definition:
            if v.digest in needed:
                with self._lock:
                    loading = v.digest in self._futures
                # A vertex someone is loading reports its own status; the others are settled
                # now (a later load, if another consumer needs it, reports again).
                if not loading and self.states[v.digest].status == "pending":
                    settle.append(v)
        self._settle_all(settle)

    def _settle_all(self, vertices: Sequence[Vertex]) -> None:
        """Status of vertices the solve never needed, in order: ``cached`` when the key is in
        the store (as BuildKit's progress shows every step of a no-op rebuild), else
        ``skipped``. Their keys are looked up together, in one store transaction."""
        if self.cancel.is_set():
            for vertex in vertices:
                self._set(vertex, status="canceled")
            return
        keys: dict[str, str] = {}  # digest -> the key to look up
        images: set[str] = set()  # image sources the store has
        for vertex in vertices:
            fast = self.fast_keys.get(vertex.digest)
            key = fast.cache_key if fast is not None else None
            if isinstance(vertex.op, ImageSource) and self.runner.has_image(vertex.op):
                images.add(vertex.digest)
            elif key is not None and not vertex.meta.ignore_cache and vertex.meta.step is not None:
                keys[vertex.digest] = key
        hits = dict(
            zip(keys, self.store.lookup_each([[k] for k in keys.values()], self.lease), strict=True)
        )
        for vertex in vertices:
            fast = self.fast_keys.get(vertex.digest)
            key = fast.cache_key if fast is not None else None
            now = time.time_ns()
            if vertex.digest in images:
                self._set(vertex, status="cached", key=key, started_ns=now, completed_ns=now)
                continue
            hit = hits.get(vertex.digest)
            if hit is None:
                self._set(vertex, status="skipped")
                continue
            self._set(
                vertex,
                status="cached",
                key=key,
                keys=(key,),
                started_ns=now,
                completed_ns=now,
                saved_ns=hit.exec_ns,
            )

    def load(self, digest: str) -> Loaded:
        """Load one vertex's output, once per build, whoever asks first does the work."""
        with self._lock:
            future = self._futures.get(digest)
            owner = future is None
            if future is None:
                future = _Once()
                self._futures[digest] = future
        if not owner:
            return future.result()
        try:
            loaded = self._load(self.by_digest[digest])
        except BaseException as exc:
            future.set_exception(exc)
            raise
        future.set_result(loaded)
        return loaded

    # -- one vertex -------------------------------------------------------------------

    def _set(self, vertex: Vertex, **changes: object) -> None:
        state = self.states[vertex.digest]
        for name, value in changes.items():
            setattr(state, name, value)
        self.on_change(vertex, state)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise BuildCanceled("build canceled")

    def _load(self, vertex: Vertex) -> Loaded:
        self._check_cancel()
        op = vertex.op
        fast = self.fast_keys.get(vertex.digest)
        if isinstance(op, LocalSource):
            # The context was read (hashed) when the keys were computed: BuildKit shows
            # "[internal] load build context" as done on every build.
            now = time.time_ns()
            self._set(vertex, status="executed", started_ns=now, completed_ns=now)
            return Loaded(local=op, propagate=False)
        if isinstance(op, ImageSource):
            return self._load_image(vertex, op, fast)
        if isinstance(op, HttpSource | GitSource):
            return self._load_remote(vertex, op)
        ignore = vertex.meta.ignore_cache
        # 1. fast path: the definition key, without loading any input
        if fast is not None and fast.cache_key is not None and not ignore:
            hit = self.store.lookup([fast.cache_key], self.lease)
            if hit is not None:
                # Report the steps below it first, in order, as BuildKit's progress shows them.
                self._settle_ancestors(vertex)
                now = time.time_ns()
                self._set(
                    vertex,
                    status="cached",
                    key=fast.cache_key,
                    keys=(fast.cache_key,),
                    started_ns=now,
                    completed_ns=now,
                    saved_ns=hit.exec_ns,
                )
                return Loaded(layers=hit.layers, keys=(fast.cache_key,), result=hit)
        # 2. slow path: load inputs (in parallel), then every candidate key
        inputs = self._load_inputs(vertex)
        self._check_cancel()
        cache_map = cache_map_of(vertex)
        # Lookups may not go through an input that does not propagate its keys (--no-cache);
        # the result is still committed under them (BuildKit's commitOptions), so the next
        # normal build finds it.
        lookup_options: list[list[Candidate]] = []
        commit_options: list[list[Candidate]] = []
        for index, (loaded, dep) in enumerate(zip(inputs, cache_map.deps, strict=True)):
            definition = [Candidate("definition", k, dep.selector) for k in loaded.keys]
            content: list[Candidate] = []
            if dep.content is not None:
                checksum = self._content_checksum(vertex, index, loaded, dep.content)
                if checksum is not None:
                    content.append(Candidate("content", checksum))
            lookup_options.append((definition if loaded.propagate else []) + content)
            commit_options.append(definition + content)
        lookup_keys = candidate_keys(cache_map, lookup_options)
        keys = candidate_keys(cache_map, commit_options)
        primary = fast.cache_key if fast is not None and fast.cache_key in keys else None
        if primary is None and keys:
            primary = keys[0]
        if lookup_keys and not ignore:
            hit = self.store.lookup(lookup_keys, self.lease)
            if hit is not None:
                now = time.time_ns()
                self.store.add_keys(hit, keys)
                self._set(
                    vertex,
                    status="cached",
                    key=primary,
                    keys=tuple(keys),
                    started_ns=now,
                    completed_ns=now,
                    saved_ns=hit.exec_ns,
                )
                return Loaded(layers=hit.layers, keys=tuple(keys), result=hit)
        # 3. execute
        start = time.time_ns()
        self._set(vertex, status="running", key=primary, keys=tuple(keys), started_ns=start)
        try:
            output = self._execute(vertex, inputs)
        except BuildCanceled:
            self._set(vertex, status="canceled", completed_ns=time.time_ns())
            raise
        except NbbuildError as exc:
            self._set(vertex, status="failed", completed_ns=time.time_ns(), error=str(exc))
            raise
        except Exception as exc:
            self._set(vertex, status="failed", completed_ns=time.time_ns(), error=repr(exc))
            raise BuildError(f"{vertex.meta.name}: internal error: {exc!r}") from exc
        exec_ns = time.time_ns() - start
        result = self.store.commit(
            keys=keys,
            base=output.base,
            diff=output.diff,
            exec_ns=exec_ns,
            description=vertex.meta.name,
            lease=self.lease,
            # --no-cache, or an input that did not propagate its keys (it re-ran under
            # --no-cache): the new result replaces whatever is stored under these keys.
            fresh=ignore or not all(i.propagate for i in inputs if i.local is None),
            on_renamed=self.on_layer,
        )
        self._set(vertex, status="executed", completed_ns=time.time_ns())
        return Loaded(layers=result.layers, keys=tuple(keys), propagate=not ignore, result=result)

    def _load_inputs(self, vertex: Vertex) -> list[Loaded]:
        if len(vertex.inputs) <= 1:
            return [self.load(d) for d in vertex.inputs]
        # Independent inputs (other stages) load in parallel: one thread per extra input.
        results: dict[int, Loaded] = {}
        errors: list[BaseException] = []

        def worker(i: int, d: str) -> None:
            try:
                results[i] = self.load(d)
            except BaseException as exc:
                errors.append(exc)
                self.cancel.set()  # stop the sibling stages too

        threads = [
            threading.Thread(target=worker, args=(i, d), name=f"nbbuild-load-{i}", daemon=True)
            for i, d in enumerate(vertex.inputs[1:], start=1)
        ]
        for t in threads:
            t.start()
        try:
            results[0] = self.load(vertex.inputs[0])
        except BaseException as exc:
            errors.append(exc)
            self.cancel.set()
        for t in threads:
            t.join()
        if errors:
            # Prefer a step failure over a cancellation it caused in a sibling.
            errors.sort(key=lambda e: isinstance(e, BuildCanceled))
            raise errors[0]
        return [results[i] for i in range(len(vertex.inputs))]

    def _content_checksum(
        self, vertex: Vertex, index: int, loaded: Loaded, spec: ContentSpec
    ) -> str | None:
        if loaded.local is not None:
            return self.hasher.checksum(loaded.local, spec)
        return self.runner.checksum(loaded, spec)

    def _load_image(self, vertex: Vertex, op: ImageSource, fast: VertexKey | None) -> Loaded:
        now = time.time_ns()
        layers = self.runner.image_layers(op)
        key = fast.cache_key if fast is not None else None
        self._set(vertex, status="cached", key=key, keys=(key,) if key else (), started_ns=now, completed_ns=now)
        return Loaded(layers=layers, keys=(key,) if key else ())

    def _load_remote(self, vertex: Vertex, op: HttpSource | GitSource) -> Loaded:
        start = time.time_ns()
        self._set(vertex, status="running", started_ns=start)
        try:
            directory, cache_map = self.runner.fetch(op)
        except NbbuildError as exc:
            self._set(vertex, status="failed", completed_ns=time.time_ns(), error=str(exc))
            raise
        key = candidate_keys(cache_map, [])[0]
        self._set(vertex, status="executed", key=key, keys=(key,), completed_ns=time.time_ns())
        return Loaded(directory=directory, keys=(key,))

    def _execute(self, vertex: Vertex, inputs: Sequence[Loaded]) -> Output:
        op = vertex.op
        sink = self._log_sink(vertex)
        if isinstance(op, ExecOp):
            return self.runner.run_exec(vertex, op, inputs, self.lease, sink, self.cancel)
        if isinstance(op, FileOp):
            return self.runner.run_file(vertex, op, inputs, self.lease)
        if isinstance(op, MergeOp):
            layers: list[str] = []
            for loaded in inputs:
                layers.extend(loaded.layers)
            return Output(base=tuple(layers), diff=None)
        raise BuildError(f"{vertex.meta.name}: cannot execute a {type(op).__name__}")

    def _log_sink(self, vertex: Vertex) -> Callable[[int, bytes], None]:
        state = self.states[vertex.digest]

        def sink(stream: int, data: bytes) -> None:
            state.logs.append(data)
            self.runner.on_log(vertex, stream, data)

        return sink
