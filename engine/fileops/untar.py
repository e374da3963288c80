"""ADD's automatic extraction of local archives (tar; gzip, bzip2 or xz compressed).

BuildKit (``solver/llbsolver/file/unpack.go``) extracts a source that is a regular file whose
(decompressed) start is a valid tar header; anything else is copied as it is. Extraction is
moby's ``chrootarchive.Untar``: the archive is unpacked *inside a chroot at the destination
directory*, so every path it names — entry names with ``..`` or a leading ``/``, symlinks in
parent positions (absolute or relative), hard-link targets — resolves inside that directory
and nothing outside it is read or written. We reproduce the chroot with
:func:`~engine.context.tree.resolve_links` based at the destination.

Per entry (go-archive's ``Unpack``/``createTarFile``): missing parents are created
``0755 root:root``; whatever is at the entry's path is removed unless both are directories;
owner is the entry's uid/gid, or ``--chown``'s; mode and times are the entry's (``--chmod``
does not apply); ``SCHILY.xattr.*`` records become xattrs (refused ones skipped, overlayfs's
never written); directories get their times again at the end. The destination itself is
created like a copy's (``0755``, ``--chown``).

In a user namespace (rootless builds), device entries are skipped, as rootless BuildKit does
(the kernel refuses to create devices there), and an owner the namespace does not map fails
with an :class:`~engine.userns.IdMappingError` naming the entry.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import stat
import tarfile
import zlib

from engine.context.dockerignore import go_clean
from engine.context.tree import ReadTree
from engine.fileops.chown import Owner
from engine.fileops.errors import FileOpError, os_error
from engine.fileops.mkdir import mkdir_all, restore_times
from engine.fileops.tree import content_xattrs
from engine.fileops.upper import Upper, display, open_source

__all__ = ["extract_archive", "is_tar_stream", "open_decompressed"]

_BLOCK = 512
_BZIP2 = b"BZh"
_GZIP = b"\x1f\x8b\x08"
_XZ = b"\xfd7zXZ\x00"
_ZSTD = b"\x28\xb5\x2f\xfd"
_XATTR = "SCHILY.xattr."
# go-archive's boundTime: times outside what the kernel stores become the epoch.
_MAX_NS = 2**63 - 1


def open_decompressed(raw: io.BufferedReader) -> io.BufferedIOBase | None:
    """``raw`` (at offset 0), decompressed by its magic number; None for an unsupported format.

    zstd (which BuildKit also detects) has no decoder in the standard library: such a file is
    treated as not an archive.
    """
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(_GZIP):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(_BZIP2):
        return bz2.BZ2File(raw, mode="rb")
    if head.startswith(_XZ):
        return lzma.LZMAFile(raw, mode="rb")
    if head.startswith(_ZSTD) or (
        len(head) >= 4 and int.from_bytes(head[:4], "little") & 0xFFFFFFF0 == 0x184D2A50
    ):
        return None
    return raw


def _read_full(stream: io.BufferedIOBase, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = stream.read(size - len(out))
        if not chunk:
            break
        out += chunk
    return out


def is_tar_stream(stream: io.BufferedIOBase) -> bool:
    """Whether Go's ``tar.Reader.Next`` would accept the first header of ``stream``.

    The first block must be a header with a valid checksum (signed or unsigned sum, the
    checksum field counted as spaces); an archive that is empty (two zero blocks) is not one.
    """
    try:
        block = _read_full(stream, _BLOCK)
        if len(block) < _BLOCK:
            return False
        if block == bytes(_BLOCK):
            return False  # end of archive, or a zero block followed by garbage: not an archive
        field = block[148:156].split(b"\0", 1)[0].strip(b" \0")
        try:
            value = int(field, 8) if field else 0
        except ValueError:
            return False
        if field and not all(48 <= c <= 55 for c in field):
            return False
        unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
        signed = sum(c - 256 if c > 127 else c for c in block[:148] + block[156:]) + 8 * 32
        return value in (unsigned, signed)
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error):
        return False


def _bound(seconds: float) -> int:
    ns = int(seconds * 1_000_000_000)
    return ns if 0 <= ns <= _MAX_NS else 0


class _Extractor:
    def __init__(self, upper: Upper, base: str, owner: Owner | None, archive: str = "") -> None:
        self.upper = upper
        self.base = base
        self.owner = owner
        self.archive = archive
        self.skipped: set[str] = set()  # device entries a user namespace could not create
        self.dirs: list[tuple[str, int, int]] = []
        self.implied: list[str] = []

    def resolve(self, name: str, follow_trailing: bool) -> str:
        return self.upper.resolve(name, follow_trailing, base=self.base)

    def mkdir_parents(self, parent: str) -> None:
        """``MkdirAllAndChown(parent, 0755, 0, 0)`` seen from the chroot (links followed)."""
        cur = self.base
        for part in [p for p in parent.split("/") if p]:
            nxt = f"{cur}/{part}" if cur else part
            st = self.upper.lstat(nxt)
            if st is None:
                self.upper.mkdir(nxt, 0o755)
                self.upper.chown(nxt, 0, 0)
                self.implied.append(nxt)
            elif stat.S_ISLNK(st.st_mode):
                nxt = self.resolve(nxt[len(self.base) :].lstrip("/"), True)
                target = self.upper.lstat(nxt)
                if target is None or not stat.S_ISDIR(target.st_mode):
                    raise os_error("mkdir", display(nxt), 17)
            elif not stat.S_ISDIR(st.st_mode):
                raise os_error("mkdir", display(nxt), 20)
            cur = nxt

    def entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = go_clean(member.name)
        inside = go_clean("/" + name).lstrip("/")  # the chroot clamps ".." and a leading "/"
        is_dir = member.isdir()
        if not inside:
            if not is_dir:
                raise FileOpError(f"cannot replace the extraction root with {member.name!r}")
            if name == ".":
                return
            path = self.base
        else:
            parent, _, leaf = inside.rpartition("/")
            literal_parent = self.resolve(parent, False)
            if self.upper.lstat(literal_parent) is None:
                self.mkdir_parents(parent)
            parent_rel = self.resolve(parent, True)
            pst = self.upper.lstat(parent_rel)
            if pst is None or not stat.S_ISDIR(pst.st_mode):
                # As the kernel would say in the chroot, about the entry's own name.
                raise os_error("open", display(inside), 2 if pst is None else 20)
            path = f"{parent_rel}/{leaf}" if parent_rel else leaf
            existing = self.upper.lstat(path)
            if existing is not None and not (stat.S_ISDIR(existing.st_mode) and is_dir):
                self.upper.remove(path)
        self.create(tf, member, path)

    def create(self, tf: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        upper = self.upper
        link_target: str | None = None
        if member.isdir():
            st = upper.lstat(path)
            if st is None or not stat.S_ISDIR(st.st_mode):
                upper.mkdir(path, member.mode & 0o7777)
        elif member.isreg():
            fd = upper.create_file(path)
            try:
                source = tf.extractfile(member)
                assert source is not None
                with os.fdopen(os.dup(fd), "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            finally:
                os.close(fd)
        elif member.issym():
            upper.symlink(member.linkname, path)
        elif member.islnk():
            link_target = self.resolve(member.linkname, False)
            if link_target in self.skipped and upper.lstat(link_target) is None:
                self.skipped.add(path)
                return  # a link to a device that was skipped: skipped too
            if upper.lstat(link_target) is None:
                # Go's *LinkError, with both names as the chroot sees them.
                old = go_clean("/" + member.linkname)
                new = display(path[len(self.base) :].lstrip("/"))
                raise FileOpError(f"link {old} {new}: no such file or directory")
            upper.link(link_target, path)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            if not upper.mknod(path, kind | (member.mode & 0o7777), device):
                self.skipped.add(path)
                return  # in a user namespace: skipped
        elif member.isfifo():
            upper.mknod(path, stat.S_IFIFO | (member.mode & 0o7777), 0)
        else:
            raise FileOpError(f"unhandled tar header type {ord(member.type[:1] or b'0')}")

        if self.owner is not None:
            upper.chown(path, self.owner.uid, self.owner.gid, what=self.owner.needs(path))
        else:
            what = f"the archive {self.archive} has files owned by {{id}} ({member.name})"
            upper.chown(path, member.uid, member.gid, what=what)
        self.xattrs(member, path)
        target_is_link = False
        if link_target is not None:
            tst = upper.lstat(link_target)
            target_is_link = tst is not None and stat.S_ISLNK(tst.st_mode)
        mtime = _bound(member.mtime)
        atime_s = member.pax_headers.get("atime")
        atime = mtime
        if atime_s is not None:
            try:
                atime = max(_bound(float(atime_s)), mtime)
            except ValueError:
                atime = mtime
        if not member.issym() and not target_is_link:
            upper.chmod(path, member.mode & 0o7777)
            upper.utime(path, atime, mtime)
        elif member.issym():
            upper.utime(path, atime, mtime)
        if member.isdir():
            self.dirs.append((path, atime, mtime))

    def xattrs(self, member: tarfile.TarInfo, path: str) -> None:
        found = {
            key[len(_XATTR) :]: value.encode("utf-8", "surrogateescape")
            for key, value in member.pax_headers.items()
            if key.startswith(_XATTR)
        }
        if found:
            # Unsupported or refused attributes are skipped (BestEffortXattrs); overlayfs's own
            # are never written: they would change what the layer means.
            self.upper.set_xattrs(path, content_xattrs(found))

    def finish(self) -> None:
        # Directory times last: creating entries inside changed them.
        for path, atime, mtime in self.dirs:
            rel = self.resolve(path[len(self.base) :].lstrip("/"), True)
            if self.upper.lstat(rel) is not None:
                self.upper.utime(rel, atime, mtime)


def extract_archive(
    tree: ReadTree,
    path: str,
    upper: Upper,
    dest: str,
    owner: Owner | None,
    created_ns: int | None,
) -> bool:
    """Extract ``path`` of ``tree`` into ``dest`` if it is an archive (BuildKit's ``unpack``).

    Args:
        tree: the source tree (the build context, a download).
        path: the source path; symlinks are followed inside the tree.
        upper: the layer being written.
        dest: the destination directory (resolved inside the image; created if missing).
        owner: ``--chown``: owner of every extracted entry; None keeps the archive's.
        created_ns: time of the destination directories created (None: now).

    Returns:
        False, with nothing written, when the source is not an archive (copy it instead).

    Raises:
        FileOpError: the archive is corrupt, or an entry cannot be created.
    """
    src = tree.resolve(path, True)
    if src.st is None or not stat.S_ISREG(src.st.st_mode):
        return False
    fd = open_source(tree.real(src.rel), src.st, display(src.rel))
    with os.fdopen(fd, "rb") as raw:
        stream = open_decompressed(raw)
        if stream is None or not is_tar_stream(stream):
            return False
        raw.seek(0)
        stream = open_decompressed(raw)
        assert stream is not None
        dest_rel = upper.resolve(dest, True)
        created = mkdir_all(upper, dest_rel, 0o755, owner, created_ns)
        extractor = _Extractor(upper, dest_rel, owner, display(src.rel))
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for member in tf:
                    extractor.entry(tf, member)
        except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
            if isinstance(exc, FileOpError):
                raise
            raise FileOpError(f"failed to extract {display(src.rel)}: {exc}") from None
        extractor.finish()
        restore_times(upper, created, created_ns)
    return True
