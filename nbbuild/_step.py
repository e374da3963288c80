"""One step of a build, from the engine's result or from its events, and step counts.

:class:`Step` is what :class:`~nbbuild._result.BuildResult` and the live views show for each
vertex. :func:`dockerfile_order` puts vertices from events into a stable order (events arrive
in the order the solver reached them, which varies between runs of a multi-stage build), and
:func:`summarize` / :func:`counts_text` count steps by status.
"""

from __future__ import annotations

import codecs
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.events import INTERNAL_PREFIX, Summary, VertexEvent
from nbbuild._graph import short_key

if TYPE_CHECKING:
    from engine.build import StepResult

__all__ = ["Step", "counts_text", "decode_logs", "dockerfile_order", "summarize"]


def decode_logs(data: bytes) -> str:
    """A step's output as text (invalid UTF-8 replaced, never an error)."""
    return codecs.decode(data, "utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Step:
    """One step (vertex) of a build.

    Attributes:
        digest: the vertex's op digest (the key of ``reasons``).
        inputs: digests of the vertex's inputs.
        name: BuildKit's progress name (``[builder 2/4] RUN make``).
        stage: the stage as shown ("" for a single unnamed stage).
        step: k in ``[stage k/n]``; None for vertices that are not Dockerfile steps.
        total: n in ``[stage k/n]``.
        line: the instruction's 1-based line in the Dockerfile.
        instruction: the instruction as written (first line).
        key: the cache key the result was found or stored under.
        preimage: what went into the key (for "why did this re-run?").
        status: pending, running, cached, executed, failed, canceled or skipped.
        started_ns: when it started (ns since the epoch), None if it never did.
        duration_ns: how long it ran (0 for a cache hit).
        saved_ns: for a cache hit, how long the reused result once took.
        logs: what the step printed (stdout and stderr, decoded).
        reason: why it re-ran ("" when cached or not known).
        error: the error of a failed step.
    """

    digest: str
    inputs: tuple[str, ...]
    name: str
    stage: str
    step: int | None
    total: int | None
    line: int | None
    instruction: str
    key: str | None
    preimage: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)
    status: str = "pending"
    started_ns: int | None = field(default=None, repr=False)
    duration_ns: int = field(default=0, repr=False)
    saved_ns: int = field(default=0, repr=False)
    logs: str = field(default="", repr=False)
    reason: str = ""
    error: str = field(default="", repr=False)

    @property
    def short_key(self) -> str:
        """The first 12 hex digits of the key ("" without one)."""
        return short_key(self.key)

    @property
    def internal(self) -> bool:
        """True for BuildKit's ``[internal] …`` vertices (the build context)."""
        return self.name.startswith(INTERNAL_PREFIX)

    @property
    def label(self) -> str:
        """The bracketed part of the name: ``builder 2/4``."""
        if self.name.startswith("[") and "]" in self.name:
            return self.name[1 : self.name.index("]")]
        return self.name

    @classmethod
    def from_engine(
        cls,
        result: StepResult,
        *,
        inputs: tuple[str, ...] = (),
        total: int | None = None,
        reason: str = "",
    ) -> Step:
        """A step from the engine's :class:`~engine.build.StepResult`."""
        return cls(
            digest=result.digest,
            inputs=inputs,
            name=result.name,
            stage=result.stage,
            step=result.step,
            total=total,
            line=result.line,
            instruction=result.instruction,
            key=result.key,
            preimage=dict(result.preimage),
            status=result.status,
            started_ns=result.started_ns or None,
            duration_ns=result.duration_ns,
            saved_ns=result.saved_ns,
            logs=decode_logs(result.logs),
            reason=reason,
            error=result.error or "",
        )

    @classmethod
    def from_event(
        cls, event: VertexEvent, *, logs: str = "", reason: str = "", now_ns: int | None = None
    ) -> Step:
        """A step from the latest :class:`~engine.events.VertexEvent` of its vertex.

        A running step's duration is counted up to ``now_ns`` when given.
        """
        duration = event.duration_ns
        if duration is None:
            started = event.started_ns
            duration = max(now_ns - started, 0) if started is not None and now_ns else 0
        return cls(
            digest=event.digest,
            inputs=event.inputs,
            name=event.name,
            stage=event.stage,
            step=event.step,
            total=event.total,
            line=event.line,
            instruction=event.instruction,
            key=event.key,
            preimage=dict(event.preimage or {}),
            status=event.status,
            started_ns=event.started_ns,
            duration_ns=duration,
            saved_ns=event.saved_ns or 0,
            logs=logs,
            reason=reason,
            error=event.error or "",
        )


def dockerfile_order(vertices: Iterable[VertexEvent]) -> list[VertexEvent]:
    """Vertices in a stable dependency order: inputs first, else by Dockerfile line.

    Events arrive in the order the solver reached the vertices, which varies between runs
    of a multi-stage build; this order does not (it is the definition's order in practice:
    an input-less vertex without a line, such as the build context, comes right before the
    first step that needs it).
    """
    pending = {v.digest: v for v in vertices}
    waiting = {d: {i for i in v.inputs if i in pending and i != d} for d, v in pending.items()}
    users: dict[str, list[str]] = {}
    for d, inputs in waiting.items():
        for i in inputs:
            users.setdefault(i, []).append(d)

    def rank(d: str) -> tuple[float, int, str, str]:
        v = pending[d]
        line = float("inf") if v.line is None else float(v.line)
        return (line, v.step or 0, v.name, d)

    ready = [(rank(d), d) for d, inputs in waiting.items() if not inputs]
    heapq.heapify(ready)
    out: list[VertexEvent] = []
    while ready:
        _, d = heapq.heappop(ready)
        out.append(pending[d])
        for user in users.get(d, ()):
            waiting[user].discard(d)
            if not waiting[user]:
                heapq.heappush(ready, (rank(user), user))
    if len(out) < len(pending):  # a cycle cannot happen; keep whatever is left, stably
        done = {v.digest for v in out}
        out.extend(
            sorted((v for d, v in pending.items() if d not in done), key=lambda v: rank(v.digest))
        )
    return out


def counts_text(summary: Summary) -> str:
    """The step counts without times: ``6 steps: 1 cached, 5 executed``."""
    parts = [f"{summary.cached} cached", f"{summary.executed} executed"]
    for label, n in (
        ("failed", summary.failed),
        ("canceled", summary.canceled),
        ("skipped", summary.skipped),
        ("pending", summary.pending),
    ):
        if n:
            parts.append(f"{n} {label}")
    noun = "step" if summary.steps == 1 else "steps"
    return f"{summary.steps} {noun}: {', '.join(parts)}"


def summarize(
    steps: Iterable[Step], *, elapsed_ns: int, status: str, image_id: str | None = None
) -> Summary:
    """A :class:`~engine.events.Summary` of ``steps`` (internal vertices are not counted)."""
    counts = dict.fromkeys(
        ("pending", "running", "cached", "executed", "failed", "canceled", "skipped"), 0
    )
    executed_ns = saved_ns = 0
    for s in steps:
        if s.internal:
            continue
        counts[s.status] = counts.get(s.status, 0) + 1
        if s.status == "executed":
            executed_ns += s.duration_ns
        if s.status == "cached":
            saved_ns += s.saved_ns
    return Summary(
        steps=sum(counts.values()),
        cached=counts["cached"],
        executed=counts["executed"],
        failed=counts["failed"],
        canceled=counts["canceled"],
        skipped=counts["skipped"],
        pending=counts["pending"] + counts["running"],
        elapsed_ns=max(elapsed_ns, 0),
        executed_ns=executed_ns,
        saved_ns=saved_ns,
        status=status,
        image_id=image_id,
    )
