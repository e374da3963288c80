"""``nbbuild image``: import, ls, inspect, tag, save, load, rm through the CLI functions."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest

from engine.errors import NbbuildError
from nbbuild._cli_image import register

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.fail("image import keeps owners and devices: run as root")
    if not Path("/usr/bin/busybox").exists():
        proc = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "busybox-static"],
            capture_output=True,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        assert proc.returncode == 0, proc.stderr
    work = tmp_path_factory.mktemp("rootfs")
    out = work / "rootfs.tar"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "busybox-rootfs.sh"), str(work / "root"), str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
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
