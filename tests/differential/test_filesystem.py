"""Final filesystems: nbbuild's ``--output type=local`` and ``type=tar`` against BuildKit's.

BuildKit 0.8 is the oracle except where a case's ``case.toml`` says (``buildkit08``) that it
differs from current BuildKit; there the expectation is BuildKit's result with the case's
``[current]`` overrides, and the reason is printed with any failure.

``nbbuild_result(case)`` is None only with a single ID mapping, for a case that needs other IDs:
the fixture has then asserted that nbbuild failed with its clear error, and that is the test.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

harness: Any = sys.modules["nbbuild_differential_harness"]  # loaded by conftest.py

CASES = harness.load_cases()


def _why(case: Any) -> str:
    text = f"case {case.name}: {case.description}"
    if case.buildkit08:
        text += f"\n(expected = current BuildKit, not 0.8: {case.buildkit08})"
    return text


def test_corpus_size() -> None:
    assert len(CASES) >= 40, [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_buildkit_exports_agree(case: Any, buildkit_case: Any) -> None:
    """Self-check of the harness and a BuildKit quirk: the local exporter writes exactly the tar
    exporter's tree except that every entry belongs to the client (filesync resets uid/gid)."""
    res = buildkit_case(case)
    local, tar = dict(res["local"]), res["tar"]
    root = local.pop(".")
    assert root["mode"] == "0o700", "the local exporter creates a missing destination 0700"
    assert harness.diff_manifests(harness.without_ownership(tar), harness.without_ownership(local)) == []
    owners = {(e["uid"], e["gid"]) for e in [root, *local.values()]}
    assert owners <= {harness.ORACLE_CLIENT}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_local_output(case: Any, buildkit_case: Any, nbbuild_result: Any) -> None:
    """Files and modes under the destination; the destination directory itself is
    test_local_output_destination's. Owners are compared in test_tar_output only: BuildKit's
    client writes every file as itself, nbbuild's local exporter keeps the image's owners (a
    deliberate difference as root, documented in engine/exporters/local.py; rootless, every file
    is the user's, as with BuildKit)."""
    result = nbbuild_result(case)
    if result is None:
        return
    expected = harness.without_ownership(
        {p: e for p, e in buildkit_case(case)["local"].items() if p != "."}
    )
    actual = harness.without_ownership({p: e for p, e in result["local"].items() if p != "."})
    diff = harness.diff_manifests(expected, actual)
    assert not diff, _why(case) + "\n--output type=local differs:\n" + "\n".join(diff)


def test_local_output_destination(buildkit_case: Any, nbbuild_case: Any) -> None:
    """A missing ``dest`` is created 0700, owned by the client (filesync.syncTargetDiffCopy):
    root for the oracle, whoever runs the tests for nbbuild."""
    case = next(c for c in CASES if c.name == "run_basic")
    expected = dict(buildkit_case(case)["local"]["."])
    assert (expected.pop("uid"), expected.pop("gid")) == harness.ORACLE_CLIENT
    actual = dict(nbbuild_case(case)["local"]["."])
    assert (actual.pop("uid"), actual.pop("gid")) == (os.getuid(), os.getgid())
    assert actual == expected


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_tar_output(case: Any, buildkit_case: Any, nbbuild_result: Any) -> None:
    """The tar output keeps owners: this is where --chown, USER and archive owners show."""
    result = nbbuild_result(case)
    if result is None:
        return
    expected = buildkit_case(case)["tar"]
    actual = result["tar"]
    diff = harness.diff_manifests(expected, actual)
    assert not diff, _why(case) + "\n--output type=tar differs:\n" + "\n".join(diff)


@pytest.mark.parametrize("case", [c for c in CASES if c.current], ids=lambda c: c.name)
def test_current_overrides_name_what_buildkit_08_did(case: Any, oracle: Any) -> None:
    """Every ``[current]`` override changes something BuildKit 0.8 really produced (no typos)."""
    raw = oracle.case_result(case)
    assert case.buildkit08, f"{case.name}: [current] overrides need a buildkit08 reason"
    for path in case.current.get("files", {}):
        assert path in raw["tar"], f"{case.name}: {path} is not in BuildKit's output"
    names = {s["name"] for s in raw["steps"]}
    for old in case.current.get("steps", {}):
        assert old in names, f"{case.name}: BuildKit printed no step {old!r}"
    for key in case.current.get("config", {}):
        assert key in harness.TOP_FIELDS or key in harness.CONFIG_FIELDS, key
    patched = harness.apply_current_overrides(case, raw)
    assert patched != raw


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_plan_keys_are_the_keys_the_build_looked_up(case: Any, nbbuild_result: Any) -> None:
    """``nbbuild plan`` before the build promises keys; the build looks up exactly those."""
    result = nbbuild_result(case)
    if result is None:
        return
    planned, built = result["planned_keys"], result["built_keys"]
    assert built, f"{case.name}: the build reported no step keys"
    assert set(built) == set(planned), f"{case.name}: plan and build name different steps"
    for name, key in built.items():
        assert not planned[name]["provisional"], f"{case.name}: {name} planned provisional"
        assert planned[name]["key"] == key, f"{case.name}: {name}: plan {planned[name]['key']} != build {key}"


def test_needs_other_ids() -> None:
    """What makes a case one that a single-ID rootless build must refuse (and nothing else)."""
    root_only = {"a": {"uid": 0, "gid": 0}}
    history = [{"created_by": "RUN /bin/sh -c true # buildkit"}, {"created_by": "USER nobody"}]
    assert harness.needs_other_ids(root_only, {"history": history}) == []  # USER, no RUN as it
    assert harness.needs_other_ids(root_only, {"history": [*history, {"created_by": "USER root:0"},
                                                           {"created_by": "RUN /bin/sh -c id"}]}) == []
    assert harness.needs_other_ids(root_only, {"history": [*history, {"created_by": "RUN /bin/sh -c id"}]}) == [
        "RUN as USER nobody: RUN /bin/sh -c id"
    ]
    assert harness.needs_other_ids({**root_only, "b": {"uid": 0, "gid": 5}}, {}) == ["files owned by 0:5"]
