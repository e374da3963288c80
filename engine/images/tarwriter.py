"""A minimal deterministic tar writer (USTAR + PAX where needed) and a hashing byte sink.

nbbuild writes every tar it produces — layer tars, ``--output type=tar`` and image archives —
through :class:`TarWriter`, so equal content gives equal bytes on every machine:

* USTAR headers, with a PAX extended header only where USTAR cannot say it (long or non-ASCII
  names, ids or sizes too big for their fields, xattrs), which is what Go's ``archive/tar`` does
  for BuildKit's ``FormatPAX`` headers;
* numeric owners only (empty user and group names), no atime/ctime, whole-second mtimes;
* PAX records sorted by key; the PAX header block itself has time 0 and owner 0:0;
* the archive ends with two zero blocks (no padding to a 10 KiB record, like Go).

:func:`entry_for` turns an ``lstat`` result into an entry with BuildKit's rules: permission
and set-id bits only, times clamped to ``SOURCE_DATE_EPOCH`` when they are newer, xattrs except
overlayfs's own, ``system.*`` and ``security.*`` other than ``security.capability`` (the same
rule as context checksums); sockets are skipped.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from engine.images.errors import LayerError

__all__ = [
    "HashingWriter",
    "TarEntry",
    "TarWriter",
    "Writable",
    "clamp_mtime",
    "entry_for",
    "kept_xattr",
    "read_xattrs",
    "write_file_entry",
]

_BLOCK = 512
_CHUNK = 1 << 20


class Writable(Protocol):
    """Anything with ``write(bytes)``."""

    def write(self, data: bytes, /) -> int: ...


class HashingWriter:
    """Forwards writes (to nothing, when ``out`` is None) while hashing and counting them."""

    def __init__(self, out: Writable | None) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self._hash.update(data)
        self.size += len(data)
        if self._out is not None:
            self._out.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


@dataclass(slots=True)
class TarEntry:
    name: bytes  # relative, '/'-separated, directories end with '/'
    typeflag: bytes
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


def _octal(value: int, width: int) -> bytes:
    # width-1 zero-padded octal digits and a NUL, as Go's formatOctal writes USTAR numbers
    return format(value, "o").rjust(width - 1, "0").encode() + b"\0"


def _fits(value: int, width: int) -> bool:
    return 0 <= value < 1 << (3 * (width - 1))


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for a name that fits USTAR's 155+100 split, else None."""
    if len(name) <= 100:
        return b"", name
    limit = min(len(name), 156)
    if limit == len(name) and name.endswith(b"/"):
        limit -= 1
    cut = name.rfind(b"/", 0, limit)
    if cut <= 0:
        return None
    prefix, rest = name[:cut], name[cut + 1 :]
    if not rest or len(rest) > 100 or len(prefix) > 155:
        return None
    return prefix, rest


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    # the length prefix counts itself, so grow it until it is consistent
    size = len(body) + 1
    while len(str(size).encode()) + len(body) != size:
        size = len(str(size).encode()) + len(body)
    return str(size).encode() + body


def _header_block(
    *,
    name: bytes,
    prefix: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes,
    devmajor: int,
    devminor: int,
) -> bytes:
    parts = [
        name[:100].ljust(100, b"\0"),
        _octal(mode, 8),
        _octal(uid, 8),
        _octal(gid, 8),
        _octal(size, 12),
        _octal(mtime, 12),
        b" " * 8,  # checksum placeholder
        typeflag,
        linkname[:100].ljust(100, b"\0"),
        b"ustar\x0000",
        b"\0" * 32,  # uname: numeric owners only
        b"\0" * 32,  # gname
        _octal(devmajor, 8),
        _octal(devminor, 8),
        prefix[:155].ljust(155, b"\0"),
        b"\0" * 12,
    ]
    block = b"".join(parts)
    checksum = sum(block)
    return block[:148] + format(checksum, "o").rjust(6, "0").encode() + b"\0 " + block[156:]


class TarWriter:
    """A minimal, deterministic USTAR/PAX tar writer (see the module docstring)."""

    def __init__(self, out: Writable) -> None:
        self._out = out

    def _pad(self, size: int) -> None:
        rest = size % _BLOCK
        if rest:
            self._out.write(b"\0" * (_BLOCK - rest))

    def add(self, entry: TarEntry, content: BinaryIO | None = None) -> None:
        records: list[tuple[bytes, bytes]] = []
        split = _split_ustar(entry.name) if entry.name.isascii() else None
        if split is None:
            records.append((b"path", entry.name))
            split = (b"", entry.name)
        if entry.linkname and (len(entry.linkname) > 100 or not entry.linkname.isascii()):
            records.append((b"linkpath", entry.linkname))
        numbers = {"uid": (entry.uid, 8), "gid": (entry.gid, 8), "size": (entry.size, 12)}
        numbers["mtime"] = (entry.mtime, 12)
        fields = {}
        for key, (value, width) in numbers.items():
            if _fits(value, width):
                fields[key] = value
            else:
                records.append((key.encode(), str(value).encode()))
                fields[key] = 0
        for key in sorted(entry.xattrs):
            records.append((b"SCHILY.xattr." + key.encode(), entry.xattrs[key]))
        if records:
            data = b"".join(_pax_record(k, v) for k, v in sorted(records))
            directory, _, base = entry.name.rstrip(b"/").rpartition(b"/")
            pax_name = (directory + b"/" if directory else b"") + b"PaxHeaders.0/" + base
            self._out.write(
                _header_block(
                    name=pax_name,
                    prefix=b"",
                    mode=0,
                    uid=0,
                    gid=0,
                    size=len(data),
                    mtime=0,
                    typeflag=b"x",
                    linkname=b"",
                    devmajor=0,
                    devminor=0,
                )
            )
            self._out.write(data)
            self._pad(len(data))
        self._out.write(
            _header_block(
                name=split[1],
                prefix=split[0],
                mode=entry.mode,
                uid=fields["uid"],
                gid=fields["gid"],
                size=fields["size"],
                mtime=fields["mtime"],
                typeflag=entry.typeflag,
                linkname=entry.linkname,
                devmajor=entry.devmajor,
                devminor=entry.devminor,
            )
        )
        if entry.size:
            if content is None:
                raise LayerError(f"internal: no content for {entry.name!r}")
            remaining = entry.size
            while remaining:
                chunk = content.read(min(_CHUNK, remaining))
                if not chunk:
                    raise LayerError(
                        f"{entry.name.decode(errors='replace')}: file shrank while tarring"
                    )
                self._out.write(chunk)
                remaining -= len(chunk)
            self._pad(entry.size)

    def close(self) -> None:
        self._out.write(b"\0" * (2 * _BLOCK))


def kept_xattr(name: str) -> bool:
    if ".overlay." in name:  # trusted.overlay.*, user.overlay.*: overlayfs's bookkeeping
        return False
    if name.startswith("system."):
        return False
    return not (name.startswith("security.") and name != "security.capability")


def read_xattrs(path: bytes) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out: dict[str, bytes] = {}
    for name in names:
        if not kept_xattr(name):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed meanwhile
                raise
    return out


def clamp_mtime(mtime_ns: int, epoch: int | None) -> int:
    """Whole seconds (never negative), clamped to ``epoch`` when newer (``rewrite-timestamp``)."""
    seconds = max(0, mtime_ns // 1_000_000_000)
    if epoch is not None and seconds > epoch:
        return epoch
    return seconds


def entry_for(
    name: bytes,
    host: bytes,
    st: os.stat_result,
    *,
    epoch: int | None,
    links: dict[tuple[int, int], bytes],
) -> tuple[TarEntry, bool] | None:
    """The tar entry of a file found at ``host`` (to be stored as ``name``).

    ``links`` maps inodes already written to their names, so a second name of an inode becomes
    a hardlink entry. Returns the entry and whether its content must follow (regular files),
    or None for sockets, which a tar cannot hold.
    """
    mode = st.st_mode
    if stat.S_ISSOCK(mode):
        return None
    if st.st_uid or st.st_gid:
        # the degraded PRoot worker's files are the user's, read as root's (owners squashed)
        from engine.userns.ownership import squashed

        st = squashed(st)
    entry = TarEntry(
        name=name,
        typeflag=b"0",
        mode=stat.S_IMODE(mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=clamp_mtime(st.st_mtime_ns, epoch),
        xattrs=read_xattrs(host),
    )
    if stat.S_ISDIR(mode):
        if not entry.name.endswith(b"/"):
            entry.name += b"/"
        entry.typeflag = b"5"
        return entry, False
    if st.st_nlink > 1:
        inode = (st.st_dev, st.st_ino)
        if inode in links:
            entry.typeflag = b"1"
            entry.linkname = links[inode]
            return entry, False
        links[inode] = name
    if stat.S_ISREG(mode):
        entry.size = st.st_size
        return entry, True
    if stat.S_ISLNK(mode):
        entry.typeflag = b"2"
        entry.linkname = os.readlink(host)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        entry.typeflag = b"3" if stat.S_ISCHR(mode) else b"4"
        entry.devmajor = os.major(st.st_rdev)
        entry.devminor = os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        entry.typeflag = b"6"
    return entry, False


def write_file_entry(writer: TarWriter, entry: TarEntry, host: bytes) -> None:
    """Write a regular file's entry and its content, read without following symlinks."""
    fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as content:
        writer.add(entry, content)
