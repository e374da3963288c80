"""Session fixtures for the differential tests: the BuildKit oracle and an nbbuild store.

The oracle (``scripts/buildkit-oracle.sh``: Debian's dockerd with BuildKit 0.8 on a private
socket) is started the first time a BuildKit result is not already cached under
``/var/tmp/nbbuild-oracle/results``, and stopped at the end of the session only if this session
started it (and no other session is using it). On a clean machine that installs docker.io and
busybox-static with apt-get, so the tests need root — as CI runs them.
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

    def __call__(self, item: Any) -> dict[str, Any]:
        if item.name not in self.done:
            try:
                self.done[item.name] = (True, self.fn(item))
            except Exception as exc:
                detail = "".join(traceback.format_exception_only(exc)).strip()
                self.done[item.name] = (False, detail)
        ok, value = self.done[item.name]
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
        oracle.ensure()  # writes the busybox rootfs tar both sides import
    side = harness.NbbuildSide(tmp_path_factory.mktemp("nbbuild-store"))

    def build(case: Any) -> dict[str, Any]:
        return side.case_result(case, tmp_path_factory.mktemp(f"nb-{case.name}"))  # type: ignore[no-any-return]

    return _Memo(build)


@pytest.fixture(scope="session")
def nbbuild_scenario(oracle: Any, tmp_path_factory: pytest.TempPathFactory) -> _Memo:
    """scenario → nbbuild's steps; a fresh store per scenario (BuildKit's cache is pruned too)."""
    if not harness.ROOTFS_TAR.exists():
        oracle.ensure()

    def build(sc: Any) -> dict[str, Any]:
        work = tmp_path_factory.mktemp(f"nb-edit-{sc.name}")
        side = harness.NbbuildSide(work / "store")
        return side.scenario_result(sc, work)  # type: ignore[no-any-return]

    return _Memo(build)
