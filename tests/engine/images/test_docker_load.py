"""Compatibility with a real Docker: `docker load` of our archives, our load of `docker save`.

The ``docker`` fixture (conftest.py) starts a private dockerd for the session.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.exporters import export_docker
from engine.graph.image import ImageConfig
from engine.images.archive import import_rootfs, load, save_docker
from engine.images.store import ImageStore
from engine.store.store import Store


def test_docker_loads_an_imported_image(
    docker: Any, busybox_tar: Path, images: ImageStore, tmp_path: Path
) -> None:
    image = import_rootfs(
        images, busybox_tar, "nbbuild-test/busybox:imported", ["ENV A=from-change", "WORKDIR /w"]
    )
    archive = tmp_path / "save.tar"
    save_docker(images, ["nbbuild-test/busybox:imported"], archive)
    out = docker("load", "-i", str(archive))
    assert "Loaded image: nbbuild-test/busybox:imported" in out
    image_id = docker("image", "inspect", "--format", "{{.Id}}", "nbbuild-test/busybox:imported")
    assert image_id.strip() == image.config_digest
    layers = docker(
        "image", "inspect", "--format", "{{json .RootFS.Layers}}", "nbbuild-test/busybox:imported"
    )
    assert layers.strip() == f'["{image.diff_ids[0]}"]'
    ran = docker(
        "run", "--rm", "--network=none", "nbbuild-test/busybox:imported", "sh", "-c", "echo $A; pwd"
    )
    assert ran.split() == ["from-change", "/w"]

    # and what docker saves, we load back to the same image
    saved = tmp_path / "docker-saved.tar"
    docker("save", "-o", str(saved), "nbbuild-test/busybox:imported")
    with Store.open(tmp_path / "other") as other_store:
        (loaded,) = load(ImageStore(other_store), saved)
    assert loaded.config_digest == image.config_digest
    assert loaded.chain_id == image.chain_id


def test_docker_loads_a_built_image_with_whiteouts(
    docker: Any, busybox_tar: Path, images: ImageStore, store: Store, tmp_path: Path
) -> None:
    base = import_rootfs(images, busybox_tar, "nbbuild-test/base")
    with store.lease() as lease:
        d = store.new_diff_dir(lease)
        (d / "etc").mkdir()
        os.mknod(d / "etc" / "group", 0o020000, os.makedev(0, 0))  # delete /etc/group
        (d / "hello").write_text("built layer\n")
        os.chown(d / "hello", 1234, 4321)
        top = store.commit(
            keys=["built"], base=base.layers, diff=d, exec_ns=0, description="", lease=lease
        )
    config = ImageConfig(env=("PATH=/bin",), cmd=("sh", "-c", "cat /hello")).to_json()
    archive = tmp_path / "built.tar"
    image_id = export_docker(
        images,
        layers=top.layers,
        config=config,
        dest=archive,
        name="nbbuild-test/built:1",
        source_date_epoch=1_700_000_000,
    )
    docker("load", "-i", str(archive))
    assert (
        docker("image", "inspect", "--format", "{{.Id}}", "nbbuild-test/built:1").strip()
        == image_id
    )
    assert docker("run", "--rm", "--network=none", "nbbuild-test/built:1") == "built layer\n"
    probe = docker(
        "run",
        "--rm",
        "--network=none",
        "nbbuild-test/built:1",
        "sh",
        "-c",
        "stat -c %u:%g /hello; test -e /etc/group && echo present || echo deleted; "
        "test -e /etc/passwd && echo passwd",
    )
    assert probe.split() == ["1234:4321", "deleted", "passwd"]
