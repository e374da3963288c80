"""Fixtures for image tests: a real store with the image tables, a busybox rootfs tar."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.images.store import ImageStore
from engine.store.store import Store

REPO = Path(__file__).resolve().parents[3]


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


DOCKER = "/usr/bin/docker"


class Docker:
    def __init__(self, sock: Path) -> None:
        self.host = f"unix://{sock}"

    def __call__(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [DOCKER, "-H", self.host, *args], capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    """A private dockerd (Debian's docker.io, installed if missing) for the session: its own
    data root and socket, no iptables, no bridge (like ../shared/tools/buildkit-oracle)."""
    if os.geteuid() != 0:
        pytest.fail("docker compatibility tests start a dockerd and need root")
    ensure_packages("docker.io")
    # short paths: the daemon's unix sockets must fit in 108 bytes
    state = Path(f"/var/tmp/nbbuild-test-dockerd-{os.getpid()}")
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    sock = state / "docker.sock"
    log = open(state / "dockerd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            "/usr/sbin/dockerd",
            "--iptables=false",
            "--bridge=none",
            "--data-root",
            str(state / "data"),
            "--exec-root",
            str(state / "exec"),
            "--pidfile",
            str(state / "dockerd.pid"),
            "-H",
            f"unix://{sock}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = Docker(sock)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if (
                subprocess.run([DOCKER, "-H", client.host, "info"], capture_output=True).returncode
                == 0
            ):
                break
            time.sleep(0.25)
        if subprocess.run([DOCKER, "-H", client.host, "info"], capture_output=True).returncode:
            pytest.fail("dockerd did not start: " + (state / "dockerd.log").read_text()[-2000:])
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(state, ignore_errors=True)
