"""Diff IDs of a build's new layers computed in the background (LayerPrehasher), one
computation per snapshot at a time (ImageStore.layer_tar), and a computation that is stopped."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from engine.images import layer as layer_module
from engine.images.layer import LayerHashStopped, layer_diff_id
from engine.images.store import ImageStore, LayerPrehasher
from engine.store.store import Store


def _layer(store: Store, files: dict[str, bytes]) -> str:
    with store.lease() as lease:
        d = store.new_diff_dir(lease)
        for name, data in files.items():
            (d / name).write_bytes(data)
            os.utime(d / name, (2_000_000_000, 2_000_000_000))
        result = store.commit(
            keys=[hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()],
            base=(),
            diff=d,
            exec_ns=1,
            description="test layer",
            lease=lease,
        )
    return result.layers[-1]


def _remembered(store: Store, snapshot_id: str) -> list[str]:
    with store.db.reading() as conn:
        rows = conn.execute(
            "SELECT diff_id FROM layer_blobs WHERE snapshot_id = ?", (snapshot_id,)
        ).fetchall()
    return [r[0] for r in rows]


def test_prehashed_layers_are_remembered_with_their_diff_ids(
    store: Store, images: ImageStore
) -> None:
    layers = [_layer(store, {f"f{i}": bytes([i]) * (i * 1000 + 1)}) for i in range(3)]
    prehasher = LayerPrehasher(images, source_date_epoch=None)
    for snapshot_id in layers:
        prehasher.submit(snapshot_id)
    prehasher.keep(layers)
    deadline = time.monotonic() + 10
    while any(not _remembered(store, s) for s in layers) and time.monotonic() < deadline:
        time.sleep(0.01)
    prehasher.close()
    for snapshot_id in layers:
        expected = layer_diff_id(store.diff_path(snapshot_id)).diff_id
        assert _remembered(store, snapshot_id) == [expected]
        assert images.layer_tar(snapshot_id).diff_id == expected


def test_keep_drops_queued_layers_that_are_not_the_images(
    store: Store, images: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, other, wanted = (_layer(store, {name: name.encode()}) for name in ("a", "b", "c"))
    started, release = threading.Event(), threading.Event()
    hashed: list[str] = []
    real = ImageStore.layer_tar

    def slow(self: ImageStore, snapshot_id: str, **kwargs: object) -> object:
        hashed.append(snapshot_id)
        if snapshot_id == first:
            started.set()
            release.wait(10)
        return real(self, snapshot_id, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageStore, "layer_tar", slow)
    prehasher = LayerPrehasher(images, source_date_epoch=None)
    for snapshot_id in (first, other, wanted):
        prehasher.submit(snapshot_id)
    assert started.wait(10)
    prehasher.keep([first, wanted])
    prehasher.submit(other)  # sealed: ignored
    release.set()
    deadline = time.monotonic() + 10
    while not _remembered(store, wanted) and time.monotonic() < deadline:
        time.sleep(0.01)
    prehasher.close()
    assert hashed == [first, wanted]
    assert _remembered(store, wanted) and not _remembered(store, other)


def test_close_stops_the_computation_under_way(
    store: Store, images: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot_id = _layer(store, {f"f{i}": b"x" * 100 for i in range(50)})
    writing = threading.Event()
    real_discard_write = layer_module._Discard.write

    def slow_write(self: object, data: bytes) -> int:
        writing.set()
        time.sleep(0.01)
        return real_discard_write(self, data)  # type: ignore[arg-type]

    monkeypatch.setattr(layer_module._Discard, "write", slow_write)
    prehasher = LayerPrehasher(images, source_date_epoch=None)
    prehasher.submit(snapshot_id)
    assert writing.wait(10)
    start = time.monotonic()
    prehasher.close()
    assert time.monotonic() - start < 1.0
    assert not _remembered(store, snapshot_id)
    assert not [t for t in threading.enumerate() if t.name == "nbbuild-layer-hash"]


def test_a_stopped_diff_id_raises(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    stop = threading.Event()
    stop.set()
    with pytest.raises(LayerHashStopped):
        layer_diff_id(tmp_path, stop=stop)


def test_one_computation_per_snapshot_at_a_time(
    store: Store, images: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot_id = _layer(store, {"big": b"y" * 100_000})
    calls: list[str] = []
    real = layer_diff_id

    def counting(path: Path, epoch: int | None = None, **kwargs: object) -> object:
        calls.append(str(path))
        time.sleep(0.2)
        return real(path, epoch, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("engine.images.store.layer_diff_id", counting)
    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda: answers.append(images.layer_tar(snapshot_id).diff_id))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(answers)) == 1 and len(answers) == 3


def test_a_diff_id_computed_during_the_commit_is_remembered_after_it(
    store: Store, images: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Store.commit's on_renamed runs before the snapshot's row exists: the diff ID computed
    # then cannot be remembered yet; the next caller (after the commit) takes it as it is
    calls: list[str] = []
    real = layer_diff_id

    def counting(path: Path, epoch: int | None = None, **kwargs: object) -> object:
        calls.append(str(path))
        return real(path, epoch, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("engine.images.store.layer_diff_id", counting)
    seen: list[tuple[str, str, list[str]]] = []

    def renamed(snapshot_id: str) -> None:
        assert store.diff_path(snapshot_id).is_dir()
        with store.db.reading() as conn:
            assert conn.execute(
                "SELECT 1 FROM snapshots WHERE id = ?", (snapshot_id,)
            ).fetchone() is None
        seen.append(
            (snapshot_id, images.layer_tar(snapshot_id).diff_id, _remembered(store, snapshot_id))
        )

    with store.lease() as lease:
        d = store.new_diff_dir(lease)
        (d / "f").write_bytes(b"during the flush")
        result = store.commit(
            keys=["k-renamed"],
            base=(),
            diff=d,
            exec_ns=1,
            description="test layer",
            lease=lease,
            on_renamed=renamed,
        )
    [(snapshot_id, diff_id, remembered_then)] = seen
    assert result.layers == (snapshot_id,) and remembered_then == []
    assert images.layer_tar(snapshot_id).diff_id == diff_id
    assert _remembered(store, snapshot_id) == [diff_id]
    assert len(calls) == 1
    assert diff_id == real(store.diff_path(snapshot_id)).diff_id
