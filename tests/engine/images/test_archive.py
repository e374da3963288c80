"""docker import, docker-archive and OCI layout load/save, verification of what is loaded."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from engine.errors import DockerfileError, UsageError
from engine.graph.image import ImageConfig
from engine.images.archive import apply_changes, import_rootfs, load, save_docker, save_oci
from engine.images.errors import ArchiveError
from engine.images.store import ImageStore
from engine.store.store import Store


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _members(path: Path) -> dict[str, bytes]:
    out = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out[m.name] = f.read() if f is not None else b""
    return out


def test_import_busybox(busybox_tar: Path, images: ImageStore, store: Store) -> None:
    image = import_rootfs(
        images,
        busybox_tar,
        "busybox",
        [
            "ENV PATH=/bin:/sbin",
            "ENV GREETING=hello-$PATH",
            "LABEL org.example.k=v",
            "CMD echo hi",
            'ENTRYPOINT ["/bin/sh", "-c"]',
            "WORKDIR /app",
            "WORKDIR sub",
            "USER 65534",
            "EXPOSE 80 53/udp",
            "VOLUME /data",
            "STOPSIGNAL SIGINT",
        ],
    )
    diff_id = _sha(busybox_tar.read_bytes())
    got = images.get("busybox")
    assert got == image
    assert image.diff_ids == (diff_id,)
    assert image.chain_id == diff_id  # one layer: ChainID = DiffID
    cfg = image.config["config"]
    assert cfg["Env"] == ["PATH=/bin:/sbin", "GREETING=hello-/bin:/sbin"]
    assert cfg["Labels"] == {"org.example.k": "v"}
    assert cfg["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert cfg["Entrypoint"] == ["/bin/sh", "-c"]
    assert cfg["WorkingDir"] == "/app/sub"
    assert cfg["User"] == "65534"
    assert cfg["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}}
    assert cfg["Volumes"] == {"/data": {}}
    assert cfg["StopSignal"] == "SIGINT"
    assert image.config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    # the layer is unpacked with owners and links, and the original tar is kept as the blob
    (snapshot,) = image.layers
    root = store.diff_path(snapshot)
    assert os.readlink(root / "bin" / "sh") == "busybox"
    assert os.stat(root / "tmp").st_mode & 0o7777 == 0o1777
    manifest = images.manifest(image)
    assert manifest["layers"][0]["digest"] == diff_id
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"


def test_import_gzip_rootfs_and_dedup(
    busybox_tar: Path, images: ImageStore, tmp_path: Path
) -> None:
    gz = tmp_path / "rootfs.tar.gz"
    gz.write_bytes(gzip.compress(busybox_tar.read_bytes(), mtime=0))
    a = import_rootfs(images, gz, "a")
    b = import_rootfs(images, busybox_tar, "b")
    assert a.diff_ids == b.diff_ids == (_sha(busybox_tar.read_bytes()),)
    assert a.layers == b.layers  # same ChainID: unpacked once
    assert images.manifest(a)["layers"][0]["mediaType"].endswith("tar+gzip")


def test_changes_are_validated() -> None:
    base = ImageConfig()
    with pytest.raises(UsageError, match="RUN is not a valid change command"):
        apply_changes(base, ["RUN rm -rf /"])
    with pytest.raises(UsageError, match="FROM"):
        apply_changes(base, ["FROM scratch"])
    with pytest.raises(DockerfileError):
        apply_changes(base, ["ENV"])
    healthy = apply_changes(base, ["HEALTHCHECK --interval=5s CMD true", "ONBUILD RUN x"])
    assert healthy.healthcheck is not None and healthy.healthcheck.interval_ns == 5 * 10**9
    assert healthy.onbuild == ("RUN x",)
    assert apply_changes(base, ["ENTRYPOINT []"]).entrypoint is None


def test_docker_archive_round_trip(busybox_tar: Path, images: ImageStore, tmp_path: Path) -> None:
    image = import_rootfs(images, busybox_tar, "busybox:1", ["CMD sh"])
    images.tag("busybox:1", "example.com/me/bb:2")
    out = tmp_path / "save.tar"
    save_docker(images, ["busybox:1", "example.com/me/bb:2"], out)
    members = _members(out)
    manifest = json.loads(members["manifest.json"])
    assert manifest == [
        {
            "Config": "blobs/sha256/" + image.config_digest.split(":")[1],
            "RepoTags": ["busybox:1", "example.com/me/bb:2"],
            "Layers": ["blobs/sha256/" + image.diff_ids[0].split(":")[1]],
        }
    ]
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in members.items():
        if name.startswith("blobs/sha256/") and data:
            assert _sha(data) == "sha256:" + name.rsplit("/", 1)[1]
    # deterministic: saving again gives the same bytes
    again = tmp_path / "again.tar"
    save_docker(images, ["busybox:1", "example.com/me/bb:2"], again)
    assert again.read_bytes() == out.read_bytes()
    with tarfile.open(out) as tar:
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in tar.getmembers())

    with Store.open(tmp_path / "other") as other_store:
        other = ImageStore(other_store)
        loaded = load(other, out)
        assert [i.name for i in loaded] == [
            "docker.io/library/busybox:1",
            "example.com/me/bb:2",
        ]
        for got in loaded:
            assert got.config_digest == image.config_digest
            assert got.manifest_digest == image.manifest_digest
            assert got.chain_id == image.chain_id
        assert loaded[0].layers == loaded[1].layers
        root = other_store.diff_path(loaded[0].layers[0])
        assert (root / "bin" / "busybox").read_bytes() == (
            images.store.diff_path(image.layers[0]) / "bin" / "busybox"
        ).read_bytes()


def test_oci_round_trip_of_a_built_image(images: ImageStore, store: Store, tmp_path: Path) -> None:
    with store.lease() as lease:
        d = store.new_diff_dir(lease)
        (d / "hello").write_text("world")
        os.mknod(d / "deleted", 0o020000, os.makedev(0, 0))
        base = store.commit(keys=["k1"], base=[], diff=d, exec_ns=0, description="", lease=lease)
        d2 = store.new_diff_dir(lease)
        (d2 / "second").write_text("2")
        top = store.commit(
            keys=["k2"], base=base.layers, diff=d2, exec_ns=0, description="", lease=lease
        )
    config = ImageConfig(cmd=("/hello",)).to_json()
    image = images.put("built", layers=top.layers, config=config, source_date_epoch=10)
    out = tmp_path / "oci.tar"
    save_oci(images, ["built"], out)
    members = _members(out)
    assert "manifest.json" not in members
    index = json.loads(members["index.json"])
    (desc,) = index["manifests"]
    assert desc["digest"] == image.manifest_digest
    assert desc["annotations"] == {
        "io.containerd.image.name": "docker.io/library/built:latest",
        "org.opencontainers.image.ref.name": "latest",
    }
    with Store.open(tmp_path / "other") as other_store:
        other = ImageStore(other_store)
        (loaded,) = load(other, out)
        assert (loaded.config_digest, loaded.manifest_digest) == (
            image.config_digest,
            image.manifest_digest,
        )
        assert len(loaded.layers) == 2
        first = other_store.diff_path(loaded.layers[0])
        assert (first / "hello").read_text() == "world"
        assert os.lstat(first / "deleted").st_rdev == 0  # the whiteout survived the trip
        # the loaded image saves back to the very same bytes
        out2 = tmp_path / "oci2.tar"
        save_oci(other, ["built"], out2)
        assert out2.read_bytes() == out.read_bytes()


def _rewrite(src: Path, dst: Path, change: dict[str, bytes]) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            f = tin.extractfile(m)
            data = change.get(m.name, f.read() if f is not None else b"")
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if m.isfile() else None)


def test_tampered_archives_are_refused(
    busybox_tar: Path, images: ImageStore, tmp_path: Path
) -> None:
    image = import_rootfs(images, busybox_tar, "busybox")
    good = tmp_path / "good.tar"
    save_oci(images, ["busybox"], good)
    layer_name = "blobs/sha256/" + image.diff_ids[0].split(":")[1]
    evil = tmp_path / "evil-layer.tar"
    tampered = bytearray(_members(good)[layer_name])
    tampered[len(tampered) // 2] ^= 0xFF  # inside the busybox binary: a valid tar still
    _rewrite(good, evil, {layer_name: bytes(tampered)})
    with Store.open(tmp_path / "s1") as s:
        with pytest.raises(ArchiveError, match="digest mismatch"):
            load(ImageStore(s), evil)
        assert ImageStore(s).list() == []

    # docker-archive: no layer digests, but the diff ID in the config must match
    docker = tmp_path / "docker.tar"
    save_docker(images, ["busybox"], docker)
    evil2 = tmp_path / "evil-docker.tar"
    _rewrite(docker, evil2, {layer_name: bytes(tampered)})
    with Store.open(tmp_path / "s2") as s:
        with pytest.raises(ArchiveError, match="diff ID"):
            load(ImageStore(s), evil2)
        assert ImageStore(s).list() == []

    config_name = "blobs/sha256/" + image.config_digest.split(":")[1]
    evil3 = tmp_path / "evil-config.tar"
    _rewrite(good, evil3, {config_name: _members(good)[config_name].replace(b"amd64", b"arm64")})
    with Store.open(tmp_path / "s3") as s, pytest.raises(ArchiveError, match="does not match"):
        load(ImageStore(s), evil3)


def test_legacy_docker_save_layout(busybox_tar: Path, images: ImageStore, tmp_path: Path) -> None:
    """`docker save` before Docker 25: <id>/layer.tar, a symlinked duplicate, <hex>.json."""
    layer = busybox_tar.read_bytes()
    diff_id = _sha(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id, diff_id]},
        }
    ).encode()
    config_hex = _sha(config).split(":")[1]
    archive = tmp_path / "legacy.tar"
    with tarfile.open(archive, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("aaaa/layer.tar", layer)
        link = tarfile.TarInfo("bbbb/layer.tar")
        link.type = tarfile.SYMTYPE
        link.linkname = "../aaaa/layer.tar"
        tar.addfile(link)
        add(f"{config_hex}.json", config)
        manifest = [
            {
                "Config": f"{config_hex}.json",
                "RepoTags": ["legacy:v1"],
                "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"],
            }
        ]
        add("manifest.json", json.dumps(manifest).encode())
        add("repositories", b'{"legacy":{"v1":"bbbb"}}')
    (loaded,) = load(images, archive)
    assert loaded.name == "docker.io/library/legacy:v1"
    assert loaded.config_digest == "sha256:" + config_hex
    assert len(loaded.layers) == 2
    assert loaded.chain_id == _sha(f"{diff_id} {diff_id}".encode())


def test_unnamed_oci_image_needs_a_name(
    images: ImageStore, busybox_tar: Path, tmp_path: Path
) -> None:
    import_rootfs(images, busybox_tar, "busybox")
    src = tmp_path / "oci.tar"
    save_oci(images, ["busybox"], src)
    members = _members(src)
    index = json.loads(members["index.json"])
    index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "v9"}
    tagged = tmp_path / "tag-only.tar"
    _rewrite(src, tagged, {"index.json": json.dumps(index).encode()})
    with Store.open(tmp_path / "s") as s:
        other = ImageStore(s)
        with pytest.raises(ArchiveError, match="pass a name"):
            load(other, tagged)
        (loaded,) = load(other, tagged, name="example.com/named")
        assert loaded.name == "example.com/named:v9"


def test_not_an_image_archive(images: ImageStore, busybox_tar: Path) -> None:
    with pytest.raises(ArchiveError, match="neither"):
        load(images, busybox_tar)
