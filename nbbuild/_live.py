"""What the HTML and widget views share: the build's state from its events, and throttling.

:class:`LiveState` keeps the latest event of each vertex and, per step, a :class:`LogRing` of
the last lines it printed (decoded incrementally, ``\\r`` progress lines collapsed).
:class:`ThrottledView` implements the start/update/finish protocol of
:class:`nbbuild._widgets.LiveView`: it redraws at most once per ``min_interval`` and the graph
at most once per ``graph_interval``; subclasses say how to show, draw and finish.
"""

from __future__ import annotations

import codecs
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from engine.events import BuildFinished, BuildStarted, Event, Summary, VertexEvent, VertexLog
from nbbuild._graph import BuildGraph
from nbbuild._result import display_name
from nbbuild._step import Step, counts_text, summarize

if TYPE_CHECKING:
    from nbbuild._result import BuildResult

__all__ = [
    "GRAPH_INTERVAL",
    "MAX_LOG_LINES",
    "MIN_INTERVAL",
    "Display",
    "LiveState",
    "LogRing",
    "ThrottledView",
    "error_status",
]

MIN_INTERVAL = 0.1  # seconds between redraws: at most 10 a second
# seconds between graph redraws: ``dot`` takes ~40 ms for 30 steps, on the main thread
GRAPH_INTERVAL = 0.5
MAX_LOG_LINES = 200  # lines kept per step

Display = Callable[..., Any]


class LogRing:
    """The last lines a step printed, decoded incrementally (UTF-8 split across chunks)."""

    def __init__(self, limit: int) -> None:
        self.lines: deque[str] = deque(maxlen=max(limit, 1))
        self.partial = ""
        self.count = 0  # complete lines seen
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, data: bytes) -> None:
        text = self.partial + self._decoder.decode(data)
        parts = text.split("\n")
        self.partial = parts.pop()
        for part in parts:
            self.lines.append(_overwrite(part))
            self.count += 1

    @property
    def dropped(self) -> int:
        return self.count - len(self.lines)

    def text(self) -> str:
        lines = list(self.lines)
        if self.partial:
            lines.append(_overwrite(self.partial))
        if self.dropped:
            n = self.dropped
            lines.insert(0, f"… {n} earlier line{'s' if n != 1 else ''}")
        return "\n".join(lines)


def _overwrite(line: str) -> str:
    # A progress bar rewrites its line with "\r": keep what a terminal would show.
    line = line.rstrip("\r")
    return line.rsplit("\r", 1)[-1]


class LiveState:
    """The latest state of a build from its events."""

    def __init__(self, max_log_lines: int) -> None:
        self.max_log_lines = max_log_lines
        self.vertices: dict[str, VertexEvent] = {}
        self.logs: dict[str, LogRing] = {}
        self.started: BuildStarted | None = None
        self.finished: BuildFinished | None = None

    def feed(self, events: Iterable[Event]) -> bool:
        changed = False
        for e in events:
            if isinstance(e, VertexEvent):
                self.vertices[e.digest] = e
            elif isinstance(e, VertexLog):
                ring = self.logs.get(e.digest)
                if ring is None:
                    ring = self.logs[e.digest] = LogRing(self.max_log_lines)
                ring.feed(e.data)
            elif isinstance(e, BuildStarted):
                self.started = e
            elif isinstance(e, BuildFinished):
                self.finished = e
            else:
                continue  # progress and warnings are not shown here
            changed = True
        return changed

    @property
    def running(self) -> bool:
        return self.finished is None and any(v.status == "running" for v in self.vertices.values())

    def steps(self, now_ns: int) -> tuple[Step, ...]:
        return tuple(
            Step.from_event(
                v,
                logs=self.logs[d].text() if d in self.logs else "",
                now_ns=now_ns,
            )
            for d, v in self.vertices.items()
        )

    def summary(self, steps: Iterable[Step], now_ns: int) -> Summary:
        if self.started is not None:
            end = self.finished.time_ns if self.finished is not None else now_ns
            elapsed = end - self.started.time_ns
        else:
            elapsed = 0
        status = self.finished.status if self.finished is not None else "running"
        image = self.finished.image_id if self.finished is not None else None
        return summarize(steps, elapsed_ns=elapsed, status=status, image_id=image)


class ThrottledView:
    """Throttling and the start/update/finish protocol; subclasses draw."""

    def __init__(
        self,
        *,
        name: str = "",
        max_log_lines: int = MAX_LOG_LINES,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], float] | None = None,
        now_ns: Callable[[], int] | None = None,
        display: Display | None = None,
    ) -> None:
        self.name = name
        self.min_interval = min_interval
        self.state = LiveState(max_log_lines)
        self.draws = 0  # redraws so far (the first display is not one)
        self._clock = clock if clock is not None else time.monotonic
        self._now_ns = now_ns if now_ns is not None else time.time_ns
        self._display = display
        self._last_draw: float | None = None
        self._dirty = False
        self._shown = False
        self._done = False
        self._graph_sig: tuple[tuple[str, str, str | None], ...] | None = None
        self._graph_html = ""
        self._graph_at: float | None = None
        self.graph_interval = GRAPH_INTERVAL
        self.final_summary: Summary | None = None  # set by finish

    # -- protocol --------------------------------------------------------------------------

    def start(self) -> None:
        """Show the view once (idempotent)."""
        if self._shown:
            return
        self._shown = True
        self._show()

    def update(self, events: Sequence[Event]) -> None:
        """Take a batch of events and redraw if the last redraw is ``min_interval`` old."""
        if self._done:
            return
        self.start()
        if self.state.feed(events) or self.state.running:
            self._dirty = True  # a running step's time moves even without events
        if not self._dirty:
            return
        now = self._clock()
        if self._last_draw is not None and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        self._dirty = False
        self.draws += 1
        self._draw()

    def finish(
        self, result: BuildResult | None = None, *, error: BaseException | None = None
    ) -> None:
        """Draw the final state (from ``result`` when given); later calls do nothing."""
        if self._done:
            return
        self.start()
        self._done = True
        self.draws += 1
        if result is not None:
            if not self.name:
                self.name = result.name
            self.final_summary = result.summary
        else:
            vertices, summary = self._snapshot()
            if error is not None and self.state.finished is None:
                summary = summarize(
                    vertices, elapsed_ns=summary.elapsed_ns, status=error_status(error)
                )
            self.final_summary = summary
        self._final(result, error)

    # -- for subclasses --------------------------------------------------------------------

    def _show(self) -> None:
        raise NotImplementedError

    def _draw(self, *, final: bool = False) -> None:
        raise NotImplementedError

    def _final(self, result: BuildResult | None, error: BaseException | None) -> None:
        raise NotImplementedError

    def _show_display(self, obj: object, **kwargs: Any) -> Any:
        if self._display is not None:
            return self._display(obj, **kwargs)
        from IPython.display import display

        return display(obj, **kwargs)  # type: ignore[no-untyped-call]

    def _snapshot(self) -> tuple[tuple[Step, ...], Summary]:
        now = self._now_ns()
        vertices = self.state.steps(now)
        return vertices, self.state.summary(vertices, now)

    def _graph(self, vertices: tuple[Step, ...], *, force: bool = False) -> str:
        # Redrawn when a status or key changed, at most every ``graph_interval`` seconds
        # (dot runs once per distinct graph); a change held back keeps the view dirty.
        sig = tuple((v.digest, v.status, v.key) for v in vertices)
        if sig == self._graph_sig:
            return self._graph_html
        now = self._clock()
        if not force and self._graph_at is not None and now - self._graph_at < self.graph_interval:
            self._dirty = True
            return self._graph_html
        self._graph_sig = sig
        self._graph_at = now
        try:
            self._graph_html = BuildGraph.from_steps(vertices).to_html() if vertices else ""
        except Exception:  # never let drawing break the build
            self._graph_html = ""
        return self._graph_html

    def text(self) -> str:
        """A deterministic one-line summary (no times): what ``repr`` shows."""
        name = display_name(self.name) or "build"
        summary = self.final_summary
        if summary is None:
            vertices = tuple(s for s in self.state.steps(0) if not s.internal)
            if not vertices and self.state.finished is None:
                return f"nbbuild {name}: starting"
            summary = self.state.summary(vertices, 0)
        state = {"executed": "built", "cached": "built", "running": "building"}.get(
            summary.status, summary.status
        )
        return f"nbbuild {name}: {state}, {counts_text(summary)}"

    def __repr__(self) -> str:
        return self.text()


def error_status(error: BaseException) -> str:
    from engine.errors import BuildCanceled

    return "canceled" if isinstance(error, (BuildCanceled, KeyboardInterrupt)) else "failed"
