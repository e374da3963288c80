"""Image config and step names: nbbuild's against BuildKit's.

Compared config fields: ``architecture``, ``os``, ``author`` and ``config``'s Env, Cmd,
Entrypoint, WorkingDir, User, Labels, ExposedPorts, Volumes, StopSignal, Healthcheck, Shell and
OnBuild (absent and null are equal). Excluded, and why: ``created`` and history timestamps
(wall clock: only how they relate is compared, ``test_history_times``), ``rootfs.diff_ids`` (layer tars carry mtimes), history ``created_by`` strings
(BuildKit 0.8's differ from current ones, e.g. 0.8 drops ``--chown`` and prints exec-form RUN
unquoted), and the container-config fields BuildKit never sets (Hostname, Tty, Attach*, Image…).
"""

from __future__ import annotations

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


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_image_config(case: Any, buildkit_case: Any, nbbuild_result: Any) -> None:
    result = nbbuild_result(case)
    if result is None:
        return  # single ID mapping: nbbuild refused the case clearly (asserted)
    assert result["config"] == buildkit_case(case)["config"], _why(case)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_step_names(case: Any, buildkit_case: Any, nbbuild_result: Any) -> None:
    """``[stage k/n] INSTRUCTION`` as BuildKit prints them (FROM lines excluded: BuildKit prints
    one FROM vertex for identical bases, named after the first stage, with the resolved
    reference, and 0.8 prints no digest)."""
    result = nbbuild_result(case)
    if result is None:
        return  # single ID mapping: nbbuild refused the case clearly (asserted)
    expected = sorted(s["name"] for s in buildkit_case(case)["steps"] if not _is_from(s))
    actual = sorted(s["name"] for s in result["steps"] if not _is_from(s))
    assert actual == expected, _why(case)


def _time_pattern(raw_config: dict[str, Any]) -> tuple[list[int], bool]:
    """How the image's times relate, not what they are (wall clock): for each history entry,
    the index of the first entry with the same time, and whether the image's ``created`` is
    the last entry's."""
    times = [h.get("created") for h in raw_config.get("history") or []]
    first: dict[Any, int] = {}
    pattern = [first.setdefault(t, i) for i, t in enumerate(times)]
    return pattern, bool(times) and raw_config.get("created") == times[-1]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_history_times(case: Any, buildkit_case: Any, nbbuild_result: Any) -> None:
    """BuildKit's exporter dates each layer's history entry with its layer (a cached layer keeps
    the time it was made), an entry without a layer with the next new layer's time or the one
    before it, and the image with the last entry's: so a fully cached rebuild keeps the image
    ID. nbbuild's times must relate the same way."""
    result = nbbuild_result(case)
    if result is None:
        return  # single ID mapping: nbbuild refused the case clearly (asserted)
    expected = _time_pattern(buildkit_case(case)["raw_config"])
    assert _time_pattern(result["raw_config"]) == expected, _why(case)


def _is_from(step: dict[str, Any]) -> bool:
    return bool(str(step["instruction"]).upper().startswith("FROM "))
