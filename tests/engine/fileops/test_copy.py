"""COPY/ADD copy actions: BuildKit's (fsutil's) destination, directory, wildcard and filter rules."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from engine.context.dockerignore import IgnoreRules
from engine.context.tree import ContextTree
from engine.fileops import FileOpError
from engine.fileops.tree import DirTree, LayerTree

from .conftest import Runner, copy, write


@pytest.fixture
def ctx(tmp_path: Path) -> ContextTree:
    root = write(
        tmp_path / "ctx",
        {
            "a.txt": "A",
            "b.txt": "B",
            "c.log": "C",
            "dir/x": "X",
            "dir/sub/y": "Y",
            "dir/sub/z.log": "Z",
            "files/foo.go": "foo.go-contents",
        },
    )
    os.chmod(root / "dir", 0o750)
    os.chmod(root / "dir" / "sub", 0o700)
    return ContextTree(root)


def base_layer(runner: Runner, files: dict[str, str | None]) -> Path:
    return write(runner.new_dir("base"), files)


# -- destinations ----------------------------------------------------------------------


def test_file_to_new_path_and_to_dir_with_slash(runner: Runner, ctx: ContextTree) -> None:
    r = runner.run([copy("/a.txt", "/x"), copy("/b.txt", "/d/")], sources={1: ctx})
    assert r.entry("/x") == ("file", 0o644, 0, 0, "A")
    assert r.entry("/d") == ("dir", 0o755, 0, 0, "")
    assert r.entry("/d/b.txt") == ("file", 0o644, 0, 0, "B")


def test_file_into_existing_dir_without_slash(runner: Runner, ctx: ContextTree) -> None:
    base = base_layer(runner, {"target/": None})
    r = runner.run(copy("/a.txt", "/target"), dest=[base], sources={1: ctx})
    assert r.read("/target/a.txt") == "A"


def test_empty_and_dot_destinations(runner: Runner, ctx: ContextTree) -> None:
    # testEmptyDestDir / testCopyLinkDotDestDir: the destination is the working directory.
    base = base_layer(runner, {"var/www/": None})
    r = runner.run(
        [copy("/a.txt", "/var/www/."), copy("/b.txt", "/var/www/")], dest=[base], sources={1: ctx}
    )
    assert r.read("/var/www/a.txt") == "A" and r.read("/var/www/b.txt") == "B"


def test_dir_copies_its_contents(runner: Runner, ctx: ContextTree) -> None:
    r = runner.run(copy("/dir", "/d"), sources={1: ctx})
    dump = r.dump()
    assert dump["/d/x"] == ("file", 0o644, 0, 0, "X")
    assert dump["/d/sub"] == ("dir", 0o700, 0, 0, "")
    assert dump["/d/sub/y"][4] == "Y"
    # The destination itself is created (0755, root), not copied from the source's 0750.
    assert dump["/d"] == ("dir", 0o755, 0, 0, "")
    assert "/d/dir" not in dump


def test_dir_into_existing_dir_merges_and_keeps_dest_metadata(
    runner: Runner, ctx: ContextTree
) -> None:
    base = base_layer(runner, {"d/old": "old"})
    os.chown(base / "d", 500, 600)
    os.chmod(base / "d", 0o711)
    r = runner.run(copy("/dir", "/d"), dest=[base], sources={1: ctx})
    dump = r.dump()
    assert dump["/d"] == ("dir", 0o711, 500, 600, "")
    assert dump["/d/old"][4] == "old" and dump["/d/x"][4] == "X"
    # The existing destination takes the source directory's times (fsutil restores them).
    src_mtime = os.lstat(ctx.root / "dir").st_mtime_ns
    assert r.lstat("/d").st_mtime_ns == src_mtime  # type: ignore[union-attr]


def test_dir_itself_without_dir_copy_contents(runner: Runner, ctx: ContextTree) -> None:
    # ADD <git repo> / heredoc style actions: the directory is placed inside an existing dest.
    base = base_layer(runner, {"existing/": None})
    r = runner.run(
        [
            copy("/dir", "/existing", dir_copy_contents=False, wildcard=False),
            copy("/dir", "/new", dir_copy_contents=False, wildcard=False),
        ],
        dest=[base],
        sources={1: ctx},
    )
    dump = r.dump()
    assert dump["/existing/dir/x"][4] == "X"
    assert dump["/existing/dir"][1] == 0o750  # the directory itself, with its mode
    assert dump["/new"][1] == 0o750 and dump["/new/sub/y"][4] == "Y"


def test_multiple_sources_need_a_dir_destination(runner: Runner, ctx: ContextTree) -> None:
    # BuildKit does not reject `COPY a b /x`: each source is copied to /x in turn.
    r = runner.run(copy(["/a.txt", "/b.txt"], "/x"), sources={1: ctx})
    assert r.entry("/x") == ("file", 0o644, 0, 0, "B")
    r = runner.run(copy(["/a.txt", "/b.txt"], "/x/"), sources={1: ctx})
    assert r.read("/x/a.txt") == "A" and r.read("/x/b.txt") == "B"


def test_copy_override_files(runner: Runner, ctx: ContextTree) -> None:
    # testCopyOverrideFiles: the same copies twice, then a dir onto its own files.
    first = runner.run(
        [
            copy("/dir", "/sub"),
            copy("/dir", "/sub"),
            copy("/files/foo.go", "/dest/foo.go"),
            copy("/files/foo.go", "/dest/foo.go"),
        ],
        sources={1: ctx},
    )
    second = runner.run(copy("/files", "/dest"), dest=first.layers, sources={1: ctx})
    assert second.read("/sub/sub/y") == "Y"
    assert second.read("/dest/foo.go") == "foo.go-contents"


def test_file_never_replaces_directory(runner: Runner, ctx: ContextTree) -> None:
    base = base_layer(runner, {"d/a.txt/inner": "i"})
    with pytest.raises(FileOpError, match=r"cannot replace to directory /d/a\.txt with file"):
        runner.run(copy("/a.txt", "/d/"), dest=[base], sources={1: ctx})


def test_always_replace_existing_replaces_dir_with_file(runner: Runner, ctx: ContextTree) -> None:
    base = base_layer(runner, {"d/a.txt/inner": "i", "d/keep": "k"})
    r = runner.run(
        copy("/a.txt", "/d/", always_replace_existing=True), dest=[base], sources={1: ctx}
    )
    assert r.entry("/d/a.txt") == ("file", 0o644, 0, 0, "A")
    assert not r.exists("/d/a.txt/inner") and r.read("/d/keep") == "k"


def test_dir_onto_lower_file_needs_always_replace(runner: Runner, ctx: ContextTree) -> None:
    base = base_layer(runner, {"d/sub": "a file"})
    with pytest.raises(FileOpError, match="cannot copy to non-directory: /d/sub"):
        runner.run(copy("/dir", "/d"), dest=[base], sources={1: ctx})
    r = runner.run(copy("/dir", "/d", always_replace_existing=True), dest=[base], sources={1: ctx})
    assert r.entry("/d/sub")[0] == "dir"  # type: ignore[index]
    assert r.read("/d/sub/y") == "Y"


def test_dir_replacing_lower_dir_is_opaque(runner: Runner, tmp_path: Path) -> None:
    # A symlink from the context replaces a lower directory, then a directory replaces the
    # symlink: the lower directory's old contents must not come back.
    base = base_layer(runner, {"d/stale": "old"})
    link_ctx = tmp_path / "c3"
    link_ctx.mkdir()
    os.symlink("elsewhere", link_ctx / "d")
    mid = runner.run(
        copy("/", "/", always_replace_existing=True),
        dest=[base],
        sources={1: ContextTree(link_ctx)},
    )
    assert mid.entry("/d") == ("link", 0o777, 0, 0, "elsewhere")
    assert stat.S_ISCHR(os.lstat(mid.out / "d").st_mode) is False  # the link replaced it in out
    src = ContextTree(write(tmp_path / "c2", {"d/fresh": "new"}))
    r = runner.run(copy("/", "/", always_replace_existing=True), dest=mid.layers, sources={1: src})
    dump = r.dump()
    assert dump["/d"][0] == "dir" and dump["/d/fresh"][4] == "new"
    assert "/d/stale" not in dump
    assert os.getxattr(r.out / "d", "trusted.overlay.opaque") == b"y"
    # Within one op: remove (whiteout) and re-create as a directory.
    r = runner.run(
        [
            copy("/", "/", always_replace_existing=True, index=1),
            copy("/", "/", always_replace_existing=True, index=2),
        ],
        dest=[base],
        sources={1: ContextTree(link_ctx), 2: src},
    )
    assert set(r.dump()) == {"/", "/d", "/d/fresh"}


def test_missing_source_error(runner: Runner, ctx: ContextTree) -> None:
    with pytest.raises(FileOpError, match="lstat /nosuch: no such file or directory"):
        runner.run(copy("/nosuch", "/"), sources={1: ctx})
    with pytest.raises(FileOpError, match="lstat /nosuch: no such file or directory"):
        runner.run(copy("/nosuch", "/", wildcard=False), sources={1: ctx})


def test_create_dest_path_false_needs_parent(runner: Runner, ctx: ContextTree) -> None:
    with pytest.raises(FileOpError, match=r"failed to stat /no/such/x: lstat /no/such"):
        runner.run(copy("/a.txt", "/no/such/x", create_dest_path=False), sources={1: ctx})
    r = runner.run(copy("/a.txt", "/x", create_dest_path=False), sources={1: ctx})
    assert r.read("/x") == "A"


def test_dockerignore_applies(runner: Runner, tmp_path: Path) -> None:
    root = write(tmp_path / "ic", {"keep": "k", "secret.env": "s", "logs/a.log": "l"})
    tree = ContextTree(root, IgnoreRules.from_text("*.env\nlogs\n"))
    r = runner.run(copy("/", "/app/"), sources={1: tree})
    assert set(r.dump()) == {"/", "/app", "/app/keep"}
    with pytest.raises(FileOpError, match=r"lstat /secret\.env"):
        runner.run(copy("/secret.env", "/"), sources={1: tree})


# -- wildcards --------------------------------------------------------------------------


def test_wildcard_matches_in_name_order(runner: Runner, ctx: ContextTree) -> None:
    r = runner.run(copy("/*.txt", "/d/"), sources={1: ctx})
    assert {p for p in r.dump() if p.startswith("/d/")} == {"/d/a.txt", "/d/b.txt"}


def test_wildcard_directory_match_copies_contents(runner: Runner, ctx: ContextTree) -> None:
    r = runner.run(copy("/di?", "/out/"), sources={1: ctx})
    assert r.read("/out/x") == "X" and r.read("/out/sub/y") == "Y"
    r = runner.run(copy("/dir/*/y", "/y1/"), sources={1: ctx})
    assert r.read("/y1/y") == "Y"


def test_wildcard_no_match(runner: Runner, ctx: ContextTree) -> None:
    # testEmptyWildcard: COPY foo nomatch* / succeeds with foo only.
    r = runner.run(copy(["/a.txt", "/nomatch*"], "/"), sources={1: ctx})
    assert r.read("/a.txt") == "A"
    with pytest.raises(FileOpError, match=r"/nomatch\* not found"):
        runner.run(copy("/nomatch*", "/", allow_empty_wildcard=False), sources={1: ctx})
    # The directory before the wildcard must exist.
    with pytest.raises(FileOpError, match="lstat /nodir: no such file or directory"):
        runner.run(copy("/nodir/*.txt", "/"), sources={1: ctx})


def test_wildcard_through_symlinks(runner: Runner, tmp_path: Path) -> None:
    # testCopySymlinks: each match is followed, and named after the match.
    root = write(
        tmp_path / "sl",
        {"bar": "bar-contents", "sub/lfile": "lfile-contents", "sub/subfile": "subfile-contents"},
    )
    os.symlink("bar", root / "foo")
    os.symlink("subfile", root / "sub" / "l0")
    os.symlink("second", root / "sub" / "l1")
    os.symlink("baz", root / "sub" / "second")
    (root / "sub" / "baz").write_text("baz-contents")
    tree = ContextTree(root)
    r = runner.run([copy("/foo", "/"), copy("/sub/l*", "/alllinks/")], sources={1: tree})
    assert r.entry("/foo")[:1] == ("file",)  # type: ignore[index]
    assert r.read("/foo") == "bar-contents"
    assert r.read("/alllinks/l0") == "subfile-contents"
    assert r.read("/alllinks/lfile") == "lfile-contents"
    assert r.read("/alllinks/l1") == "baz-contents"
    assert r.entry("/alllinks/l1")[0] == "file"  # type: ignore[index]


def test_wildcard_rename_changes_destination_name(runner: Runner, tmp_path: Path) -> None:
    root = write(tmp_path / "w", {"file1": "x"})
    r1 = runner.run(copy("/file*", "/files/"), sources={1: ContextTree(root)})
    (root / "file1").rename(root / "file2")
    r2 = runner.run(copy("/file*", "/files/"), sources={1: ContextTree(root)})
    assert r1.exists("/files/file1") and r2.exists("/files/file2")


# -- include / exclude / --parents -------------------------------------------------------


def test_exclude_patterns(runner: Runner, ctx: ContextTree) -> None:
    r = runner.run(copy("/", "/app/", exclude=("*.log", "dir/sub")), sources={1: ctx})
    paths = set(r.dump())
    assert "/app/a.txt" in paths and "/app/dir/x" in paths
    assert "/app/c.log" not in paths and "/app/dir/sub" not in paths


def test_exclude_with_reinclusion(runner: Runner, ctx: ContextTree) -> None:
    r = runner.run(copy("/dir", "/app/", exclude=("sub", "!sub/y")), sources={1: ctx})
    paths = set(r.dump())
    assert "/app/sub/y" in paths and "/app/sub/z.log" not in paths
    # The re-included file's parent is created from the source directory (mode 0700).
    assert r.entry("/app/sub")[1] == 0o700  # type: ignore[index]


def test_include_patterns_create_parents(runner: Runner, ctx: ContextTree) -> None:
    r = runner.run(copy("/", "/out/", include=("dir/sub/*.log",)), sources={1: ctx})
    assert set(r.dump()) == {"/", "/out", "/out/dir", "/out/dir/sub", "/out/dir/sub/z.log"}
    assert r.entry("/out/dir")[1] == 0o750  # type: ignore[index]


def test_parents_with_pivot(runner: Runner, tmp_path: Path) -> None:
    # COPY --parents a/./b/c.txt /out/  ->  /out/b/c.txt
    root = write(tmp_path / "p", {"a/b/c.txt": "c", "a/b/other": "o", "x/y/z.txt": "z"})
    tree = ContextTree(root)
    r = runner.run(copy("/a", "/out/", include=("b/c.txt",), parents=True), sources={1: tree})
    assert set(r.dump()) == {"/", "/out", "/out/b", "/out/b/c.txt"}
    # Without "/./": the whole path is kept.
    r = runner.run(copy("/", "/out/", include=("x/y/z.txt",), parents=True), sources={1: tree})
    assert r.read("/out/x/y/z.txt") == "z"
    assert "/out/a" not in r.dump()
    # Wildcards in the pattern.
    r = runner.run(copy("/", "/out/", include=("*/b/*.txt",), parents=True), sources={1: tree})
    assert set(r.dump()) == {"/", "/out", "/out/a", "/out/a/b", "/out/a/b/c.txt"}


def test_parents_required_path(runner: Runner, tmp_path: Path) -> None:
    root = write(tmp_path / "p", {"a/b/c.txt": "c"})
    with pytest.raises(FileOpError, match=r'"/a/b/nope\.txt": not found'):
        runner.run(
            copy("/a", "/out/", include=("b/nope.txt",), parents=True),
            sources={1: ContextTree(root)},
        )


# -- owners, modes, times -----------------------------------------------------------------


def test_context_owner_is_root_stage_owner_is_kept(runner: Runner, tmp_path: Path) -> None:
    root = write(tmp_path / "o", {"f": "f", "d/g": "g"})
    os.chown(root / "f", 1234, 5678)
    os.chown(root / "d", 42, 43)
    r = runner.run(copy("/", "/c/"), sources={1: ContextTree(root)})
    assert r.entry("/c/f")[2:4] == (0, 0)  # type: ignore[index]
    assert r.entry("/c/d")[2:4] == (0, 0)  # type: ignore[index]
    stage = LayerTree([root])
    r = runner.run(copy("/", "/s/"), sources={1: stage})
    assert r.entry("/s/f")[2:4] == (1234, 5678)  # type: ignore[index]
    assert r.entry("/s/d")[2:4] == (42, 43)  # type: ignore[index]
    # Downloads (plain directories) are owned by root too.
    r = runner.run(copy("/f", "/h"), sources={1: DirTree(root)})
    assert r.entry("/h")[2:4] == (0, 0)  # type: ignore[index]


def test_copy_chown_existing_dir(runner: Runner, tmp_path: Path) -> None:
    # testCopyChownExistingDir, with and without --chown.
    src = write(tmp_path / "src", {"file": "", "dir/subdir/nestedfile": ""})
    os.chown(src / "file", 100, 200)
    os.chown(src / "dir", 100, 200)
    os.chown(src / "dir" / "subdir", 101, 201)
    os.chown(src / "dir" / "subdir" / "nestedfile", 102, 202)
    base = base_layer(runner, {"existingdir/existingsubdir/": None, "existingdir/existingfile": ""})
    os.chown(base / "existingdir", 500, 600)
    os.chown(base / "existingdir" / "existingsubdir", 501, 601)
    os.chown(base / "existingdir" / "existingfile", 501, 601)
    stage = LayerTree([src])

    def owners(chown: object) -> dict[str, tuple[int, int]]:
        r = runner.run(
            [
                copy("/file", "/", chown=chown),
                copy("/dir", "/dir", chown=chown),
                copy("/dir/.", "/existingdir", chown=chown),
            ],
            dest=[base],
            sources={1: stage},
        )
        return {p: (e[2], e[3]) for p, e in r.dump().items()}

    from engine.graph.ops import ChownSpec

    got = owners(None)
    assert got["/file"] == (100, 200)
    assert got["/dir"] == (0, 0)
    assert got["/dir/subdir"] == (101, 201)
    assert got["/dir/subdir/nestedfile"] == (102, 202)
    assert got["/existingdir"] == (500, 600)
    assert got["/existingdir/existingsubdir"] == (501, 601)
    assert got["/existingdir/existingfile"] == (501, 601)
    assert got["/existingdir/subdir"] == (101, 201)
    assert got["/existingdir/subdir/nestedfile"] == (102, 202)

    got = owners(ChownSpec("300", "400"))
    for path in ("/file", "/dir", "/dir/subdir", "/dir/subdir/nestedfile"):
        assert got[path] == (300, 400), path
    assert got["/existingdir"] == (500, 600)
    assert got["/existingdir/existingsubdir"] == (501, 601)
    assert got["/existingdir/existingfile"] == (501, 601)
    assert got["/existingdir/subdir"] == (300, 400)
    assert got["/existingdir/subdir/nestedfile"] == (300, 400)


def test_copy_chmod_octal(runner: Runner, tmp_path: Path) -> None:
    # testCopyChmod: files, a created parent, and a created grandparent take the mode.
    root = write(tmp_path / "m", {"foo": "foo-contents", "bar": "bar-contents"})
    os.chmod(root / "foo", 0o600)
    os.chmod(root / "bar", 0o700)
    tree = ContextTree(root)
    r = runner.run(
        [
            copy("/foo", "/", chmod="0644"),
            copy("/bar", "/baz", chmod="777"),
            copy("/foo", "/foobis", chmod="0"),
            copy("/foo", "/parent/foo", chmod="777"),
            copy("/foo", "/parent/sub/foo", chmod="770"),
            copy("/foo", "/footer", chmod="755"),
        ],
        sources={1: tree},
    )
    modes = {p: e[1] for p, e in r.dump().items()}
    assert modes["/foo"] == 0o644
    assert modes["/baz"] == 0o777
    assert modes["/foobis"] == 0o000
    assert modes["/parent"] == 0o777
    assert modes["/parent/sub"] == 0o770
    assert modes["/footer"] == 0o755


def test_copy_chmod_applies_to_directories_and_special_bits(
    runner: Runner, ctx: ContextTree
) -> None:
    r = runner.run(copy("/dir", "/d/", chmod="4750"), sources={1: ctx})
    dump = r.dump()
    assert dump["/d/sub"][1] == 0o4750 and dump["/d/x"][1] == 0o4750
    assert dump["/d"][1] == 0o750  # created by MkdirAll: permission bits only


def test_copy_chmod_symbolic(runner: Runner, tmp_path: Path) -> None:
    # testChmodNonOctal: X gives execute to directories and already-executable files.
    root = write(tmp_path / "s", {"plain": "p", "tool": "t", "d/inner": "i"})
    os.chmod(root / "plain", 0o600)
    os.chmod(root / "tool", 0o700)
    os.chmod(root / "d", 0o700)
    os.chmod(root / "d" / "inner", 0o640)
    r = runner.run(copy("/", "/o/", chmod="u=rwX,go=rX"), sources={1: ContextTree(root)})
    modes = {p: e[1] for p, e in r.dump().items()}
    assert modes["/o/plain"] == 0o644
    assert modes["/o/tool"] == 0o755
    assert modes["/o/d"] == 0o755
    assert modes["/o/d/inner"] == 0o644
    assert (
        modes["/o"] == 0o755
    )  # created with the default mode (symbolic modes only apply to copies)
    r = runner.run(copy("/plain", "/p", chmod="+x"), sources={1: ContextTree(root)})
    assert r.entry("/p")[1] == 0o711  # type: ignore[index]


def test_copied_entries_keep_times_created_dirs_take_created_ns(
    runner: Runner, ctx: ContextTree
) -> None:
    os.utime(ctx.root / "dir" / "x", ns=(1_000_000_000, 2_000_000_000))
    os.utime(ctx.root / "dir" / "sub", ns=(3_000_000_000, 4_000_000_000))
    before = time.time_ns()
    r = runner.run(copy("/dir", "/new/deep/"), sources={1: ctx})
    assert r.lstat("/new/deep/x").st_mtime_ns == 2_000_000_000  # type: ignore[union-attr]
    assert r.lstat("/new/deep/sub").st_mtime_ns == 4_000_000_000  # type: ignore[union-attr]
    assert r.lstat("/new").st_mtime_ns >= before - 10_000_000  # type: ignore[union-attr]
    fixed = 1_700_000_000_000_000_000
    r = runner.run(copy("/dir", "/new/deep/"), sources={1: ctx}, created_ns=fixed)
    assert r.lstat("/new").st_mtime_ns == fixed  # type: ignore[union-attr]
    assert r.lstat("/new/deep/x").st_mtime_ns == 2_000_000_000  # type: ignore[union-attr]


# -- kinds of entries --------------------------------------------------------------------


def test_symlinks_inside_dirs_are_copied_as_links(runner: Runner, tmp_path: Path) -> None:
    root = write(tmp_path / "l", {"d/target": "t"})
    os.symlink("target", root / "d" / "rel")
    os.symlink("/etc/passwd", root / "d" / "abs")
    r = runner.run(copy("/d", "/c"), sources={1: ContextTree(root)})
    assert r.entry("/c/rel") == ("link", 0o777, 0, 0, "target")
    assert r.entry("/c/abs") == ("link", 0o777, 0, 0, "/etc/passwd")


def test_follow_symlinks_flag(runner: Runner, tmp_path: Path) -> None:
    root = write(tmp_path / "f", {"real": "data"})
    os.symlink("real", root / "link")
    tree = ContextTree(root)
    r = runner.run(
        [copy("/link", "/followed"), copy("/link", "/kept", follow_symlinks=False)],
        sources={1: tree},
    )
    assert r.entry("/followed") == ("file", 0o644, 0, 0, "data")
    assert r.entry("/kept") == ("link", 0o777, 0, 0, "real")


def test_hardlinks_are_kept(runner: Runner, tmp_path: Path) -> None:
    root = write(tmp_path / "h", {"d/one": "same inode"})
    os.link(root / "d" / "one", root / "d" / "two")
    r = runner.run(copy("/d", "/h/"), sources={1: ContextTree(root)})
    one = os.lstat(r.out / "h" / "one")
    two = os.lstat(r.out / "h" / "two")
    assert (one.st_ino, one.st_nlink) == (two.st_ino, 2)


def test_socket_becomes_file_fifo_stays_fifo(runner: Runner, tmp_path: Path) -> None:
    import socket

    root = tmp_path / "sk"
    root.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "socket.sock"))
    os.mkfifo(root / "pipe", 0o640)
    try:
        r = runner.run(copy("/", "/"), sources={1: ContextTree(root)})
    finally:
        sock.close()
    sock_entry = r.entry("/socket.sock")
    assert sock_entry is not None and sock_entry[0] == "file" and sock_entry[4] == ""
    assert r.entry("/pipe") == ("fifo", 0o640, 0, 0, "")


def test_device_nodes_are_copied(runner: Runner, tmp_path: Path) -> None:
    root = tmp_path / "dev"
    root.mkdir()
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    r = runner.run(copy("/", "/dev/"), sources={1: LayerTree([root])})
    st = r.lstat("/dev/null")
    assert st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_xattrs_copied_overlay_markers_never(runner: Runner, tmp_path: Path) -> None:
    lower = write(tmp_path / "L", {"d/old": "old"})
    upper = write(tmp_path / "U", {"d/new": "new"})
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")  # d is opaque in the stage
    os.setxattr(upper / "d" / "new", "user.note", b"hello")
    stage = LayerTree([lower, upper])
    base = base_layer(runner, {"copy/keep": "keep"})
    r = runner.run(copy("/d", "/copy"), dest=[base], sources={1: stage})
    assert os.getxattr(r.out / "copy" / "new", "user.note") == b"hello"
    with pytest.raises(OSError):
        os.getxattr(r.out / "copy", "trusted.overlay.opaque")
    assert r.read("/copy/keep") == "keep"  # the destination directory was not made opaque
    assert not r.exists("/copy/old")  # the stage's own opaque dir hid its lower "old"


def test_copy_from_dest_input_reads_the_original(runner: Runner, tmp_path: Path) -> None:
    base = base_layer(runner, {"src/f": "original"})
    from engine.graph.ops import CopyAction, MkfileAction

    r = runner.run(
        [MkfileAction("/src/f", "changed"), CopyAction(src_input=0, src=("/src",), dest="/dst")],
        dest=[base],
    )
    assert r.read("/src/f") == "changed"
    assert r.read("/dst/f") == "original"
