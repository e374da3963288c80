"""The progress event stream: event types, JSON round trips, reporters and the summary."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.events import (
    FINAL_STATUSES,
    STATUSES,
    BuildFinished,
    BuildStarted,
    Event,
    ListReporter,
    NullReporter,
    QueueReporter,
    Reporter,
    Summary,
    TeeReporter,
    VertexEvent,
    VertexLog,
    VertexProgress,
    VertexWarning,
    event_from_json,
    event_from_line,
    event_to_line,
    latest_vertices,
)

S = 1_000_000_000
MS = 1_000_000

RUN = VertexEvent(
    digest="sha256:run",
    inputs=("sha256:base", "sha256:ctx"),
    name="[builder 3/4] RUN make",
    step=3,
    total=4,
    stage="builder",
    line=7,
    instruction="RUN make",
)

EXAMPLES: list[Event] = [
    BuildStarted(build_id="b1", name="app", target="builder", time_ns=1 * S),
    RUN,
    RUN.running(2 * S),
    RUN.finished(
        "executed",
        5 * S,
        key="sha256:key",
        preimage={"type": "exec", "args": ["/bin/sh", "-c", "make"], "env": {"A": "1"}},
    ),
    RUN.finished("cached", 5 * S, key="sha256:key", saved_ns=40 * S),
    RUN.running(2 * S).finished("failed", 3 * S, error="exit code: 2"),
    RUN.finished("canceled", 3 * S),
    RUN.finished("skipped", 3 * S),
    VertexProgress(
        digest="sha256:ctx",
        id="transferring context:",
        current=2340,
        total=0,
        time_ns=3 * S,
        started_ns=2 * S,
        completed_ns=None,
    ),
    VertexProgress(
        digest="sha256:ctx",
        id="x",
        name="n",
        current=1,
        total=2,
        time_ns=3,
        started_ns=1,
        completed_ns=3,
    ),
    VertexLog(
        digest="sha256:run", stream=2, data=b"\x00\xffbinary\nand text \xe2\x9c\x93", time_ns=4 * S
    ),
    VertexLog(digest="sha256:run", data=b"", time_ns=4 * S),
    VertexWarning.lint("sha256:def", "JSONArgsRecommended", "JSON arguments recommended", 9),
    VertexWarning(digest="d", message="m", detail=("a", "b"), url="https://x", level=2),
    BuildFinished(build_id="b1", status="executed", time_ns=6 * S, image_id="sha256:" + "a" * 64),
    BuildFinished(build_id="b1", status="failed", time_ns=6 * S, error="step failed"),
]


# --- JSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_json(event: Event) -> None:
    obj = event.to_json()
    assert obj["type"] == event.type
    # really JSON: survives dumps/loads
    assert event_from_json(json.loads(json.dumps(obj))) == event
    assert type(event).from_json(obj) == event
    line = event_to_line(event)
    assert "\n" not in line
    assert event_from_line(line) == event


def test_log_data_is_base64_in_json() -> None:
    log = VertexLog(digest="d", data=b"hi\n", time_ns=1)
    assert log.to_json()["data"] == "aGkK"
    assert event_to_line(log) == '{"type":"log","digest":"d","stream":1,"data":"aGkK","time_ns":1}'


@given(
    data=st.binary(max_size=200),
    stream=st.sampled_from([1, 2]),
    t=st.integers(min_value=0, max_value=2**62),
)
def test_log_round_trip_property(data: bytes, stream: int, t: int) -> None:
    log = VertexLog(digest="sha256:x", stream=stream, data=data, time_ns=t)
    assert event_from_line(event_to_line(log)) == log


@given(
    name=st.text(max_size=40),
    status=st.sampled_from(["pending", "skipped"]),
    step=st.none() | st.integers(min_value=1, max_value=99),
    preimage=st.none()
    | st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4),
)
def test_vertex_round_trip_property(
    name: str, status: Any, step: int | None, preimage: dict[str, Any] | None
) -> None:
    v = VertexEvent(digest="sha256:x", name=name, status=status, step=step, preimage=preimage)
    assert event_from_line(event_to_line(v)) == v


def test_unknown_fields_are_ignored_for_newer_producers() -> None:
    obj = {**RUN.to_json(), "progress_group": {"id": "g"}}
    assert event_from_json(obj) == RUN


def test_optional_fields_default_when_absent() -> None:
    assert event_from_json({"type": "vertex", "digest": "d"}) == VertexEvent(digest="d")
    assert event_from_json({"type": "warning", "digest": "d", "message": "m"}) == VertexWarning(
        digest="d", message="m"
    )


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"type": "nope"}, "unknown event type 'nope'"),
        ({}, "unknown event type None"),
        ({"type": "vertex"}, "'digest' is missing"),
        ({"type": "vertex", "digest": 1}, "'digest' has the wrong type"),
        ({"type": "vertex", "digest": "d", "status": "done"}, "vertex status must be one of"),
        ({"type": "vertex", "digest": "d", "started_ns": True}, "'started_ns' has the wrong type"),
        ({"type": "vertex", "digest": "d", "inputs": ["a", 2]}, "'inputs' has the wrong type"),
        ({"type": "vertex", "digest": "d", "cached": 1}, "'cached' has the wrong type"),
        ({"type": "log", "digest": "d", "data": "!!", "time_ns": 1}, "'data' is not base64"),
        ({"type": "log", "digest": "d", "data": "", "time_ns": 1, "stream": 3}, "log stream"),
        ({"type": "build_finished", "build_id": "b", "status": "running", "time_ns": 1}, "build"),
        ({"type": "build_started", "build_id": "b"}, "'time_ns' is missing"),
    ],
)
def test_malformed_json_is_rejected(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        event_from_json(obj)


def test_malformed_lines_are_rejected() -> None:
    with pytest.raises(ValueError, match="not a JSON event line"):
        event_from_line("{")
    with pytest.raises(ValueError, match="an event is a JSON object"):
        event_from_line("[1]")


# --- vertex states ---------------------------------------------------------------------------


def test_status_vocabulary() -> None:
    assert STATUSES == ("pending", "running", "cached", "executed", "failed", "canceled", "skipped")
    assert frozenset({"pending", "running"}) | FINAL_STATUSES == frozenset(STATUSES)


def test_running_then_finished_keeps_the_start() -> None:
    running = RUN.running(2 * S)
    assert (running.status, running.started_ns, running.completed_ns) == ("running", 2 * S, None)
    done = running.finished("executed", 5 * S, key="k", preimage={"a": 1})
    assert (done.status, done.started_ns, done.completed_ns) == ("executed", 2 * S, 5 * S)
    assert done.duration_ns == 3 * S
    assert (done.key, done.preimage, done.cached) == ("k", {"a": 1}, False)
    assert done.name == RUN.name and done.inputs == RUN.inputs and done.line == 7


def test_a_cache_hit_announced_directly_starts_and_ends_at_once() -> None:
    # BuildKit reports a cache hit as a vertex started and completed, with cached set
    hit = RUN.finished("cached", 4 * S, saved_ns=12 * S)
    assert (hit.started_ns, hit.completed_ns, hit.cached, hit.saved_ns) == (
        4 * S,
        4 * S,
        True,
        12 * S,
    )


def test_skipped_and_unstarted_canceled_vertices_have_no_times() -> None:
    assert RUN.finished("skipped", 4 * S).started_ns is None
    canceled = RUN.finished("canceled", 4 * S)
    assert (canceled.started_ns, canceled.completed_ns) == (None, None)
    started = RUN.running(1 * S).finished("canceled", 4 * S)
    assert (started.started_ns, started.completed_ns) == (1 * S, 4 * S)


def test_finished_needs_a_final_status() -> None:
    with pytest.raises(ValueError, match="final vertex status"):
        RUN.finished("running", 1)


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "bogus"},
        {"completed_ns": 1},
        {"status": "running"},
        {"status": "running", "started_ns": 1, "completed_ns": 2},
        {"status": "pending", "started_ns": 1},
        {"status": "skipped", "started_ns": 1},
        {"status": "executed", "started_ns": 1},
        {"status": "cached", "started_ns": 1},
    ],
)
def test_impossible_vertex_states_are_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        VertexEvent(digest="d", **fields)


def test_internal_vertices_are_recognised_by_name() -> None:
    assert VertexEvent(digest="d", name="[internal] load build context").internal
    assert not RUN.internal


def test_lint_warning_wording_matches_buildkit() -> None:
    # linter.LintFormatShort: "<rule>: <message>" plus " (line N)" when the line is known
    w = VertexWarning.lint("d", "StageNameCasing", "Stage name 'Build' should be lowercase", 3)
    assert w.message == "StageNameCasing: Stage name 'Build' should be lowercase (line 3)"
    assert w.line == 3
    assert VertexWarning.lint("d", "R", "m", None).message == "R: m"


def test_events_are_frozen() -> None:
    with pytest.raises(AttributeError):
        RUN.name = "x"  # type: ignore[misc]


def test_build_finished_ok() -> None:
    assert BuildFinished(build_id="b", status="cached", time_ns=1).ok
    assert not BuildFinished(build_id="b", status="canceled", time_ns=1).ok


# --- reporters -------------------------------------------------------------------------------


def test_reporters_satisfy_the_protocol() -> None:
    for reporter in (NullReporter(), ListReporter(), QueueReporter(), TeeReporter()):
        assert isinstance(reporter, Reporter)


def test_list_reporter_keeps_order_and_latest_vertex_state() -> None:
    r = ListReporter()
    other = VertexEvent(digest="sha256:other", name="[internal] load build context")
    for e in (RUN, other, RUN.running(1), other.running(2), RUN.running(1).finished("executed", 3)):
        r.emit(e)
    assert len(r.events) == 5
    latest = r.vertices()
    assert list(latest) == ["sha256:run", "sha256:other"]  # order of first appearance
    assert latest["sha256:run"].status == "executed"
    assert latest["sha256:other"].status == "running"
    assert latest == latest_vertices(r.events)
    r.events.clear()  # a copy: the reporter keeps its own
    assert len(r.events) == 5


def test_tee_reporter_fans_out_in_order() -> None:
    a, b = ListReporter(), ListReporter()
    tee = TeeReporter(a, NullReporter(), b)
    tee.emit(RUN)
    tee.emit(RUN.running(1))
    assert a.events == b.events == [RUN, RUN.running(1)]


def test_queue_reporter_hands_events_from_threads_to_a_consumer() -> None:
    q = QueueReporter()
    producers = 4
    per = 500

    def produce(n: int) -> None:
        for i in range(per):
            q.emit(VertexLog(digest=f"p{n}", data=str(i).encode(), time_ns=i))

    def build() -> None:
        threads = [threading.Thread(target=produce, args=(n,)) for n in range(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        q.close()

    worker = threading.Thread(target=build)
    worker.start()
    got: list[Event] = []
    batches = 0
    while not q.closed:
        batch = q.wait(5)
        batches += 1
        got.extend(batch)
    worker.join()
    assert len(got) == producers * per
    for n in range(producers):  # each producer's events arrive in its order
        mine = [e for e in got if isinstance(e, VertexLog) and e.digest == f"p{n}"]
        assert [e.data for e in mine] == [str(i).encode() for i in range(per)]
    assert batches <= len(got) + 1  # wait() hands over everything queued at once


def test_queue_reporter_wait_times_out_empty_and_returns_at_once_when_closed() -> None:
    q = QueueReporter()
    t0 = time.monotonic()
    assert q.wait(0.05) == []
    assert time.monotonic() - t0 >= 0.04
    assert q.drain() == []
    assert not q.closed
    q.emit(RUN)
    q.close()
    q.emit(RUN.running(1))  # after close: still delivered, never lost
    assert q.wait(None) == [RUN, RUN.running(1)]
    assert q.closed
    t0 = time.monotonic()
    assert q.wait(10) == []  # closed and empty: no waiting
    assert time.monotonic() - t0 < 1


def test_queue_reporter_wait_without_timeout_wakes_on_close() -> None:
    q = QueueReporter()
    threading.Timer(0.05, q.close).start()
    assert q.wait(None) == []
    assert q.closed


# --- summary ---------------------------------------------------------------------------------


def _vertex(n: int, name: str | None = None) -> VertexEvent:
    return VertexEvent(digest=f"sha256:{n}", name=name or f"[{n}/6] RUN step{n}", step=n, total=6)


def test_summary_counts_steps_by_latest_status_and_times() -> None:
    ctx = _vertex(0, "[internal] load build context")
    events: list[Event] = [
        BuildStarted(build_id="b", time_ns=10 * S),
        ctx,
        *(_vertex(n) for n in range(1, 7)),
        ctx.running(10 * S),
        ctx.running(10 * S).finished("executed", 11 * S),
        _vertex(1).finished("cached", 11 * S, saved_ns=30 * S),
        _vertex(2).finished("cached", 11 * S, saved_ns=12 * S + 500 * MS),
        _vertex(3).finished("cached", 11 * S),  # no recorded time: saves nothing we can show
        _vertex(4).running(11 * S),
        _vertex(4).running(11 * S).finished("executed", 14 * S),
        _vertex(5).running(14 * S),
        BuildFinished(build_id="b", status="executed", time_ns=15 * S, image_id="sha256:img"),
    ]
    s = Summary.from_events(events)
    assert s == Summary(
        steps=6,  # [internal] vertices are not steps
        cached=3,
        executed=1,
        pending=2,  # step 5 running, step 6 never started
        elapsed_ns=5 * S,
        executed_ns=3 * S,
        saved_ns=42 * S + 500 * MS,
        status="executed",
        image_id="sha256:img",
    )
    assert s.text() == "6 steps: 3 cached, 1 executed, 2 pending in 5.0s (cache saved 42.5s)"


def test_summary_of_a_failed_build_without_build_events() -> None:
    events: list[Event] = [
        _vertex(1).running(1 * S).finished("executed", 2 * S),
        _vertex(2).running(2 * S).finished("failed", 4 * S, error="exit code: 1"),
        _vertex(3).finished("canceled", 4 * S),
        _vertex(4).finished("skipped", 4 * S),
    ]
    s = Summary.from_events(events)
    assert (s.steps, s.executed, s.failed, s.canceled, s.skipped) == (4, 1, 1, 1, 1)
    assert s.elapsed_ns == 3 * S  # first start to last end
    assert s.status == "running"  # no BuildFinished seen
    assert s.text() == "4 steps: 0 cached, 1 executed, 1 failed, 1 canceled, 1 skipped in 3.0s"


def test_summary_of_nothing() -> None:
    assert Summary.from_events([]) == Summary()
    assert Summary.from_events([]).text() == "0 steps: 0 cached, 0 executed in 0.0s"
    one = Summary.from_events([_vertex(1).finished("cached", 1)])
    assert one.text() == "1 step: 1 cached, 0 executed in 0.0s"


def test_list_reporter_summary() -> None:
    r = ListReporter()
    r.emit(_vertex(1).finished("cached", 1, saved_ns=S))
    assert r.summary().cached == 1


def test_events_module_imports_no_ui_modules() -> None:
    code = (
        "import sys, engine.events;"
        "bad = [m for m in ('IPython', 'ipywidgets', 'graphviz', 'rich') if m in sys.modules];"
        "print(','.join(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_the_documented_examples_are_valid_events() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "progress-events.md"
    blocks = re.findall(r"```json\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 6
    kinds = set()
    for block in blocks:
        event = event_from_line(block.replace("\n", ""))
        kinds.add(event.type)
        # the documented key order is the written order
        assert list(json.loads(block.replace("\n", ""))) == list(event.to_json())
    assert kinds == {"build_started", "vertex", "progress", "log", "warning", "build_finished"}
