"""Reading layers (LayerTree) and writing the upper layer (Upper), checked against overlayfs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.context.tree import ContextTree
from engine.fileops.tree import DirTree, EmptyTree, LayerTree, as_read_tree
from engine.fileops.upper import Upper
from engine.snapshot.layers import LayerView

from .conftest import Runner, copy, kernel_dump, tree_dump, write


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


@pytest.fixture
def chain(tmp_path: Path) -> list[Path]:
    """Three layers exercising every overlayfs rule."""
    l1 = write(
        tmp_path / "l1",
        {
            "keep": "1",
            "gone": "1",
            "dir/a": "1",
            "dir/b": "1",
            "opq/old": "1",
            "was_dir/x": "1",
            "was_file": "1",
        },
    )
    l2 = write(
        tmp_path / "l2", {"dir/c": "2", "opq/new": "2", "was_dir": "now a file", "keep": "2"}
    )
    whiteout(l2 / "gone")
    whiteout(l2 / "dir" / "a")
    os.setxattr(l2 / "opq", "trusted.overlay.opaque", b"y")
    (l2 / "was_file").mkdir()
    (l2 / "was_file" / "inside").write_text("2")
    l3 = write(tmp_path / "l3", {"dir/d": "3"})
    os.symlink("dir", l3 / "link")
    return [l1, l2, l3]


def test_layer_tree_matches_the_kernel(chain: list[Path], tmp_path: Path) -> None:
    tree = LayerTree(chain)
    dump = tree_dump(tree)
    assert dump == kernel_dump(chain, tmp_path / "k")
    assert dump["/keep"][4] == "2"
    assert "/gone" not in dump and "/dir/a" not in dump
    assert {p for p in dump if p.startswith("/dir/")} == {"/dir/b", "/dir/c", "/dir/d"}
    assert {p for p in dump if p.startswith("/opq/")} == {"/opq/new"}
    assert dump["/was_dir"][0] == "file" and "/was_dir/x" not in dump
    assert dump["/was_file"][0] == "dir" and dump["/was_file/inside"][4] == "2"
    assert tree.resolve("/link/d", True).rel == "dir/d"
    assert tree.xattrs("opq") == {}  # overlayfs's markers are not content


def test_as_read_tree_accepts_a_layer_view(chain: list[Path]) -> None:
    tree = as_read_tree(LayerView(chain))
    assert isinstance(tree, LayerTree) and tree.layers == chain
    plain = DirTree(chain[0])
    assert as_read_tree(plain) is plain and plain.normalize_owner


def test_empty_tree() -> None:
    tree = EmptyTree()
    assert tree.lstat("") is not None and tree.lstat("x") is None and tree.children("") == []
    assert tree.resolve("/a/../b", True).rel == "b"


def test_copy_into_lower_dir_copies_it_up(runner: Runner, tmp_path: Path) -> None:
    base = write(runner.new_dir("base"), {"etc/os-release": "base", "etc/sub/deep": "d"})
    os.chmod(base / "etc", 0o751)
    os.chown(base / "etc", 3, 4)
    os.setxattr(base / "etc", "user.label", b"lower")
    os.utime(base / "etc", ns=(111, 222_000_000_000))
    os.utime(base / "etc" / "sub", ns=(333, 444_000_000_000))
    ctx = ContextTree(write(tmp_path / "ctx", {"f": "new"}))
    r = runner.run(copy("/f", "/etc/sub/f"), dest=[base], sources={1: ctx})
    up = os.lstat(r.out / "etc")
    assert stat.S_IMODE(up.st_mode) == 0o751 and (up.st_uid, up.st_gid) == (3, 4)
    assert os.getxattr(r.out / "etc", "user.label") == b"lower"
    assert up.st_mtime_ns == 222_000_000_000  # parent times survive the copy-up
    # /etc/sub was written into: its mtime is now, as through overlayfs.
    assert os.lstat(r.out / "etc" / "sub").st_mtime_ns != 444_000_000_000
    # Only what changed is in the layer; the rest still comes from below.
    assert sorted(p.name for p in (r.out / "etc").iterdir()) == ["sub"]
    assert sorted(p.name for p in (r.out / "etc" / "sub").iterdir()) == ["f"]
    assert r.read("/etc/os-release") == "base" and r.read("/etc/sub/deep") == "d"
    assert not is_opaque(r.out / "etc")


def is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque") == b"y"
    except OSError:
        return False


def test_out_root_takes_the_merged_root_metadata(runner: Runner, tmp_path: Path) -> None:
    base = runner.new_dir("base")
    os.chmod(base, 0o755)
    ctx = ContextTree(write(tmp_path / "ctx", {"f": "x"}))
    os.chmod(runner.tmp, 0o755)
    r = runner.run(copy("/f", "/f"), dest=[base], sources={1: ctx})
    assert stat.S_IMODE(os.lstat(r.out).st_mode) == 0o755
    scratch = runner.run(copy("/f", "/f"), sources={1: ctx})
    st = os.lstat(scratch.out)
    assert stat.S_IMODE(st.st_mode) == 0o755 and (st.st_uid, st.st_gid) == (0, 0)


def test_upper_remove_and_recreate(tmp_path: Path) -> None:
    lower = write(tmp_path / "lower", {"d/x": "x", "f": "f", "only/y": "y"})
    out = tmp_path / "out"
    out.mkdir()
    upper = Upper(out, [lower])
    upper.init_root()
    upper.remove("f")
    assert stat.S_ISCHR(os.lstat(out / "f").st_mode) and upper.lstat("f") is None
    upper.remove("d")
    upper.mkdir("d", 0o700)
    assert is_opaque(out / "d") and upper.lstat("d/x") is None
    fd = upper.create_file("f")
    os.close(fd)
    assert stat.S_ISREG(os.lstat(out / "f").st_mode)
    # Created only in out, then removed: no whiteout needed.
    upper.mkdir("new", 0o755)
    upper.remove("new")
    assert not os.path.lexists(out / "new")
    # A chmod copies an untouched lower entry up.
    upper.chmod("only/y", 0o600)
    assert (out / "only" / "y").read_text() == "y"
    assert stat.S_IMODE(os.lstat(out / "only" / "y").st_mode) == 0o600
    assert tree_dump(LayerTree([lower, out])) == kernel_dump([lower, out], tmp_path / "k")


def test_hard_link_to_a_lower_file_copies_it_up(runner: Runner, tmp_path: Path) -> None:
    base = write(runner.new_dir("base"), {"lib/real.so": "elf"})
    from .test_security import make_tar, tinfo

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    import tarfile

    (ctx / "l.tar").write_bytes(
        make_tar([(tinfo("lib/alias.so", tarfile.LNKTYPE, link="lib/real.so"), None)])
    )
    r = runner.run(
        copy("/l.tar", "/", attempt_unpack=True), dest=[base], sources={1: ContextTree(ctx)}
    )
    a, b = os.lstat(r.out / "lib" / "real.so"), os.lstat(r.out / "lib" / "alias.so")
    assert a.st_ino == b.st_ino and r.read("/lib/alias.so") == "elf"
    assert (base / "lib" / "real.so").stat().st_nlink == 1  # the lower file is untouched


def test_download_root_is_a_snapshot_root(runner: Runner, tmp_path: Path) -> None:
    # ADD <git repo> /dest: the checkout's temporary directory (0700) becomes /dest as 0755.
    checkout = write(tmp_path / "checkout", {"README": "r", "src/main.c": "int main;"})
    os.chmod(checkout, 0o700)
    os.chown(checkout / "README", 1000, 1000)
    r = runner.run(
        copy("/", "/dest", wildcard=False, follow_symlinks=False, dir_copy_contents=False),
        sources={1: DirTree(checkout)},
    )
    dump = r.dump()
    assert dump["/dest"] == ("dir", 0o755, 0, 0, "")
    assert dump["/dest/README"] == ("file", 0o644, 0, 0, "r")


def test_sources_may_be_layer_views(runner: Runner, chain: list[Path]) -> None:
    # The solver hands results over as LayerViews: they are read as LayerTrees.
    r = runner.run(copy("/dir", "/copied/"), sources={1: LayerView(chain)})  # type: ignore[dict-item]
    assert {p for p in r.dump() if p.startswith("/copied/")} == {
        "/copied/b",
        "/copied/c",
        "/copied/d",
    }


def test_user_namespace_opaque_marker(tmp_path: Path) -> None:
    lower = write(tmp_path / "lower", {"d/old": "x"})
    out = tmp_path / "out"
    out.mkdir()
    upper = Upper(out, [lower], opaque_xattr="user.overlay.opaque")
    upper.remove("d")
    upper.mkdir("d", 0o755)
    assert os.getxattr(out / "d", "user.overlay.opaque") == b"y"
    assert LayerTree([lower, out]).children("d") == []


def test_output_directory_must_be_empty(tmp_path: Path) -> None:
    from engine.fileops import FileOpError, apply_file_op
    from engine.graph.ops import FileOp, MkdirAction

    out = write(tmp_path / "out", {"leftover": "x"})
    with pytest.raises(FileOpError, match="is not empty"):
        apply_file_op(
            FileOp(actions=(MkdirAction("/x"),), dest_input=-1), dest=None, sources={}, out=out
        )
