"""WORKDIR's mkdir action and inline files' mkfile action."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from engine.fileops import FileOpError
from engine.graph.ops import ChownSpec, MkdirAction, MkfileAction

from .conftest import Runner, write


def test_mkdir_with_parents(runner: Runner) -> None:
    r = runner.run(MkdirAction("/a/b/c", mode=0o750))
    dump = r.dump()
    assert dump["/a"] == ("dir", 0o750, 0, 0, "")
    assert dump["/a/b/c"] == ("dir", 0o750, 0, 0, "")


def test_mkdir_keeps_existing_directories(runner: Runner) -> None:
    base = write(runner.new_dir("base"), {"app/old": "x"})
    os.chmod(base / "app", 0o700)
    os.chown(base / "app", 5, 6)
    r = runner.run(MkdirAction("/app/new", chown=ChownSpec("9")), dest=[base])
    dump = r.dump()
    assert dump["/app"] == ("dir", 0o700, 5, 6, "")
    assert dump["/app/new"] == ("dir", 0o755, 9, 9, "")
    assert dump["/app/old"][4] == "x"


def test_mkdir_parent_must_be_a_directory(runner: Runner) -> None:
    base = write(runner.new_dir("base"), {"file": "x"})
    with pytest.raises(FileOpError, match="mkdir /file: not a directory"):
        runner.run(MkdirAction("/file/sub"), dest=[base])
    with pytest.raises(FileOpError, match="mkdir /file: not a directory"):
        runner.run(MkdirAction("/file"), dest=[base])


def test_mkdir_without_parents(runner: Runner) -> None:
    base = write(runner.new_dir("base"), {"file": "x", "d/": None})
    r = runner.run(
        [
            MkdirAction("/d/new", make_parents=False, mode=0o711),
            MkdirAction("/file", make_parents=False),  # exists (as a file): not an error
        ],
        dest=[base],
    )
    assert r.entry("/d/new") == ("dir", 0o711, 0, 0, "")
    assert r.entry("/file") == ("file", 0o644, 0, 0, "x")
    with pytest.raises(FileOpError, match="mkdir /missing/new: no such file or directory"):
        runner.run(MkdirAction("/missing/new", make_parents=False), dest=[base])


def test_workdir_through_symlink(runner: Runner) -> None:
    base = write(runner.new_dir("base"), {"srv/": None})
    os.symlink("/srv", base / "app")
    r = runner.run(MkdirAction("/app/www"), dest=[base])
    assert r.entry("/srv/www") == ("dir", 0o755, 0, 0, "")
    assert r.entry("/app")[0] == "link"  # type: ignore[index]


def test_mkdir_times(runner: Runner) -> None:
    before = time.time_ns()
    r = runner.run(MkdirAction("/t/u"))
    assert r.lstat("/t/u").st_mtime_ns >= before - 10_000_000  # type: ignore[union-attr]
    r = runner.run(MkdirAction("/t/u"), created_ns=1_000_000_000)
    assert r.lstat("/t").st_mtime_ns == 1_000_000_000  # type: ignore[union-attr]
    assert r.lstat("/t/u").st_mtime_ns == 1_000_000_000  # type: ignore[union-attr]


def test_mkdir_inherits_setgid_like_mkdir(runner: Runner) -> None:
    base = write(runner.new_dir("base"), {"shared/": None})
    os.chown(base / "shared", 0, 50)
    os.chmod(base / "shared", 0o2775)
    r = runner.run(MkdirAction("/shared/sub", mode=0o755), dest=[base])
    st = r.lstat("/shared/sub")
    assert st is not None and stat.S_IMODE(st.st_mode) == 0o2755 and st.st_gid == 50


def test_mkfile_mode_and_content(runner: Runner) -> None:
    base = write(runner.new_dir("base"), {"etc/": None})
    r = runner.run(
        [
            MkfileAction("/etc/config", "a=1\n", mode=0o600),
            MkfileAction("/run.sh", "#!/bin/sh\n", mode=0o755),
            MkfileAction("/w", "x", mode=0o4777),  # only permission bits
        ],
        dest=[base],
    )
    assert r.entry("/etc/config") == ("file", 0o600, 0, 0, "a=1\n")
    assert r.entry("/run.sh") == ("file", 0o755, 0, 0, "#!/bin/sh\n")
    assert r.entry("/w") == ("file", 0o777, 0, 0, "x")


def test_mkfile_over_existing_file_keeps_its_metadata(runner: Runner) -> None:
    base = write(runner.new_dir("base"), {"etc/motd": "old and long\n"})
    os.chmod(base / "etc" / "motd", 0o640)
    os.chown(base / "etc" / "motd", 3, 4)
    os.setxattr(base / "etc" / "motd", "user.tag", b"kept")
    r = runner.run(MkfileAction("/etc/motd", "new\n", mode=0o777), dest=[base])
    assert r.entry("/etc/motd") == ("file", 0o640, 3, 4, "new\n")
    assert os.getxattr(r.out / "etc" / "motd", "user.tag") == b"kept"
    assert (base / "etc" / "motd").read_text() == "old and long\n"  # lower layer untouched


def test_mkfile_chown_chmod_and_time(runner: Runner) -> None:
    r = runner.run(
        MkfileAction("/f", "x", mode=0o600, chown=ChownSpec("5", "6"), chmod="go+r"),
        created_ns=7_000_000_000,
    )
    assert r.entry("/f") == ("file", 0o644, 5, 6, "x")
    assert r.lstat("/f").st_mtime_ns == 7_000_000_000  # type: ignore[union-attr]


def test_mkfile_errors(runner: Runner) -> None:
    base = write(runner.new_dir("base"), {"dir/": None, "file": "x"})
    os.mkfifo(base / "fifo")
    with pytest.raises(FileOpError, match="open /dir: is a directory"):
        runner.run(MkfileAction("/dir", "x"), dest=[base])
    with pytest.raises(FileOpError, match="open /missing/f: no such file or directory"):
        runner.run(MkfileAction("/missing/f", "x"), dest=[base])
    with pytest.raises(FileOpError, match="open /file/f: not a directory"):
        runner.run(MkfileAction("/file/f", "x"), dest=[base])
    # A device node or FIFO in the image is never opened for writing.
    with pytest.raises(FileOpError, match="open /fifo: not a regular file"):
        runner.run(MkfileAction("/fifo", "x"), dest=[base])


def test_mkfile_through_symlink_writes_the_target(runner: Runner) -> None:
    base = write(runner.new_dir("base"), {"real/": None})
    os.symlink("/real/file", base / "link")
    r = runner.run(MkfileAction("/link", "via link"), dest=[base])
    assert r.read("/real/file") == "via link"
    assert r.entry("/link")[0] == "link"  # type: ignore[index]


def test_inline_document_copied_to_destination(runner: Runner, tmp_path: Path) -> None:
    # COPY <<EOF /dest: a mkfile on scratch, then a copy of it (no wildcards, no follow).
    doc = runner.run(MkfileAction("/hello.txt", "hello\n", mode=0o644))
    from engine.fileops.tree import LayerTree

    from .conftest import copy

    base = write(runner.new_dir("base"), {"app/": None})
    r = runner.run(
        copy("/hello.txt", "/app/", wildcard=False, follow_symlinks=False, dir_copy_contents=False),
        dest=[base],
        sources={1: LayerTree(doc.layers)},
    )
    assert r.entry("/app/hello.txt") == ("file", 0o644, 0, 0, "hello\n")
