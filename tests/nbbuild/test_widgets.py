"""Live views: the ipywidgets panel (built without a kernel), the display-handle HTML view with
a fake handle, the plain view, throttling with a fake clock, and choosing a view."""

from __future__ import annotations

import importlib.util
import io
import re
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine.build import build
from engine.errors import StepFailed
from engine.events import (
    BuildFinished,
    BuildStarted,
    Event,
    QueueReporter,
    VertexEvent,
    VertexLog,
)
from nbbuild._live import LogRing
from nbbuild._result import BuildResult
from nbbuild._widgets import (
    IPYWIDGETS_MISSING,
    HtmlView,
    NullView,
    PlainView,
    WidgetView,
    frontend,
    live_view,
)


def _load_base() -> ModuleType:
    name = "nbbuild_tests_buildkit_base"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "buildkit_base.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


base = _load_base()
busybox_archive = base.busybox_archive
bk = base.bk

S = 1_000_000_000
KEY = "sha256:" + "ab" * 32


class Clock:
    """Monotonic seconds for the throttle, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeHandle:
    def __init__(self) -> None:
        self.updates: list[Any] = []

    def update(self, obj: Any) -> None:
        self.updates.append(obj)


class FakeDisplay:
    """Records ``display`` calls and what they showed; a handle for ``display_id=True``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []
        self.shown: list[dict[str, Any]] = []  # the mimebundle at display time
        self.handle = FakeHandle()

    def __call__(self, obj: Any, **kwargs: Any) -> FakeHandle | None:
        self.calls.append((obj, kwargs))
        self.shown.append(obj._repr_mimebundle_())
        return self.handle if kwargs.get("display_id") else None


def vertices() -> dict[str, VertexEvent]:
    """A two-stage build's vertices, pending."""
    ctx = VertexEvent(digest="sha256:ctx", name="[internal] load build context")
    base_ = VertexEvent(
        digest="sha256:from",
        name="[builder 1/2] FROM busybox",
        step=1,
        total=2,
        stage="builder",
        line=1,
        instruction="FROM busybox AS builder",
    )
    run = VertexEvent(
        digest="sha256:run",
        inputs=("sha256:from", "sha256:ctx"),
        name="[builder 2/2] RUN make",
        step=2,
        total=2,
        stage="builder",
        line=2,
        instruction="RUN make",
    )
    copy = VertexEvent(
        digest="sha256:copy",
        inputs=("sha256:from", "sha256:run"),
        name="[stage-1 2/2] COPY --from=builder /out /out",
        step=2,
        total=2,
        stage="stage-1",
        line=4,
        instruction="COPY --from=builder /out /out",
    )
    return {"ctx": ctx, "from": base_, "run": run, "copy": copy}


def script(t0: int = 100 * S, fail: bool = False) -> list[list[Event]]:
    """Batches of a build that starts at ``t0``: the run step logs and succeeds (or fails)."""
    v = vertices()
    run_started = v["run"].running(t0 + 1 * S)
    batches: list[list[Event]] = [
        [BuildStarted(build_id="b", name="app", time_ns=t0), *v.values()],
        [
            v["ctx"].finished("skipped", t0),
            v["from"].finished("cached", t0 + S // 2, key=KEY),
            run_started,
        ],
        [VertexLog(digest="sha256:run", data=b"compiling\n", time_ns=t0 + 2 * S)],
        [VertexLog(digest="sha256:run", data=b"lin", time_ns=t0 + 3 * S)],
        [VertexLog(digest="sha256:run", data=b"king\n", stream=2, time_ns=t0 + 3 * S)],
    ]
    if fail:
        batches.append(
            [
                run_started.finished("failed", t0 + 4 * S, error="exit code: 2\n  | linking"),
                v["copy"].finished("canceled", t0 + 4 * S),
                BuildFinished(build_id="b", status="failed", time_ns=t0 + 5 * S),
            ]
        )
    else:
        batches.append(
            [
                run_started.finished("executed", t0 + 4 * S, key=KEY),
                v["copy"].running(t0 + 4 * S).finished("executed", t0 + 5 * S, key=KEY),
                BuildFinished(build_id="b", status="executed", time_ns=t0 + 6 * S),
            ]
        )
    return batches


def feed(view: Any, batches: list[list[Event]], clock: Clock | None = None) -> None:
    for batch in batches:
        if clock is not None:
            clock.now += 1.0
        view.update(batch)


# -- the widget ------------------------------------------------------------------------------


def test_widget_displays_once_with_a_deterministic_text() -> None:
    display = FakeDisplay()
    view = WidgetView(name="/tmp/abc/app", display=display, clock=Clock())
    view.start()
    view.start()
    assert len(display.calls) == 1
    shown, kwargs = display.calls[0]
    assert shown is view.box and kwargs == {}
    bundle = shown._repr_mimebundle_()
    assert bundle["text/plain"] == "nbbuild app: starting"  # not a memory address, no path
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert view._repr_mimebundle_()["text/plain"] == "nbbuild app: starting"


def test_widget_update_shows_summary_graph_table_and_logs() -> None:
    clock = Clock()
    view = WidgetView(name="app", display=FakeDisplay(), clock=clock, now_ns=lambda: 103 * S)
    feed(view, script()[:5], clock)
    assert "app</b> building" in view.summary.value
    assert "1 cached" in view.summary.value
    assert '<span class="nbb-time">3.0s</span>' in view.summary.value  # now - start
    assert "RUN make" in view.table.value and "COPY --from=builder" in view.table.value
    assert "<svg" in view.graph.value and "stage builder" in view.graph.value
    assert len(view.logs.children) == 1
    assert view.logs.titles == ("[builder 2/2] RUN make · running",)
    assert "compiling\nlinking" in view.logs.children[0].value
    assert view.logs.selected_index is None  # collapsed: nothing failed
    assert repr(view) == "nbbuild app: building, 3 steps: 1 cached, 0 executed, 2 pending"
    assert "<script" not in view.summary.value + view.graph.value + view.table.value


def test_widget_opens_the_log_of_a_failed_step() -> None:
    clock = Clock()
    view = WidgetView(name="app", display=FakeDisplay(), clock=clock)
    feed(view, script(fail=True), clock)
    assert view.logs.selected_index == 0
    assert "exit code: 2" in view.logs.children[0].value
    assert view.logs.titles == ("[builder 2/2] RUN make · failed",)
    assert repr(view) == "nbbuild app: failed, 3 steps: 1 cached, 0 executed, 1 failed, 1 canceled"


def test_widget_finish_collapses_to_the_final_summary() -> None:
    clock = Clock()
    view = WidgetView(name="app", display=FakeDisplay(), clock=clock)
    feed(view, script(), clock)
    draws = view.draws
    view.finish(None)
    assert view.box.children == (view.summary,)
    assert "app</b> built: 3 steps: 1 cached, 2 executed" in view.summary.value
    assert repr(view) == "nbbuild app: built, 3 steps: 1 cached, 2 executed"
    assert view.draws == draws + 1
    view.finish(None)  # idempotent
    view.update(script()[0])  # ignored after finish
    assert view.draws == draws + 1


def test_widget_finish_with_an_error_and_no_build_events() -> None:
    view = WidgetView(name="app", display=FakeDisplay(), clock=Clock())
    view.finish(None, error=KeyboardInterrupt())
    assert repr(view) == "nbbuild app: canceled, 0 steps: 0 cached, 0 executed"
    assert "canceled" in view.summary.value


def test_widget_repr_does_not_depend_on_timings() -> None:
    a = WidgetView(name="app", display=FakeDisplay(), clock=Clock())
    b = WidgetView(name="app", display=FakeDisplay(), clock=Clock())
    for x, y in zip(script(100 * S), script(9_000 * S), strict=True):
        a.update(x)
        b.update(y)
        assert repr(a) == repr(b)
        assert "0x" not in repr(a) and not re.search(r"\d\.\ds", repr(a))
        assert a.box._repr_mimebundle_()["text/plain"] == repr(a)


def test_widget_updates_are_throttled_to_ten_a_second() -> None:
    clock = Clock()
    view = WidgetView(name="app", display=FakeDisplay(), clock=clock)
    batches = script()
    view.update(batches[0])
    assert view.draws == 1
    values = []
    for i in range(50):  # a burst at the same instant: no redraw
        view.update([VertexLog(digest="sha256:run", data=b"x%d\n" % i, time_ns=1)])
        values.append(view.summary.value)
    assert view.draws == 1
    clock.now += 0.1
    view.update([])  # the pending state is drawn at the next chance
    assert view.draws == 2
    assert "x49" in view.logs.children[0].value

    # one second of events every 10 ms: at most 10 redraws
    view.update(batches[1])  # a running step: every tick may redraw its time
    start = view.draws
    for _ in range(100):
        clock.now += 0.01
        view.update([VertexLog(digest="sha256:run", data=b"y\n", time_ns=1)])
    assert 9 <= view.draws - start <= 10


def test_widget_graph_is_redrawn_at_most_twice_a_second() -> None:
    clock = Clock()
    view = WidgetView(name="app", display=FakeDisplay(), clock=clock)
    batches = script()
    view.update(batches[0])
    pending = view.graph.value
    assert "pending" in pending
    clock.now += 0.2
    view.update(batches[1])  # statuses changed, but the graph was drawn 0.2 s ago
    assert view.graph.value == pending
    assert "1 cached" in view.summary.value  # the rest is up to date
    clock.now += 0.3
    view.update([])  # the held-back graph comes with the next redraw
    assert view.graph.value != pending and "cached" in view.graph.value
    # finish always draws the final graph
    view.collapse = False
    view.update(batches[-1])
    view.finish(None)
    assert "executed" in view.graph.value and "running" not in view.graph.value


def test_widget_idle_updates_do_not_redraw() -> None:
    clock = Clock()
    view = WidgetView(name="app", display=FakeDisplay(), clock=clock)
    feed(view, script(), clock)
    draws = view.draws
    for _ in range(5):
        clock.now += 1
        view.update([])  # nothing running, nothing new
    assert view.draws == draws


def test_widget_keeps_the_last_lines_of_each_step() -> None:
    clock = Clock()
    view = WidgetView(name="app", display=FakeDisplay(), clock=clock, max_log_lines=3)
    view.update(script()[0])
    data = b"".join(b"line %d\n" % i for i in range(10))
    clock.now += 1
    view.update([VertexLog(digest="sha256:run", data=data, time_ns=1)])
    text = view.logs.children[0].value
    assert "… 7 earlier lines\nline 7\nline 8\nline 9" in text
    assert "line 6" not in text


def test_log_ring_decodes_split_utf8_and_carriage_returns() -> None:
    ring = LogRing(10)
    data = "héllo\n".encode()
    ring.feed(data[:2])
    ring.feed(data[2:])
    ring.feed(b"progress 10%\rprogress 50%\rprogress 100%\r\n")
    ring.feed(b"partial")
    assert ring.text() == "héllo\nprogress 100%\npartial"
    assert ring.count == 2


# -- the HTML view ---------------------------------------------------------------------------


def test_html_view_uses_one_display_handle_and_ends_as_it_began() -> None:
    display = FakeDisplay()
    clock = Clock()
    view = HtmlView(name="app", display=display, clock=clock, now_ns=lambda: 103 * S)
    view.start()
    assert len(display.calls) == 1
    first, kwargs = display.calls[0]
    assert kwargs == {"display_id": True}
    assert first._repr_mimebundle_() == {"text/plain": "", "text/html": ""}

    feed(view, script()[:5], clock)
    updates = display.handle.updates
    assert len(updates) == 5
    live = updates[-1]._repr_mimebundle_()
    assert live["text/plain"] == "nbbuild app: building, 3 steps: 1 cached, 0 executed, 2 pending"
    html = live["text/html"]
    assert "<svg" in html and '<table class="nbb-steps"' in html
    assert "compiling\nlinking" in html and "<script" not in html

    view.finish(None)
    # nbval keeps the first display and the saved notebook the last: they are the same
    assert display.handle.updates[-1]._repr_mimebundle_() == first._repr_mimebundle_()
    assert len(display.calls) == 1


def test_html_view_is_throttled() -> None:
    display = FakeDisplay()
    clock = Clock()
    view = HtmlView(name="app", display=display, clock=clock)
    for batch in script():
        view.update(batch)  # all at the same instant
    assert len(display.handle.updates) == 1
    clock.now += 0.1
    view.update([])
    assert len(display.handle.updates) == 2
    view.finish(None)
    assert len(display.handle.updates) == 3


def test_html_view_opens_a_failed_log_and_keeps_its_note() -> None:
    display = FakeDisplay()
    clock = Clock()
    view = HtmlView(name="app", display=display, clock=clock, note=IPYWIDGETS_MISSING)
    feed(view, script(fail=True), clock)
    html = display.handle.updates[-1]._repr_mimebundle_()["text/html"]
    assert html.count('<details class="nbb-log" open') == 1
    assert "ipywidgets is not installed" in html
    view.finish(None)
    end = display.handle.updates[-1]._repr_mimebundle_()
    assert end["text/plain"] == IPYWIDGETS_MISSING
    assert "ipywidgets is not installed" in end["text/html"]
    assert display.calls[0][0]._repr_mimebundle_() == end


def test_html_view_without_dot_draws_the_html_graph(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    display = FakeDisplay()
    clock = Clock()
    view = HtmlView(name="app", display=display, clock=clock)
    feed(view, script(), clock)
    html = display.handle.updates[-1]._repr_mimebundle_()["text/html"]
    assert "<svg" not in html and "nbb-graph-fallback" in html


# -- plain and none --------------------------------------------------------------------------


def test_plain_view_prints_buildkit_progress() -> None:
    out = io.StringIO()
    view = PlainView(out=out, clock=lambda: 110 * S)
    for batch in script(fail=True):
        view.update(batch)
    view.update([])
    view.finish(None)
    view.finish(None)
    text = out.getvalue()
    assert "[builder 2/2] RUN make" in text
    assert "compiling" in text
    assert "ERROR: exit code: 2" in text
    assert repr(view) == "PlainView()"


def test_null_view_does_nothing() -> None:
    view = NullView()
    view.start()
    view.update(script()[0])
    view.finish(None)
    assert repr(view) == "NullView()"


# -- choosing --------------------------------------------------------------------------------


@pytest.fixture
def kernel_shell() -> Iterator[object]:
    """A ``ZMQInteractiveShell`` (not started), as ``get_ipython()`` returns in a kernel."""
    from ipykernel.zmqshell import ZMQInteractiveShell

    yield ZMQInteractiveShell.__new__(ZMQInteractiveShell)


class TerminalInteractiveShell:
    pass


def test_frontend(kernel_shell: object, monkeypatch: pytest.MonkeyPatch) -> None:
    assert frontend(kernel_shell) == "kernel"
    assert frontend(TerminalInteractiveShell()) == "terminal"
    assert frontend(None) == "python"
    # a shell class of that name counts only when ipykernel is imported (as tqdm decides)
    zmq_like = type("ZMQInteractiveShell", (), {})()
    assert frontend(zmq_like) == "kernel"
    monkeypatch.delitem(sys.modules, "ipykernel")
    assert frontend(zmq_like) == "terminal"


def test_frontend_defaults_to_get_ipython(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("IPython")
    shell = TerminalInteractiveShell()
    fake.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert frontend() == "terminal"
    fake.get_ipython = lambda: None  # type: ignore[attr-defined]
    assert frontend() == "python"


def test_live_view_auto_picks_the_widget_in_a_kernel_and_plain_elsewhere(
    kernel_shell: object,
) -> None:
    display = FakeDisplay()
    assert isinstance(live_view("auto", shell=kernel_shell, display=display), WidgetView)
    assert isinstance(live_view("auto", shell=TerminalInteractiveShell()), PlainView)
    assert isinstance(live_view("auto", shell=None), PlainView)
    assert isinstance(live_view("widget", display=display), WidgetView)
    assert isinstance(live_view("html", display=display), HtmlView)
    assert isinstance(live_view("plain"), PlainView)
    assert isinstance(live_view("none"), NullView)
    with pytest.raises(ValueError, match="unknown progress mode 'fancy'"):
        live_view("fancy")


def test_live_view_without_ipywidgets_falls_back_to_html_with_a_note(
    kernel_shell: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets -> ImportError
    display = FakeDisplay()
    view = live_view("auto", shell=kernel_shell, display=display, name="app")
    assert isinstance(view, HtmlView)
    assert view.note == IPYWIDGETS_MISSING
    view.start()
    assert display.calls[0][0]._repr_mimebundle_()["text/plain"] == IPYWIDGETS_MISSING
    assert isinstance(live_view("widget", display=display), HtmlView)


def test_live_view_passes_its_options() -> None:
    view = live_view("widget", name="app", max_log_lines=5, min_interval=0.5, graph=False)
    assert isinstance(view, WidgetView)
    assert (view.name, view.state.max_log_lines, view.min_interval) == ("app", 5, 0.5)
    assert view.show_graph is False


# -- a real build, drained on this thread ----------------------------------------------------


DOCKERFILE = """\
FROM busybox
RUN for i in 1 2 3; do echo line $i; done
RUN echo done
"""


def drive(bk: Any, view: Any, dockerfile: str) -> tuple[BuildResult, list[Event]]:
    """Build in a worker thread, feed ``view`` from a QueueReporter here (as the magic does)."""
    q = QueueReporter()
    events: list[Event] = []
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = build(bk.request(dockerfile), root=bk.root, reporter=q)
        except Exception as exc:
            outcome["error"] = exc
        finally:
            q.close()

    worker = threading.Thread(target=work)
    worker.start()
    while not q.closed:
        batch = q.wait(0.05)
        events.extend(batch)
        view.update(batch)
    worker.join()
    error = outcome.get("error")
    if "result" in outcome:
        result = BuildResult(outcome["result"], error=error)
    else:
        result = BuildResult.from_events(events, error=error)
    view.finish(result, error=error)
    return result, events


def test_widget_follows_a_real_build(bk: Any) -> None:
    display = FakeDisplay()
    view = WidgetView(name="ctx", display=display, collapse=False)
    result, _ = drive(bk, view, DOCKERFILE)
    assert result.ok
    assert len(display.calls) == 1
    assert display.shown[0]["text/plain"] == "nbbuild ctx: starting"
    assert repr(view) == "nbbuild ctx: built, 3 steps: 1 cached, 2 executed"
    assert "line 1\nline 2\nline 3" in view.logs.children[0].value
    assert re.search(r"\[2/3\] RUN for i in 1 2 3.* · executed", view.logs.titles[0])
    assert view.logs.selected_index is None
    assert len(view.box.children) == 4  # collapse=False keeps everything


def test_html_view_follows_a_failing_real_build(bk: Any) -> None:
    display = FakeDisplay()
    view = HtmlView(name="ctx", display=display)
    # the step runs long enough for the 10 Hz throttle to draw it while it runs
    result, _ = drive(bk, view, "FROM busybox\nRUN sleep 0.5; echo bad && exit 3\n")
    assert isinstance(result.error, StepFailed)
    assert result.status == "failed"
    assert repr(view) == "nbbuild ctx: failed, 2 steps: 1 cached, 0 executed, 1 failed"
    first = display.calls[0][0]._repr_mimebundle_()
    assert display.handle.updates[-1]._repr_mimebundle_() == first
    drawn = [u._repr_mimebundle_()["text/html"] for u in display.handle.updates[:-1]]
    assert drawn and any("RUN sleep 0.5; echo bad &amp;&amp; exit 3" in h for h in drawn)
    assert view.draws == len(display.handle.updates)
