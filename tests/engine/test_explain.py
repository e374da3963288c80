""" "Why did this step re-run?": every reason produced by a real edit and rebuild (real
containers, a fresh store with busybox: tests/buildkit_base.py), plus the diff machinery."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.explain import (
    MANIFEST_LIMIT,
    Explanation,
    FieldChange,
    arg_names,
    compact_manifest,
    diff_preimages,
    explain,
    explain_full,
    explain_recorded,
    match_steps,
)
from engine.store.history import BuildRecord, StepRecord
from engine.store.store import Store


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
ENV X=1
WORKDIR /app
COPY requirements.txt ./
RUN echo "$VERSION $X" > /v
COPY . .
RUN cat src/*.txt > /app/artifact
"""

FILES = {"requirements.txt": "numpy\n", "src/a.txt": "alpha\n", "src/b.txt": "beta\n"}


def reasons(result: Any) -> dict[str, str]:
    """``[k/n]`` (or the full name) → reason, for the steps that have one."""
    out = {}
    for s in result.steps:
        if s.digest in result.reasons:
            label = s.name.split("]")[0] + "]" if s.name.startswith("[") else s.name
            out[label] = result.reasons[s.digest]
    return out


# -- reasons from real rebuilds -------------------------------------------------------------


def test_first_build_then_nothing_to_explain(bk: Any) -> None:
    bk.write(FILES)
    first = bk.build(DF)
    assert reasons(first) == {
        "[2/6]": "first build",
        "[3/6]": "first build",
        "[4/6]": "first build",
        "[5/6]": "first build",
        "[6/6]": "first build",
    }
    second = bk.build(DF)
    assert {s.status for s in second.steps if s.step} == {"cached"}
    assert second.reasons == {}
    # The history keeps each step's reason and, for context copies, the files it covered.
    with Store.open(bk.root) as store:
        record = store.last_build(second.name)
        assert record is not None
        before = store.builds(limit=2)[1]
    assert [s.reason for s in before.steps if s.step == 3] == ["first build"]
    copy_dot = next(s for s in record.steps if s.instruction == "COPY . .")
    manifest = copy_dot.manifests["1"]
    assert manifest["count"] == 4
    assert sorted(manifest["files"]) == ["requirements.txt", "src/", "src/a.txt", "src/b.txt"]


def test_source_edit_names_the_file_and_the_input_step(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    bk.write({"src/a.txt": "alpha, edited\n"})
    result = bk.build(DF)
    assert reasons(result) == {
        "[5/6]": "file `src/a.txt` changed",
        "[6/6]": "input from step [5/6] changed",
    }


def test_files_added_removed_and_counted(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    bk.write({"src/c.txt": "gamma\n", "src/d.txt": "delta\n"})
    assert reasons(bk.build(DF))["[5/6]"] == "files added: src/c.txt, src/d.txt"
    (bk.ctx / "src" / "d.txt").unlink()
    assert reasons(bk.build(DF))["[5/6]"] == "file `src/d.txt` removed"
    # one added, one removed, one modified
    (bk.ctx / "src" / "c.txt").unlink()
    bk.write({"src/e.txt": "epsilon\n", "src/a.txt": "alpha 2\n"})
    assert reasons(bk.build(DF))["[5/6]"] == "3 files changed"
    bk.write({"src/a.txt": "alpha 3\n", "src/b.txt": "beta 3\n", "src/e.txt": "e3\n"})
    bk.write({"requirements.txt": "numpy\nscipy\n"})
    result = bk.build(DF)
    assert reasons(result)["[3/6]"] == "file `requirements.txt` changed"
    assert reasons(result)["[5/6]"] == "4 files changed"


def test_many_files_are_counted_without_names(bk: Any) -> None:
    many = {f"data/f{i:04}.txt": f"{i}\n" for i in range(MANIFEST_LIMIT + 200)}
    df = "FROM busybox\nCOPY data /data\nRUN ls /data | wc -l\n"
    bk.write(many)
    bk.build(df)
    bk.write({"data/f0001.txt": "x\n", "data/f0500.txt": "y\n", "data/f1100.txt": "z\n"})
    result = bk.build(df)
    assert reasons(result) == {"[2/3]": "3 files changed", "[3/3]": "input from step [2/3] changed"}
    with Store.open(bk.root) as store:
        record = store.last_build(result.name)
    assert record is not None
    manifest = record.steps[[s.step for s in record.steps].index(2)].manifests["1"]
    assert "files" not in manifest and len(manifest["fingerprints"]) == 16 * len(many)


def test_build_arg_and_env_changes(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    result = bk.build(DF, build_args={"VERSION": "1.3"})
    assert reasons(result) == {
        "[4/6]": "build-arg `VERSION` 1.2 → 1.3",
        "[5/6]": "input from step [4/6] changed",
        # the ARG is in every later RUN's environment too
        "[6/6]": "build-arg `VERSION` 1.2 → 1.3",
    }
    changed = bk.build(DF.replace("ENV X=1", "ENV X=2"), build_args={"VERSION": "1.3"})
    assert reasons(changed)["[4/6]"] == "env `X` 1 → 2"
    added = bk.build(
        DF.replace("ENV X=1", "ENV X=2 Y=new"),
        build_args={"VERSION": "1.3"},
    )
    assert reasons(added)["[4/6]"] == "env `Y` added"
    explanation = explain(
        [s for s in added.steps],
        _previous_of(bk, added.name),
        arg_names=arg_names(DF),
    )
    change = explanation[added.step("[4/6]").digest].changes
    assert FieldChange("op.meta.env.Y", None, "new") in change


def _previous_of(bk: Any, name: str) -> BuildRecord | None:
    with Store.open(bk.root) as store:
        records = store.builds(limit=2)
    assert records[0].name == name
    return records[1]


def test_command_workdir_and_destination_changes(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    cmd = bk.build(DF.replace("> /v", "> /version"))
    assert reasons(cmd) == {
        "[4/6]": "command changed",
        "[5/6]": "input from step [4/6] changed",
        "[6/6]": "input from step [5/6] changed",
    }
    wd = bk.build(DF.replace("> /v", "> /version").replace("/app", "/srv"))
    got = reasons(wd)
    assert got["[2/6]"] == "WORKDIR changed"
    assert got["[3/6]"] == "destination changed"  # ./ is now /srv/
    assert got["[4/6]"] == "WORKDIR changed"


def test_no_cache(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    result = bk.build(DF, no_cache=True)
    assert reasons(result) == {
        "[3/6]": "--no-cache",
        "[4/6]": "--no-cache",
        "[5/6]": "--no-cache",
        "[6/6]": "--no-cache",
    }


def test_no_cache_filter_names_the_ignored_input(bk: Any) -> None:
    df = """\
FROM busybox AS builder
RUN echo built > /out
FROM busybox
WORKDIR /app
COPY --from=builder /out /app/out
RUN cat /app/out
"""
    bk.build(df)
    result = bk.build(df, no_cache_filter=("builder",))
    got = reasons(result)
    assert got["[builder 2/2]"] == "--no-cache"
    # same bytes: the COPY matched by content (early cutoff), nothing more ran
    assert result.step("[stage-1 3/4]").status == "cached"
    assert "[stage-1 3/4]" not in got


def test_input_from_another_stage(bk: Any) -> None:
    df = """\
FROM busybox AS builder
ARG FLAVOUR=plain
RUN echo "$FLAVOUR" > /out
FROM busybox
COPY --from=builder /out /out
RUN cat /out
"""
    bk.build(df)
    result = bk.build(df, build_args={"FLAVOUR": "spicy"})
    assert reasons(result) == {
        "[builder 2/2]": "build-arg `FLAVOUR` plain → spicy",
        "[stage-1 2/3]": "input from step [builder 2/2] changed",
        "[stage-1 3/3]": "input from step [stage-1 2/3] changed",
    }


def test_base_image_changed(bk: Any) -> None:
    bk.build("FROM busybox\nRUN echo one > /base\n", tags=("mybase:1",))
    df = "FROM mybase:1\nWORKDIR /w\nRUN cat /base\n"
    bk.build(df)
    bk.build("FROM busybox\nRUN echo two > /base\n", tags=("mybase:1",))
    result = bk.build(df)
    assert reasons(result) == {
        "[2/3]": "base image changed",
        "[3/3]": "input from step [2/3] changed",
    }


def test_pruned_cache(bk: Any) -> None:
    from engine.store.gc import prune

    bk.write(FILES)
    bk.build(DF)
    with Store.open(bk.root) as store:
        prune(store, all=True)
    result = bk.build(DF)
    assert set(reasons(result).values()) == {"not in cache (pruned?)"}
    assert len(reasons(result)) == 5


def test_new_step_and_shifted_steps_match_by_text(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    inserted = DF.replace("COPY . .\n", "RUN echo extra > /extra\nCOPY . .\n")
    result = bk.build(inserted)
    assert reasons(result) == {
        "[5/7]": "new step",
        "[6/7]": "input from step [5/7] changed",  # COPY . . matched by its text, not "[6/6]"
        "[7/7]": "input from step [6/7] changed",
    }


def test_failed_step_then_fixed(bk: Any) -> None:
    df = 'FROM busybox\nCOPY flag /flag\nRUN test "$(cat /flag)" = ok\n'
    bk.write({"flag": "no"})
    try:
        bk.build(df)
    except Exception:
        pass
    else:  # pragma: no cover
        raise AssertionError("the build should have failed")
    bk.write({"flag": "ok"})
    result = bk.build(df)
    assert reasons(result) == {
        "[2/3]": "file `flag` changed",
        "[3/3]": "input from step [2/3] changed",
    }
    with Store.open(bk.root) as store:
        failed = store.builds(limit=2)[1]
    assert failed.status == "failed"
    assert [s.reason for s in failed.steps if s.step == 3] == ["first build"]


def test_explain_full_and_recorded(bk: Any) -> None:
    bk.write(FILES)
    bk.build(DF)
    bk.write({"src/a.txt": "alpha, edited\n"})
    result = bk.build(DF, build_args={"VERSION": "2"})
    with Store.open(bk.root) as store:
        current, previous = store.builds(limit=2)
    text = explain_full(
        current.steps,
        previous,
        arg_names=arg_names(DF),
        inputs={v.digest: v.inputs for v in result.definition.vertices},
    )
    lines = text.splitlines()
    assert lines[0].startswith("compared with the build of ")
    assert "[2/6] WORKDIR /app: cached" in lines
    i = lines.index('[4/6] RUN echo "2 1" > /v: executed: build-arg `VERSION` 1.2 → 2')
    assert lines[i + 1] == "    op.meta.env.VERSION: 1.2 → 2"
    j = lines.index("[5/6] COPY . .: executed: file `src/a.txt` changed")
    assert lines[j + 1].startswith("    deps[0]: {kind: definition, value: sha256:")
    assert lines[j + 2].startswith("    deps[1]: {kind: content, value: sha256:")
    assert lines[j + 3].startswith("    deps[1].files[src/a.txt]: ")
    # The build's StepResults carry no manifests: the file is not named, the diff still shows.
    without = explain_full(result.steps, previous, arg_names=arg_names(DF)).splitlines()
    assert "[5/6] COPY . .: executed: files changed" in without
    with Store.open(bk.root) as store:
        recorded = explain_recorded(store, result.name)
        assert "no build named" in explain_recorded(store, "nope")
    # From the history alone: the headline is the reason recorded at build time.
    assert recorded.splitlines() == lines


# -- the machinery ---------------------------------------------------------------------------


def _step(
    digest: str, name: str, step: int | None, instruction: str, stage: str = "", **kw: Any
) -> StepRecord:
    kw.setdefault("status", "executed")
    kw.setdefault("key", None)
    return StepRecord(
        digest=digest,
        name=name,
        step=step,
        stage=stage,
        line=None,
        instruction=instruction,
        **kw,
    )


def test_match_steps_prefers_text_then_position() -> None:
    prev = [
        _step("p1", "[1/3] FROM x", 1, "FROM x"),
        _step("p2", "[2/3] RUN a", 2, "RUN a"),
        _step("p3", "[3/3] RUN b", 3, "RUN b"),
    ]
    cur = [
        _step("c1", "[1/4] FROM x", 1, "FROM x"),
        _step("c2", "[2/4] COPY n .", 2, "COPY n ."),  # new: no COPY was at 2
        _step("c3", "[3/4] RUN a", 3, "RUN a"),  # moved: matched by text
        _step("c4", "[4/4] RUN c", 4, "RUN c"),  # no text match, no RUN at 4 before
    ]
    matched = match_steps(cur, prev)
    assert {k: v.digest for k, v in matched.items()} == {"c1": "p1", "c3": "p2"}
    edited = [_step("e1", "[1/3] FROM x", 1, "FROM x"), _step("e3", "[3/3] RUN z", 3, "RUN z")]
    assert match_steps(edited, prev)["e3"].digest == "p3"


def test_explain_without_previous_and_statuses() -> None:
    cur = [
        _step("a", "[1/2] FROM x", 1, "FROM x", status="cached"),
        _step("b", "[2/2] RUN y", 2, "RUN y"),
    ]
    assert explain(cur, None) == {"b": Explanation("first build", (), "first build")}
    prev = BuildRecord("n", 1, "", "executed", (cur[0],))
    assert explain(cur, prev)["b"].reason == "new step"


def test_compact_manifest_forms() -> None:
    small = {"a": "sha256:" + "1" * 64, "d/": "sha256:" + "2" * 64}
    assert compact_manifest(small) == {"count": 2, "files": {"a": "1" * 16, "d/": "2" * 16}}
    big = {f"f{i}": "sha256:" + f"{i:064x}" for i in range(MANIFEST_LIMIT + 1)}
    form = compact_manifest(big)
    assert form["count"] == MANIFEST_LIMIT + 1 and len(form["fingerprints"]) == 16 * len(big)
    huge = {f"f{i}": "sha256:" + "0" * 64 for i in range(10_001)}
    assert compact_manifest(huge) == {"count": 10_001}


def test_diff_preimages_fields() -> None:
    old = {
        "op": {"type": "buildkit.exec.v0", "meta": {"args": ["sh", "-c", "a"], "env": ["A=1"]}},
        "deps": [{"kind": "definition", "value": "k1", "selector": None}],
    }
    new = {
        "op": {"type": "buildkit.exec.v0", "meta": {"args": ["sh", "-c", "b"], "env": ["B=2"]}},
        "deps": [{"kind": "definition", "value": "k2", "selector": None}],
    }
    changes = diff_preimages(old, new)
    paths = [c.path for c in changes]
    assert paths == ["op.meta.args", "op.meta.env.A", "op.meta.env.B", "deps[0]"]
    assert changes[0] == FieldChange("op.meta.args", ("sh", "-c", "a"), ("sh", "-c", "b"))


def test_arg_names_leave_out_env() -> None:
    df = "ARG G=1\nFROM busybox\nARG G\nARG A=1 B\nENV B=2 C=3\nRUN true\n"
    assert arg_names(df) == frozenset({"G", "A"})


def test_same_preimage_reasons_follow_the_previous_status() -> None:
    pre = {"op": {"type": "buildkit.exec.v0", "meta": {"args": ["true"]}}, "deps": []}
    cur = [_step("c", "[2/2] RUN true", 2, "RUN true", preimage=pre)]

    def previous(status: str) -> BuildRecord:
        step = _step("p", "[2/2] RUN true", 2, "RUN true", preimage=pre, status=status)
        return BuildRecord("n", 1, "", "failed", (step,))

    assert explain(cur, previous("failed"))["c"].reason == "failed in the previous build"
    assert explain(cur, previous("canceled"))["c"].reason == "canceled in the previous build"
    assert explain(cur, previous("skipped"))["c"].reason == (
        "not in cache (the previous build did not build it)"
    )
    assert explain(cur, previous("executed"))["c"] == Explanation(
        "not in cache (pruned?)", (), "not in cache"
    )
