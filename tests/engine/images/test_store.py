"""The image store over a real Store: names, put/get/tag/rm, lazy blobs, GC roots, FROM."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest

from engine.errors import StoreError
from engine.frontend.convert import BuildOptions, convert
from engine.frontend.parser import parse
from engine.graph.image import HistoryEntry, ImageConfig
from engine.graph.ops import ImageSource, Platform
from engine.images.errors import ImageError
from engine.images.layer import layer_diff_id
from engine.images.store import ImageStore, blob_roots, familiar_name, resolver
from engine.store.store import Store, snapshot_roots

CONFIG = ImageConfig(
    env=("PATH=/bin", "A=1"),
    cmd=("sh",),
    labels=(("k", "v"),),
    history=(HistoryEntry("RUN one"), HistoryEntry("RUN two")),
).to_json()


def _layer(store: Store, files: dict[str, bytes], base: tuple[str, ...] = ()) -> tuple[str, ...]:
    with store.lease() as lease:
        d = store.new_diff_dir(lease)
        for name, data in files.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
            os.utime(d / name, (2_000_000_000, 2_000_000_000))
        result = store.commit(
            keys=[hashlib.sha256(repr((base, files)).encode()).hexdigest()],
            base=base,
            diff=d,
            exec_ns=1,
            description="test layer",
            lease=lease,
        )
    return result.layers


def _two_layers(store: Store) -> tuple[str, ...]:
    base = _layer(store, {"etc/os-release": b"test\n"})
    return _layer(store, {"app/main": b"print(1)\n"}, base)


def test_put_and_get_under_every_name_form(store: Store, images: ImageStore) -> None:
    layers = _two_layers(store)
    image = images.put("myapp", layers=layers, config=CONFIG, source_date_epoch=0)
    assert image.name == "docker.io/library/myapp:latest"
    assert image.layers == layers
    assert image.diff_ids == tuple(layer_diff_id(store.diff_path(s), 0).diff_id for s in layers)
    first, second = image.diff_ids
    assert image.chain_id == "sha256:" + hashlib.sha256(f"{first} {second}".encode()).hexdigest()
    for ref in (
        "myapp",
        "myapp:latest",
        "docker.io/library/myapp:latest",
        "library/myapp",
        image.config_digest,
        image.manifest_digest,
        f"myapp@{image.manifest_digest}",
    ):
        assert images.get(ref) == image, ref
    assert images.get("other") is None
    assert images.get("myapp:v2") is None
    with pytest.raises(ImageError, match="invalid image reference"):
        images.get("Not A Ref")


def test_stored_blobs_are_a_valid_oci_image(store: Store, images: ImageStore) -> None:
    layers = _two_layers(store)
    image = images.put("x", layers=layers, config=CONFIG, source_date_epoch=0)
    config_raw = store.blobs.path(image.config_digest).read_bytes()
    assert "sha256:" + hashlib.sha256(config_raw).hexdigest() == image.config_digest
    config = json.loads(config_raw)
    assert config == image.config
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)
    assert config["config"]["Labels"] == {"k": "v"}
    manifest = images.manifest(image)
    assert manifest["config"]["digest"] == image.config_digest
    for desc, diff_id in zip(manifest["layers"], image.diff_ids, strict=True):
        # Named, not exported: the layer is an uncompressed tar whose bytes are not written
        # until an archive needs them (blob_path), and then hash to the manifest's digest.
        assert desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
        assert desc["digest"] == diff_id
        assert not store.blobs.has(desc["digest"])
        blob = images.blob_path(desc["digest"]).read_bytes()
        assert desc["size"] == len(blob)
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == diff_id
    # An exporter's assembly compresses, with the same diff IDs, so the same image ID.
    assembled = images.assemble(layers=layers, config=image.config, source_date_epoch=0)
    assert assembled.config_digest == image.config_digest
    for desc, diff_id in zip(assembled.layers, image.diff_ids, strict=True):
        blob = store.blobs.path(desc.digest).read_bytes()
        assert desc.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == diff_id


def test_put_tars_a_layer_once_and_writes_no_layer_blob(
    store: Store, images: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.images.store as image_store

    layers = _two_layers(store)
    calls: list[Path] = []
    real = image_store.layer_diff_id

    def counting(path: Path, epoch: int | None = None, **kwargs: object) -> object:
        calls.append(path)
        return real(path, epoch, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(image_store, "layer_diff_id", counting)
    before = set(store.blobs.digests())
    a = images.put("a", layers=layers, config=CONFIG)
    b = images.put("b", layers=layers, config=CONFIG)
    assert len(calls) == 2  # each layer hashed once, remembered for the second name
    made = {a.config_digest, a.manifest_digest, b.config_digest, b.manifest_digest}
    assert set(store.blobs.digests()) - before == made  # configs and manifests only


def test_same_input_in_two_empty_stores_gives_the_same_digests(tmp_path: Path) -> None:
    digests = []
    for name in ("one", "two"):
        with Store.open(tmp_path / name) as store:
            images = ImageStore(store)
            layers = _two_layers(store)
            image = images.put("app", layers=layers, config=CONFIG, source_date_epoch=1_700_000_000)
            digests.append((image.config_digest, image.manifest_digest))
    assert digests[0] == digests[1]


def test_layer_blobs_are_remembered_per_epoch(store: Store, images: ImageStore) -> None:
    (snapshot,) = _layer(store, {"f": b"x"})
    a = images.layer_blob(snapshot, source_date_epoch=0)
    assert images.layer_blob(snapshot, source_date_epoch=0) == a
    b = images.layer_blob(snapshot, source_date_epoch=None)
    assert b.diff_id != a.diff_id  # the file's mtime (2033) is clamped only with the epoch
    assert images.known_blob(snapshot, source_date_epoch=0) == a
    with pytest.raises(ImageError, match="missing"):
        images.layer_blob("nosuchsnapshot", source_date_epoch=0)


def test_diff_ids_given_must_match(store: Store, images: ImageStore) -> None:
    layers = _two_layers(store)
    with pytest.raises(ImageError, match="do not match"):
        images.put("x", layers=layers, config=CONFIG, diff_ids=("sha256:" + "0" * 64,) * 2)
    good = images.put("x", layers=layers, config=CONFIG, source_date_epoch=0)
    again = images.put(
        "x", layers=layers, config=CONFIG, source_date_epoch=0, diff_ids=good.diff_ids
    )
    assert again.config_digest == good.config_digest


def test_tag_list_remove(store: Store, images: ImageStore) -> None:
    layers = _two_layers(store)
    image = images.put("app:1", layers=layers, config=CONFIG, source_date_epoch=0)
    tagged = images.tag("app:1", "registry.example.com/team/app:prod")
    assert tagged.name == "registry.example.com/team/app:prod"
    assert tagged.config_digest == image.config_digest and tagged.layers == image.layers
    assert [i.name for i in images.list()] == [
        "docker.io/library/app:1",
        "registry.example.com/team/app:prod",
    ]
    images.remove("app:1")
    assert images.get("app:1") is None
    assert images.get("registry.example.com/team/app:prod") == tagged
    with pytest.raises(ImageError, match="no such image"):
        images.remove("app:1")
    with pytest.raises(ImageError, match="no such image"):
        images.tag("nothing", "x")


def test_images_are_gc_roots(store: Store, images: ImageStore) -> None:
    layers = _two_layers(store)
    image = images.put("app", layers=layers, config=CONFIG, source_date_epoch=0)
    with store.db.reading() as conn:
        assert set(layers) <= snapshot_roots(conn)
        roots = blob_roots(conn)
    assert {image.config_digest, image.manifest_digest} <= roots
    assert {d["digest"] for d in images.manifest(image)["layers"]} <= roots
    images.remove("app")
    with store.db.reading() as conn:
        assert not set(layers) & snapshot_roots(conn)


def test_put_refuses_unknown_layers(store: Store, images: ImageStore) -> None:
    with pytest.raises(ImageError):
        images.put("x", layers=("nosuchsnapshot",), config=CONFIG)


def test_missing_migration_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.store import metadb

    monkeypatch.setattr(
        metadb, "MIGRATIONS", [m for m in metadb.MIGRATIONS if m is not metadb._m007_images]
    )
    with (
        Store.open(tmp_path / "bare") as store,
        pytest.raises(StoreError, match="migration_images"),
    ):
        ImageStore(store)


def test_familiar_names() -> None:
    assert familiar_name("docker.io/library/busybox:latest") == "busybox:latest"
    assert familiar_name("docker.io/me/app:1") == "me/app:1"
    assert familiar_name("ghcr.io/me/app:1") == "ghcr.io/me/app:1"


def test_from_resolves_in_the_local_store_by_chain_id(store: Store, images: ImageStore) -> None:
    layers = _two_layers(store)
    image = images.put("base:1", layers=layers, config=CONFIG, source_date_epoch=0)
    resolved = resolver(images)("docker.io/library/base:1", Platform())
    assert resolved is not None
    assert resolved.chain_id == image.chain_id
    assert resolved.config.env == ("PATH=/bin", "A=1")
    assert resolved.config.cmd == ("sh",)
    assert resolver(images)("docker.io/library/absent:1", Platform()) is None

    definition = convert(
        parse("FROM base:1\nENV B=2\n"), BuildOptions(), resolve_image=resolver(images)
    )
    sources = [v.op for v in definition.vertices if isinstance(v.op, ImageSource)]
    assert len(sources) == 1
    assert sources[0].chain_id == image.chain_id
    assert image.chain_id is not None and image.chain_id in json.dumps(
        sources[0].cache_map().preimage
    )
    assert definition.config.env == ("PATH=/bin", "A=1", "B=2")
