"""Live views of a running build: an ipywidgets panel, a display-handle HTML view, plain text.

The magic runs the engine in a worker thread and drains a
:class:`~engine.events.QueueReporter` on the cell's main thread (ipykernel 7 routes output
from other threads to no cell), passing each batch to :meth:`LiveView.update` and, at the end,
the result to :meth:`LiveView.finish`::

    view = live_view("auto", name="app")
    while not queue.closed:
        view.update(queue.wait(0.1))      # an empty batch just ticks the clock
    view.finish(result)                   # or finish(None, error=exc)

Every view keeps the latest state of each vertex and the last ``max_log_lines`` lines each
step printed, and redraws at most once per ``min_interval`` (default 0.1 s: ≤ 10 updates a
second); :meth:`~LiveView.finish` always draws.

- :class:`WidgetView` (ipywidgets 8): a ``VBox`` of a summary ``HTML``, the graph (inline
  SVG), the step table and an ``Accordion`` of logs, collapsed unless a step failed. Its
  ``text/plain`` (what headless execution stores, and nbval compares) is a deterministic
  summary, not a memory address. ``finish`` shrinks it to the summary line, since the
  result shown below it has the graph, table and logs.
- :class:`HtmlView` (no ipywidgets): ``display(..., display_id=True)`` once, then
  ``handle.update(...)``. nbval ignores ``update_display_data`` while the saved notebook keeps
  the last update, so the view starts *and ends* with the same fixed content (empty, or the
  note that ipywidgets is missing): stored and re-run outputs then agree.
- :class:`PlainView`: BuildKit's plain progress on stdout, for terminal IPython.
- :class:`NullView`: nothing.

:func:`live_view` picks one as tqdm and dask do: the widget in a Jupyter kernel, plain text in
terminal IPython or plain Python.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from engine.events import Event, Summary
from nbbuild._html import box, colors, esc, filter_bundle, log_block, pre, steps_table_html
from nbbuild._live import (
    MAX_LOG_LINES,
    MIN_INTERVAL,
    Display,
    ThrottledView,
)
from nbbuild._result import BuildResult, display_name, summary_html
from nbbuild._step import Step

if TYPE_CHECKING:
    from nbbuild.progress import PlainRenderer

__all__ = [
    "MODES",
    "HtmlView",
    "LiveView",
    "NullView",
    "PlainView",
    "WidgetView",
    "frontend",
    "live_view",
]

MODES: tuple[str, ...] = ("auto", "widget", "html", "plain", "none")
Mode = Literal["auto", "widget", "html", "plain", "none"]

IPYWIDGETS_MISSING = (
    "ipywidgets is not installed: showing a static progress view "
    "(pip install ipywidgets for the live widget)."
)


class LiveView(Protocol):
    """What the magic drives: ``start`` (optional), ``update`` per batch, ``finish`` once."""

    def start(self) -> None:
        """Show the view (``update`` does it on first use)."""

    def update(self, events: Sequence[Event]) -> None:
        """Take a batch of events (possibly empty: a clock tick) and redraw if due."""

    def finish(
        self, result: BuildResult | None = None, *, error: BaseException | None = None
    ) -> None:
        """Draw the final state (idempotent)."""


# ---------------------------------------------------------------------------------------------
# ipywidgets


_BOX_CLASS: type | None = None


def _box_class() -> type:
    """A ``VBox`` whose ``repr`` is its view's text (tqdm's ``TqdmHBox`` trick)."""
    global _BOX_CLASS
    if _BOX_CLASS is None:
        from ipywidgets import VBox

        class NbbuildBox(VBox):  # type: ignore[misc]
            _nbb_text: Callable[[], str] | None = None

            def __repr__(self) -> str:
                text = self._nbb_text
                return text() if text is not None else "nbbuild"

        _BOX_CLASS = NbbuildBox
    return _BOX_CLASS


class WidgetView(ThrottledView):
    """An ipywidgets panel: summary, graph, step table and logs.

    Args:
        name: the build's name (shown, and in the text).
        max_log_lines: lines of each step's log kept and shown.
        min_interval: seconds between redraws.
        clock: monotonic seconds (the throttle), default ``time.monotonic``.
        now_ns: wall-clock ns (running steps' times), default ``time.time_ns``.
        display: ``IPython.display.display`` or a stand-in.
        graph: show the graph.
        collapse: at ``finish``, keep only the summary line (the result shows the rest).

    Raises:
        ImportError: ipywidgets is not installed (:func:`live_view` falls back to HTML).
    """

    def __init__(
        self,
        *,
        name: str = "",
        max_log_lines: int = MAX_LOG_LINES,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], float] | None = None,
        now_ns: Callable[[], int] | None = None,
        display: Display | None = None,
        graph: bool = True,
        collapse: bool = True,
    ) -> None:
        import ipywidgets as w

        super().__init__(
            name=name,
            max_log_lines=max_log_lines,
            min_interval=min_interval,
            clock=clock,
            now_ns=now_ns,
            display=display,
        )
        self.show_graph = graph
        self.collapse = collapse
        self.summary = w.HTML(value=self._summary_html(None))
        self.graph = w.HTML(value="")
        self.table = w.HTML(value="")
        self.logs = w.Accordion(children=(), selected_index=None)
        self._log_widgets: dict[str, Any] = {}
        self._opened: set[str] = set()
        self.box = _box_class()(children=(self.summary, self.graph, self.table, self.logs))
        self.box._nbb_text = self.text

    def _summary_html(self, summary: Summary | None) -> str:
        name = display_name(self.name) or "build"
        if summary is None:
            return box(f"<div><b>{esc(name)}</b> starting…</div>", css_class="nbb-live")
        return box(summary_html(name, summary, live=True), css_class="nbb-live")

    def _show(self) -> None:
        self._show_display(self.box)

    def _draw(self, *, final: bool = False) -> None:
        vertices, summary = self._snapshot()
        steps = tuple(s for s in vertices if not s.internal)
        self.summary.value = self._summary_html(summary)
        if self.show_graph:
            self.graph.value = self._graph(vertices, force=final)
        self.table.value = steps_table_html(steps) if steps else ""
        self._draw_logs(steps)

    def _draw_logs(self, steps: tuple[Step, ...]) -> None:
        import ipywidgets as w

        added = False
        for s in steps:
            if not (s.logs or (s.status == "failed" and s.error)):
                continue
            widget = self._log_widgets.get(s.digest)
            if widget is None:
                widget = self._log_widgets[s.digest] = w.HTML()
                added = True
            body = s.logs
            if s.status == "failed" and s.error:
                _, stroke = colors("failed")
                head = f'<div style="color:{stroke}">{esc(s.error.splitlines()[0])}</div>'
            else:
                head = ""
            widget.value = head + (pre(body) if body else "")
        by_digest = {s.digest: s for s in steps}
        digests = list(self._log_widgets)
        titles = tuple(
            f"[{by_digest[d].label}] {by_digest[d].instruction or by_digest[d].name}"[:80]
            + f" · {by_digest[d].status}"
            if d in by_digest
            else d
            for d in digests
        )
        if added:
            self.logs.children = tuple(self._log_widgets[d] for d in digests)
        if tuple(self.logs.titles) != titles:
            self.logs.titles = titles
        for i, d in enumerate(digests):
            step = by_digest.get(d)
            if step is not None and step.status == "failed" and d not in self._opened:
                self._opened.add(d)
                self.logs.selected_index = i  # open a failed step's log, once

    def _final(self, result: BuildResult | None, error: BaseException | None) -> None:
        if self.collapse:
            self.box.children = (self.summary,)
        else:
            self._draw(final=True)
        self.summary.value = self._summary_html(self.final_summary)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.box._repr_mimebundle_(**kwargs)


# ---------------------------------------------------------------------------------------------
# HTML through a display handle


class _Bundle:
    """A display object with fixed ``text/plain`` and ``text/html``."""

    def __init__(self, text: str, html: str) -> None:
        self.text = text
        self.html = html

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None, **kwargs: Any
    ) -> dict[str, str]:
        return filter_bundle(
            {"text/plain": lambda: self.text, "text/html": lambda: self.html}, include, exclude
        )

    def __repr__(self) -> str:
        return self.text


class HtmlView(ThrottledView):
    """Static HTML updated in place through a display handle (when ipywidgets is missing).

    Takes the arguments of :class:`WidgetView` (but ``collapse``), plus:

    Args:
        note: a line shown above the progress and left in place at the end (e.g.
            :data:`IPYWIDGETS_MISSING`).
    """

    def __init__(
        self,
        *,
        name: str = "",
        max_log_lines: int = MAX_LOG_LINES,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], float] | None = None,
        now_ns: Callable[[], int] | None = None,
        display: Display | None = None,
        graph: bool = True,
        note: str = "",
    ) -> None:
        super().__init__(
            name=name,
            max_log_lines=max_log_lines,
            min_interval=min_interval,
            clock=clock,
            now_ns=now_ns,
            display=display,
        )
        self.show_graph = graph
        self.note = note
        self.handle: Any = None

    def _note_html(self) -> str:
        if not self.note:
            return ""
        return f'<div class="nbb-note" style="color:#777;font-size:12px">{esc(self.note)}</div>'

    def _idle(self) -> _Bundle:
        # The same at the start and the end: see the module docstring (nbval).
        note = self._note_html()
        return _Bundle(self.note, box(note, css_class="nbb-live") if note else "")

    def _show(self) -> None:
        self.handle = self._show_display(self._idle(), display_id=True)

    def html(self) -> str:
        """The live view's HTML now: summary, graph, table and logs."""
        vertices, summary = self._snapshot()
        steps = tuple(s for s in vertices if not s.internal)
        parts = [self._note_html(), summary_html(display_name(self.name), summary, live=True)]
        if self.show_graph:
            parts.append(self._graph(vertices))
        if steps:
            parts.append(steps_table_html(steps))
        limit = self.state.max_log_lines + 1  # the ring already cut it (+ its "earlier" line)
        parts.extend(
            log_block(
                f"[{s.label}] {s.instruction or s.name}"[:90],
                s.status,
                s.logs,
                limit=limit,
                error=s.error.splitlines()[0] if s.status == "failed" and s.error else "",
            )
            for s in steps
            if s.logs or (s.status == "failed" and s.error)
        )
        return box("".join(parts), css_class="nbb-live")

    def _update_handle(self, obj: _Bundle) -> None:
        if self.handle is not None:
            self.handle.update(obj)

    def _draw(self, *, final: bool = False) -> None:
        self._update_handle(_Bundle(self.text(), self.html()))

    def _final(self, result: BuildResult | None, error: BaseException | None) -> None:
        self._update_handle(self._idle())


# ---------------------------------------------------------------------------------------------
# Plain text and nothing


class PlainView:
    """BuildKit's plain progress on stdout (terminal IPython, plain Python).

    Args:
        out: where to write (default ``sys.stdout``).
        clock: nanoseconds now (for reproducible output in tests).
        renderer: a renderer to use instead (``emit``/``refresh``/``close``).
    """

    def __init__(
        self,
        *,
        out: IO[str] | None = None,
        clock: Callable[[], int] | None = None,
        renderer: PlainRenderer | None = None,
    ) -> None:
        if renderer is None:
            from nbbuild.progress import PlainRenderer

            renderer = PlainRenderer(out if out is not None else sys.stdout, clock=clock)
        self.renderer = renderer
        self._done = False

    def start(self) -> None:
        """Nothing to show before the first event."""

    def update(self, events: Sequence[Event]) -> None:
        """Print the batch (the renderer limits itself to one print per 100 ms)."""
        if self._done:
            return
        for event in events:
            self.renderer.emit(event)
        if not events:
            self.renderer.refresh()

    def finish(
        self, result: BuildResult | None = None, *, error: BaseException | None = None
    ) -> None:
        """Print the rest and the failed steps' last lines."""
        if self._done:
            return
        self._done = True
        self.renderer.close()

    def __repr__(self) -> str:
        return "PlainView()"


class NullView:
    """Shows nothing (``progress="none"``)."""

    def start(self) -> None:
        """Nothing."""

    def update(self, events: Sequence[Event]) -> None:
        """Nothing."""

    def finish(
        self, result: BuildResult | None = None, *, error: BaseException | None = None
    ) -> None:
        """Nothing."""

    def __repr__(self) -> str:
        return "NullView()"


# ---------------------------------------------------------------------------------------------
# Choosing


class _Unset:
    pass


_UNSET = _Unset()


def frontend(shell: object = _UNSET) -> Literal["kernel", "terminal", "python"]:
    """Where this runs: a Jupyter ``kernel``, ``terminal`` IPython, or plain ``python``.

    A kernel is ``ipykernel`` imported and the shell a ``ZMQInteractiveShell`` (as tqdm and
    dask decide). ``shell`` defaults to ``IPython.get_ipython()`` when IPython is imported.
    """
    if isinstance(shell, _Unset):
        ipython = sys.modules.get("IPython")
        get = getattr(ipython, "get_ipython", None)
        shell = get() if callable(get) else None
    if shell is None:
        return "python"
    if "ipykernel" in sys.modules:
        zmqshell = sys.modules.get("ipykernel.zmqshell")
        cls = getattr(zmqshell, "ZMQInteractiveShell", None)
        if isinstance(cls, type) and isinstance(shell, cls):
            return "kernel"
        if any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__):
            return "kernel"
    return "terminal"


def live_view(
    mode: Mode | str = "auto",
    *,
    name: str = "",
    max_log_lines: int = MAX_LOG_LINES,
    min_interval: float = MIN_INTERVAL,
    display: Display | None = None,
    out: IO[str] | None = None,
    graph: bool = True,
    shell: object = _UNSET,
) -> LiveView:
    """The live view for ``mode``: ``auto``, ``widget``, ``html``, ``plain`` or ``none``.

    ``auto`` is the widget in a Jupyter kernel (:func:`frontend`) and plain text elsewhere.
    ``widget`` without ipywidgets falls back to :class:`HtmlView` with a note saying so.

    Args:
        mode: one of :data:`MODES`.
        name: the build's name.
        max_log_lines: lines of each step's log kept.
        min_interval: seconds between redraws.
        display: ``IPython.display.display`` or a stand-in (widget and HTML views).
        out: where the plain view writes (default stdout).
        graph: show the graph in the widget and HTML views.
        shell: the IPython shell to judge ``auto`` by (default ``get_ipython()``).

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown progress mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "auto":
        mode = "widget" if frontend(shell) == "kernel" else "plain"
    if mode == "none":
        return NullView()
    if mode == "plain":
        return PlainView(out=out)
    common: dict[str, Any] = {
        "name": name,
        "max_log_lines": max_log_lines,
        "min_interval": min_interval,
        "display": display,
        "graph": graph,
    }
    if mode == "widget":
        try:
            return WidgetView(**common)
        except ImportError:
            return HtmlView(**common, note=IPYWIDGETS_MISSING)
    return HtmlView(**common)
