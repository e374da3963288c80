"""The progress event stream: one vocabulary from the solver to every renderer.

The events follow BuildKit's status API (``api/services/control/control.proto``
``StatusResponse``: ``Vertex``, ``VertexStatus``, ``VertexLog``, ``VertexWarning``) so the same
renderers can show an in-process build and, later, a real BuildKit's progress stream. nbbuild
adds what its views need: a step's place in the Dockerfile, its cache key and key preimage, one
status vocabulary, and the time a cache hit saved.

A producer (the solver) emits events to a :class:`Reporter`. :class:`ListReporter` keeps them
(tests, the Python API); :class:`QueueReporter` hands them from the build thread to a UI thread
that drains it (the notebook's live view, the CLI's renderers); :class:`TeeReporter` fans out.

Every event is a frozen dataclass with ``to_json()`` (a JSON-ready dict with a ``"type"``) and
``from_json()``; ``docs/progress-events.md`` documents the format. Times are integer nanoseconds
since the Unix epoch (``time.time_ns()``), like BuildKit's timestamps.

:class:`Summary` condenses a stream into the numbers a person wants at the end: steps, how many
came from the cache, how many ran, the elapsed time and the time the cache saved.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, Protocol, TypeAlias, runtime_checkable

__all__ = [
    "FINAL_STATUSES",
    "STATUSES",
    "BuildFinished",
    "BuildStarted",
    "Event",
    "ListReporter",
    "NullReporter",
    "QueueReporter",
    "Reporter",
    "Status",
    "Summary",
    "TeeReporter",
    "VertexEvent",
    "VertexLog",
    "VertexProgress",
    "VertexWarning",
    "event_from_json",
    "event_from_line",
    "event_to_line",
    "latest_vertices",
]

Status: TypeAlias = Literal[
    "pending", "running", "cached", "executed", "failed", "canceled", "skipped"
]
STATUSES: tuple[Status, ...] = (
    "pending",
    "running",
    "cached",
    "executed",
    "failed",
    "canceled",
    "skipped",
)
# A vertex in one of these states will not change again in this build.
FINAL_STATUSES: frozenset[Status] = frozenset(
    {"cached", "executed", "failed", "canceled", "skipped"}
)
# A build ends in one of these (cached: every step came from the cache).
_BUILD_STATUSES: frozenset[str] = frozenset({"cached", "executed", "failed", "canceled"})

INTERNAL_PREFIX = "[internal]"


# ---------------------------------------------------------------------------------------------
# JSON field helpers: strict about types so a malformed line fails where it is read.


def _req(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in obj:
        raise ValueError(f"event field {name!r} is missing")
    return _check(obj[name], name, kind)


def _opt(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = obj.get(name)
    if value is None:
        return default
    return _check(value, name, kind)


def _check(value: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    # bool is an int in Python; a JSON true must not pass as a time or a count.
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"event field {name!r} has the wrong type: {value!r}")
    if not isinstance(value, kind):
        raise ValueError(f"event field {name!r} has the wrong type: {value!r}")
    return value


def _strs(obj: Mapping[str, Any], name: str) -> tuple[str, ...]:
    items = _opt(obj, name, list, [])
    for item in items:
        _check(item, name, str)
    return tuple(items)


def _status(value: str, what: str, allowed: Iterable[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} status must be one of {', '.join(sorted(allowed))}: {value!r}")


# ---------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildStarted:
    """A build began (no BuildKit counterpart: its stream starts with the first vertex).

    Attributes:
        build_id: unique id of this build (the same in :class:`BuildFinished`).
        name: what is being built, as a person names it (e.g. the context directory).
        target: the target stage ("" for the last stage).
        time_ns: when the build started.
    """

    type: ClassVar[str] = "build_started"

    build_id: str
    name: str = ""
    target: str = ""
    time_ns: int

    def to_json(self) -> dict[str, Any]:
        """This event as a JSON-ready dict."""
        return {
            "type": self.type,
            "build_id": self.build_id,
            "name": self.name,
            "target": self.target,
            "time_ns": self.time_ns,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> BuildStarted:
        """The event ``to_json`` produced; ValueError when a field is missing or mistyped."""
        return cls(
            build_id=_req(obj, "build_id", str),
            name=_opt(obj, "name", str, ""),
            target=_opt(obj, "target", str, ""),
            time_ns=_req(obj, "time_ns", int),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VertexEvent:
    """The state of one vertex: BuildKit's ``Vertex`` message plus nbbuild's step details.

    Each event is a full snapshot (as in BuildKit): a renderer keeps the latest one per digest.
    A vertex is announced ``pending`` (no times), then ``running`` (``started_ns``), then ends
    ``cached``, ``executed``, ``failed`` or ``canceled`` (``completed_ns``), or ``skipped``
    (never started: not needed for the target or after a failure).

    Attributes:
        digest: the vertex's op digest (BuildKit's ``Vertex.digest``).
        inputs: digests of the input vertices.
        name: BuildKit's progress name, e.g. ``[builder 2/4] RUN make`` or
            ``[internal] load build context``.
        step: k in ``[stage k/n]``; None for vertices that are not Dockerfile steps.
        total: n in ``[stage k/n]``.
        stage: the stage as shown (``builder``, ``stage-1``, "" for a single stage).
        line: 1-based Dockerfile line of the instruction.
        instruction: the instruction as written (first line).
        started_ns: when it started (BuildKit's ``started``), None until then.
        completed_ns: when it finished (BuildKit's ``completed``).
        cached: the result came from the cache (BuildKit's ``cached``).
        error: the error message of a failed (or canceled) vertex.
        status: one of :data:`STATUSES`.
        key: the cache key the result was found or stored under (None until it is known).
        preimage: the key's preimage (what went into it), for "why did this re-run?".
        saved_ns: for a cache hit, how long the reused result took when it was executed.
    """

    type: ClassVar[str] = "vertex"

    digest: str
    inputs: tuple[str, ...] = ()
    name: str = ""
    step: int | None = None
    total: int | None = None
    stage: str = ""
    line: int | None = None
    instruction: str = ""
    started_ns: int | None = None
    completed_ns: int | None = None
    cached: bool = False
    error: str | None = None
    status: Status = "pending"
    key: str | None = None
    preimage: dict[str, Any] | None = field(default=None, hash=False)
    saved_ns: int | None = None

    def __post_init__(self) -> None:
        _status(self.status, "vertex", STATUSES)
        # Only the combinations a renderer can show truthfully.
        if self.completed_ns is not None and self.started_ns is None:
            raise ValueError(f"vertex {self.name or self.digest}: completed but never started")
        if self.status == "running" and (self.started_ns is None or self.completed_ns is not None):
            raise ValueError(f"vertex {self.name or self.digest}: running needs started_ns only")
        if self.status in ("pending", "skipped") and self.started_ns is not None:
            raise ValueError(f"vertex {self.name or self.digest}: {self.status} but started")
        if self.status in ("cached", "executed") and self.completed_ns is None:
            raise ValueError(f"vertex {self.name or self.digest}: {self.status} needs completed_ns")

    @property
    def internal(self) -> bool:
        """True for BuildKit's ``[internal] …`` vertices (context transfer, metadata, …)."""
        return self.name.startswith(INTERNAL_PREFIX)

    @property
    def duration_ns(self) -> int | None:
        """How long it ran (completed - started), None while it has not finished."""
        if self.started_ns is None or self.completed_ns is None:
            return None
        return self.completed_ns - self.started_ns

    def running(self, time_ns: int) -> VertexEvent:
        """This vertex, started at ``time_ns``."""
        return replace(
            self,
            status="running",
            started_ns=time_ns,
            completed_ns=None,
            cached=False,
            error=None,
        )

    def finished(
        self,
        status: Status,
        time_ns: int,
        *,
        error: str | None = None,
        key: str | None = None,
        preimage: dict[str, Any] | None = None,
        saved_ns: int | None = None,
    ) -> VertexEvent:
        """This vertex, ended in ``status`` at ``time_ns``.

        A vertex that never started (a cache hit announced directly, a step canceled before it
        ran) gets ``started_ns = time_ns`` for ``cached``/``executed``/``failed``, as BuildKit
        reports cache hits; ``skipped`` and never-started ``canceled`` vertices keep no times.
        """
        _status(status, "final vertex", FINAL_STATUSES)
        started = self.started_ns
        completed: int | None = time_ns
        if status == "skipped" or (status == "canceled" and started is None):
            started, completed = None, None
        elif started is None:
            started = time_ns
        return replace(
            self,
            status=status,
            started_ns=started,
            completed_ns=completed,
            cached=status == "cached",
            error=error,
            key=self.key if key is None else key,
            preimage=self.preimage if preimage is None else preimage,
            saved_ns=saved_ns,
        )

    def to_json(self) -> dict[str, Any]:
        """This event as a JSON-ready dict."""
        return {
            "type": self.type,
            "digest": self.digest,
            "inputs": list(self.inputs),
            "name": self.name,
            "step": self.step,
            "total": self.total,
            "stage": self.stage,
            "line": self.line,
            "instruction": self.instruction,
            "started_ns": self.started_ns,
            "completed_ns": self.completed_ns,
            "cached": self.cached,
            "error": self.error,
            "status": self.status,
            "key": self.key,
            "preimage": self.preimage,
            "saved_ns": self.saved_ns,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> VertexEvent:
        """The event ``to_json`` produced; ValueError when a field is missing or mistyped."""
        status = _opt(obj, "status", str, "pending")
        _status(status, "vertex", STATUSES)
        return cls(
            digest=_req(obj, "digest", str),
            inputs=_strs(obj, "inputs"),
            name=_opt(obj, "name", str, ""),
            step=_opt(obj, "step", int, None),
            total=_opt(obj, "total", int, None),
            stage=_opt(obj, "stage", str, ""),
            line=_opt(obj, "line", int, None),
            instruction=_opt(obj, "instruction", str, ""),
            started_ns=_opt(obj, "started_ns", int, None),
            completed_ns=_opt(obj, "completed_ns", int, None),
            cached=_opt(obj, "cached", bool, False),
            error=_opt(obj, "error", str, None),
            status=status,
            key=_opt(obj, "key", str, None),
            preimage=_opt(obj, "preimage", dict, None),
            saved_ns=_opt(obj, "saved_ns", int, None),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VertexProgress:
    """Progress of one part of a vertex's work: BuildKit's ``VertexStatus``.

    BuildKit prints these under their vertex (``#3 transferring context: 2.34kB 0.1s done``,
    ``#9 exporting layers 0.2s done``); the id is the text shown.

    Attributes:
        digest: the vertex this belongs to.
        id: what is progressing, as shown (``transferring context:``, ``sha256:…``).
        name: BuildKit's optional name ("" mostly).
        current: units done (bytes for transfers).
        total: units in all (0 when unknown).
        time_ns: when this report was made (BuildKit's ``timestamp``).
        started_ns: when this part started.
        completed_ns: when it finished, None while it runs.
    """

    type: ClassVar[str] = "progress"

    digest: str
    id: str
    name: str = ""
    current: int = 0
    total: int = 0
    time_ns: int
    started_ns: int | None = None
    completed_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        """This event as a JSON-ready dict."""
        return {
            "type": self.type,
            "digest": self.digest,
            "id": self.id,
            "name": self.name,
            "current": self.current,
            "total": self.total,
            "time_ns": self.time_ns,
            "started_ns": self.started_ns,
            "completed_ns": self.completed_ns,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> VertexProgress:
        """The event ``to_json`` produced; ValueError when a field is missing or mistyped."""
        return cls(
            digest=_req(obj, "digest", str),
            id=_req(obj, "id", str),
            name=_opt(obj, "name", str, ""),
            current=_opt(obj, "current", int, 0),
            total=_opt(obj, "total", int, 0),
            time_ns=_req(obj, "time_ns", int),
            started_ns=_opt(obj, "started_ns", int, None),
            completed_ns=_opt(obj, "completed_ns", int, None),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VertexLog:
    """Output of a vertex's process: BuildKit's ``VertexLog``.

    Attributes:
        digest: the vertex that wrote it.
        stream: 1 for stdout, 2 for stderr.
        data: the bytes as written (any chunking; lines may span events).
        time_ns: when they were written.
    """

    type: ClassVar[str] = "log"

    digest: str
    stream: int = 1
    data: bytes
    time_ns: int

    def __post_init__(self) -> None:
        if self.stream not in (1, 2):
            raise ValueError(f"log stream must be 1 (stdout) or 2 (stderr): {self.stream!r}")

    def to_json(self) -> dict[str, Any]:
        """This event as a JSON-ready dict (``data`` in base64, as Go encodes ``[]byte``)."""
        return {
            "type": self.type,
            "digest": self.digest,
            "stream": self.stream,
            "data": base64.b64encode(self.data).decode("ascii"),
            "time_ns": self.time_ns,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> VertexLog:
        """The event ``to_json`` produced; ValueError when a field is missing or mistyped."""
        text = _req(obj, "data", str)
        try:
            data = base64.b64decode(text.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise ValueError(f"event field 'data' is not base64: {text[:40]!r}") from None
        return cls(
            digest=_req(obj, "digest", str),
            stream=_opt(obj, "stream", int, 1),
            data=data,
            time_ns=_req(obj, "time_ns", int),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VertexWarning:
    """A warning about a vertex: BuildKit's ``VertexWarning``.

    Attributes:
        digest: the vertex it is about.
        message: the text shown (BuildKit's ``short``; lint rules read
            ``Rule: message (line N)``, see :meth:`lint`).
        line: the Dockerfile line it is about, if any (for views that link to the source).
        level: BuildKit's level (1 for warnings).
        detail: longer explanation, one item per paragraph.
        url: where to read more.
    """

    type: ClassVar[str] = "warning"

    digest: str
    message: str
    line: int | None = None
    level: int = 1
    detail: tuple[str, ...] = ()
    url: str = ""

    @classmethod
    def lint(
        cls, digest: str, rule: str, message: str, line: int | None, url: str = ""
    ) -> VertexWarning:
        """A Dockerfile lint warning worded as BuildKit's ``linter.LintFormatShort``."""
        text = f"{rule}: {message}"
        if line is not None and line > 0:
            text += f" (line {line})"
        return cls(digest=digest, message=text, line=line, url=url)

    def to_json(self) -> dict[str, Any]:
        """This event as a JSON-ready dict."""
        return {
            "type": self.type,
            "digest": self.digest,
            "message": self.message,
            "line": self.line,
            "level": self.level,
            "detail": list(self.detail),
            "url": self.url,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> VertexWarning:
        """The event ``to_json`` produced; ValueError when a field is missing or mistyped."""
        return cls(
            digest=_req(obj, "digest", str),
            message=_req(obj, "message", str),
            line=_opt(obj, "line", int, None),
            level=_opt(obj, "level", int, 1),
            detail=_strs(obj, "detail"),
            url=_opt(obj, "url", str, ""),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildFinished:
    """A build ended.

    Attributes:
        build_id: the id from :class:`BuildStarted`.
        status: ``executed`` (done, some step ran), ``cached`` (done, every step came from the
            cache), ``failed`` or ``canceled``.
        time_ns: when it ended.
        image_id: the image's id (``sha256:…``, the config digest) when the build succeeded.
        error: the error message when it failed or was canceled.
    """

    type: ClassVar[str] = "build_finished"

    build_id: str
    status: str
    time_ns: int
    image_id: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        _status(self.status, "build", _BUILD_STATUSES)

    @property
    def ok(self) -> bool:
        """True when the build succeeded."""
        return self.status in ("executed", "cached")

    def to_json(self) -> dict[str, Any]:
        """This event as a JSON-ready dict."""
        return {
            "type": self.type,
            "build_id": self.build_id,
            "status": self.status,
            "time_ns": self.time_ns,
            "image_id": self.image_id,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> BuildFinished:
        """The event ``to_json`` produced; ValueError when a field is missing or mistyped."""
        return cls(
            build_id=_req(obj, "build_id", str),
            status=_req(obj, "status", str),
            time_ns=_req(obj, "time_ns", int),
            image_id=_opt(obj, "image_id", str, None),
            error=_opt(obj, "error", str, None),
        )


Event: TypeAlias = (
    BuildStarted | VertexEvent | VertexProgress | VertexLog | VertexWarning | BuildFinished
)

_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (BuildStarted, VertexEvent, VertexProgress, VertexLog, VertexWarning, BuildFinished)
}


def event_from_json(obj: Mapping[str, Any]) -> Event:
    """Any event from its ``to_json()`` dict; ValueError for an unknown type or a bad field.

    Fields this version does not know are ignored, so newer producers stay readable.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"an event is a JSON object, not {type(obj).__name__}")
    kind = obj.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}")
    return cls.from_json(obj)


def event_to_line(event: Event) -> str:
    """One line of the ``rawjson`` format: compact JSON, no newline."""
    return json.dumps(event.to_json(), separators=(",", ":"), ensure_ascii=False)


def event_from_line(line: str) -> Event:
    """The event of one ``rawjson`` line; ValueError when it is not one."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON event line: {exc}") from None
    return event_from_json(obj)


# ---------------------------------------------------------------------------------------------
# Reporters


@runtime_checkable
class Reporter(Protocol):
    """Where a build sends its events. ``emit`` may be called from any thread."""

    def emit(self, event: Event) -> None:
        """Take one event."""


class NullReporter:
    """Drops every event."""

    def emit(self, event: Event) -> None:
        """Ignore ``event``."""


class ListReporter:
    """Keeps every event in order (tests, the Python API's result)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def emit(self, event: Event) -> None:
        """Append ``event``."""
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        """A copy of the events so far."""
        with self._lock:
            return list(self._events)

    def vertices(self) -> dict[str, VertexEvent]:
        """The latest state of every vertex, in order of first appearance."""
        return latest_vertices(self.events)

    def summary(self) -> Summary:
        """:class:`Summary` of the events so far."""
        return Summary.from_events(self.events)


class TeeReporter:
    """Sends every event to several reporters, in order."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters: tuple[Reporter, ...] = reporters

    def emit(self, event: Event) -> None:
        """Pass ``event`` to each reporter."""
        for reporter in self.reporters:
            reporter.emit(event)


class _Closed:
    """The marker :meth:`QueueReporter.close` puts behind the last event."""


_CLOSED = _Closed()


class QueueReporter:
    """A thread-safe hand-over from the build thread to the thread that shows progress.

    The build (producer) calls :meth:`emit` and, when it is done, :meth:`close` (also on
    failure, so the consumer never waits for ever). The UI thread (consumer) loops on
    :meth:`wait`, which returns every event queued so far as one batch, like one BuildKit
    ``SolveStatus``::

        while not q.closed:
            batch = q.wait(0.15)
            if not batch:
                renderer.refresh()     # nothing new: tick the clock
            for event in batch:
                renderer.emit(event)
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Event | _Closed] = queue.SimpleQueue()
        self._closed = False  # the consumer has reached the close marker

    def emit(self, event: Event) -> None:
        """Queue ``event`` (producer side; never blocks)."""
        self._queue.put(event)

    def close(self) -> None:
        """Mark the end of the stream (producer side). Events emitted later are still kept."""
        self._queue.put(_CLOSED)

    @property
    def closed(self) -> bool:
        """True once the consumer has taken the close marker and nothing is left."""
        return self._closed and self._queue.empty()

    def wait(self, timeout: float | None = None) -> list[Event]:
        """Events queued so far, waiting up to ``timeout`` seconds for the first one.

        Returns an empty list on timeout, and at once when the stream is closed and empty.
        ``timeout=None`` waits until an event or the close marker arrives.
        """
        out: list[Event] = []
        if not self._closed:
            try:
                first = (
                    self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                return out
            if isinstance(first, _Closed):
                self._closed = True
            else:
                out.append(first)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, _Closed):
                self._closed = True
            else:
                out.append(item)

    def drain(self) -> list[Event]:
        """Events queued so far, without waiting."""
        return self.wait(0)


# ---------------------------------------------------------------------------------------------
# Summary


def latest_vertices(events: Iterable[Event]) -> dict[str, VertexEvent]:
    """The latest :class:`VertexEvent` of each digest, in order of first appearance."""
    out: dict[str, VertexEvent] = {}
    for event in events:
        if isinstance(event, VertexEvent):
            out[event.digest] = event
    return out


@dataclass(frozen=True, slots=True)
class Summary:
    """The numbers at the end of a build, from its events.

    Steps are the vertices a person wrote (every vertex except BuildKit's ``[internal] …``
    ones); each is counted under its latest status.

    Attributes:
        steps: vertices that are not ``[internal]``.
        cached: steps whose result came from the cache.
        executed: steps that ran.
        failed: steps that failed.
        canceled: steps canceled.
        skipped: steps not needed (or not reached after a failure).
        pending: steps not finished when the events end (pending or running).
        elapsed_ns: build start to end (BuildStarted → BuildFinished); without those events,
            first vertex start to last vertex end; 0 when nothing ran.
        executed_ns: time spent in executed steps (sum of their durations).
        saved_ns: time the cache saved: the recorded execution time of every cached step.
        status: the build's status from :class:`BuildFinished`, or ``running``.
        image_id: the image id from :class:`BuildFinished`, if any.
    """

    steps: int = 0
    cached: int = 0
    executed: int = 0
    failed: int = 0
    canceled: int = 0
    skipped: int = 0
    pending: int = 0
    elapsed_ns: int = 0
    executed_ns: int = 0
    saved_ns: int = 0
    status: str = "running"
    image_id: str | None = None

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> Summary:
        """Summarise a stream (complete or not)."""
        events = list(events)
        counts = dict.fromkeys(STATUSES, 0)
        executed_ns = saved_ns = 0
        first: int | None = None
        last: int | None = None
        for v in latest_vertices(events).values():
            if v.started_ns is not None:
                first = v.started_ns if first is None else min(first, v.started_ns)
            if v.completed_ns is not None:
                last = v.completed_ns if last is None else max(last, v.completed_ns)
            if v.internal:
                continue
            counts[v.status] += 1
            if v.status == "executed" and v.duration_ns is not None:
                executed_ns += v.duration_ns
            if v.status == "cached" and v.saved_ns is not None:
                saved_ns += v.saved_ns
        started = next((e for e in events if isinstance(e, BuildStarted)), None)
        finished = next((e for e in reversed(events) if isinstance(e, BuildFinished)), None)
        if started is not None and finished is not None:
            elapsed = finished.time_ns - started.time_ns
        elif first is not None and last is not None:
            elapsed = last - first
        else:
            elapsed = 0
        return cls(
            steps=sum(counts.values()),
            cached=counts["cached"],
            executed=counts["executed"],
            failed=counts["failed"],
            canceled=counts["canceled"],
            skipped=counts["skipped"],
            pending=counts["pending"] + counts["running"],
            elapsed_ns=max(elapsed, 0),
            executed_ns=executed_ns,
            saved_ns=saved_ns,
            status=finished.status if finished is not None else "running",
            image_id=finished.image_id if finished is not None else None,
        )

    def text(self) -> str:
        """One line, e.g. ``7 steps: 5 cached, 2 executed in 3.2s (cache saved 41.0s)``."""
        parts = [f"{self.cached} cached", f"{self.executed} executed"]
        for label, n in (
            ("failed", self.failed),
            ("canceled", self.canceled),
            ("skipped", self.skipped),
            ("pending", self.pending),
        ):
            if n:
                parts.append(f"{n} {label}")
        noun = "step" if self.steps == 1 else "steps"
        out = f"{self.steps} {noun}: {', '.join(parts)} in {self.elapsed_ns / 1e9:.1f}s"
        if self.saved_ns:
            out += f" (cache saved {self.saved_ns / 1e9:.1f}s)"
        return out
