"""The result of a build as a notebook shows it: the cell's value and the Python API's return.

:class:`BuildResult` wraps an :class:`engine.build.BuildResult` (or, for a build that failed
before the engine could return one, the build's events) with the reason each step re-ran
(from :mod:`engine.explain`, by vertex digest) and the error, if any. It displays as:

- ``text/plain``: deterministic (no wall times, no image id, no addresses, no absolute paths):
  a header with the step counts, one line per step with status, short cache key and reason,
  the tags and the error's first line. Two builds of the same thing in the same cache state
  print the same text however long they took, so nbval can compare it.
- ``text/html``: static (inline CSS only, no script): the summary, the graph (inline SVG with
  ``dot``, else HTML), a table of steps, and each step's log in a ``<details>`` that is open
  only for a failed step. Times are wrapped in ``<span class="nbb-time">`` and the image id
  in ``<code class="nbb-id">`` so a sanitizer can drop them (see :mod:`nbbuild._html`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from engine.events import (
    BuildFinished,
    BuildStarted,
    Event,
    Summary,
    VertexLog,
    latest_vertices,
)
from nbbuild._graph import BuildGraph
from nbbuild._html import (
    STATUS_ICONS,
    box,
    clean,
    colors,
    esc,
    filter_bundle,
    id_span,
    logs_html,
    pre,
    steps_table_html,
    time_span,
    truncate,
)
from nbbuild._step import Step, counts_text, decode_logs, dockerfile_order, summarize

if TYPE_CHECKING:
    from engine.build import BuildResult as EngineBuildResult

__all__ = ["BuildResult", "Explanation", "Step", "counts_text", "display_name", "summary_html"]

Explainer = Callable[["BuildResult"], object]

_TEXT_WIDTH = 60
LOG_LINES = 200  # lines of each step's log in the HTML


def display_name(name: str) -> str:
    """``name`` fit to show: an absolute path is cut to its last part (no temp paths)."""
    if name.startswith("/"):
        return PurePosixPath(name).name or name
    return name


def summary_html(name: str, summary: Summary, *, live: bool = False) -> str:
    """One line: icon, name, state, counts, elapsed and saved time."""
    state = {
        "executed": "built",
        "cached": "built",
        "failed": "failed",
        "canceled": "canceled",
    }.get(summary.status, "building" if live else summary.status)
    icon_status = {"executed": "cached", "running": "running"}.get(summary.status, summary.status)
    _, stroke = colors(icon_status)
    icon = STATUS_ICONS.get(icon_status, "•")
    out = (
        f'<div class="nbb-summary"><span style="color:{stroke};font-weight:bold">{icon}</span> '
        f"<b>{esc(name or 'build')}</b> {esc(state)}: {esc(counts_text(summary))} in "
        f"{time_span(summary.elapsed_ns)}"
    )
    if summary.saved_ns:
        out += f" (cache saved {time_span(summary.saved_ns)})"
    return out + "</div>"


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why the steps of a build that did not come from the cache ran (or did not).

    Attributes:
        name: the build's name.
        steps: every step that is not ``cached``, with its reason.
        total: how many steps the build has.
    """

    name: str
    steps: tuple[Step, ...]
    total: int

    def text(self) -> str:
        """One line per step: name, status and reason."""
        if not self.steps:
            return f"{self.name or 'build'}: every step came from the cache"
        head = f"{self.name or 'build'}: {len(self.steps)} of {self.total} steps not from the cache"
        rows = [
            (truncate(f"[{s.label}] {clean(s.instruction or s.name)}", _TEXT_WIDTH), s.status)
            for s in self.steps
        ]
        w0 = max(len(a) for a, _ in rows)
        w1 = max(len(b) for _, b in rows)
        lines = [head]
        for (a, b), s in zip(rows, self.steps, strict=True):
            lines.append(f"  {a:<{w0}}  {b:<{w1}}  {_reason_text(s) or '(no reason recorded)'}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None, **kwargs: Any
    ) -> dict[str, str]:
        return filter_bundle(
            {
                "text/plain": self.text,
                "text/html": lambda: box(
                    f"<div>{esc(self.text().splitlines()[0])}</div>"
                    + (steps_table_html(self.steps) if self.steps else ""),
                    css_class="nbb-explain",
                ),
            },
            include,
            exclude,
        )


def _reason_text(step: Step) -> str:
    return clean(step.reason).replace("\n", " ").strip()


class BuildResult:
    """A finished (or failed) build: steps, graph, image, and how to show them.

    Args:
        result: what :func:`engine.build.build` returned.
        reasons: why each step re-ran, by vertex digest (may be empty).
        error: the exception the build ended with (a result is shown before it propagates).
        explainer: called by :meth:`explain` with this result, when given (the explain
            engine's richer report); else :meth:`explain` lists the reasons.

    Use :meth:`from_events` when the build raised before returning an engine result.
    """

    def __init__(
        self,
        result: EngineBuildResult,
        *,
        reasons: Mapping[str, str] | None = None,
        error: BaseException | None = None,
        explainer: Explainer | None = None,
    ) -> None:
        reasons = reasons or {}
        by_digest = result.definition.by_digest()
        steps = []
        for s in result.steps:
            v = by_digest.get(s.digest)
            steps.append(
                Step.from_engine(
                    s,
                    inputs=tuple(v.inputs) if v is not None else (),
                    total=v.meta.total if v is not None else None,
                    reason=reasons.get(s.digest, ""),
                )
            )
        spans = [(s.started_ns, s.started_ns + s.duration_ns) for s in steps if s.started_ns]
        elapsed = max(e for _, e in spans) - min(b for b, _ in spans) if spans else 0
        self._setup(
            name=result.name,
            target=result.target,
            vertices=tuple(steps),
            image=result.image_id,
            tags=tuple(result.tags),
            error=error,
            elapsed_ns=elapsed,
            engine_result=result,
            explainer=explainer,
        )

    @classmethod
    def from_events(
        cls,
        events: Iterable[Event],
        *,
        name: str | None = None,
        target: str | None = None,
        tags: Sequence[str] = (),
        reasons: Mapping[str, str] | None = None,
        error: BaseException | None = None,
        explainer: Explainer | None = None,
    ) -> BuildResult:
        """A result from a build's events (e.g. a failed build, which returns no result).

        Args:
            events: the build's events in order (a :class:`~engine.events.ListReporter`'s).
            name: the build's name (default: the one in :class:`BuildStarted`).
            target: the target stage (default: the one in :class:`BuildStarted`).
            tags: the tags the build was asked for.
            reasons: why each step re-ran, by vertex digest.
            error: the exception the build ended with.
            explainer: see the class.
        """
        events = list(events)
        reasons = reasons or {}
        logs: dict[str, list[bytes]] = {}
        for e in events:
            if isinstance(e, VertexLog):
                logs.setdefault(e.digest, []).append(e.data)
        steps = tuple(
            Step.from_event(
                v,
                logs=decode_logs(b"".join(logs.get(v.digest, ()))),
                reason=reasons.get(v.digest, ""),
            )
            for v in dockerfile_order(latest_vertices(events).values())
        )
        started = next((e for e in events if isinstance(e, BuildStarted)), None)
        finished = next((e for e in reversed(events) if isinstance(e, BuildFinished)), None)
        self = cls.__new__(cls)
        self._setup(
            name=name if name is not None else (started.name if started else ""),
            target=target if target is not None else (started.target if started else ""),
            vertices=steps,
            image=finished.image_id if finished is not None else None,
            tags=tuple(tags),
            error=error,
            elapsed_ns=Summary.from_events(events).elapsed_ns,
            engine_result=None,
            explainer=explainer,
            finished_status=finished.status if finished is not None else None,
        )
        return self

    def _setup(
        self,
        *,
        name: str,
        target: str,
        vertices: tuple[Step, ...],
        image: str | None,
        tags: tuple[str, ...],
        error: BaseException | None,
        elapsed_ns: int,
        engine_result: EngineBuildResult | None,
        explainer: Explainer | None,
        finished_status: str | None = None,
    ) -> None:
        self._name = name
        self._target = target
        self._vertices = vertices
        self._image = image
        self._tags = tags
        self._error = error
        self._engine_result = engine_result
        self._explainer = explainer
        self._summary = summarize(
            vertices,
            elapsed_ns=elapsed_ns,
            status=self._status(vertices, error, finished_status),
            image_id=image,
        )

    @staticmethod
    def _status(
        vertices: tuple[Step, ...], error: BaseException | None, finished: str | None
    ) -> str:
        from engine.errors import BuildCanceled

        if isinstance(error, (BuildCanceled, KeyboardInterrupt)):
            return "canceled"
        if error is not None:
            return "failed"
        if finished is not None:
            return finished
        steps = [s for s in vertices if not s.internal]
        if any(s.status == "failed" for s in steps):
            return "failed"
        if any(s.status == "canceled" for s in steps):
            return "canceled"
        if any(s.status in ("pending", "running") for s in steps):
            return "running"
        return "cached" if all(s.status == "cached" for s in steps) else "executed"

    # -- data ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """What was built, as a person names it (the tag, or the context directory)."""
        return self._name

    @property
    def target(self) -> str:
        """The target stage ("" for the last stage)."""
        return self._target

    @property
    def steps(self) -> tuple[Step, ...]:
        """The Dockerfile's steps in dependency order (without ``[internal]`` vertices)."""
        return tuple(s for s in self._vertices if not s.internal)

    @property
    def vertices(self) -> tuple[Step, ...]:
        """Every vertex, including BuildKit's ``[internal]`` ones (the build context)."""
        return self._vertices

    @cached_property
    def graph(self) -> BuildGraph:
        """The build graph with each vertex's status."""
        return BuildGraph.from_steps(self._vertices)

    @property
    def image(self) -> str | None:
        """The image id (``sha256:…``), None when no image was made (no tag or output)."""
        return self._image

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags the image was given."""
        return self._tags

    @property
    def summary(self) -> Summary:
        """Counts per status, elapsed time and the time the cache saved."""
        return self._summary

    @property
    def status(self) -> str:
        """``executed`` or ``cached`` when it succeeded, else ``failed`` or ``canceled``."""
        return self._summary.status

    @property
    def ok(self) -> bool:
        """True when the build succeeded."""
        return self._error is None and self.status in ("executed", "cached")

    @property
    def error(self) -> BaseException | None:
        """The exception the build ended with, if any."""
        return self._error

    @property
    def engine_result(self) -> EngineBuildResult | None:
        """The engine's result (config, layers, definition); None for a failed build."""
        return self._engine_result

    def step(self, name_prefix: str) -> Step:
        """The first step whose progress name starts with ``name_prefix`` (KeyError if none)."""
        for s in self._vertices:
            if s.name.startswith(name_prefix):
                return s
        raise KeyError(name_prefix)

    def explain(self) -> object:
        """Why each step that did not come from the cache ran.

        Returns the explainer's report when one was given, else an :class:`Explanation`
        that lists every non-cached step with its reason.
        """
        if self._explainer is not None:
            return self._explainer(self)
        steps = self.steps
        return Explanation(
            name=display_name(self._name),
            steps=tuple(s for s in steps if s.status != "cached"),
            total=len(steps),
        )

    # -- display ---------------------------------------------------------------------------

    def text(self) -> str:
        """The deterministic ``text/plain``: counts, steps, tags, error (no times)."""
        state = {"executed": "built", "cached": "built"}.get(self.status, self.status)
        where = f" (target {self._target})" if self._target else ""
        lines = [
            f"BuildResult {display_name(self._name) or 'build'}{where}: {state}, "
            f"{counts_text(self._summary)}"
        ]
        rows = [
            (
                truncate(f"[{s.label}] {clean(s.instruction or s.name)}", _TEXT_WIDTH),
                s.status,
                s.short_key or "-",
                _reason_text(s) if s.status != "cached" else "",
            )
            for s in self.steps
        ]
        if rows:
            w0 = max(len(r[0]) for r in rows)
            w1 = max(len(r[1]) for r in rows)
            w2 = max(len(r[2]) for r in rows)
            for a, b, c, d in rows:
                lines.append(f"  {a:<{w0}}  {b:<{w1}}  {c:<{w2}}  {d}".rstrip())
        if self._tags:
            lines.append(f"tags: {', '.join(self._tags)}")
        if self._error is not None:
            first = str(self._error).strip().splitlines()
            lines.append(f"error: {first[0] if first else type(self._error).__name__}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def to_html(self, *, log_lines: int = LOG_LINES) -> str:
        """The static ``text/html``: summary, graph, step table and logs."""
        parts = [summary_html(display_name(self._name), self._summary)]
        meta = []
        if self._target:
            meta.append(f"target <code>{esc(self._target)}</code>")
        if self._tags:
            meta.append("tags " + ", ".join(f"<code>{esc(t)}</code>" for t in self._tags))
        if self._image:
            meta.append(f"image {id_span(self._image)}")
        worker = getattr(self._engine_result, "worker", "")
        if worker:
            meta.append(f"worker {esc(worker)}")
        if meta:
            parts.append(f'<div style="color:#555">{" · ".join(meta)}</div>')
        if self._error is not None:
            message = f"{type(self._error).__name__}: {self._error}"
            if any(s.status == "failed" and s.logs for s in self.steps):
                message = message.splitlines()[0]  # the open log below has the rest
            _, stroke = colors("failed")
            parts.append(f'<div class="nbb-error" style="color:{stroke}">{pre(message)}</div>')
        parts.append(self._graph_html())
        if self.steps:
            parts.append(steps_table_html(self.steps))
        parts.append(logs_html(self.steps, limit=log_lines))
        return box("".join(parts), css_class="nbb-result")

    def _graph_html(self) -> str:
        try:
            return self.graph.to_html()
        except Exception:  # never a formatter traceback: draw without graphviz
            try:
                return self.graph.fallback_html()
            except Exception:
                return ""

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None, **kwargs: Any
    ) -> dict[str, str]:
        """``text/plain`` and ``text/html`` (each left out, never raised, if it fails)."""
        return filter_bundle({"text/plain": self.text, "text/html": self.to_html}, include, exclude)
