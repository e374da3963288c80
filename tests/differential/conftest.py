"""Session fixtures for the differential tests: the BuildKit oracle and an nbbuild store.

The oracle (``scripts/buildkit-oracle.sh``: Debian's dockerd with BuildKit 0.8 on a private
socket) is started the first time a BuildKit result is not already cached under
``/var/tmp/nbbuild-oracle/results``, and stopped at the end of the session only if this session
started it (and no other session is using it). On a clean machine that installs docker.io and
busybox-static with apt-get, so the tests need root — as CI runs them.

As a normal user (``scripts/rootless-tests.sh``, after the root run) only cached BuildKit results
are used: a missing one fails with a message saying so. With ``NBBUILD_TEST_MAPPING=single`` (no
subordinate ID range), a case or scenario whose BuildKit result needs IDs other than root must
make nbbuild fail with its clear error (:func:`nbbuild_result`, :func:`nbbuild_scenario_result`).
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent


def _load_harness() -> Any:
    # --import-mode=importlib: load the sibling module by path, once, under a unique name.
    name = "nbbuild_differential_harness"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _HERE / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


harness = _load_harness()


@pytest.fixture(scope="session")
def h() -> Any:
    """The harness module."""
    return harness


@pytest.fixture(scope="session")
def oracle() -> Iterator[Any]:
    o = harness.Oracle()
    try:
        yield o
    finally:
        o.close()


class _Memo:
    """Run a builder once per key per session; replay its result or its failure."""

    def __init__(self, fn: Callable[[Any], dict[str, Any]]) -> None:
        self.fn = fn
        self.done: dict[str, tuple[bool, Any]] = {}

    def outcome(self, item: Any) -> tuple[bool, Any]:
        """(True, result) or (False, the failure's message)."""
        if item.name not in self.done:
            try:
                self.done[item.name] = (True, self.fn(item))
            except Exception as exc:
                detail = "".join(traceback.format_exception_only(exc)).strip()
                self.done[item.name] = (False, detail)
        return self.done[item.name]

    def __call__(self, item: Any) -> dict[str, Any]:
        ok, value = self.outcome(item)
        if not ok:
            pytest.fail(value, pytrace=False)
        return value  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def buildkit_case(oracle: Any) -> _Memo:
    """case → BuildKit's result (files, config, steps), with the case's [current] overrides."""
    return _Memo(lambda case: harness.apply_current_overrides(case, oracle.case_result(case)))


@pytest.fixture(scope="session")
def buildkit_scenario(oracle: Any) -> _Memo:
    return _Memo(oracle.scenario_result)


@pytest.fixture(scope="session")
def nbbuild_case(oracle: Any, tmp_path_factory: pytest.TempPathFactory) -> _Memo:
    """case → nbbuild's result; one store for the whole corpus."""
    if not harness.ROOTFS_TAR.exists():
        oracle.ensure(f"{harness.ROOTFS_TAR} is missing")  # writes the rootfs tar both sides import
    side = harness.NbbuildSide(tmp_path_factory.mktemp("nbbuild-store"))

    def build(case: Any) -> dict[str, Any]:
        return side.case_result(case, tmp_path_factory.mktemp(f"nb-{case.name}"))  # type: ignore[no-any-return]

    return _Memo(build)


@pytest.fixture(scope="session")
def nbbuild_scenario(oracle: Any, tmp_path_factory: pytest.TempPathFactory) -> _Memo:
    """scenario → nbbuild's steps; a fresh store per scenario (BuildKit's cache is pruned too)."""
    if not harness.ROOTFS_TAR.exists():
        oracle.ensure(f"{harness.ROOTFS_TAR} is missing")

    def build(sc: Any) -> dict[str, Any]:
        work = tmp_path_factory.mktemp(f"nb-edit-{sc.name}")
        side = harness.NbbuildSide(work / "store")
        return side.scenario_result(sc, work)  # type: ignore[no-any-return]

    return _Memo(build)


def _expect_idmap_failure(what: str, reasons: list[str], memo: _Memo, item: Any) -> None:
    """Single mapping: the nbbuild side of ``item`` must have failed with the clear error."""
    ok, value = memo.outcome(item)
    needs = "; ".join(reasons)
    if ok:
        pytest.fail(
            f"{what} needs other IDs than root in BuildKit's result ({needs}); with only the "
            f"user's own ID mapped nbbuild must fail with a clear error, but it built",
            pytrace=False,
        )
    problem = harness.idmap_error_problem(str(value))
    if problem is not None:
        pytest.fail(f"{what} ({needs}): nbbuild failed, but not clearly: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def nbbuild_result(buildkit_case: _Memo, nbbuild_case: _Memo) -> Callable[[Any], dict[str, Any] | None]:
    """case → nbbuild's result, or None when the case cannot be built here and nbbuild said so
    as it must (asserted): with ``NBBUILD_TEST_MAPPING=single``, for a case whose BuildKit result
    needs IDs other than root (owners in the tar output, a RUN under a non-root USER)."""

    def get(case: Any) -> dict[str, Any] | None:
        if harness.MAPPING == "single":
            expected = buildkit_case(case)
            reasons = harness.needs_other_ids(expected["tar"], expected["raw_config"])
            if reasons:
                _expect_idmap_failure(f"case {case.name}", reasons, nbbuild_case, case)
                return None
        return nbbuild_case(case)

    return get


@pytest.fixture(scope="session")
def nbbuild_scenario_result(
    buildkit_scenario: _Memo, nbbuild_scenario: _Memo
) -> Callable[[Any], dict[str, Any] | None]:
    """scenario → nbbuild's steps, or None as :func:`nbbuild_result` (either build of the
    scenario needing other IDs than root)."""

    def get(sc: Any) -> dict[str, Any] | None:
        if harness.MAPPING == "single":
            expected = buildkit_scenario(sc)
            reasons = [
                f"{which} build: {r}"
                for which in ("first", "second")
                for r in harness.needs_other_ids(expected[f"{which}_tar"], expected[f"{which}_config"])
            ]
            if reasons:
                _expect_idmap_failure(f"scenario {sc.name}", reasons, nbbuild_scenario, sc)
                return None
        return nbbuild_scenario(sc)

    return get
