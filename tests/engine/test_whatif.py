"""What-if predictions against real builds: every definite prediction ("will run", "cached")
is checked against what the following real build does (real containers, a fresh store with
busybox: tests/buildkit_base.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine.errors import UsageError
from engine.plan import PlanRequest
from engine.store.store import Store
from engine.whatif import Prediction, whatif


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

DF = """\
FROM busybox
ARG VERSION=1.2
WORKDIR /app
COPY requirements.txt ./
RUN echo "$VERSION" > /v && cat requirements.txt > /deps
COPY . .
RUN cat src/*.txt > /app/artifact
"""

FILES = {"requirements.txt": "numpy\n", "src/a.txt": "alpha\n", "src/b.txt": "beta\n"}


def verdicts(predictions: list[Prediction]) -> dict[str, str]:
    return {p.step_name.split("]")[0] + "]": p.verdict for p in predictions}


def why(predictions: list[Prediction], label: str) -> str:
    return next(p.reason for p in predictions if p.step_name.startswith(label))


def assert_agrees(predictions: list[Prediction], result: Any) -> None:
    """Every definite prediction is what the build did ("cached" covers steps not needed)."""
    by_digest = {s.digest: s for s in result.steps}
    assert predictions, "no predictions"
    for p in predictions:
        step = by_digest[p.digest]
        assert step.name == p.step_name
        if p.verdict == "will run":
            assert step.status == "executed", (p, step.status)
        elif p.verdict == "cached":
            assert step.status in ("cached", "skipped"), (p, step.status)


def predict(bk: Any, dockerfile: str = DF, **kw: Any) -> list[Prediction]:
    request = bk.request(dockerfile, **{k: v for k, v in kw.items() if k == "no_cache"})
    kw.pop("no_cache", None)
    return whatif(request, root=bk.root, **kw)


def test_first_build_everything_runs(bk: Any) -> None:
    bk.write(FILES)
    predictions = predict(bk)
    assert verdicts(predictions) == {
        "[1/6]": "cached",
        "[2/6]": "will run",
        "[3/6]": "will run",
        "[4/6]": "will run",
        "[5/6]": "will run",
        "[6/6]": "will run",
    }
    assert why(predictions, "[2/6]") == "not in cache (first build)"
    assert why(predictions, "[4/6]") == "input from step [3/6] will run"
    assert_agrees(predictions, bk.build(DF))


def test_no_change_everything_cached(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    predictions = predict(bk)
    assert set(verdicts(predictions).values()) == {"cached"}
    assert why(predictions, "[6/6]") == "in the cache"
    assert_agrees(predictions, bk.build(DF))


def test_source_edit(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    predictions = predict(bk, changed_paths=["src/a.txt"])
    assert verdicts(predictions) == {
        "[1/6]": "cached",
        "[2/6]": "cached",
        "[3/6]": "cached",
        "[4/6]": "cached",
        "[5/6]": "will run",
        "[6/6]": "will run",
    }
    assert why(predictions, "[5/6]") == "`src/a.txt` changed"
    assert why(predictions, "[6/6]") == "input from step [5/6] will run"
    # Nothing is built or changed by asking.
    assert set(verdicts(predict(bk)).values()) == {"cached"}
    bk.write({"src/a.txt": "alpha, edited\n"})
    # Already edited on disk: the same prediction, with the file named from the history.
    edited = predict(bk)
    assert verdicts(edited) == verdicts(predictions)
    assert why(edited, "[5/6]") == "file `src/a.txt` changed"
    assert_agrees(predictions, bk.build(DF))


def test_new_file_and_ignored_file(bk: Any) -> None:
    bk.write({**FILES, ".dockerignore": "*.log\n", "build.log": "1\n"})
    bk.build(DF)
    new = predict(bk, changed_paths=["src/c.txt"])  # does not exist yet
    assert verdicts(new)["[5/6]"] == "will run"
    ignored = predict(bk, changed_paths=["build.log", "other.log"])
    assert set(verdicts(ignored).values()) == {"cached"}
    bk.write({"build.log": "2\n"})
    assert_agrees(ignored, bk.build(DF))
    bk.write({"src/c.txt": "gamma\n"})
    assert_agrees(new, bk.build(DF))


def test_manifest_edit(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    predictions = predict(bk, changed_paths=["./requirements.txt"])
    assert verdicts(predictions) == {
        "[1/6]": "cached",
        "[2/6]": "cached",
        "[3/6]": "will run",
        "[4/6]": "will run",
        "[5/6]": "will run",  # COPY . . covers requirements.txt too
        "[6/6]": "will run",
    }
    assert why(predictions, "[3/6]") == "`requirements.txt` changed"
    assert why(predictions, "[5/6]") == "`requirements.txt` changed"
    bk.write({"requirements.txt": "numpy\nscipy\n"})
    assert_agrees(predictions, bk.build(DF))


def test_build_arg_change(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    predictions = predict(bk, build_args={"VERSION": "1.3"})
    assert verdicts(predictions) == {
        "[1/6]": "cached",
        "[2/6]": "cached",
        "[3/6]": "cached",
        "[4/6]": "will run",
        "[5/6]": "will run",
        "[6/6]": "will run",
    }
    assert why(predictions, "[4/6]") == "build-arg `VERSION` 1.2 → 1.3"
    assert why(predictions, "[6/6]") == "build-arg `VERSION` 1.2 → 1.3"
    assert why(predictions, "[5/6]") == "input from step [4/6] will run"
    assert_agrees(predictions, bk.build(DF, build_args={"VERSION": "1.3"}))
    # and back: the old results are still there
    back = predict(bk)
    assert set(verdicts(back).values()) == {"cached"}
    assert_agrees(back, bk.build(DF))


def test_no_cache_and_plan_request(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    predictions = predict(bk, no_cache=True)
    assert [p.verdict for p in predictions][2:] == ["will run"] * 4
    assert why(predictions, "[4/6]") == "--no-cache"
    plan_request = PlanRequest(dockerfile=DF, context=bk.ctx)
    assert set(verdicts(whatif(plan_request, root=bk.root)).values()) == {"cached"}
    assert_agrees(predictions, bk.build(DF, no_cache=True))


def test_pruned_cache(bk: Any) -> None:
    from engine.store.gc import prune

    bk.write(FILES)
    bk.build(DF)
    with Store.open(bk.root) as store:
        prune(store, all=True)
    predictions = predict(bk)
    assert verdicts(predictions)["[2/6]"] == "will run"
    assert why(predictions, "[2/6]") == "not in cache (pruned?)"
    assert_agrees(predictions, bk.build(DF))


MULTI = """\
FROM busybox AS builder
ARG NOISE=a
RUN echo "$NOISE" > /noise && echo stable > /out
FROM busybox
WORKDIR /app
COPY --from=builder /out /app/out
RUN cat /app/out > /app/copy
"""


def test_copy_from_depends_on_output(bk: Any) -> None:
    bk.build(MULTI)
    predictions = predict(bk, MULTI, build_args={"NOISE": "b"})
    assert verdicts(predictions) == {
        "[builder 1/2]": "cached",
        "[builder 2/2]": "will run",  # (both stages' FROM busybox are one vertex)
        "[stage-1 2/4]": "cached",
        "[stage-1 3/4]": "depends on output",
        "[stage-1 4/4]": "depends on output",
    }
    assert why(predictions, "[stage-1 3/4]") == (
        "input from step [builder 2/2] will run: may stay cached if that output does not "
        "change (early cutoff)"
    )
    assert why(predictions, "[stage-1 4/4]").startswith(
        "input from step [stage-1 3/4] depends on output"
    )
    result = bk.build(MULTI, build_args={"NOISE": "b"})
    assert_agrees(predictions, result)
    # /out did not change: early cutoff kept both cached
    assert result.step("[stage-1 3/4]").status == "cached"
    assert result.step("[stage-1 4/4]").status == "cached"


def test_copy_from_with_own_change_will_run(bk: Any) -> None:
    bk.build(MULTI)
    changed = MULTI.replace("/app/out\n", "/app/out2\n").replace("cat /app/out ", "cat /app/out2 ")
    predictions = predict(bk, changed, build_args={"NOISE": "b"})
    got = verdicts(predictions)
    assert got["[stage-1 3/4]"] == "will run"
    assert why(predictions, "[stage-1 3/4]") == "destination changed"
    assert got["[stage-1 4/4]"] == "will run"
    assert_agrees(predictions, bk.build(changed, build_args={"NOISE": "b"}))


def test_not_needed_steps_are_cached(bk: Any) -> None:
    """A step missing from the cache under a cached one is not needed: the build skips it."""
    df = "FROM busybox AS a\nRUN echo a > /a\nFROM busybox\nCOPY --from=a /a /a\n"
    result = bk.build(df)
    with Store.open(bk.root) as store, store.db.transaction() as conn:
        # the stage's result loses its key; the final COPY keeps its own
        conn.execute("DELETE FROM cache_keys WHERE key = ?", (result.step("[a 2/2]").key,))
    predictions = predict(bk, df)
    assert verdicts(predictions)["[a 2/2]"] == "cached"
    assert why(predictions, "[a 2/2]") == "not needed: a later step is cached"
    real = bk.build(df)
    assert real.step("[a 2/2]").status == "skipped"
    assert_agrees(predictions, real)


PIPELINE = """\
FROM busybox AS deps
WORKDIR /deps
COPY requirements.txt .
RUN sort requirements.txt > sorted
FROM busybox AS build
ARG MODE=release
WORKDIR /src
COPY --from=deps /deps/sorted /sorted
COPY src/ ./
RUN cat /sorted *.txt > /out && echo "$MODE" >> /out
FROM busybox
COPY --from=build /out /app/out
COPY config.ini /app/
RUN wc -c /app/out /app/config.ini
"""

# (what is about to change: paths, build args; the edit itself)
EDITS: list[tuple[list[str], dict[str, str], dict[str, str]]] = [
    ([], {}, {}),
    (["src/a.txt"], {}, {"src/a.txt": "alpha 2\n"}),
    (["requirements.txt"], {}, {"requirements.txt": "b\na\n"}),  # same once sorted
    (["config.ini"], {}, {"config.ini": "x=2\n"}),
    ([], {"MODE": "debug"}, {}),
    (["src/new.txt"], {"MODE": "debug"}, {"src/new.txt": "new\n"}),
    (["notes.md"], {"MODE": "debug"}, {"notes.md": "ignored\n"}),
    (["src"], {"MODE": "debug"}, {"src/a.txt": "alpha 3\n"}),
    ([], {"MODE": "debug"}, {}),
]


def test_pipeline_predictions_match_real_builds(bk: Any) -> None:
    bk.write(
        {
            "requirements.txt": "a\nb\n",
            "src/a.txt": "alpha\n",
            "src/b.txt": "beta\n",
            "config.ini": "x=1\n",
            ".dockerignore": "*.md\n",
        }
    )
    bk.build(PIPELINE)
    seen: dict[str, set[str]] = {}
    for paths, args, edit in EDITS:
        predictions = predict(bk, PIPELINE, changed_paths=paths, build_args=args)
        bk.write(edit)
        result = bk.build(PIPELINE, build_args=args)
        assert_agrees(predictions, result)
        for p in predictions:
            seen.setdefault(p.verdict, set()).add(p.step_name.split("]")[0] + "]")
        if paths == ["requirements.txt"]:
            got = verdicts(predictions)
            assert got["[deps 3/4]"] == "will run"
            assert got["[deps 4/4]"] == "will run"
            # reads the stage by content: may match, and does
            assert got["[build 3/5]"] == "depends on output"
            assert result.step("[build 3/5]").status == "cached"
            # what builds on it depends too: here it runs, because COPY src/ last ran when
            # [build 3/5] hit by its definition key, so it was never stored under the key
            # [build 3/5]'s content gives
            assert got["[build 5/5]"] == "depends on output"
            assert result.step("[build 4/5]").status == "executed"
        if paths == ["config.ini"]:
            got = verdicts(predictions)
            assert got["[stage-2 3/4]"] == "will run" and got["[stage-2 4/4]"] == "will run"
            assert got["[stage-2 2/4]"] == "cached" and got["[build 5/5]"] == "cached"
    assert seen["depends on output"] >= {"[build 3/5]", "[build 5/5]"}
    assert "[stage-2 4/4]" in seen["will run"] and "[stage-2 4/4]" in seen["cached"]


def test_absolute_and_whole_context_paths(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    absolute = predict(bk, changed_paths=[str(bk.ctx / "src" / "b.txt")])
    assert verdicts(absolute)["[5/6]"] == "will run"
    assert verdicts(absolute)["[3/6]"] == "cached"
    everything = predict(bk, changed_paths=["."])
    assert verdicts(everything)["[3/6]"] == "will run"
    assert why(everything, "[3/6]") == "`.` changed"
    with pytest.raises(UsageError, match="not inside the build context"):
        predict(bk, changed_paths=["/etc/passwd"])
