"""Remembered conversions (engine.frontend.convcache and build's in-process memo).

A build of an unchanged Dockerfile reuses the definition made before, in the same process or
from the store, so a CLI rebuild loads neither the parser nor the converter. Reuse must never
change what a build does: the keys are those of a fresh conversion, an image re-tagged under
the name a FROM uses is looked up again (and the Dockerfile converted again), and an entry
that is damaged or holds anything but the build graph's own classes is ignored.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from engine.frontend import convcache

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = "FROM base\nARG GREETING=hi\nCOPY data.txt /data.txt\nENV A=1\nWORKDIR /w\n"
FRONTEND = ("engine.frontend._convert", "engine.frontend.parser", "engine.frontend.instructions")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds in the store as root")


def _rootfs_tar(path: Path, name: str) -> Path:
    with tarfile.open(path, "w") as tar:
        data = f"{name}\n".encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def _env(root: Path) -> dict[str, str]:
    env = {**os.environ, "NBBUILD_ROOT": str(root), "PYTHONPATH": str(REPO)}
    env.pop("PYTHONPYCACHEPREFIX", None)
    return env


def _nbbuild(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "nbbuild", *args], env=_env(root), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc


_BUILD = """
import json, sys
from pathlib import Path
from engine.build import BuildRequest, build
FRONTEND = set(sys.argv[3].split(","))
ctx, root = Path(sys.argv[1]), Path(sys.argv[2])
request = BuildRequest(dockerfile=(ctx / "Dockerfile").read_text(), context=ctx, tags=("t",))
result = build(request, root=root)
print(json.dumps({
    "frontend": sorted(m for m in sys.modules if m in FRONTEND),
    "keys": [s.key for s in result.steps],
    "status": [s.status for s in result.steps],
}))
"""


def _build_in_new_process(ctx: Path, root: Path) -> dict[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD, str(ctx), str(root), ",".join(FRONTEND)],
        env=_env(root),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, list[str]] = json.loads(proc.stdout)
    return out


def _plan_keys(ctx: Path, root: Path) -> list[str]:
    plan = json.loads(_nbbuild(root, "plan", "--format", "json", str(ctx)).stdout)
    return sorted(v["cache_key"] for v in plan["vertices"] if v.get("cache_key"))


@pytest.fixture
def work(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "store"
    _nbbuild(root, "image", "import", str(_rootfs_tar(tmp_path / "one.tar", "one")), "base")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "data.txt").write_text("data\n")
    return ctx, root


def test_a_new_process_reuses_the_stored_conversion_without_loading_the_frontend(
    work: tuple[Path, Path],
) -> None:
    ctx, root = work
    first = _build_in_new_process(ctx, root)
    assert first["frontend"] == sorted(FRONTEND)  # converted, and remembered in the store
    assert len(os.listdir(root / convcache.DIRNAME)) == 1
    second = _build_in_new_process(ctx, root)
    assert second["frontend"] == []
    assert second["keys"] == first["keys"]
    assert {s for s in second["status"]} <= {"cached", "skipped"}
    assert sorted(k for k in second["keys"] if k) == _plan_keys(ctx, root)


def test_a_retagged_base_image_is_looked_up_again_and_the_dockerfile_converted_again(
    work: tuple[Path, Path], tmp_path: Path
) -> None:
    ctx, root = work
    before = _build_in_new_process(ctx, root)
    _nbbuild(root, "image", "import", str(_rootfs_tar(tmp_path / "two.tar", "two")), "base")
    after = _build_in_new_process(ctx, root)
    assert after["frontend"] == sorted(FRONTEND)
    assert after["keys"] != before["keys"]
    assert sorted(k for k in after["keys"] if k) == _plan_keys(ctx, root)
    # and in one process: the remembered definition is not used for the other image
    from engine.build import BuildRequest, build

    request = BuildRequest(dockerfile=DOCKERFILE, context=ctx, tags=("t",))
    one = build(request, root=root)
    _nbbuild(root, "image", "import", str(_rootfs_tar(tmp_path / "three.tar", "three")), "base")
    other = build(request, root=root)
    assert [s.key for s in other.steps] != [s.key for s in one.steps]
    assert sorted(s.key for s in other.steps if s.key) == _plan_keys(ctx, root)


def test_a_changed_dockerfile_or_option_is_another_entry(work: tuple[Path, Path]) -> None:
    ctx, root = work
    _build_in_new_process(ctx, root)
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("A=1", "A=2"))
    changed = _build_in_new_process(ctx, root)
    assert changed["frontend"] == sorted(FRONTEND)
    assert len(os.listdir(root / convcache.DIRNAME)) == 2
    _nbbuild(root, "build", "--progress=quiet", "--build-arg", "GREETING=hello", str(ctx))
    assert len(os.listdir(root / convcache.DIRNAME)) == 3


class _Payload:
    """Unpickled, it would run ``touch <path>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def test_a_damaged_or_foreign_entry_is_ignored_and_replaced(
    work: tuple[Path, Path], tmp_path: Path
) -> None:
    ctx, root = work
    first = _build_in_new_process(ctx, root)
    (entry,) = (root / convcache.DIRNAME).iterdir()
    marker = tmp_path / "pwned"
    for data in (b"not a pickle", pickle.dumps(_Payload(marker)), entry.read_bytes()[:40]):
        entry.write_bytes(data)
        again = _build_in_new_process(ctx, root)
        assert again["frontend"] == sorted(FRONTEND)  # converted again
        assert again["keys"] == first["keys"]
        assert not marker.exists()
        assert convcache.load(root, entry.name) is not None  # the good entry is back


def test_load_makes_only_build_graph_classes(tmp_path: Path) -> None:
    from engine.graph.ops import Platform

    directory = tmp_path / convcache.DIRNAME
    directory.mkdir()
    (directory / "ok").write_bytes(pickle.dumps((Platform("linux", "amd64"), frozenset({"A"}))))
    assert convcache.load(tmp_path, "ok") == (Platform("linux", "amd64"), frozenset({"A"}))
    (directory / "bad").write_bytes(pickle.dumps((Platform("linux", "amd64"), Path("/x"))))
    assert convcache.load(tmp_path, "bad") is None
    (directory / "fn").write_bytes(pickle.dumps(convcache.load))
    assert convcache.load(tmp_path, "fn") is None
    assert convcache.load(tmp_path, "missing") is None


def test_the_oldest_entries_go_beyond_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.graph.ops import Platform

    monkeypatch.setattr(convcache, "MAX_ENTRIES", 3)
    for i in range(5):
        convcache.save(tmp_path, f"k{i}", Platform("linux", f"arch{i}"))
        os.utime(tmp_path / convcache.DIRNAME / f"k{i}", ns=(i * 10**9, i * 10**9))
    assert sorted(os.listdir(tmp_path / convcache.DIRNAME)) == ["k2", "k3", "k4"]
    # what load() would refuse is not written at all
    convcache.save(tmp_path, "path", Path("/x"))
    assert not (tmp_path / convcache.DIRNAME / "path").exists()


def test_keys_differ_by_every_input() -> None:
    base = ("FROM x\n", "Dockerfile", "", (), (), False, (), (), "/ctx", None)
    keys = {convcache.entry_key(base)}
    for i, value in enumerate(["FROM y\n", "Other", "t", (("A", "1"),), (("c", "d"),), True]):
        keys.add(convcache.entry_key((*base[:i], value, *base[i + 1 :])))
    assert len(keys) == 7
