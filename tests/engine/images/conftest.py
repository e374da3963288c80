"""Fixtures for image tests: a real store with the image tables, a busybox rootfs tar."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.images.store import ImageStore, migration_images
from engine.store import metadb
from engine.store.store import Store

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _image_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    # Until the integrator appends migration_images to MIGRATIONS, add it for these tests.
    if migration_images not in metadb.MIGRATIONS:
        monkeypatch.setattr(metadb, "MIGRATIONS", [*metadb.MIGRATIONS, migration_images])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "root")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def images(store: Store) -> ImageStore:
    return ImageStore(store)


def ensure_packages(*packages: str) -> None:
    """apt-get install missing Debian packages, or fail saying why not."""
    missing = [
        p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.fail(f"image tests need root to install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            pytest.fail(f"cannot install {' '.join(missing)}: {proc.stderr[-500:]}")


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs tar made by scripts/busybox-rootfs.sh (numeric owners)."""
    if os.geteuid() != 0:
        pytest.fail("image tests unpack layers with their owners and devices: they need root")
    ensure_packages("busybox-static")
    work = tmp_path_factory.mktemp("busybox")
    out = work / "rootfs.tar"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "busybox-rootfs.sh"), str(work / "root"), str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return out
