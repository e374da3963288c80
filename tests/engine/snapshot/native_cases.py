"""Scenarios for the copy-based snapshotter (engine.snapshot.native), run where builds run.

Loaded by path under the name ``nbbuild_tests_native_cases`` (see test_native.py), so that
:func:`run_case` can be called through ``tests/buildkit_base.py``'s ``inside``: in this process
as root, or in a helper that is root of the user's namespace in a rootless run (snapshot files
then belong to the user's subordinate IDs, as a rootless build's do).

A scenario writes lower layers (overlayfs's format: whiteouts, opaque directories), maybe some
entries of the upper dir before the run (as the runner's mount points), then plays the
container: it changes the materialized copy. :func:`run_case` diffs it into the upper dir and
reads ``lowers + [upper]`` back twice - with the engine's own reader (``LayerTree``) and through
a real overlay mount (the kernel's view) - to compare with the container's tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.fileops.tree import LayerTree, content_xattrs
from engine.snapshot.layers import is_opaque_dir
from engine.snapshot.native import materialize, write_diff
from engine.snapshot.overlay import opaque_xattr

REPO = Path(__file__).resolve().parents[3]
OLD = 1_000_000_000_123_456_789  # an mtime in the past, with nanoseconds

Entry = list[Any]
Tree = dict[str, Entry]


# -- reading trees --------------------------------------------------------------------------


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "link"),
        (stat.S_ISCHR, "chr"),
        (stat.S_ISBLK, "blk"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "sock"),
    ):
        if test(mode):
            return name
    return "other"


def _xattrs(path: str) -> list[list[str]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    found = {}
    for name in names:
        try:
            found[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return sorted([k, v.hex()] for k, v in content_xattrs(found).items())


def entry(path: str, st: os.stat_result) -> Entry:
    """What must be equal: kind, mode bits, owners, size, mtime (ns), content or link target,
    xattrs (not overlayfs's own), device number."""
    kind = _kind(st.st_mode)
    payload = ""
    if kind == "file":
        with open(path, "rb") as f:
            payload = hashlib.sha256(f.read()).hexdigest()
    elif kind == "link":
        payload = os.readlink(path)
    size = st.st_size if kind in ("file", "link") else 0
    rdev = st.st_rdev if kind in ("chr", "blk") else 0
    return [kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, st.st_mtime_ns, payload,
            _xattrs(path), rdev]


def _with_links(found: list[tuple[str, Entry, tuple[int, int] | None]]) -> Tree:
    """Each entry gets the first path (in walk order) of its inode: hard links show as equal."""
    first: dict[tuple[int, int], str] = {}
    out: Tree = {}
    for rel, item, inode in found:
        group = rel if inode is None else first.setdefault(inode, rel)
        out[rel or "/"] = [*item, group]
    return out


def plain_tree(root: str) -> Tree:
    """A plain directory (the container's tree), symlinks never followed."""
    found: list[tuple[str, Entry, tuple[int, int] | None]] = []

    def visit(rel: str) -> None:
        path = os.path.join(root, rel) if rel else root
        st = os.lstat(path)
        inode = None if stat.S_ISDIR(st.st_mode) else (st.st_dev, st.st_ino)
        found.append((rel, entry(path, st), inode))
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path), key=os.fsencode):
                visit(f"{rel}/{name}" if rel else name)

    visit("")
    return _with_links(found)


def layer_tree(layers: list[str]) -> Tree:
    """``layers`` (bottom first) merged by the engine's reader (LayerTree)."""
    tree = LayerTree([Path(p) for p in layers])
    found: list[tuple[str, Entry, tuple[int, int] | None]] = []

    def visit(rel: str) -> None:
        st = tree.lstat(rel)
        assert st is not None
        inode = None if stat.S_ISDIR(st.st_mode) else (st.st_dev, st.st_ino)
        found.append((rel, entry(tree.real(rel), st), inode))
        if stat.S_ISDIR(st.st_mode):
            for name in tree.children(rel):
                visit(f"{rel}/{name}" if rel else name)

    visit("")
    return _with_links(found)


_DUMP = """
import importlib.util, json, subprocess, sys
spec = importlib.util.spec_from_file_location("native_cases_dump", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
mount = json.loads(sys.argv[2])
subprocess.run(mount, check=True)
print(json.dumps(module.plain_tree(mount[-1])))
"""


def kernel_tree(layers: list[str], scratch: str) -> Tree:
    """``layers`` merged by overlayfs itself: mounted read-only (no upper dir, so ``/`` is the
    top layer's, as in a step) in a private mount namespace of a child."""
    from engine.userns.namespace import mode

    target = Path(scratch)
    target.mkdir(parents=True, exist_ok=True)
    options = "lowerdir=" + ":".join(reversed(layers))
    if mode() != "root":
        options += ",userxattr"  # as the engine mounts it in a user namespace
    mount = ["mount", "-t", "overlay", "overlay", "-o", options, str(target)]
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _DUMP,
            __file__, json.dumps(mount)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    tree: Tree = json.loads(done.stdout)
    return tree


def differences(got: Tree, want: Tree) -> list[str]:
    lines = [f"missing {p}" for p in sorted(want.keys() - got.keys())]
    lines += [f"extra {p}" for p in sorted(got.keys() - want.keys())]
    lines += [
        f"differs {p}: {got[p]} != {want[p]}"
        for p in sorted(got.keys() & want.keys())
        if got[p] != want[p]
    ]
    return lines


def upper_listing(upper: str) -> dict[str, str]:
    """The upper dir as overlayfs writes it: ``{path: "whiteout" | "opaque" | kind}``."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, upper)
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                out[rel] = "whiteout"
            elif stat.S_ISDIR(st.st_mode) and is_opaque_dir(path):
                out[rel] = "opaque"
            else:
                out[rel] = _kind(st.st_mode)
    return out


# -- writing layers ------------------------------------------------------------------------


def rootless() -> bool:
    from engine.userns.namespace import mode

    return mode() == "inside"


def write(path: Path, data: str | bytes, mode: int = 0o644, mtime: int | None = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    os.chmod(path, mode)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def opaque(path: Path) -> None:
    os.setxattr(path, opaque_xattr(), b"y", follow_symlinks=False)


def set_times(root: Path) -> None:
    """Every directory of a layer gets the old mtime (files have theirs). os.walk lists
    symlinks to directories among the directories: those are left alone, never followed."""
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            os.utime(os.path.join(dirpath, name), ns=(OLD, OLD), follow_symlinks=False)
    os.utime(root, ns=(OLD, OLD))


def image(tmp: Path) -> list[Path]:
    """Two lower layers: a base and one on top of it in overlayfs's format."""
    one, two = tmp / "l1", tmp / "l2"
    write(one / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\n")
    write(one / "bin" / "tool", b"\x7fELF tool", 0o755)
    write(one / "bin" / "su", "setuid", 0o4755)
    write(one / "dir" / "a", "a")
    write(one / "dir" / "sub" / "b", "b")
    write(one / "dir" / "sub" / "deeper" / "c", "c")
    write(one / "keep", "keep this\n")
    write(one / "same", "0123456789")
    write(one / "hard1", "linked")
    os.link(one / "hard1", one / "hard2")
    os.symlink("keep", one / "link")
    os.symlink("/etc/shadow", one / "abs")
    os.symlink("../../../../../../etc", one / "up")
    (one / "empty").mkdir()
    (one / "sticky").mkdir()
    os.chmod(one / "sticky", 0o1777)
    os.mkfifo(one / "fifo", 0o600)
    write(one / "x" / "attr", "with xattrs")
    os.setxattr(one / "x" / "attr", "user.k", b"v")
    os.setxattr(one / "x", "user.dir", b"d")
    write(one / "owned" / "file", "owned")
    os.chown(one / "owned" / "file", 1000, 1001)
    os.chown(one / "owned", 1000, 1001)
    write(one / "gone" / "x", "x")
    write(one / "opq" / "old", "hidden by l2")
    write(one / "replaced" / "y", "dir in l1, file in l2")
    write(one / "shadowed", "deleted by l2")
    if not rootless():
        os.mknod(one / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    # l2: a whiteout, an opaque dir, a file over a dir, a new file in an old dir
    write(two / "dir" / "l2new", "from l2")
    whiteout(two / "shadowed")
    (two / "opq").mkdir()
    opaque(two / "opq")
    write(two / "opq" / "new", "l2's")
    write(two / "replaced", "now a file")
    set_times(one)
    set_times(two)
    return [one, two]


# -- the container's changes ----------------------------------------------------------------


def c_unchanged(root: Path) -> None:
    pass


def c_new(root: Path) -> None:
    write(root / "newfile", "new", mtime=None)
    write(root / "newdir" / "deep" / "f", "deep", 0o600, mtime=None)
    write(root / "dir" / "sub" / "added", "added")
    os.symlink("newfile", root / "newlink")
    os.mkfifo(root / "newfifo")
    (root / "newempty").mkdir(0o750)
    write(root / "opq" / "more", "in an opaque dir")


def c_same_size_same_mtime(root: Path) -> None:
    # rewritten in place, same size, times restored: only the content tells
    top = os.lstat(root)
    path = root / "same"
    st = os.lstat(path)
    with open(path, "r+b") as f:
        f.write(b"9876543210")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    # replaced by a new inode with the same size and times
    other = root / "keep"
    st = os.lstat(other)
    write(root / "keep.tmp", "KEEP THIS\n", mtime=None)
    os.utime(root / "keep.tmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(root / "keep.tmp", other)
    os.utime(root, ns=(top.st_atime_ns, top.st_mtime_ns))  # the parent's times say nothing


def c_touch(root: Path) -> None:
    os.utime(root / "dir" / "a", ns=(OLD + 5, OLD + 5))
    os.utime(root / "dir" / "sub", ns=(OLD + 7, OLD + 7))
    os.utime(root / "link", ns=(OLD + 9, OLD + 9), follow_symlinks=False)


def c_chmod(root: Path) -> None:
    os.chmod(root / "keep", 0o600)
    os.chmod(root / "bin" / "tool", 0o4755)
    os.chmod(root / "bin" / "su", 0o755)  # set-uid dropped
    os.chmod(root / "dir" / "sub", 0o700)
    os.chmod(root / "empty", 0o3775)
    os.chmod(root / "fifo", 0o644)


def c_chown(root: Path) -> None:
    os.chown(root / "keep", 1000, 1000)
    os.chown(root / "dir", 2, 3)
    os.chown(root / "link", 4, 5, follow_symlinks=False)
    os.chown(root / "owned" / "file", 0, 0)
    os.chown(root / "bin" / "su", 0, 50)  # clears set-uid, as chown does
    os.chmod(root / "bin" / "su", 0o4755)


def c_xattrs(root: Path) -> None:
    os.setxattr(root / "keep", "user.new", b"1")
    os.setxattr(root / "x" / "attr", "user.k", b"changed")
    os.removexattr(root / "x", "user.dir")
    os.setxattr(root / "dir", "user.dir", b"on a dir")
    # overlayfs's own names are bookkeeping, never content: not carried into the layer
    os.setxattr(root / "same", "user.overlay.opaque", b"y")


def c_delete(root: Path) -> None:
    os.unlink(root / "keep")
    shutil.rmtree(root / "gone")
    os.unlink(root / "dir" / "l2new")  # from the upper lower layer
    os.unlink(root / "dir" / "a")  # from the bottom one
    shutil.rmtree(root / "dir" / "sub" / "deeper")
    os.unlink(root / "hard2")  # one name of a linked pair
    os.unlink(root / "fifo")
    os.unlink(root / "abs")
    shutil.rmtree(root / "opq")
    shutil.rmtree(root / "premade")  # was in the upper dir before the run


def c_types(root: Path) -> None:
    shutil.rmtree(root / "gone")
    write(root / "gone", "dir became a file", mtime=None)
    os.unlink(root / "keep")
    write(root / "keep" / "inside", "file became a dir", mtime=None)
    os.unlink(root / "link")
    (root / "link").mkdir()
    write(root / "link" / "f", "symlink became a dir")
    shutil.rmtree(root / "empty")
    os.symlink("/", root / "empty")  # dir became a symlink (to the host's root, never followed)
    os.unlink(root / "replaced")
    (root / "replaced").mkdir()  # over l1's dir of the same name, which must stay hidden
    os.unlink(root / "fifo")
    write(root / "fifo", "fifo became a file")


def c_recreate_dir(root: Path) -> None:
    # deleted and made again: likely the same inode number again
    shutil.rmtree(root / "dir")
    write(root / "dir" / "fresh", "fresh", mtime=None)
    # moved away first: certainly a new inode
    os.rename(root / "x", root / "x.old")
    (root / "x").mkdir(0o711)
    write(root / "x" / "attr", "another attr file")
    shutil.rmtree(root / "x.old")
    # an opaque dir of the lowers, remade
    shutil.rmtree(root / "opq")
    write(root / "opq" / "again", "again")


def c_symlinks(root: Path) -> None:
    os.unlink(root / "link")
    os.symlink("/etc/passwd", root / "link")  # retargeted
    os.unlink(root / "up")
    os.symlink("../../../../../../../../../etc/shadow", root / "up")
    os.symlink("dir/sub", root / "tosub")
    os.symlink("nowhere", root / "dangling")
    # a directory swapped for a link pointing out of the tree, with files "below" it
    shutil.rmtree(root / "owned")
    os.symlink("/root", root / "owned")


def c_hardlinks(root: Path) -> None:
    os.link(root / "keep", root / "keep2")  # a new name of a lower file
    write(root / "n1", "new pair", mtime=None)
    os.link(root / "n1", root / "dir" / "n2")  # a new pair, across directories
    with open(root / "hard1", "ab") as f:  # both names of a lower pair change
        f.write(b" and changed")
    os.symlink("keep", root / "sl")
    os.link(root / "sl", root / "sl2", follow_symlinks=False)  # a hard link to a symlink


def c_break_link(root: Path) -> None:
    # a lower pair split: same content, metadata and times, but two inodes now
    top = os.lstat(root)
    st = os.lstat(root / "hard2")
    os.unlink(root / "hard2")
    write(root / "hard2", "linked", mtime=None)
    os.utime(root / "hard2", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(root, ns=(top.st_atime_ns, top.st_mtime_ns))


def c_devices(root: Path) -> None:
    try:
        os.mknod(root / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    except PermissionError:
        assert rootless()  # a user namespace cannot make devices (nor can its containers)
    if not rootless():
        os.unlink(root / "null")
        os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 7))


def c_deep(root: Path) -> None:
    path = root / "deep"
    for i in range(300):
        path = path / f"d{i % 10}"
    write(path / "leaf", "far down", mtime=None)
    shutil.rmtree(root / "dir" / "sub")


def c_everything(root: Path) -> None:
    for change in (c_new, c_chmod, c_xattrs, c_hardlinks, c_touch):
        change(root)
    c_types(root)
    shutil.rmtree(root / "dir")
    write(root / "dir", "dir is a file now")


CHANGES: dict[str, Callable[[Path], None]] = {
    name[2:]: func for name, func in dict(globals()).items() if name.startswith("c_")
}


# -- a case -----------------------------------------------------------------------------------


def run_case(name: str, tmp: str, trust_ctime: bool) -> dict[str, Any]:
    """Lowers, a copy, the container's changes, the diff; what the two readers and the upper
    dir show (see the module doc)."""
    base = Path(tmp)
    lowers = image(base)
    upper = base / "upper"
    upper.mkdir(mode=0o755)
    os.chmod(upper, 0o755)
    write(upper / "premade" / "p", "in the upper dir before the run")  # like /dev, /proc, /sys
    work = base / "work"
    work.mkdir()
    copy = materialize([*lowers, upper], work / "rootfs", trust_ctime=trust_ctime)
    copied = plain_tree(str(copy.root))
    before = layer_tree([str(p) for p in [*lowers, upper]])
    CHANGES[name](copy.root)
    want = plain_tree(str(copy.root))
    write_diff(copy, upper, lowers)
    layers = [str(p) for p in [*lowers, upper]]
    return {
        "copy": differences(copied, before),
        "engine": differences(layer_tree(layers), want),
        "kernel": differences(kernel_tree(layers, str(base / "mnt")), want),
        "upper": upper_listing(str(upper)),
        "trusted": copy.trust_ctime,
    }


def untouched_layers(tmp: str) -> list[str]:
    """Materializing and diffing must not change a lower layer: its listing before and after."""
    base = Path(tmp)
    lowers = image(base)
    before = [plain_tree(str(p)) for p in lowers]
    upper = base / "upper"
    upper.mkdir()
    copy = materialize([*lowers, upper], base / "rootfs")
    c_everything(copy.root)
    write_diff(copy, upper, lowers)
    after = [plain_tree(str(p)) for p in lowers]
    return [line for b, a in zip(before, after, strict=True) for line in differences(a, b)]



# -- a store where overlayfs is refused -------------------------------------------------------

# In a child with a private mount namespace: an overlay mounted at DIR/m (overlayfs does not
# take a directory of another overlay as upper dir), then the job, with DIR/m as its place.
_ON_OVERLAY = """
import json, subprocess, sys
from pathlib import Path
from engine.snapshot.overlay import OverlayMount
top = Path(sys.argv[1])
dirs = [top / n for n in ("l", "u", "w", "m")]
for d in dirs:
    d.mkdir(parents=True, exist_ok=True)
subprocess.run(OverlayMount((dirs[0],), dirs[1], dirs[2]).mount_argv(dirs[3]), check=True)
place = dirs[3]
args = json.loads(sys.argv[2])
if args["job"] == "choose":
    from engine.snapshot.snapshotter import choose
    c = choose(place / "scratch")
    print(json.dumps({"kind": c.kind, "reason": c.reason, "note": c.note()}))
else:
    from engine.build import BuildRequest, OutputSpec, build
    from engine.images.archive import load
    from engine.images.store import ImageStore
    from engine.store.store import Store
    with Store.open(place / "root") as store:
        load(ImageStore(store), Path(args["archive"]))
    request = BuildRequest(
        dockerfile=args["dockerfile"],
        context=Path(args["context"]),
        outputs=(OutputSpec.parse("type=tar,dest=" + args["out"]),),
    )
    result = build(request, root=place / "root")
    print(json.dumps({"worker": result.worker}))
"""


def _on_overlay(tmp: str, job: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NBBUILD_SNAPSHOTTER"}  # auto
    env["PYTHONPATH"] = str(REPO)
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _ON_OVERLAY,
            tmp, json.dumps(job)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp)
    assert done.returncode == 0, done.stderr
    found: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def choice_on_overlay(tmp: str) -> dict[str, str]:
    """What :func:`choose` makes of a scratch dir on an overlay mount."""
    return _on_overlay(tmp, {"job": "choose"})


def build_on_overlay(tmp: str, archive: str, context: str, dockerfile: str, out: str) -> dict[str, str]:
    """A build into a store on an overlay mount (busybox loaded from ``archive``), its tar
    output written to ``out``; returns the build's worker description."""
    Path(tmp).mkdir(parents=True, exist_ok=True)
    job = {"job": "build", "archive": archive, "context": context, "dockerfile": dockerfile,
           "out": out}
    return _on_overlay(tmp, job)
