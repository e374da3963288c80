"""Shared fixtures for the build integration tests: real builds, real containers, real stores.

Test modules load this file by path (the tests are not a package) and re-export the fixtures::

    base = load_base()          # see the six lines at the top of tests/engine/test_build.py
    busybox_archive = base.busybox_archive
    bk = base.bk

* ``busybox_archive`` (session): the busybox rootfs tar made once by ``scripts/busybox-rootfs.sh``,
  imported once and saved as a docker archive, so every store loads the *same* image (same
  config blob, same ID: what the reproducibility tests need).
* ``bk`` (function): a fresh store root with ``busybox:latest`` loaded, a context directory and
  helpers to build through the Python API and through the real ``nbbuild`` command.

These tests run containers as root (as CI does); missing packages are installed with apt-get,
and anything that makes that impossible fails the tests with a clear message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.build import BuildRequest, BuildResult, OutputSpec, build
from engine.events import ListReporter
from engine.images.archive import import_rootfs, load, save_docker
from engine.images.store import ImageStore
from engine.store.store import Store

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "busybox-rootfs.sh"
BASE_IMAGE = "busybox:latest"

_cache: dict[str, Path] = {}
_cache_lock = threading.Lock()


def ensure_packages(*packages: str) -> None:
    """apt-get install the Debian packages that are missing, or fail saying why not."""
    missing = [
        p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.fail(f"build tests need root to install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            pytest.fail(
                f"cannot install {' '.join(missing)}: {' '.join(argv)}: {proc.stderr[-500:]}"
            )


def _make_archive(work: Path) -> Path:
    if os.geteuid() != 0:
        pytest.fail(
            "build tests run containers and unpack layers with their owners: they need root"
        )
    ensure_packages("busybox-static", "crun", "runc")
    rootfs_tar = work / "rootfs.tar"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(work / "rootfs"), str(rootfs_tar)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    archive = work / "busybox-image.tar"
    store = Store.open(work / "template-root")
    try:
        images = ImageStore(store)
        import_rootfs(images, rootfs_tar, BASE_IMAGE)
        save_docker(images, [BASE_IMAGE], archive)
    finally:
        store.close()
    return archive


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A docker archive of ``busybox:latest`` (made once per session, shared by every module)."""
    with _cache_lock:
        if "archive" not in _cache:
            _cache["archive"] = _make_archive(tmp_path_factory.mktemp("busybox"))
        return _cache["archive"]


def fresh_root(path: Path, archive: Path) -> Path:
    """A new store at ``path`` with ``busybox:latest`` loaded from ``archive``."""
    store = Store.open(path)
    try:
        load(ImageStore(store), archive)
    finally:
        store.close()
    return path


@dataclass
class CliRun:
    """One run of the real ``nbbuild`` command."""

    code: int
    stdout: str
    stderr: str


@dataclass
class Bk:
    """A fresh store with busybox, a build context, and ways to build into them."""

    root: Path
    ctx: Path
    tmp: Path
    archive: Path
    reporters: list[ListReporter] = field(default_factory=list)

    def write(self, files: Mapping[str, str | bytes], *, ctx: Path | None = None) -> None:
        """Write files (relative paths) into the context (parents created)."""
        base = ctx or self.ctx
        for rel, content in files.items():
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)

    def request(self, dockerfile: str, **kw: Any) -> BuildRequest:
        outputs = kw.pop("outputs", ())
        kw["outputs"] = tuple(OutputSpec.parse(o) if isinstance(o, str) else o for o in outputs)
        if "tags" in kw and isinstance(kw["tags"], str):
            kw["tags"] = (kw["tags"],)
        kw.setdefault("context", self.ctx)
        return BuildRequest(dockerfile=dockerfile, **kw)

    def build(self, dockerfile: str, *, root: Path | None = None, **kw: Any) -> BuildResult:
        """Build through the Python API (events kept in ``self.reporters``)."""
        reporter = ListReporter()
        self.reporters.append(reporter)
        return build(self.request(dockerfile, **kw), root=root or self.root, reporter=reporter)

    def new_root(self, name: str) -> Path:
        """Another fresh store (with the same busybox image)."""
        return fresh_root(self.tmp / name, self.archive)

    def cli(
        self,
        *args: str,
        stdin: str | None = None,
        root: Path | None = None,
        cwd: Path | None = None,
        timeout: float = 300,
    ) -> CliRun:
        """Run ``python -m nbbuild ARGS`` in a real process with ``NBBUILD_ROOT`` set."""
        env = {**os.environ, "NBBUILD_ROOT": str(root or self.root)}
        env.pop("NO_COLOR", None)
        proc = subprocess.run(
            [sys.executable, "-m", "nbbuild", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=str(cwd or self.tmp),
            timeout=timeout,
        )
        return CliRun(proc.returncode, proc.stdout, proc.stderr)

    def plan_cli(self, dockerfile: str, *extra: str, ctx: Path | None = None) -> dict[str, Any]:
        """``nbbuild plan --format json`` of ``dockerfile`` (read from stdin) over the context."""
        run = self.cli(
            "plan", "--format", "json", "-f", "-", *extra, str(ctx or self.ctx), stdin=dockerfile
        )
        assert run.code == 0, run.stderr
        doc: dict[str, Any] = json.loads(run.stdout)
        return doc

    def plan_api(self, dockerfile: str, **kw: Any) -> dict[str, Any]:
        """``engine.plan.plan`` against this store (its images resolve ``FROM``), as JSON."""
        from engine.images.store import resolver
        from engine.plan import PlanRequest, plan

        kw.setdefault("context", self.ctx)
        store = Store.open(self.root)
        try:
            result = plan(
                PlanRequest(dockerfile=dockerfile, **kw),
                store_root=self.root,
                resolve_image=resolver(ImageStore(store)),
            )
        finally:
            store.close()
        doc: dict[str, Any] = json.loads(json.dumps(result.to_json()))
        return doc


@pytest.fixture
def bk(tmp_path: Path, busybox_archive: Path) -> Iterator[Bk]:
    """A fresh store root with ``busybox:latest`` and an empty context directory."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    root = fresh_root(tmp_path / "root", busybox_archive)
    yield Bk(root=root, ctx=ctx, tmp=tmp_path, archive=busybox_archive)


def statuses(result: BuildResult) -> dict[str, str]:
    """``{step name: status}`` for the numbered steps (FROM, WORKDIR, RUN, COPY, ADD)."""
    return {s.name: s.status for s in result.steps if s.step is not None}


def status_list(result: BuildResult) -> list[tuple[str, str]]:
    """``[(step name, status)]`` for the numbered steps, in definition order."""
    return [(s.name, s.status) for s in result.steps if s.step is not None]


def layer_files(store_root: Path, result: BuildResult) -> list[Path]:
    """The diff directories of the result's layers, bottom first."""
    store = Store.open(store_root)
    try:
        return [store.diff_path(s) for s in result.layers]
    finally:
        store.close()
