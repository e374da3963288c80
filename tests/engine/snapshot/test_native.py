"""The copy-based ("native") snapshotter: diffs that reproduce the container's tree, the choice
between it and overlayfs, and whole builds on it giving what overlayfs gives.

Diff correctness (scenarios in native_cases.py): the layers are copied, the container's changes
are played on the copy, the diff is written, and ``lowers + [diff]`` is read back with the
engine's reader *and* through a real overlay mount: both must equal the container's tree (kind,
mode, owners, size, mtime, content, link target, xattrs, device, hard links). Every scenario
runs twice: with untouched inodes recognised by their ctime, and with everything compared.

These run as root (CI) or as a normal user whose builds run rootless (scripts/rootless-tests.sh
range …): snapshot work then happens in a helper inside the user's namespace
(tests/buildkit_base.py's ``inside``), as a rootless build's does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine.snapshot.errors import SnapshotError
from engine.snapshot.snapshotter import ENV, Choice, choose, chosen, probe_overlay

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


base = _load("nbbuild_tests_buildkit_base", HERE.parents[1] / "buildkit_base.py")
cases = _load("nbbuild_tests_native_cases", HERE / "native_cases.py")
busybox_archive = base.busybox_archive
bk = base.bk


@pytest.fixture
def where(tmp_path: Path) -> Iterator[Path]:
    """A scratch dir for snapshot files (given back to the user after a rootless run)."""
    base.mapping()  # root, or a user whose builds can run rootless (else: fail saying why)
    yield tmp_path
    base.release(tmp_path)


# -- diffs ------------------------------------------------------------------------------------

NOT_WRITTEN = {"premade": "dir", "premade/p": "file"}  # the upper dir's own, before the run


def _check_upper(name: str, upper: dict[str, str]) -> None:
    """What the diff must (and must not) contain, beyond reproducing the tree."""
    if name == "unchanged":
        assert upper == NOT_WRITTEN  # nothing changed, nothing written
    elif name == "same_size_same_mtime":
        assert upper["same"] == "file" and upper["keep"] == "file"
    elif name == "delete":
        for gone in ("keep", "gone", "dir/l2new", "dir/a", "dir/sub/deeper", "hard2", "abs"):
            assert upper[gone] == "whiteout", gone
        assert not any(p.startswith("premade") for p in upper)  # nothing below to hide
    elif name == "recreate_dir":
        assert upper["x"] == "opaque"  # a new inode: opaque, the old children stay hidden
        # remade by rmtree + mkdir: ext4 often hands out the freed inode number again, and
        # then the diff cannot tell it was remade: opaque, or whiteouts of the old children
        # (the tree read back through the engine and the kernel is checked above either way)
        hidden = [p for p in upper if p.startswith("opq/") and p != "opq/again"]
        assert upper["opq"] == "opaque" or (
            upper["opq"] == "dir" and hidden and all(upper[p] == "whiteout" for p in hidden)
        ), upper
        # the same inode number again: opaque, or whiteouts of the old children
        assert upper["dir"] == "opaque" or upper["dir/a"] == upper["dir/sub"] == "whiteout"
    elif name == "types":
        assert upper["replaced"] == "opaque"  # l1's directory below stays hidden
        assert upper["gone"] == "file" and upper["empty"] == "link"
    elif name == "break_link":
        assert upper.get("hard2") == "file" and "hard1" not in upper
    elif name == "xattrs":
        assert "same" not in upper  # only overlayfs's own xattr was set: no content change
    elif name == "hardlinks":
        assert upper["hard1"] == upper["hard2"] == upper["keep"] == upper["keep2"] == "file"


@pytest.mark.parametrize("trust_ctime", [True, False], ids=["ctime", "compare-all"])
@pytest.mark.parametrize("name", sorted(cases.CHANGES))
def test_diff_over_the_lowers_is_the_containers_tree(
    name: str, trust_ctime: bool, where: Path
) -> None:
    result = base.inside(cases.run_case, name, str(where), trust_ctime)
    assert result["copy"] == []  # the copy is the merged view of the layers
    assert result["engine"] == []  # lowers + diff, read by the engine
    assert result["kernel"] == []  # lowers + diff, mounted
    assert result["trusted"] is trust_ctime  # local filesystems have fine timestamps
    _check_upper(name, result["upper"])


def test_copying_and_diffing_leave_the_lowers_alone(where: Path) -> None:
    assert base.inside(cases.untouched_layers, str(where)) == []


# -- the choice -------------------------------------------------------------------------------


def test_overlay_mounts_here_so_it_is_chosen(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert base.inside(probe_overlay, where / "scratch") == ""
    choice = base.inside(choose, where / "scratch")
    assert choice == Choice("overlay", "overlayfs mounts here")
    assert choice.note() == ""
    assert sorted(os.listdir(where / "scratch")) == []  # the probe's dirs are gone


def test_the_variable_forces_a_snapshotter(where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "native")
    choice = choose(where / "s")
    assert choice == Choice("native", "NBBUILD_SNAPSHOTTER=native")
    assert choice.note() == ", snapshotter: native (copy; NBBUILD_SNAPSHOTTER=native)"
    assert chosen(where) == choice
    assert not (where / "s").exists()  # no probe
    monkeypatch.setenv(ENV, "Overlay")
    assert choose(where / "s").kind == "overlay"
    monkeypatch.setenv(ENV, "auto")
    assert chosen(Path("/nonexistent")) is None  # nothing probed there, and chosen never probes
    monkeypatch.setenv(ENV, "copy")
    with pytest.raises(SnapshotError, match="NBBUILD_SNAPSHOTTER='copy' is not a snapshotter"):
        choose(where / "s")


def test_overlay_refused_on_an_overlay_store_chooses_the_copy(where: Path) -> None:
    # overlayfs does not take a directory of another overlay as upper dir: a real refusal
    found = base.inside(cases.choice_on_overlay, str(where))
    assert found["kind"] == "native", found
    assert found["reason"].startswith("overlayfs refused here: ")
    assert found["note"] == ", snapshotter: native (copy; overlayfs refused here)"


# -- whole builds -----------------------------------------------------------------------------

DOCKERFILE = """\
FROM busybox
COPY attr.txt /data/attr.txt
RUN set -e; mkdir -p /data/dir/sub /data/gone/deep /data/d2f /data/keep /data/recreate/old; \\
    echo one > /data/dir/sub/a; echo two > /data/gone/deep/x; echo three > /data/d2f/y; \\
    echo f > /data/f2d; echo same > /data/same; echo old > /data/recreate/old/o; \\
    echo r > /data/recreate/r; echo single > /data/single; \\
    echo pair > /data/p1; ln /data/p1 /data/p2; \\
    ln -s ../dir/sub/a /data/keep/rel; ln -s /etc/passwd /data/abs; mkfifo /data/fifo; \\
    chmod 4755 /data/dir/sub/a; chown 1:2 /data/keep; touch -d @1000000000 /data/same; \\
    (mknod /data/null c 1 3 2>/dev/null || true)
RUN set -e; echo SAME > /data/same; touch -d @1000000000 /data/same; \\
    rm -r /data/gone; rm -r /data/d2f; echo file > /data/d2f; \\
    rm /data/f2d; mkdir /data/f2d; echo z > /data/f2d/z; \\
    mv /data/recreate /data/recreate.old; mkdir /data/recreate; echo new > /data/recreate/new; \\
    rm -r /data/recreate.old; chmod 0700 /data/keep; chown 3:4 /data/single; \\
    ln /data/single /data/single2; rm /etc/group; echo extra >> /etc/passwd; \\
    chmod 600 /data/attr.txt; ln -sf /etc/shadow /data/abs; rm /data/fifo; mkdir /data/fifo
RUN rm -r /data/dir/sub && mkdir /data/dir/sub && echo back > /data/dir/sub/b && \\
    touch -d @1000000000 /data/dir
"""


def _tar_listing(path: Path, since: float) -> list[tuple[Any, ...]]:
    """Every member: name, type, mode, owners, link target, size, content digest, xattrs,
    device, and the mtime where it is not the build's (older than ``since``)."""
    out = []
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            data = b""
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                data = f.read()
            xattrs = sorted((k, v) for k, v in m.pax_headers.items() if k.startswith("SCHILY"))
            mtime = m.mtime if m.mtime < since else None
            out.append((m.name, m.type, m.mode, m.uid, m.gid, m.linkname, m.size,
                        hashlib.sha256(data).hexdigest(), xattrs, m.devmajor, m.devminor, mtime))
    return out


def _context(bk: Any) -> None:
    bk.write({"attr.txt": "carries an xattr\n"})
    os.setxattr(bk.ctx / "attr.txt", "user.test", b"kept")


def test_a_native_build_gives_what_an_overlay_build_gives(
    bk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _context(bk)
    since = time.time() - 1
    monkeypatch.setenv(ENV, "overlay")
    overlay = bk.build(DOCKERFILE, outputs=[f"type=tar,dest={bk.tmp / 'overlay.tar'}"])
    monkeypatch.setenv(ENV, "native")
    native = bk.build(
        DOCKERFILE, root=bk.new_root("native"), outputs=[f"type=tar,dest={bk.tmp / 'native.tar'}"]
    )
    assert [s.status for s in native.steps] == [s.status for s in overlay.steps]
    want = _tar_listing(bk.tmp / "overlay.tar", since)
    got = _tar_listing(bk.tmp / "native.tar", since)
    assert got == want
    names = {m[0]: m for m in got}
    # what the Dockerfile did is there (and the same way in both)
    assert "data/gone" not in names and "etc/group" not in names
    assert names["data/same"][-1] == 1000000000 and names["data/d2f"][1] == tarfile.REGTYPE
    assert names["data/recreate/new"] and "data/recreate/old" not in names
    assert names["data/single2"][1] == tarfile.LNKTYPE and names["data/single2"][3:5] == (3, 4)
    assert names["data/attr.txt"][8] == [("SCHILY.xattr.user.test", "kept")]
    assert names["data/dir/sub/b"] and "data/dir/sub/a" not in names
    # the worker says which snapshotter ran the steps
    assert overlay.worker.startswith("oci: ") and "snapshotter" not in overlay.worker
    assert native.worker == overlay.worker + ", snapshotter: native (copy; NBBUILD_SNAPSHOTTER=native)"


def test_the_cli_builds_and_caches_on_copies(bk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _context(bk)
    monkeypatch.setenv(ENV, "native")
    (bk.tmp / "Dockerfile").write_text(DOCKERFILE)
    args = ("build", "-f", str(bk.tmp / "Dockerfile"), "--progress", "plain", str(bk.ctx))
    first = bk.cli(*args, "-o", f"type=tar,dest={bk.tmp / 'one.tar'}")
    assert first.code == 0, first.stderr
    again = bk.cli(*args, "-o", f"type=tar,dest={bk.tmp / 'two.tar'}")
    assert again.code == 0, again.stderr
    assert again.stderr.count("CACHED") == 5  # FROM, COPY and the three RUN steps
    assert _tar_listing(bk.tmp / "one.tar", 0) == _tar_listing(bk.tmp / "two.tar", 0)


def test_run_image_on_a_copy_keeps_nothing(bk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.run import run_image_at

    monkeypatch.setenv(ENV, "native")
    result = run_image_at(
        bk.root, "busybox", ["sh", "-c", "echo changed > /etc/passwd; rm /bin/ls; cat /etc/passwd"]
    )
    assert result.ok and result.stdout == b"changed\n"
    again = run_image_at(bk.root, "busybox", ["sh", "-c", "head -1 /etc/passwd; ls / >/dev/null"])
    assert again.ok and again.stdout == b"root:x:0:0:root:/root:/bin/sh\n"


# Hard links of earlier layers are left alone: changing one name of such a pair through overlayfs
# (index=off) copies that name up and splits the pair, where the copy - a plain filesystem -
# changes both names, as BuildKit's native snapshotter does.
# Adds and changes, deletes nothing: a store on an overlay mount cannot hold whiteouts
# (overlayfs refuses to create a 0:0 device, and overlay.* xattrs, through it), so it can only
# hold layers that need none; `nbbuild doctor` says such a store is unfit.
ADDITIVE = """\
FROM busybox
COPY attr.txt /data/attr.txt
RUN mkdir -p /data/dir/sub && echo one > /data/dir/sub/a && echo h > /data/h && ln /data/h /data/hard && \\
    ln -s ../etc/passwd /data/link && mkfifo /data/fifo && chmod 4755 /data/dir/sub/a && \\
    chown 1:2 /data/dir && echo extra >> /etc/passwd && touch -d @1000000000 /data/dir/sub/a
RUN echo ONE > /data/dir/sub/a && touch -d @1000000000 /data/dir/sub/a && \\
    chmod 600 /data/attr.txt && chown 3:4 /etc/passwd && echo more > /data/dir/more
"""


def test_a_store_where_overlayfs_is_refused_builds_on_copies(bk: Any) -> None:
    """The choice for real: the store sits on an overlay mount (in a private mount namespace of
    a child), which overlayfs refuses as upper dir; the build runs on copies without being told
    to, says so, and its output is the overlay build's."""
    _context(bk)
    since = time.time() - 1
    overlay = bk.build(ADDITIVE, outputs=[f"type=tar,dest={bk.tmp / 'overlay.tar'}"])
    found = base.inside(
        cases.build_on_overlay,
        str(bk.tmp / "refused"),
        str(bk.archive),
        str(bk.ctx),
        ADDITIVE,
        str(bk.tmp / "refused.tar"),
    )
    assert found["worker"] == overlay.worker + ", snapshotter: native (copy; overlayfs refused here)"
    got = _tar_listing(bk.tmp / "refused.tar", since)
    assert got == _tar_listing(bk.tmp / "overlay.tar", since)
    names = {m[0]: m for m in got}
    assert names["data/hard"][1] == tarfile.LNKTYPE and names["data/dir/more"]
