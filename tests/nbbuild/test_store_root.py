"""``nbbuild build`` finds its store by engine.plan.default_store_root's rule (it keeps a copy
so that a build does not import engine.plan, and with it the Dockerfile frontend)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.plan import default_store_root
from nbbuild._cli_build import store_root


@pytest.mark.parametrize("explicit", [None, "", "/tmp/explicit-store"])
@pytest.mark.parametrize("env", [None, "", "/tmp/env-store"])
def test_the_build_commands_store_root_is_plans(
    explicit: str | None, env: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if env is None:
        monkeypatch.delenv("NBBUILD_ROOT", raising=False)
    else:
        monkeypatch.setenv("NBBUILD_ROOT", env)
    assert store_root(explicit) == default_store_root(explicit)
