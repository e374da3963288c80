"""Content-addressed blobs, laid out like an OCI image layout: ``blobs/sha256/<hex>``.

A blob is written to ``blobs/ingest/<id>-<pid>-<ticks>`` while its digest is computed, fsynced,
then renamed to its digest's path (and the directory fsynced), so a blob path either does not
exist or holds exactly the bytes its name promises. A partial write left by a killed process is
recognised by the owner encoded in its name and swept by :meth:`BlobStore.sweep_ingest`.
Digests are validated before they become paths: a hostile digest string cannot escape the
directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from engine.errors import StoreError
from engine.store.fsync import fsync_dir
from engine.store.leases import Owner, current_owner, is_alive
from engine.store.trees import new_id

__all__ = ["BlobError", "BlobStore", "BlobWriter", "parse_digest"]

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_INGEST_NAME = re.compile(r"[0-9a-z]+-(\d+)-(-?\d+)")
_CHUNK = 1 << 20


class BlobError(StoreError):
    """A blob is missing, has a malformed digest, or does not match its digest."""


def parse_digest(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest.

    Raises:
        BlobError: not a well-formed sha256 digest.
    """
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise BlobError(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex digits>")
    return match.group(1)


class BlobWriter:
    """An open blob being written: ``write`` bytes, then :meth:`commit` (or let it be discarded).

    Use as a context manager; leaving the block without committing removes the partial file.
    """

    def __init__(self, store: BlobStore, expected: str | None = None) -> None:
        self._store = store
        self._expected = expected
        if expected is not None:
            parse_digest(expected)
        owner = current_owner()
        self._temp = store.ingest_dir / f"{new_id()}-{owner.pid}-{owner.start_ticks}"
        self._hash = hashlib.sha256()
        self._size = 0
        self._file: BinaryIO | None = open(self._temp, "xb")  # noqa: SIM115 - closed in commit
        self.digest: str | None = None

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, data: bytes) -> int:
        """Append bytes to the blob."""
        if self._file is None:
            raise BlobError("blob writer is closed")
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)
        return len(data)

    def commit(self) -> str:
        """Make the blob durable under its digest; returns ``sha256:<hex>``.

        Raises:
            BlobError: the bytes do not match the expected digest (nothing is stored).
        """
        if self._file is None:
            raise BlobError("blob writer is closed")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
            self._file = None
        digest = "sha256:" + self._hash.hexdigest()
        if self._expected is not None and digest != self._expected:
            self._discard()
            raise BlobError(f"digest mismatch: expected {self._expected}, got {digest}")
        target = self._store.path(digest)
        try:
            os.rename(self._temp, target)
        except OSError as exc:
            self._discard()
            raise BlobError(f"cannot store blob {digest}: {exc.strerror}") from None
        fsync_dir(target.parent)
        self.digest = digest
        return digest

    def discard(self) -> None:
        """Drop the partial blob."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.digest is None:
            self.discard()


class BlobStore:
    """The blobs of one store root.

    Args:
        root: the store root (blobs live in ``root/blobs``); directories are created.
    """

    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs"
        self.sha256_dir = self.dir / "sha256"
        self.ingest_dir = self.dir / "ingest"
        for d in (self.dir, self.sha256_dir, self.ingest_dir):
            try:
                d.mkdir(mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {d}: {exc.strerror}") from None

    def path(self, digest: str) -> Path:
        """Where the blob with ``digest`` lives (whether or not it exists)."""
        return self.sha256_dir / parse_digest(digest)

    def has(self, digest: str) -> bool:
        """Whether the blob is stored."""
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        """The blob's size in bytes.

        Raises:
            BlobError: no such blob.
        """
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobError(f"blob {digest} not found") from None

    def writer(self, expected: str | None = None) -> BlobWriter:
        """A :class:`BlobWriter`; with ``expected``, commit fails unless the bytes match."""
        return BlobWriter(self, expected)

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        """Store ``data``; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expected is not None:
            parse_digest(expected)
            if digest != expected:
                raise BlobError(f"digest mismatch: expected {expected}, got {digest}")
        if self.has(digest):
            return digest
        with self.writer(digest) as w:
            w.write(data)
            return w.commit()

    def ingest(self, stream: BinaryIO, expected: str | None = None) -> str:
        """Store everything read from ``stream``; returns its digest.

        Raises:
            BlobError: ``expected`` was given and the bytes do not match it.
        """
        with self.writer(expected) as w:
            while chunk := stream.read(_CHUNK):
                w.write(chunk)
            return w.commit()

    def put_file(self, path: Path, expected: str | None = None) -> str:
        """Store a copy of the file at ``path``; returns its digest."""
        try:
            with open(path, "rb") as f:
                return self.ingest(f, expected)
        except OSError as exc:
            raise BlobError(f"cannot read {path}: {exc.strerror}") from None

    def open(self, digest: str) -> BinaryIO:
        """Open a blob for reading.

        Raises:
            BlobError: no such blob.
        """
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobError(f"blob {digest} not found") from None

    def verify(self, digest: str) -> bool:
        """Whether the stored bytes hash to ``digest`` (False when missing)."""
        h = hashlib.sha256()
        try:
            with open(self.path(digest), "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            return False
        return "sha256:" + h.hexdigest() == digest

    def delete(self, digest: str) -> bool:
        """Remove a blob; returns whether it existed."""
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest (names that are not digests are skipped)."""
        try:
            names = sorted(os.listdir(self.sha256_dir))
        except FileNotFoundError:
            return
        for name in names:
            digest = "sha256:" + name
            if _DIGEST.fullmatch(digest):
                yield digest

    def stray_files(self) -> list[Path]:
        """Files under ``blobs/sha256`` whose names are not digests."""
        try:
            names = sorted(os.listdir(self.sha256_dir))
        except FileNotFoundError:
            return []
        return [self.sha256_dir / n for n in names if not _DIGEST.fullmatch("sha256:" + n)]

    def dead_ingests(self) -> list[Path]:
        """Partial writes whose writer is gone (a live writer's file is never listed)."""
        try:
            names = os.listdir(self.ingest_dir)
        except FileNotFoundError:
            return []
        dead: list[Path] = []
        me = current_owner()
        for name in names:
            match = _INGEST_NAME.fullmatch(name)
            if match is not None:
                owner = Owner(int(match.group(1)), int(match.group(2)), me.boot_id)
                if is_alive(owner):
                    continue
            dead.append(self.ingest_dir / name)
        return dead

    def sweep_ingest(self) -> int:
        """Remove the partial writes of dead writers; returns how many were removed."""
        removed = 0
        for path in self.dead_ingests():
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                continue
        return removed
