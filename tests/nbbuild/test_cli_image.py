"""``nbbuild image``: import, ls, inspect, tag, save, load, rm through the CLI functions.

Run by a normal user, the functions run where a rootless ``nbbuild`` runs them: as root of the
user's namespace (``inside_printing`` of tests/buildkit_base.py), since an image's layer files
belong to the user's subordinate IDs; they print and raise as they do here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from engine.errors import NbbuildError
from nbbuild._cli_image import register

REPO = Path(__file__).resolve().parents[2]


def _load_base() -> ModuleType:
    name = "nbbuild_tests_buildkit_base"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "buildkit_base.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


base = _load_base()


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base.mapping()  # root, or a user whose builds run rootless (else: fail saying why)
    base.ensure_packages("busybox-static")
    tar: Path = base.rootfs_tar(tmp_path_factory.mktemp("rootfs"))
    return tar


@pytest.fixture(autouse=True)
def _release(tmp_path: Path) -> Iterator[None]:
    yield
    base.release(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    if base.rootless():
        assert base.inside_printing(base.cli_function, list(argv)) == 0
        return capsys.readouterr().out
    parser = argparse.ArgumentParser(prog="nbbuild")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(list(argv))
    assert args.run(args) == 0
    return capsys.readouterr().out


def test_image_commands(rootfs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "store")
    image_id = run(
        capsys,
        "image",
        "import",
        "--root",
        root,
        "--change",
        "ENV A=1",
        "-c",
        'CMD ["sh"]',
        "-c",
        "LABEL team=data",
        str(rootfs),
        "busybox:1",
    ).strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71

    config = json.loads(run(capsys, "image", "inspect", "--root", root, "busybox:1"))
    assert config["config"] == {"Cmd": ["sh"], "Env": ["A=1"], "Labels": {"team": "data"}}
    assert len(config["rootfs"]["diff_ids"]) == 1

    run(capsys, "image", "tag", "--root", root, "busybox:1", "example.com/me/bb")
    table = run(capsys, "image", "ls", "--root", root).splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "LAYERS"]
    rows = [line.split() for line in table[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("busybox", "1", image_id[7:19]),
        ("example.com/me/bb", "latest", image_id[7:19]),
    ]
    listed = json.loads(run(capsys, "image", "ls", "--root", root, "--format", "json"))
    assert {i["id"] for i in listed} == {image_id}

    archive = tmp_path / "bb.tar"
    run(capsys, "image", "save", "--root", root, "-o", str(archive), "busybox:1")
    other = str(tmp_path / "other")
    assert (
        run(capsys, "image", "load", "--root", other, str(archive)) == "Loaded image: busybox:1\n"
    )
    assert json.loads(run(capsys, "image", "inspect", "--root", other, "busybox:1")) == config

    oci = tmp_path / "bb-oci.tar"
    run(
        capsys,
        "image",
        "save",
        "--root",
        root,
        "--format",
        "oci",
        "-o",
        str(oci),
        "example.com/me/bb",
    )
    out = run(capsys, "image", "load", "--root", str(tmp_path / "third"), str(oci))
    assert out == "Loaded image: example.com/me/bb:latest\n"

    assert run(capsys, "image", "rm", "--root", root, "busybox:1") == "Untagged: busybox:1\n"
    with pytest.raises(NbbuildError, match="no such image"):
        run(capsys, "image", "inspect", "--root", root, "busybox:1")
    with pytest.raises(NbbuildError, match="no such image"):
        run(capsys, "image", "rm", "--root", root, "busybox:1")


def test_import_refuses_invalid_changes(
    rootfs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(NbbuildError, match="RUN is not a valid change command"):
        run(capsys, "image", "import", "--root", str(tmp_path), "-c", "RUN true", str(rootfs), "x")


def test_root_from_environment(
    rootfs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NBBUILD_ROOT", str(tmp_path / "envroot"))
    run(capsys, "image", "import", str(rootfs), "fromenv")
    assert "fromenv" in run(capsys, "image", "ls")
    assert (tmp_path / "envroot" / "meta.db").exists()
