"""Fixtures for executor tests: a busybox rootfs built with scripts/busybox-rootfs.sh.

These tests run real containers as root (as CI does); missing packages are installed with
apt-get, and anything that makes that impossible fails the tests with a clear message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.executor import ExitResult, OciExecutor, ProcessSpec, find_runtime
from engine.snapshot import OverlayMount

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "busybox-rootfs.sh"


def ensure_packages(*packages: str) -> None:
    """apt-get install the Debian packages that are missing, or fail saying why not."""
    missing = [
        p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.fail(
            f"executor tests need root to install {' '.join(missing)} (and to run containers)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            pytest.fail(
                f"cannot install {' '.join(missing)}: {' '.join(argv)}: {proc.stderr[-500:]}"
            )


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention busybox rootfs dir (bin/busybox + applets, passwd, group)."""
    if os.geteuid() != 0:
        pytest.fail("executor tests run containers and need root")
    ensure_packages("busybox-static", "crun", "runc")
    root = tmp_path_factory.mktemp("busybox") / "rootfs"
    proc = subprocess.run(["bash", str(SCRIPT), str(root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return root


@dataclass
class Run:
    result: ExitResult
    stdout: str
    stderr: str
    overlay: OverlayMount


@dataclass
class Sandbox:
    """Runs commands over a fresh overlay of the busybox rootfs each time."""

    base: Path
    scratch: Path
    executor: OciExecutor
    runs: list[Run] = field(default_factory=list)

    def overlay(self, *extra_lowers: Path) -> OverlayMount:
        n = len(list(self.scratch.iterdir()))
        step = self.scratch / f"step{n}"
        step.mkdir()
        return OverlayMount((self.base, *extra_lowers), step / "upper", step / "work")

    def sh(self, script: str, *, overlay: OverlayMount | None = None, **spec: object) -> Run:
        overlay = overlay or self.overlay()
        out: list[bytes] = []
        err: list[bytes] = []
        result = self.executor.run(
            ProcessSpec(("sh", "-c", script), **spec),  # type: ignore[arg-type]
            overlay,
            stdout=out.append,
            stderr=err.append,
        )
        run = Run(result, b"".join(out).decode(), b"".join(err).decode(), overlay)
        self.runs.append(run)
        return run


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nbbuild-state")


@pytest.fixture
def sandbox(busybox_rootfs: Path, tmp_path: Path, state_dir: Path) -> Iterator[Sandbox]:
    scratch = tmp_path / "steps"
    scratch.mkdir()
    yield Sandbox(
        busybox_rootfs, scratch, OciExecutor(find_runtime(("crun",)), state_dir=state_dir)
    )
    # overlayfs work dirs hold a root-only "work" subdir; plain rmtree handles it as root
    shutil.rmtree(scratch, ignore_errors=True)


def host_overlay_mounts() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line for line in f if " - overlay " in line]
