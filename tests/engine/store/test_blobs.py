"""Content-addressed blobs: write paths, verification, digests as paths, partial writes."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.store.blobs import BlobError, BlobStore, parse_digest


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path)


def test_put_bytes_layout_and_read(blobs: BlobStore, tmp_path: Path) -> None:
    data = b"hello world"
    d = blobs.put_bytes(data)
    assert d == digest_of(data)
    assert blobs.path(d) == tmp_path / "blobs" / "sha256" / d[7:]
    assert blobs.has(d) and blobs.size(d) == len(data)
    with blobs.open(d) as f:
        assert f.read() == data
    assert blobs.verify(d)
    assert list(blobs.digests()) == [d]
    assert blobs.put_bytes(data) == d  # idempotent
    assert os.listdir(blobs.ingest_dir) == []


def test_ingest_stream_and_put_file(blobs: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # more than one chunk
    d = blobs.ingest(io.BytesIO(data))
    assert d == digest_of(data)
    src = tmp_path / "src"
    src.write_bytes(b"file bytes")
    assert blobs.put_file(src, expected=digest_of(b"file bytes")) == digest_of(b"file bytes")
    with pytest.raises(BlobError, match="cannot read"):
        blobs.put_file(tmp_path / "missing")


def test_expected_digest_mismatch_stores_nothing(blobs: BlobStore) -> None:
    wrong = digest_of(b"other")
    with pytest.raises(BlobError, match="mismatch"):
        blobs.ingest(io.BytesIO(b"data"), expected=wrong)
    with pytest.raises(BlobError, match="mismatch"):
        blobs.put_bytes(b"data", expected=wrong)
    assert not blobs.has(wrong) and not blobs.has(digest_of(b"data"))
    assert os.listdir(blobs.ingest_dir) == []


def test_writer_discards_on_error(blobs: BlobStore) -> None:
    with pytest.raises(RuntimeError), blobs.writer() as w:
        w.write(b"partial")
        assert len(os.listdir(blobs.ingest_dir)) == 1
        raise RuntimeError("boom")
    assert os.listdir(blobs.ingest_dir) == []
    with blobs.writer() as w:
        w.write(b"ab")
        w.write(b"cd")
        assert w.size == 4
        d = w.commit()
    assert d == digest_of(b"abcd") and w.digest == d
    with pytest.raises(BlobError):
        w.write(b"more")


def test_bad_digests_never_become_paths(blobs: BlobStore) -> None:
    for bad in ("sha256:../../etc/passwd", "md5:" + "0" * 32, "sha256:" + "A" * 64, "", "sha256:"):
        with pytest.raises(BlobError, match="invalid digest"):
            blobs.path(bad)
    assert parse_digest("sha256:" + "a" * 64) == "a" * 64


def test_verify_delete_missing(blobs: BlobStore) -> None:
    d = blobs.put_bytes(b"x")
    blobs.path(d).write_bytes(b"y")
    assert not blobs.verify(d)
    assert blobs.delete(d)
    assert not blobs.delete(d)
    assert not blobs.verify(d)
    with pytest.raises(BlobError, match="not found"):
        blobs.open(d)
    with pytest.raises(BlobError, match="not found"):
        blobs.size(d)


def test_partial_write_of_dead_writer_is_swept(blobs: BlobStore, tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from engine.store.blobs import BlobStore\n"
        "w = BlobStore(Path(sys.argv[1])).writer()\n"
        "w.write(b'half a blob')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    assert proc.returncode == -9
    with blobs.writer() as live:  # ours is alive: never swept
        live.write(b"in progress")
        assert len(blobs.dead_ingests()) == 1
        assert blobs.sweep_ingest() == 1
        assert len(os.listdir(blobs.ingest_dir)) == 1
        live.commit()
    assert os.listdir(blobs.ingest_dir) == []
