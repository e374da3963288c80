"""Edit scenarios: build, edit, rebuild; the steps that ran must be the ones BuildKit re-ran.

Each scenario starts from an empty cache on both sides (``docker builder prune -af`` on the
oracle's private daemon; a fresh ``--root`` for nbbuild). Steps are compared by stage and
instruction (``[stage] RUN …``); FROM lines are left out (resolving a local image is not work,
and BuildKit 0.8 prints a reused one as CACHED or DONE depending on the daemon's history).
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

harness: Any = sys.modules["nbbuild_differential_harness"]  # loaded by conftest.py

SCENARIOS = harness.load_scenarios()


def _steps(result: dict[str, Any], which: str) -> list[Any]:
    return [harness.step_from_json(s) for s in result[which]]


def _why(sc: Any) -> str:
    text = f"scenario {sc.name}: {sc.description}"
    if sc.buildkit_quirk:
        text += f"\n(note: {sc.buildkit_quirk})"
    return text


def test_enough_scenarios() -> None:
    assert len(SCENARIOS) >= 12, [s.name for s in SCENARIOS]


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_buildkit_reruns_what_the_scenario_expects(sc: Any, buildkit_scenario: Any) -> None:
    """Pins the oracle: a change in BuildKit's answer or in the progress parser shows here."""
    res = buildkit_scenario(sc)
    first = _steps(res, "first")
    assert [s for s in first if s.cached and not s.is_from] == [], "first build starts from an empty cache"
    assert harness.ran(_steps(res, "second")) == sorted(sc.expect_ran), _why(sc)


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_first_build_runs_every_step(sc: Any, buildkit_scenario: Any, nbbuild_scenario_result: Any) -> None:
    result = nbbuild_scenario_result(sc)
    if result is None:
        return  # single ID mapping: nbbuild refused the scenario clearly (asserted)
    expected = harness.ran(_steps(buildkit_scenario(sc), "first"))
    assert harness.ran(_steps(result, "first")) == expected, _why(sc)


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_rebuild_after_edit_reruns_what_buildkit_reruns(
    sc: Any, buildkit_scenario: Any, nbbuild_scenario_result: Any
) -> None:
    result = nbbuild_scenario_result(sc)
    if result is None:
        return  # single ID mapping: nbbuild refused the scenario clearly (asserted)
    expected = harness.ran(_steps(buildkit_scenario(sc), "second"))
    actual = harness.ran(_steps(result, "second"))
    assert actual == expected, _why(sc)


PLAIN_08 = """\
#1 [internal] load build definition from Dockerfile
#1 sha256:1b1c0f824d2d07b696723147d71d2dd1b4af79a9ff65c9cc4e214be1ec61c99f
#1 transferring dockerfile: 199B done
#1 DONE 0.0s

#4 [base  1/11] FROM docker.io/library/busybox
#4 sha256:08a03f3ffe5fba421a6403c31e153425ced631d108868f30e04985f99d69326e
#4 CACHED

#5 [base  2/11] RUN echo   "a  b" > /x
#5 sha256:8e16f5df9ba7bd50f0fd742252660ac4772b3e3f7eda7fd0cb91c686e82773bb
#5 0.051 some output
#5 DONE 0.1s

#6 [10/11] COPY a.txt /a.txt
#6 sha256:ac6ffe8fb46fdd1fbc7bf363eb0a3c82d1084b746a9ef4f9d166c88d454dab49
#6 CACHED

#7 [stage-1 1/2] WORKDIR /w
#7 ERROR: failed
#8 exporting to image
#8 DONE 0.1s
"""


def test_parse_plain_progress() -> None:
    steps = harness.parse_plain_progress(PLAIN_08)
    assert [(s.stage, s.index, s.total, s.instruction, s.cached) for s in steps] == [
        ("base", 1, 11, "FROM docker.io/library/busybox", True),
        ("base", 2, 11, 'RUN echo "a b" > /x', False),
        ("", 10, 11, "COPY a.txt /a.txt", True),
        ("stage-1", 1, 2, "WORKDIR /w", False),
    ]
    assert steps[1].name == '[base  2/11] RUN echo   "a  b" > /x'
    assert harness.ran(steps) == ['[base] RUN echo "a b" > /x', "[stage-1] WORKDIR /w"]


def test_steps_from_metadata() -> None:
    meta = {
        "nbbuild.steps": [
            {"name": "[1/3] FROM docker.io/library/busybox", "status": "cached"},
            {"name": "[2/3] RUN true", "status": "executed"},
            {"name": "[3/3] COPY a /a", "status": "cached"},
            {"name": "[x 2/2] RUN unused", "status": "skipped"},
            {"name": "[internal] load build context", "status": "executed"},
        ]
    }
    steps = harness.steps_from_metadata(meta)
    assert harness.ran(steps) == ["RUN true"]
    assert [s.cached for s in steps] == [True, False, True]
