"""The notebooks under ``notebooks/``: committed with their outputs, and still true.

- The committed notebook shows, without a kernel (as GitHub renders it), the static build
  graph (inline SVG) and the summary of every build; its nbval markers are cell tags.
- Executed headlessly with nbclient (a temporary copy, the kernel in ``notebooks/`` as
  JupyterLab starts it), it builds for real into a fresh store: the first build misses, the
  same cell again is all cached, an edit re-runs only what depends on it, with the reason.
- ``pytest --nbval`` re-runs it and compares every output with the committed one, after the
  sanitizers in ``notebooks/nbval.cfg`` (times, image ids, dates, temporary paths).

After a change to what nbbuild displays, refresh the committed outputs with ``make notebooks``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import nbformat
import pytest
from nbval.plugin import get_sanitize_patterns

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
TUTORIAL = NOTEBOOKS / "01-first-build.ipynb"
SANITIZE = NOTEBOOKS / "nbval.cfg"
NBVAL_TAGS = {"nbval-ignore-output", "nbval-skip", "raises-exception", "nbval-raises-exception"}
KEY = re.compile(r"\b[0-9a-f]{12}\b")

pytestmark = pytest.mark.timeout(900)


def _execute_module() -> ModuleType:
    name = "nbbuild_tests_notebooks_execute"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("execute.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _code_cells(nb: Any) -> list[Any]:
    return [c for c in nb.cells if c.cell_type == "code"]


def _text(output: Any, mime: str = "text/plain") -> str:
    if output.output_type == "stream":
        return str(output.text) if mime == "text/plain" else ""
    return str(output.get("data", {}).get(mime, ""))


def _outputs(cell: Any, mime: str = "text/plain") -> str:
    return "\n".join(_text(o, mime) for o in cell.outputs)


def _builds(nb: Any) -> list[Any]:
    """The ``%%dockerfile`` cells, in order."""
    return [c for c in _code_cells(nb) if c.source.startswith("%%dockerfile")]


def _result(cell: Any) -> Any:
    """The build result's output (the last one with a ``BuildResult`` text)."""
    found = [o for o in cell.outputs if _text(o).startswith("BuildResult ")]
    assert found, f"no build result in {cell.source.splitlines()[0]!r}: {cell.outputs}"
    return found[-1]


def _step_lines(result: Any) -> list[str]:
    return [line for line in _text(result).splitlines()[1:] if line.startswith("  [")]


def _line_magic(nb: Any, magic: str) -> Any:
    found = [c for c in _code_cells(nb) if c.source.strip().startswith(magic)]
    assert len(found) == 1, magic
    return found[0]


@pytest.fixture(scope="module")
def committed() -> Any:
    return nbformat.read(TUTORIAL, as_version=4)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tutorial run from top to bottom by nbclient, its temporary files in a pytest dir."""
    tmp = tmp_path_factory.mktemp("tutorial")
    copy = tmp / TUTORIAL.name
    copy.write_bytes(TUTORIAL.read_bytes())
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)  # the kernel's tempfile.mkdtemp: its store and project
    try:
        nb = _execute_module().execute(copy, copy, cwd=NOTEBOOKS)
    finally:
        if old is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = old
    assert not [p for p in tmp.iterdir() if p.name.startswith("nbbuild-tutorial-")], (
        "the tutorial's clean-up cell should remove its store and project"
    )
    return nb


# -- the committed notebook -------------------------------------------------------------------


def test_committed_with_outputs_in_one_run(committed: Any) -> None:
    cells = _code_cells(committed)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), (
        "commit the notebook as executed from top to bottom (make notebooks)"
    )
    assert committed.metadata.kernelspec.name == "python3"
    for cell in _builds(committed):
        assert cell.outputs, cell.source


def test_committed_shows_graph_and_summary_without_a_kernel(committed: Any) -> None:
    builds = _builds(committed)
    assert len(builds) >= 3
    for cell in builds:
        result = _result(cell)
        html = _text(result, "text/html")
        assert '<div class="nbb-graph"' in html and "<svg" in html, "no inline SVG graph"
        assert html.count('<g class="node">') >= len(_step_lines(result))
        assert 'class="nbb-summary"' in html and 'class="nbb-steps"' in html
        assert "<script" not in html
    summaries = [_text(_result(c)).splitlines()[0] for c in builds[:3]]
    assert summaries == [
        "BuildResult first: built, 7 steps: 1 cached, 6 executed",
        "BuildResult first: built, 7 steps: 7 cached, 0 executed",
        "BuildResult first: built, 7 steps: 4 cached, 3 executed",
    ]


def test_nbval_markers_are_cell_tags(committed: Any) -> None:
    for cell in committed.cells:
        assert not re.search(r"NBVAL_|PYTEST_VALIDATE_", cell.source), (
            "use cell tags (nbval-ignore-output, nbval-skip, raises-exception), not comments"
        )
        if cell.cell_type == "code" and cell.source.startswith("%%dockerfile"):
            body = cell.source.splitlines()[1:]
            assert not [line for line in body if line.lstrip().startswith("#")], (
                "a comment in a %%dockerfile cell ends BuildKit's parser-directive lookup"
            )
        tags = set(cell.metadata.get("tags", []))
        assert tags <= NBVAL_TAGS | {"remove-input"}, tags
    failing = [
        c for c in _code_cells(committed) if "raises-exception" in c.metadata.get("tags", [])
    ]
    assert failing and all(o.output_type == "error" for c in failing for o in c.outputs[-1:])


def test_sanitizers_are_used_and_spare_the_cache_keys(committed: Any) -> None:
    patterns = get_sanitize_patterns(SANITIZE.read_text())
    assert len(patterns) >= 4
    texts = [
        _text(o, mime)
        for c in _code_cells(committed)
        for o in c.outputs
        for mime in ("text/plain", "text/html")
    ]
    for regex, _ in patterns:
        assert any(re.search(regex, t) for t in texts), f"sanitizer {regex!r} matches nothing"

    def sanitize(s: str) -> str:
        for regex, replace in patterns:
            s = re.sub(regex, replace, s)
        return s

    # cache keys are deterministic (the base is made with fixed times): compared as they are
    for cell in _builds(committed):
        result = _text(_result(cell))
        assert sanitize(result) == result
        assert all(KEY.search(line) for line in _step_lines(_result(cell)))
    # no temporary path, date or image id survives in what nbval compares
    for t in texts:
        clean = sanitize(t)
        assert "nbbuild-tutorial-" not in clean.replace("TMP/nbbuild-tutorial", "")
        assert not re.search(r"\d{4}-\d\d-\d\d", clean)
        assert not re.search(r'class="nbb-(time|id)">(?!TIME|IMAGE-ID)', clean)


# -- executed headlessly ----------------------------------------------------------------------


def test_first_build_misses_then_all_cached_then_only_dependents(executed: Any) -> None:
    first, again, edited = (_result(c) for c in _builds(executed)[:3])

    first_steps = _step_lines(first)
    assert len(first_steps) == 7
    assert "cached" in first_steps[0] and "FROM busybox" in first_steps[0]
    assert all(" executed " in s and s.endswith("first build") for s in first_steps[1:])

    assert _text(again).splitlines()[0].endswith("7 steps: 7 cached, 0 executed")
    assert all(" cached " in s for s in _step_lines(again))

    steps = {s.split("]", 1)[0].strip() + "]": s for s in _step_lines(edited)}
    assert " cached " in steps["[builder 4/6]"], "the dependency step must stay cached"
    assert (
        "executed" in steps["[builder 5/6]"]
        and "file `src/util.py` changed" in steps["[builder 5/6]"]
    )
    assert "input from step [builder 5/6] changed" in steps["[builder 6/6]"]
    assert "input from step [builder 6/6] changed" in steps["[stage-1 2/2]"]


def test_executed_outputs_have_the_static_graph(executed: Any) -> None:
    for cell in _builds(executed):
        html = _text(_result(cell), "text/html")
        assert "<svg" in html and html.count('<g class="node">') >= 3
        live = [
            o
            for o in cell.outputs
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
        ]
        assert live and _text(live[0]).startswith("nbbuild "), (
            "the live widget's text is deterministic"
        )


def test_explain_history_run_and_failure(executed: Any) -> None:
    explain = _outputs(_line_magic(executed, "%nbbuild explain"))
    assert "[builder 5/6] COPY . .: executed: file `src/util.py` changed" in explain
    assert "[builder 4/6]" in explain and "cached" in explain

    history = _outputs(_line_magic(executed, "%nbbuild history")).splitlines()
    assert history[0].split() == ["WHEN", "NAME", "TARGET", "STATUS", "STEPS", "TAG"]
    assert [row.split()[2] for row in history[1:]] == ["first", "first", "first"]

    run = _outputs(_line_magic(executed, "%nbbuild run"))
    assert 'return f"hello again, {name}"' in run

    broken = _builds(executed)[-1]
    errors = [o for o in broken.outputs if o.output_type == "error"]
    assert [e.ename for e in errors] == ["StepFailed"]
    assert "grep scipy /requirements.txt" in errors[0].evalue and "exit code: 1" in errors[0].evalue
    assert _text(_result(broken)).startswith("BuildResult broken: failed")


# -- nbval ------------------------------------------------------------------------------------


def test_nbval(tmp_path: Path) -> None:
    """``pytest --nbval`` on notebooks/, as a user runs it, in a fresh kernel and store."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest",
            "--nbval", str(NOTEBOOKS.relative_to(REPO)),
            "--nbval-sanitize-with", str(SANITIZE.relative_to(REPO)),
            "--nbval-current-env",
            "--nbval-cell-timeout=600",
            "-p", "no:cacheprovider",
            "-q", "--color=no",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )  # fmt: skip
    report = proc.stdout[-20000:] + proc.stderr[-5000:]
    assert proc.returncode == 0, report
    cells = len(_code_cells(nbformat.read(TUTORIAL, as_version=4)))
    assert re.search(rf"\b{cells} passed\b", proc.stdout), report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("nbbuild-tutorial-")]


def test_execute_script_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert _execute_module().main([]) == 2
    assert "make notebooks" in capsys.readouterr().err
