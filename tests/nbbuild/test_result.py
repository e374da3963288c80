"""BuildResult: real builds (busybox in a fresh store, fixtures in tests/buildkit_base.py)
shown as deterministic text/plain and static text/html, with and without ``dot``, for
successful, failed and canceled builds."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine.errors import BuildCanceled, StepFailed
from engine.events import BuildFinished, BuildStarted, Summary, VertexEvent, VertexLog
from nbbuild import _graph
from nbbuild._graph import BuildGraph
from nbbuild._result import BuildResult, Explanation, Step


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

MULTI = """\
FROM busybox AS builder
WORKDIR /src
COPY a.txt .
RUN cat a.txt > out.txt && echo built
FROM busybox
COPY --from=builder /src/out.txt /out.txt
RUN cat /out.txt && echo '<done> & "ok"'
"""
FILES = {"a.txt": "alpha\n"}

FAILING = """\
FROM busybox
RUN echo hello && echo oops && false
RUN echo never
"""

VOLATILE = re.compile(r'<(span|code) class="nbb-(time|id)">[^<]*</(span|code)>')


def sanitize(html: str) -> str:
    """What a notebook's nbval sanitizer does with the documented classes."""
    return VOLATILE.sub("<nbb/>", html)


def failed_build(bk: Any) -> tuple[list[Any], StepFailed]:
    with pytest.raises(StepFailed) as info:
        bk.build(FAILING)
    return bk.reporters[-1].events, info.value


def hide_dot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Take ``dot`` off PATH (after building: the build itself needs crun from PATH)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture(autouse=True)
def fresh_svg_cache() -> None:
    _graph._svg_cache.clear()


# -- the data --------------------------------------------------------------------------------


def test_wraps_an_engine_result(bk: Any) -> None:
    bk.write(FILES)
    engine = bk.build(MULTI, tags=("demo:1",))
    run = next(s for s in engine.steps if s.name.startswith("[builder 4/4]"))
    result = BuildResult(engine, reasons={run.digest: "first build"})

    assert result.name == "demo:1"
    assert result.target == ""
    assert result.tags == ("demo:1",)
    assert result.image == engine.image_id and result.image is not None
    assert result.engine_result is engine
    assert result.ok and result.error is None
    assert result.status == "executed"
    # steps: the Dockerfile's, without [internal] vertices; vertices: all of them
    assert [s.name for s in result.steps] == [s.name for s in engine.steps if s.step is not None]
    assert any(v.internal for v in result.vertices)
    assert all(isinstance(s, Step) for s in result.steps)

    step = result.step("[builder 4/4]")
    assert step.logs == "built\n"
    assert step.reason == "first build"
    assert step.status == "executed"
    assert step.key == run.key and step.short_key == run.key.split(":")[1][:12]
    assert step.label == "builder 4/4"
    assert step.total == 4
    assert step.preimage == run.preimage
    assert step.duration_ns == run.duration_ns > 0
    copy_from = result.step("[stage-1 2/3]")
    assert run.digest in copy_from.inputs
    assert result.step("[stage-1 3/3]").logs == 'alpha\n<done> & "ok"\n'

    summary = result.summary
    assert isinstance(summary, Summary)
    assert (summary.steps, summary.cached, summary.executed, summary.failed) == (6, 1, 5, 0)
    assert summary.elapsed_ns > 0
    assert summary.image_id == result.image

    assert isinstance(result.graph, BuildGraph)
    assert len(result.graph.nodes) == len(engine.steps)
    assert {n.status for n in result.graph.nodes if not n.internal} == {"cached", "executed"}


def test_rebuild_counts_the_time_the_cache_saved(bk: Any) -> None:
    bk.write(FILES)
    bk.build(MULTI)
    again = BuildResult(bk.build(MULTI))
    assert again.status == "cached"
    assert again.summary.cached == 6
    assert again.summary.saved_ns > 0
    text = again.text()
    assert text.splitlines()[0] == "BuildResult ctx: built, 6 steps: 6 cached, 0 executed"
    html = again.to_html()
    assert 'cache saved <span class="nbb-time">' in html


# -- text/plain ------------------------------------------------------------------------------


def test_text_plain_lists_steps_with_status_short_key_and_reason(bk: Any) -> None:
    bk.write(FILES)
    engine = bk.build(MULTI)
    reasons = {s.digest: "first build" for s in engine.steps if s.status == "executed"}
    result = BuildResult(engine, reasons=reasons)
    text = result._repr_mimebundle_()["text/plain"]
    assert text == repr(result) == result.text()
    lines = text.splitlines()
    assert lines[0] == "BuildResult ctx: built, 6 steps: 1 cached, 5 executed"
    assert len(lines) == 7
    from_line = lines[1]
    assert from_line.startswith("  [builder 1/4] FROM busybox AS builder")
    assert re.search(r"cached\s+[0-9a-f]{12}$", from_line)  # a cached step has no reason
    run_line = next(line for line in lines if "[builder 4/4]" in line)
    key = result.step("[builder 4/4]").short_key
    assert re.search(rf"executed\s+{key}\s+first build$", run_line)


def test_text_plain_is_the_same_for_identical_builds_with_other_timings(bk: Any) -> None:
    bk.write(FILES)
    first = BuildResult(bk.build(MULTI))
    second = BuildResult(bk.build(MULTI, root=bk.new_root("other")))
    assert [s.started_ns for s in first.steps] != [s.started_ns for s in second.steps]
    assert first.text() == second.text()
    assert sanitize(first.to_html()) == sanitize(second.to_html())

    # the same build with every time changed: text identical, HTML differs only in times
    engine = first.engine_result
    assert engine is not None
    shifted = dataclasses.replace(
        engine,
        steps=tuple(
            dataclasses.replace(
                s,
                started_ns=s.started_ns + 123_456_789_000 if s.started_ns else 0,
                duration_ns=s.duration_ns * 7 + 3_000_000_000 if s.duration_ns else 0,
            )
            for s in engine.steps
        ),
    )
    slow = BuildResult(shifted)
    assert slow.summary.elapsed_ns != first.summary.elapsed_ns
    assert slow.text() == first.text()
    assert slow.to_html() != first.to_html()
    assert sanitize(slow.to_html()) == sanitize(first.to_html())


def test_text_plain_has_no_addresses_times_ids_or_absolute_paths(bk: Any) -> None:
    bk.write(FILES)
    engine = bk.build(MULTI, tags=("demo:1",))
    result = BuildResult(engine)
    text = result.text()
    assert "0x" not in text
    assert "/tmp" not in text and str(bk.tmp) not in text
    assert not re.search(r"\d+\.\d+s\b", text)  # no durations
    assert engine.image_id not in text  # carries the build time
    assert "tags: demo:1" in text

    renamed = BuildResult.from_events(bk.reporters[-1].events, name=str(bk.ctx))
    assert renamed.text().startswith("BuildResult ctx:")


# -- text/html -------------------------------------------------------------------------------


def test_html_is_static_with_inline_svg_table_and_logs(bk: Any) -> None:
    bk.write(FILES)
    result = BuildResult(bk.build(MULTI, tags=("demo:1",)))
    html = result._repr_mimebundle_()["text/html"]
    assert "<script" not in html.lower() and "<style" not in html.lower()
    assert "<svg" in html and "WORKDIR /src" in html
    assert '<table class="nbb-steps"' in html
    for column in ("step", "line", "instruction", "status", "duration", "key", "reason"):
        assert f">{column}</th>" in html
    assert f'<code class="nbb-id">{result.image}</code>' in html
    # logs: one <details> per step that printed something, none open (nothing failed)
    assert html.count('<details class="nbb-log"') == 2
    assert '<details class="nbb-log" open' not in html
    assert "&lt;done&gt; &amp; &quot;ok&quot;" in html  # escaped
    # every duration is alone in its span
    spans = re.findall(r'<span class="nbb-time">([^<]*)</span>', html)
    assert spans and all(re.fullmatch(r"\d+\.\ds|\d+m\d\ds|\d+h\d\dm", s) for s in spans)


def test_html_without_dot_has_an_html_graph_and_no_traceback(
    bk: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    bk.write(FILES)
    result = BuildResult(bk.build(MULTI))
    hide_dot(monkeypatch, tmp_path)
    shell = InteractiveShell.instance()
    tracebacks: list[object] = []
    out = io.StringIO()
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(out),
    ):
        mp.setattr(shell, "showtraceback", lambda *a, **k: tracebacks.append(a))
        data, _ = shell.display_formatter.format(result)
    assert tracebacks == [] and out.getvalue() == ""
    assert set(data) == {"text/plain", "text/html"}
    assert data["text/plain"] == result.text()
    html = data["text/html"]
    assert "<svg" not in html
    assert "nbb-graph-fallback" in html and "← [builder 4/4]" in html
    assert '<table class="nbb-steps"' in html


def test_a_failing_graph_never_breaks_the_display(bk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bk.write(FILES)
    result = BuildResult(bk.build(MULTI))

    def boom(self: object) -> str:
        raise RuntimeError("graphviz exploded")

    monkeypatch.setattr(BuildGraph, "to_html", boom)
    html = result._repr_mimebundle_()["text/html"]
    assert "nbb-graph-fallback" in html
    monkeypatch.setattr(BuildGraph, "fallback_html", boom)
    html = result._repr_mimebundle_()["text/html"]
    assert '<table class="nbb-steps"' in html and "nbb-graph" not in html
    monkeypatch.setattr(BuildResult, "to_html", boom)
    assert set(result._repr_mimebundle_()) == {"text/plain"}


def test_mimebundle_include_and_exclude(bk: Any) -> None:
    bk.write(FILES)
    result = BuildResult(bk.build(MULTI))
    assert set(result._repr_mimebundle_(include={"text/plain"})) == {"text/plain"}
    assert set(result._repr_mimebundle_(exclude={"text/html"})) == {"text/plain"}
    assert set(result._repr_mimebundle_()) == {"text/plain", "text/html"}


# -- failed and canceled builds --------------------------------------------------------------


def test_failed_build_from_events_shows_the_failure(bk: Any) -> None:
    events, error = failed_build(bk)
    result = BuildResult.from_events(events, error=error, tags=("t:1",))
    assert result.status == "failed" and not result.ok
    assert result.error is error
    assert result.name == "ctx"
    assert result.image is None
    assert result.tags == ("t:1",)
    assert [s.status for s in result.steps] == ["cached", "failed", "canceled"]
    failed = result.step("[2/3]")
    assert failed.logs == "hello\noops\n"
    assert "exit code: 1" in failed.error
    assert result.summary.failed == 1 and result.summary.canceled == 1

    lines = result.text().splitlines()
    assert (
        lines[0] == "BuildResult ctx: failed, 3 steps: 1 cached, 0 executed, 1 failed, 1 canceled"
    )
    assert lines[-1].startswith("error: [2/3] RUN echo hello && echo oops && false (Dockerfile:2)")
    assert re.search(r"\[3/3\] RUN echo never\s+canceled\s+-$", lines[3])

    html = result.to_html()
    # only the failed step's log is open, and it shows the error and the output
    opened = re.findall(r'<details class="nbb-log" open.*?</details>', html, re.DOTALL)
    assert len(opened) == 1
    assert "hello\noops" in opened[0] and "exit code: 1" in opened[0]
    assert "StepFailed:" in html
    assert "<svg" in html


def test_failed_build_text_is_deterministic(bk: Any) -> None:
    events, error = failed_build(bk)
    first = BuildResult.from_events(events, error=error)
    events2, error2 = failed_build(bk)
    second = BuildResult.from_events(events2, error=error2)
    assert first.text() == second.text()
    assert sanitize(first.to_html()) == sanitize(second.to_html())


def test_canceled_status_comes_from_the_error() -> None:
    events = [
        BuildStarted(build_id="b", name="app", time_ns=10),
        VertexEvent(digest="sha256:a", name="[1/1] RUN sleep 9", step=1, total=1).running(20),
    ]
    result = BuildResult.from_events(events, error=BuildCanceled("canceled"))
    assert result.status == "canceled"
    assert result.text().splitlines()[0].startswith("BuildResult app: canceled, 1 step:")
    interrupted = BuildResult.from_events(events, error=KeyboardInterrupt())
    assert interrupted.status == "canceled"
    assert interrupted.text().splitlines()[-1] == "error: KeyboardInterrupt"


def test_from_events_of_a_successful_build_matches_the_engine_result(bk: Any) -> None:
    bk.write(FILES)
    engine = bk.build(MULTI, tags=("demo:1",))
    a = BuildResult(engine)
    b = BuildResult.from_events(bk.reporters[-1].events, tags=("demo:1",))
    assert a.text() == b.text()
    assert b.image == a.image
    assert [s.logs for s in a.steps] == [s.logs for s in b.steps]
    assert [s.inputs for s in a.vertices] == [s.inputs for s in b.vertices]
    assert b.summary.elapsed_ns >= a.summary.elapsed_ns > 0


def test_logs_are_decoded_leniently_and_cut_in_html() -> None:
    events = [
        BuildStarted(build_id="b", name="app", time_ns=1),
        VertexEvent(
            digest="sha256:a", name="[1/1] RUN spam", step=1, total=1, instruction="RUN spam"
        )
        .running(2)
        .finished("executed", 3),
        VertexLog(digest="sha256:a", data="é".encode()[:1], time_ns=2),
        VertexLog(
            digest="sha256:a",
            data=b"\n" + b"".join(b"line %d\n" % i for i in range(500)),
            time_ns=2,
        ),
        BuildFinished(build_id="b", status="executed", time_ns=4),
    ]
    result = BuildResult.from_events(events)
    assert result.step("[1/1]").logs.startswith("\ufffd\nline 0\n")
    html = result.to_html(log_lines=50)
    assert "… 451 earlier lines" in html
    assert "line 499" in html and "line 449\n" not in html


# -- explain ---------------------------------------------------------------------------------


def test_explain_lists_every_step_that_did_not_come_from_the_cache(bk: Any) -> None:
    bk.write(FILES)
    bk.build(MULTI)
    bk.write({"a.txt": "beta\n"})
    engine = bk.build(MULTI)
    copy = next(s for s in engine.steps if s.name.startswith("[builder 3/4]"))
    result = BuildResult(engine, reasons={copy.digest: "file `a.txt` changed"})
    explanation = result.explain()
    assert isinstance(explanation, Explanation)
    assert [s.name.split("]")[0] + "]" for s in explanation.steps] == [
        "[builder 3/4]",
        "[builder 4/4]",
        "[stage-1 2/3]",
        "[stage-1 3/3]",
    ]
    text = repr(explanation)
    assert text.splitlines()[0] == "ctx: 4 of 6 steps not from the cache"
    assert re.search(r"\[builder 3/4\] COPY a.txt \.\s+executed\s+file `a.txt` changed", text)
    assert "(no reason recorded)" in text
    bundle = explanation._repr_mimebundle_()
    assert bundle["text/plain"] == text
    assert "file `a.txt` changed" in bundle["text/html"]
    # the reason is in the result's text too, cached steps have none
    assert "file `a.txt` changed" in result.text()


def test_explain_when_everything_was_cached_and_with_a_hook(bk: Any) -> None:
    bk.write(FILES)
    bk.build(MULTI)
    result = BuildResult(bk.build(MULTI))
    assert repr(result.explain()) == "ctx: every step came from the cache"
    seen: list[BuildResult] = []

    def explainer(r: BuildResult) -> str:
        seen.append(r)
        return "full diff"

    hooked = BuildResult(result.engine_result, explainer=explainer)  # type: ignore[arg-type]
    assert hooked.explain() == "full diff"
    assert seen == [hooked]


def test_display_modules_import_no_heavy_packages() -> None:
    import subprocess

    code = (
        "import sys, nbbuild._result, nbbuild._step, nbbuild._graph, nbbuild._live, "
        "nbbuild._widgets, nbbuild._html; "
        "print(sorted(m for m in ('IPython', 'ipywidgets', 'graphviz', 'ipykernel') "
        "if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    assert proc.stdout.strip() == "[]"
