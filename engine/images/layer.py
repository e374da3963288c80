"""Layer tars ⇄ layer diff directories (overlayfs upper-dir format).

A snapshot is stored as an overlayfs upper dir: a deletion is a whiteout (a ``c 0 0`` character
device) and a directory that replaces the lower one wholesale carries the xattr
``trusted.overlay.opaque=y``. An OCI layer tar says the same with names: ``.wh.<name>`` deletes
``<name>`` and ``<dir>/.wh..wh..opq`` makes ``<dir>`` opaque. This module converts both ways.

Writing (:func:`write_layer_tar`) is **deterministic**, so two builds of the same input give the
same diff ID and the same image digest anywhere:

* entries depth-first, each directory's names sorted bytewise (like Go's ``filepath.Walk``);
* USTAR headers, with a PAX extended header only where USTAR cannot say it (long or non-ASCII
  names, big ids or sizes, xattrs), as Go's ``archive/tar`` does for BuildKit's
  ``FormatPAX``; numeric owners only (no user or group names), no atime/ctime, mtimes truncated
  to whole seconds;
* with ``SOURCE_DATE_EPOCH``, times *newer* than the epoch are clamped to it (BuildKit's
  ``rewrite-timestamp``); whiteouts and opaque markers always have time 0 (containerd 2);
* hardlinks within the layer are kept (later names link to the first one written);
* xattrs as ``SCHILY.xattr.*`` records, except overlayfs's own (``*.overlay.*``), ``system.*``
  (ACLs belong to the host) and ``security.*`` other than ``security.capability`` — the same
  rule as context checksums;
* the gzip blob has mtime 0 and no file name.

Unpacking (:func:`unpack_layer`) is **safe against hostile tars**: every name is cleaned and
resolved inside the target directory (``..`` and absolute names are clamped at its root, as
containerd's ``fs.RootPath`` does), symlinks met in a parent path are followed *inside* the
target only, hardlink targets must already exist inside the layer, overlayfs xattrs in the tar
are dropped (a tar must not be able to mark directories opaque or redirect them), and an
existing entry is replaced without ever following a final symlink. The functions only touch the
paths they are given, so they also run inside a user namespace (rootless builds). There, opaque
directories carry ``user.overlay.opaque`` (overlayfs is mounted with ``userxattr``), device nodes
are skipped as rootless containerd does (the kernel refuses them; whiteouts are allowed), and
an owner the namespace does not map fails with an :class:`~engine.userns.IdMappingError`.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from engine.images.errors import LayerError
from engine.images.tarwriter import (
    HashingWriter,
    TarEntry,
    TarWriter,
    Writable,
    entry_for,
    write_file_entry,
)
from engine.snapshot.overlay import opaque_xattr as _current_opaque_xattr
from engine.userns import ownership

__all__ = [
    "MEDIA_TYPE_LAYER_GZIP",
    "MEDIA_TYPE_LAYER_TAR",
    "OPAQUE_MARKER",
    "WHITEOUT_PREFIX",
    "BlobInfo",
    "LayerHashStopped",
    "LayerInfo",
    "layer_diff_id",
    "open_layer_stream",
    "unpack_layer",
    "write_layer_blob",
    "write_layer_tar",
]

MEDIA_TYPE_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"  # as real root; see engine.snapshot.overlay.opaque_xattr

_CHUNK = 1 << 20
# gzip level 6 is zlib's default: a fair speed/size trade for layers
_GZIP_LEVEL = 6


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """An uncompressed layer tar: its diff ID (``sha256:<hex>`` of the tar) and byte size."""

    diff_id: str
    size: int


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A compressed layer blob and the uncompressed tar it holds."""

    digest: str
    size: int
    diff_id: str
    diff_size: int
    media_type: str = MEDIA_TYPE_LAYER_GZIP


class _HashingReader:
    """Reads from ``src`` while hashing and counting the bytes read.

    The last bytes read are kept, so the block where ``tarfile`` stopped can be checked.
    """

    _TAIL = 1 << 16

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._hash = hashlib.sha256()
        self.size = 0
        self._tail = bytearray()

    def read(self, n: int = -1, /) -> bytes:
        data = self._src.read(n)
        self._hash.update(data)
        self.size += len(data)
        self._tail += data
        if len(self._tail) > 2 * self._TAIL:
            del self._tail[: -self._TAIL]
        return data

    def block_at(self, offset: int) -> bytes | None:
        """The 512 bytes at stream ``offset`` if still kept (b"" past the end)."""
        start = offset - (self.size - len(self._tail))
        if start < 0:
            return None
        return bytes(self._tail[start : start + 512])

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _is_opaque(path: bytes) -> bool:
    for name in (OPAQUE_XATTR, "user.overlay.opaque"):
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _walk(root: bytes, rel: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
    directory = os.path.join(root, rel) if rel else root
    for name in sorted(os.listdir(directory)):
        child = rel + b"/" + name if rel else name
        host = os.path.join(root, child)
        st = os.lstat(host)
        yield child, host, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, child)


def write_layer_tar(
    diff_dir: Path, out: Writable, *, source_date_epoch: int | None = None
) -> LayerInfo:
    """Write the layer tar of a diff directory to ``out`` (deterministically).

    Args:
        diff_dir: an overlayfs upper dir (whiteouts as ``c 0 0``, opaque dirs by xattr).
        out: any object with ``write(bytes)``.
        source_date_epoch: clamp times newer than this (seconds since 1970) to it.

    Returns:
        The tar's diff ID and size.

    Raises:
        LayerError: the directory cannot be read.
    """
    sink = HashingWriter(out)
    writer = TarWriter(sink)
    links: dict[tuple[int, int], bytes] = {}
    try:
        for rel, host, st in _walk(os.fsencode(diff_dir), b""):
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                head, _, base = rel.rpartition(b"/")
                parent = head + b"/" if head else b""
                # containerd 2 writes whiteouts with time 0 and no owner, epoch or not
                writer.add(TarEntry(parent + WHITEOUT_PREFIX.encode() + base, b"0", 0))
                continue
            made = entry_for(rel, host, st, epoch=source_date_epoch, links=links)
            if made is None:
                continue
            entry, has_content = made
            if has_content:
                write_file_entry(writer, entry, host)
            else:
                writer.add(entry)
            if entry.typeflag == b"5" and _is_opaque(host):
                marker = TarEntry(
                    rel + b"/" + OPAQUE_MARKER.encode(),
                    b"0",
                    entry.mode & 0o777,
                    uid=entry.uid,
                    gid=entry.gid,
                )
                writer.add(marker)
        writer.close()
    except OSError as exc:
        raise LayerError(f"cannot tar layer {diff_dir}: {exc}") from None
    return LayerInfo(sink.digest, sink.size)


def layer_diff_id(
    diff_dir: Path, source_date_epoch: int | None = None, *, stop: threading.Event | None = None
) -> LayerInfo:
    """The diff ID the tar of ``diff_dir`` would have, computed without writing it anywhere.

    Raises:
        LayerHashStopped: ``stop`` was set before the tar was complete.
    """
    # write_layer_tar hashes what it writes: the sink only has to swallow it (a HashingWriter
    # here hashed every byte a second time).
    return write_layer_tar(diff_dir, _Discard(stop), source_date_epoch=source_date_epoch)


class LayerHashStopped(Exception):
    """A diff ID computation was abandoned (its ``stop`` event was set)."""


class _Discard:
    def __init__(self, stop: threading.Event | None) -> None:
        self._stop = stop

    def write(self, data: bytes, /) -> int:
        if self._stop is not None and self._stop.is_set():
            raise LayerHashStopped
        return len(data)


def write_layer_blob(
    diff_dir: Path, out: Writable, *, source_date_epoch: int | None = None
) -> BlobInfo:
    """Write the gzip-compressed layer tar of ``diff_dir`` to ``out`` in one pass.

    The gzip header carries no time and no name, so equal tars give equal blobs.
    """
    blob = HashingWriter(out)
    with gzip.GzipFile(
        filename="", mode="wb", fileobj=cast(BinaryIO, blob), mtime=0, compresslevel=_GZIP_LEVEL
    ) as gz:
        info = write_layer_tar(diff_dir, gz, source_date_epoch=source_date_epoch)
    return BlobInfo(blob.digest, blob.size, info.diff_id, info.size)


# ----------------------------------------------------------------------------- unpacking


class _Source(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Peekable:
    """A reader that lets the first bytes be looked at before they are consumed."""

    def __init__(self, src: _Source, head: bytes) -> None:
        self._src = src
        self._head = head

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            if n < 0:
                data = self._head + self._src.read()
                self._head = b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            if len(data) < n:
                data += self._src.read(n - len(data))
            return data
        return self._src.read(n)


def open_layer_stream(src: BinaryIO) -> BinaryIO:
    """The uncompressed tar stream of a layer blob (gzip detected by magic, else as is).

    Raises:
        LayerError: the blob uses a compression nbbuild cannot read (zstd).
    """
    head = b""
    while len(head) < 4:
        chunk = src.read(4 - len(head))
        if not chunk:
            break
        head += chunk
    peek = _Peekable(src, head)
    if head.startswith(b"\x1f\x8b"):
        return cast(BinaryIO, gzip.GzipFile(fileobj=cast(BinaryIO, peek), mode="rb"))
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise LayerError("zstd-compressed layers are not supported yet")
    return cast(BinaryIO, peek)


def _clean(name: str) -> list[bytes]:
    """Path components of a tar name, lexically cleaned and clamped at the root."""
    parts: list[bytes] = []
    for part in os.fsencode(name).split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return parts


class _Root:
    """Path resolution inside the directory being unpacked into (never outside it)."""

    _MAX_LINKS = 40

    def __init__(self, root: bytes) -> None:
        self.root = root

    def host(self, parts: list[bytes]) -> bytes:
        return os.path.join(self.root, *parts) if parts else self.root

    def resolve_dir(self, parts: list[bytes]) -> list[bytes]:
        """Resolve a directory path, following symlinks inside the root (containerd's
        ``fs.RootPath``): absolute targets restart at the root, ``..`` stops at it."""
        pending = list(parts)
        resolved: list[bytes] = []
        hops = 0
        while pending:
            name = pending.pop(0)
            if name in (b"", b"."):
                continue
            if name == b"..":
                if resolved:
                    resolved.pop()
                continue
            candidate = [*resolved, name]
            try:
                st = os.lstat(self.host(candidate))
            except FileNotFoundError:
                resolved = candidate
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > self._MAX_LINKS:
                    raise LayerError(
                        f"too many symlinks resolving {b'/'.join(parts).decode(errors='replace')}"
                    )
                target = os.readlink(self.host(candidate))
                if target.startswith(b"/"):
                    resolved = []
                pending = target.split(b"/") + pending
                continue
            resolved = candidate
        return resolved

    def make_dirs(self, parts: list[bytes]) -> None:
        """Create missing directories of an already resolved path (0755, root-owned)."""
        for i in range(1, len(parts) + 1):
            host = self.host(parts[:i])
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                os.mkdir(host, 0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise LayerError(
                    f"{b'/'.join(parts[:i]).decode(errors='replace')} is not a directory"
                )


def _remove(host: bytes) -> None:
    try:
        st = os.lstat(host)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(host)
    else:
        os.unlink(host)


def _is_whiteout_st(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _apply_xattrs(host: bytes, member: tarfile.TarInfo) -> None:
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr.") :]
        if ".overlay." in name:
            continue  # a tar must not steer overlayfs (opaque, redirect, origin...)
        try:
            os.setxattr(host, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
        except OSError as exc:
            # user.* is refused on symlinks and devices; some filesystems have no xattrs
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                continue
            raise


class _Unpacking:
    """What one unpack carries from entry to entry."""

    def __init__(self, root: _Root, opaque_xattr: str | None) -> None:
        self.root = root
        self.dirs: list[tuple[bytes, int, int]] = []
        self.skipped: set[bytes] = set()  # devices a user namespace could not create
        self._opaque_xattr = opaque_xattr

    @property
    def opaque_xattr(self) -> str:
        if self._opaque_xattr is None:
            self._opaque_xattr = _current_opaque_xattr()
        return self._opaque_xattr


def unpack_layer(
    tar_stream: BinaryIO, diff_dir: Path, *, opaque_xattr: str | None = None
) -> LayerInfo:
    """Unpack an uncompressed layer tar into ``diff_dir`` in overlayfs upper-dir format.

    ``.wh.<name>`` becomes a ``c 0 0`` whiteout, ``.wh..wh..opq`` sets ``opaque_xattr`` on its
    directory. Owners, modes, times, xattrs, hardlinks, symlinks and device nodes are kept
    (devices, and hardlinks to them, are skipped in a user namespace). Names are resolved
    inside ``diff_dir`` only (see the module docstring); the tar's root entry (``./``) is
    ignored, as containerd does.

    Args:
        tar_stream: the uncompressed tar (see :func:`open_layer_stream`).
        diff_dir: the directory to fill (normally empty; created if missing).
        opaque_xattr: the xattr that marks a directory opaque; None (the default): the one
            overlayfs uses where this process runs (``trusted.overlay.opaque`` as real root,
            ``user.overlay.opaque`` in a user namespace, for ``userxattr`` mounts).

    Returns:
        The diff ID and size of the tar bytes read (the whole stream, padding included).

    Raises:
        LayerError: the tar is malformed, has an invalid whiteout or a hardlink whose target is
            not in the layer, or writing failed.
        IdMappingError: in a user namespace, an entry's owner is an ID it does not map.
    """
    diff_dir.mkdir(parents=True, exist_ok=True)
    root = _Root(os.fsencode(diff_dir.resolve()))
    reader = _HashingReader(tar_stream)
    state = _Unpacking(root, opaque_xattr)
    dirs = state.dirs
    try:
        with tarfile.open(
            fileobj=cast(BinaryIO, reader),
            mode="r|",
            encoding="utf-8",
            errors="surrogateescape",
        ) as tar:
            for member in tar:
                _unpack_member(tar, member, state)
            # tarfile ends the iteration quietly at a corrupt header; only zeros (the end
            # marker) or the end of the stream may follow the last entry
            stop = reader.block_at(tar.offset)
            if stop is None or stop.strip(b"\0"):
                raise LayerError(f"invalid layer tar: corrupt header at offset {tar.offset}")
        reader.drain()
        # directory times last: creating their children changed them
        for host, atime_ns, mtime_ns in dirs:
            os.utime(host, ns=(atime_ns, mtime_ns), follow_symlinks=False)
    except tarfile.TarError as exc:
        raise LayerError(f"invalid layer tar: {exc}") from None
    except (OSError, EOFError) as exc:
        raise LayerError(f"cannot unpack layer into {diff_dir}: {exc}") from None
    return LayerInfo(reader.digest, reader.size)


def _unpack_member(tar: tarfile.TarFile, member: tarfile.TarInfo, state: _Unpacking) -> None:
    root = state.root
    parts = _clean(member.name)
    if not parts:
        return  # the root itself: its metadata is not the layer's to set
    base = parts[-1]
    parent = root.resolve_dir(parts[:-1])
    root.make_dirs(parent)
    display = b"/".join(parts).decode(errors="replace")

    if base == OPAQUE_MARKER.encode():
        os.setxattr(root.host(parent), state.opaque_xattr, b"y", follow_symlinks=False)
        return
    if base.startswith(WHITEOUT_PREFIX.encode()):
        original = base[len(WHITEOUT_PREFIX) :]
        if original.startswith(WHITEOUT_PREFIX.encode()):
            return  # other AUFS meta files (.wh..wh.plnk, ...): nothing to do in overlay format
        if original in (b"", b".", b"..") or b"/" in original:
            raise LayerError(f"invalid whiteout name in layer: {display}")
        host = root.host([*parent, original])
        if os.path.lexists(host):
            # a whiteout only hides lower layers, never an entry of its own layer
            return
        os.mknod(host, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        return

    host = root.host([*parent, base])
    try:
        existing: os.stat_result | None = os.lstat(host)
    except FileNotFoundError:
        existing = None
    if existing is not None and not (stat.S_ISDIR(existing.st_mode) and member.isdir()):
        _remove(host)

    mode = member.mode & 0o7777
    if member.isdir():
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            os.mkdir(host, 0o700)
    elif member.isreg():
        fd = os.open(
            host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "wb") as out:
            data = tar.extractfile(member)
            if data is not None:
                shutil.copyfileobj(data, out, _CHUNK)
    elif member.issym():
        os.symlink(os.fsencode(member.linkname), host)
    elif member.islnk():
        target_parts = _clean(member.linkname)
        if not target_parts:
            raise LayerError(f"hardlink {display} points at the layer root")
        target_parent = root.resolve_dir(target_parts[:-1])
        target = root.host([*target_parent, target_parts[-1]])
        try:
            target_st = os.lstat(target)
        except FileNotFoundError:
            if target in state.skipped:
                state.skipped.add(host)
                return  # a link to a device a user namespace could not create
            raise LayerError(
                f"hardlink {display} -> {member.linkname}: target is not in the layer"
            ) from None
        if stat.S_ISDIR(target_st.st_mode) or _is_whiteout_st(target_st):
            raise LayerError(f"hardlink {display} -> {member.linkname}: not a file")
        os.link(target, host, follow_symlinks=False)
        return  # a hardlink shares its target's metadata; setting it again would be wrong
    elif member.ischr() or member.isblk():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        if not ownership.mknod(host, kind | 0o600, os.makedev(member.devmajor, member.devminor)):
            state.skipped.add(host)
            return  # in a user namespace (rootless containerd skips them too)
    elif member.isfifo():
        os.mkfifo(host, 0o600)
    else:
        return  # PAX global headers and unknown types carry no file

    ownership.chown(
        host, member.uid, member.gid, what=f"the image layer has files owned by {{id}} ({display})"
    )
    _apply_xattrs(host, member)
    if not member.issym():
        # after lchown, which clears set-id bits
        os.chmod(host, mode)  # host was just created here: never a symlink
    mtime_ns = int(member.mtime * 1_000_000_000)
    if member.isdir():
        state.dirs.append((host, mtime_ns, mtime_ns))
    else:
        os.utime(host, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
