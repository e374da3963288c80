"""Copy-based ("native") snapshots: RUN steps where overlayfs cannot be mounted.

containerd calls its copying snapshotter "native"; BuildKit falls back to it where overlayfs is
refused. A step on it:

1. :func:`materialize` copies the merged view of the step's layers (overlayfs's rules, read with
   :class:`~engine.fileops.tree.LayerTree`, nothing mounted) into a fresh directory: owners,
   modes with set-id bits, xattrs (not overlayfs's bookkeeping), symlinks, hard links within
   the view, FIFOs and sockets, device nodes (skipped in a user namespace, where the kernel
   refuses them, as rootless unpacking skips them), and times. It remembers what it wrote
   (:class:`Copy`).
2. The container runs over that plain directory (the executor's ``Path`` root filesystem).
3. :func:`write_diff` walks the container's tree against what was copied and writes the changes
   into the step's upper dir in overlayfs's own format, with the writer the file ops use
   (:class:`~engine.fileops.upper.Upper`): new and changed entries copied whole (with their
   parents copied up), deleted entries as whiteouts, a directory deleted and made again (a new
   inode) as an opaque directory holding its new content. Applied over the lower layers, the
   diff gives back exactly the container's final tree, so nothing after the step can tell which
   snapshotter made it.
4. The copy is removed (in the background: nothing reads it any more).

One difference with overlayfs remains, and it is overlayfs's: changing one name of a file that
has several in a lower layer copies that name up and splits it from the others (overlayfs runs
with ``index=off``); on the copy, as on any filesystem, every name sees the change.

What counts as changed
----------------------
containerd's double-walk differ (continuity ``fs.Changes``/``sameFile``) compares type, mode,
owners, device number and ``security.capability``, then size and mtime, and reads content only
when both mtimes may have been truncated. Here every property that the diff must reproduce is
compared: type, mode, owners, device number, size, mtime (ns), symlink target, all xattrs but
overlayfs's, and whether the name still shares its inode with the names it shared it with; and
when all of that is equal but the inode was touched, the content is compared byte for byte: a
same-size rewrite that restores the mtime (``touch -r``) is still a change.

An entry is known untouched, with no reading, when it is still the inode the copy made and its
ctime has not moved: every change of content, metadata or link count sets ctime, which no
process can set. That holds once the clock has ticked past the copy (:func:`materialize` waits
for it, about one timer tick) and a file created afterwards gets a later ctime on this
filesystem (checked: a filesystem with coarse timestamps falls back to comparing everything);
it is not trusted for a privileged step, which could set the clock.

Staying inside
--------------
The container's tree is read only after the container is gone (the executor returns once its
PID namespace has died), with ``lstat`` by name; a directory is entered only when ``lstat``
says it is one, so no symlink of the container's is ever followed; files are opened with
``O_NOFOLLOW`` and checked to be the inode the walk saw. Nothing is written there. The copy is
made in a fresh directory with ``O_EXCL``, from the layers read the same way.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.context.tree import read_xattrs
from engine.fileops.tree import LayerTree, content_xattrs
from engine.fileops.upper import Upper, copy_content
from engine.snapshot.errors import SnapshotError
from engine.userns import ownership

if TYPE_CHECKING:
    from engine.executor.process import Executor, ExitResult, OutputSink, ProcessSpec
    from engine.snapshot.overlay import OverlayMount

__all__ = ["Copy", "materialize", "run_native", "write_diff"]

# Linux's CLOCK_REALTIME_COARSE: the clock file timestamps are taken from (one timer tick)
_CLOCK_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


class _Base:
    """What the copy held at a path before the run; one object for all names of an inode."""

    __slots__ = ("source", "st", "xattrs")

    def __init__(self, st: os.stat_result, xattrs: dict[str, bytes], source: str) -> None:
        self.st = st  # lstat of the copy once written (refreshed when a name is linked to it)
        self.xattrs = xattrs  # the xattrs actually set on the copy
        self.source = source  # the layer file it was copied from (content, symlink target)


@dataclass
class Copy:
    """A materialized root filesystem and what was written into it.

    Attributes:
        root: the directory the container runs over.
        entries: per relative path (``""`` is ``/``) what was written there.
        children: per directory the names copied into it (sorted).
        skipped: paths that could not be copied (device nodes in a user namespace).
        trust_ctime: an untouched inode may be recognised by its ctime (see the module doc).
    """

    root: Path
    entries: dict[str, _Base] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    trust_ctime: bool = False

    def host(self, rel: str) -> str:
        """Host path of ``rel`` in the copy."""
        top = os.fspath(self.root)
        return f"{top}/{rel}" if rel else top


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _open_regular(path: str, st: os.stat_result, shown: str) -> int:
    """Open the regular file ``path`` for reading: no symlink followed, and it must be the
    inode ``st`` describes."""
    try:
        fd = os.open(path, _READ)
    except OSError as exc:
        raise SnapshotError(f"cannot open {shown}: {exc.strerror or exc}") from None
    fst = os.fstat(fd)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(fst.st_mode):
        os.close(fd)
        raise SnapshotError(f"{shown} changed while it was being read")
    return fd


def _set_xattrs(path: str, xattrs: dict[str, bytes]) -> dict[str, bytes]:
    done: dict[str, bytes] = {}
    for key, value in xattrs.items():
        try:
            os.setxattr(path, key, value, follow_symlinks=False)
        except OSError:
            continue  # refused (a security.* one, or xattrs unsupported): as BuildKit's copy
        done[key] = value
    return done


def _copy_meta(path: str, st: os.stat_result, xattrs: dict[str, bytes], rel: str) -> dict[str, bytes]:
    """Owner, mode, xattrs and times of ``st`` onto the new entry ``path``; returns the xattrs
    that could be set. chown comes first: it clears set-id bits and file capabilities."""
    ownership.chown(path, st.st_uid, st.st_gid, what=f"the image's /{rel} is owned by {{id}}")
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    done = _set_xattrs(path, xattrs)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return done


# -- 1. the copy ------------------------------------------------------------------------------


def materialize(layers: Sequence[Path], root: Path, *, trust_ctime: bool = True) -> Copy:
    """Copy the merged view of ``layers`` (bottom first) into the new directory ``root``.

    Args:
        trust_ctime: allow :func:`write_diff` to recognise untouched inodes by their ctime
            (False for a step that may set the clock).

    Raises:
        IdMappingError: a user namespace does not map an owner of the view.
        SnapshotError, FileOpError: the layers cannot be read.
    """
    tree = LayerTree(list(layers))
    copy = Copy(root)
    os.mkdir(root, 0o700)
    # the first copy of each inode of the layers that has several names in the view
    linked: dict[tuple[int, int], tuple[str, _Base]] = {}
    stack: list[tuple[str, bool]] = [("", False)]
    while stack:
        rel, leaving = stack.pop()
        dst = copy.host(rel)
        st = tree.lstat(rel)
        if st is None:
            raise SnapshotError(f"/{rel} vanished from the layers while they were copied")
        if leaving:
            # a directory's own metadata once its entries are in (they change its times)
            done = _copy_meta(dst, st, tree.xattrs(rel), rel)
            copy.entries[rel] = _Base(os.lstat(dst), done, tree.real(rel))
            continue
        if stat.S_ISDIR(st.st_mode):
            if rel:
                os.mkdir(dst, 0o700)
            names = tree.children(rel)
            copy.children[rel] = names
            stack.append((rel, True))
            stack.extend((_join(rel, name), False) for name in reversed(names))
            continue
        src = tree.real(rel)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in linked:
            first, base = linked[key]
            os.link(first, dst, follow_symlinks=False)
            base.st = os.lstat(dst)  # the link moved the inode's ctime and link count
            copy.entries[rel] = base
            continue
        mode = st.st_mode
        if stat.S_ISREG(mode):
            fd = _open_regular(src, st, f"/{rel}")
            try:
                out = os.open(dst, _CREATE, 0o600)
                try:
                    copy_content(fd, out)
                finally:
                    os.close(out)
            finally:
                os.close(fd)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
        elif not ownership.mknod(dst, mode, st.st_rdev):
            copy.skipped.add(rel)  # a device node, in a user namespace
            continue
        done = _copy_meta(dst, st, tree.xattrs(rel), rel)
        base = _Base(os.lstat(dst), done, src)
        copy.entries[rel] = base
        if st.st_nlink > 1:
            linked[key] = (dst, base)
    copy.trust_ctime = trust_ctime and _settle(root.parent)
    return copy


def _settle(scratch: Path) -> bool:
    """Wait until a change made from now on gets a later ctime than anything copied; whether
    this filesystem's timestamps are fine enough for that (checked on a new file)."""
    ready = time.clock_gettime_ns(time.CLOCK_REALTIME)
    while time.clock_gettime_ns(_CLOCK_COARSE) <= ready:
        time.sleep(0.0005)
    probe = scratch / f".nbbuild-clock-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, _CREATE, 0o600)
    except OSError:
        return False
    try:
        return os.fstat(fd).st_ctime_ns > ready
    finally:
        os.close(fd)
        os.unlink(probe)


# -- 3. the diff ------------------------------------------------------------------------------


def _xattrs(path: str) -> dict[str, bytes]:
    return content_xattrs(read_xattrs(path, SnapshotError))


def _same_content(path: str, st: os.stat_result, source: str, rel: str) -> bool:
    a = _open_regular(path, st, f"/{rel}")
    try:
        b = os.open(source, _READ)
    except OSError:
        os.close(a)
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(_CHUNK)
            if x != fb.read(_CHUNK):
                return False
            if not x:
                return True


def _same(copy: Copy, base: _Base, path: str, st: os.stat_result, rel: str) -> bool:
    """Whether the container's entry ``st`` at ``path`` is what the copy held (``base``)."""
    was = base.st
    if copy.trust_ctime and st.st_ino == was.st_ino and st.st_ctime_ns == was.st_ctime_ns:
        return True
    if (st.st_mode, st.st_uid, st.st_gid) != (was.st_mode, was.st_uid, was.st_gid):
        return False
    if st.st_mtime_ns != was.st_mtime_ns:
        return False
    if not stat.S_ISDIR(st.st_mode):
        # the same names share the inode: the same inode still, or no sharing on either side
        if st.st_ino != was.st_ino and (st.st_nlink > 1 or was.st_nlink > 1):
            return False
        if st.st_size != was.st_size:
            return False
        if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and st.st_rdev != was.st_rdev:
            return False
    if _xattrs(path) != base.xattrs:
        return False
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(path) == os.readlink(base.source)
    if stat.S_ISREG(st.st_mode) and st.st_size:
        return _same_content(path, st, base.source, rel)
    return True


# Ops, in the order they are applied (parents before children, a directory's "end" after all
# of its entries):
#   ("del", rel, None)    rel is gone: remove it (a whiteout where a lower layer has it)
#   ("new", rel, st)      write the container's entry (a directory: made empty, filled by the
#                         ops that follow), replacing what the view has there
#   ("keep", rel, st)     unchanged, but its inode has other names: rewritten with them when
#                         one of them is written
#   ("end", rel, st)      a changed directory's own metadata (always for the root)
#   ("end?", rel, st)     the same for an unchanged one: only when a write below copied it up
#   ("endnew", rel, st)   the same for a directory made by a "new"
_Op = tuple[str, str, os.stat_result | None]


def _changes(copy: Copy) -> list[_Op]:
    ops: list[_Op] = []
    # frames: ("cmp", rel, None): compare the container's rel with the copy's;
    # ("new", rel, st): rel and everything below it are new; ("end"/"endnew", rel, st)
    stack: list[_Op] = [("cmp", "", None)]
    while stack:
        kind, rel, st = stack.pop()
        if kind in ("end", "end?", "endnew"):
            ops.append((kind, rel, st))
            continue
        path = copy.host(rel)
        if kind == "new":
            assert st is not None
            ops.append(("new", rel, st))
            if stat.S_ISDIR(st.st_mode):
                stack.append(("endnew", rel, st))
                for name in sorted(os.listdir(path), reverse=True):
                    child = _join(rel, name)
                    cst = _lstat(copy.host(child))
                    if cst is not None:
                        stack.append(("new", child, cst))
            continue
        base = copy.entries.get(rel)
        now = _lstat(path)
        if now is None:
            if base is not None:
                ops.append(("del", rel, None))
            continue
        if (
            base is None
            or stat.S_IFMT(now.st_mode) != stat.S_IFMT(base.st.st_mode)
            or (stat.S_ISDIR(now.st_mode) and now.st_ino != base.st.st_ino)
        ):
            stack.append(("new", rel, now))  # added, or replaced by another entry
            continue
        if stat.S_ISDIR(now.st_mode):
            # "end?": its metadata is unchanged, written only if a child's write copied it up
            changed = not rel or not _same(copy, base, path, now, rel)
            stack.append(("end" if changed else "end?", rel, now))
            names = set(os.listdir(path)) | set(copy.children.get(rel, ()))
            stack.extend(("cmp", _join(rel, name), None) for name in sorted(names, reverse=True))
            continue
        if not _same(copy, base, path, now, rel):
            ops.append(("new", rel, now))
        elif now.st_nlink > 1:
            ops.append(("keep", rel, now))
    return ops


def write_diff(copy: Copy, upper: Path, lowers: Sequence[Path]) -> None:
    """Write what the container changed in ``copy`` into ``upper`` as an overlayfs upper layer
    over ``lowers`` (bottom first).

    ``upper`` may already hold entries that were part of the copy (mount points made before
    the run): the changes are applied over them, with overlayfs's rules.
    """
    ops = _changes(copy)
    # inodes of the container's tree with a name that is written: all their names are
    written = {
        st.st_ino
        for kind, _, st in ops
        if kind == "new" and st is not None and not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1
    }
    out = Upper(upper, list(lowers) or None)
    links: dict[int, str] = {}  # inode of the container's tree -> its first name written
    for kind, rel, st in ops:
        if kind == "del":
            out.remove(rel)
            continue
        assert st is not None
        if kind == "keep" and st.st_ino not in written:
            continue
        if kind in ("new", "keep"):
            _clear(out, rel)
            _write(copy, out, rel, st, links)
            continue
        host = out.host(rel)
        present = _lstat(host)
        if kind == "end?" and present is None:
            continue  # unchanged, and nothing below it was written
        if present is None:
            out.ensure_upper(rel)
        _put_meta(host, st, _xattrs(copy.host(rel)), rel)


def _clear(out: Upper, rel: str) -> None:
    """Make room at ``rel`` for a new entry: what the upper dir has there goes; a lower entry
    needs no whiteout (the new one hides it, and a new directory over one is made opaque)."""
    from engine.store.trees import remove_tree

    host = out.host(rel)
    st = _lstat(host)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_tree(Path(host))
    else:
        os.unlink(host)


def _write(copy: Copy, out: Upper, rel: str, st: os.stat_result, links: dict[int, str]) -> None:
    """The container's entry at ``rel`` into the upper dir (a directory: empty; its metadata
    comes with its "endnew" op)."""
    path = copy.host(rel)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        out.mkdir(rel, 0o700)
        return
    if st.st_nlink > 1 and st.st_ino in links:
        out.link(links[st.st_ino], rel)
        return
    if stat.S_ISREG(mode):
        src = _open_regular(path, st, f"/{rel}")
        try:
            dst = out.create_file(rel)
            try:
                copy_content(src, dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    elif stat.S_ISLNK(mode):
        out.symlink(os.readlink(path), rel)
    elif not out.mknod(rel, mode, st.st_rdev):
        return  # a device node a user namespace cannot make (nor could the container)
    _put_meta(out.host(rel), st, _xattrs(path), rel)
    if st.st_nlink > 1:
        links[st.st_ino] = rel


def _put_meta(path: str, st: os.stat_result, xattrs: dict[str, bytes], rel: str) -> None:
    """Make the upper dir's ``path`` carry the container's owner, mode, xattrs and times."""
    ownership.chown(path, st.st_uid, st.st_gid, what=f"/{rel} needs {{id}}")
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    current = _xattrs(path)
    for key in current.keys() - xattrs.keys():
        try:
            os.removexattr(path, key, follow_symlinks=False)
        except OSError:
            continue
    _set_xattrs(path, {k: v for k, v in xattrs.items() if current.get(k) != v})
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


# -- a step -----------------------------------------------------------------------------------


def run_native(
    executor: Executor,
    spec: ProcessSpec,
    mount: OverlayMount,
    *,
    stdout: OutputSink | None = None,
    stderr: OutputSink | None = None,
    cancel: threading.Event | None = None,
    keep_diff: bool = True,
) -> ExitResult:
    """Run ``spec`` over a copy of ``mount``'s layers; the diff goes to ``mount.upper``.

    ``mount`` is the overlay the step would have had: its lowers plus what ``mount.upper``
    already holds are copied (into ``mount.work``, which must be the step's own scratch dir),
    and after a successful run the changes are written into ``mount.upper`` as overlayfs would
    have written them. A failed or canceled run (or ``keep_diff=False``) writes nothing.
    """
    from engine.store.trees import remove_later

    mount.upper.mkdir(parents=True, exist_ok=True)
    mount.work.mkdir(parents=True, exist_ok=True)
    root = mount.work / "rootfs"
    try:
        copy = materialize([*mount.lowers, mount.upper], root, trust_ctime=not spec.privileged)
        result = executor.run(spec, root, stdout=stdout, stderr=stderr, cancel=cancel)
        canceled = result.cancelled or (cancel is not None and cancel.is_set())
        if keep_diff and result.exit_code == 0 and not canceled:
            write_diff(copy, mount.upper, mount.lowers)
        return result
    finally:
        remove_later(root)
