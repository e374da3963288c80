"""ADD's automatic extraction of local archives."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from engine.context.tree import ContextTree
from engine.fileops import FileOpError
from engine.fileops.untar import is_tar_stream
from engine.graph.ops import ChownSpec

from .conftest import Runner, copy, write
from .test_security import make_tar, tinfo


def add(src: str, dest: str, **kw: object) -> object:
    return copy(src, dest, attempt_unpack=True, **kw)


def sample(compression: str = "") -> bytes:
    d = tinfo("pkg/", tarfile.DIRTYPE, mode=0o750)
    d.uid, d.gid = 10, 20
    f = tinfo("pkg/bin/tool", mode=0o755)
    f.uid, f.gid = 11, 21
    link = tinfo("pkg/latest", tarfile.SYMTYPE, mode=0o777, link="bin/tool")
    return make_tar([(d, None), (f, b"#!/bin/sh\n"), (link, None)], compression)


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    root.mkdir()
    for comp, name in (("", "a.tar"), ("gz", "a.tar.gz"), ("bz2", "a.tar.bz2"), ("xz", "a.tar.xz")):
        (root / name).write_bytes(sample(comp))
    return root


@pytest.mark.parametrize("name", ["a.tar", "a.tar.gz", "a.tar.bz2", "a.tar.xz"])
def test_formats_are_extracted(runner: Runner, ctx: Path, name: str) -> None:
    r = runner.run(add(f"/{name}", "/opt/"), sources={1: ContextTree(ctx)})
    dump = r.dump()
    assert dump["/opt/pkg"] == ("dir", 0o750, 10, 20, "")
    assert dump["/opt/pkg/bin"] == ("dir", 0o755, 0, 0, "")  # implied: 0755 root
    assert dump["/opt/pkg/bin/tool"] == ("file", 0o755, 11, 21, "#!/bin/sh\n")
    assert dump["/opt/pkg/latest"] == ("link", 0o777, 0, 0, "bin/tool")
    assert r.lstat("/opt/pkg/bin/tool").st_mtime_ns == 1_600_000_000 * 10**9  # type: ignore[union-attr]
    assert r.lstat("/opt/pkg").st_mtime_ns == 1_600_000_000 * 10**9  # type: ignore[union-attr]
    assert f"/opt/{name}" not in dump


def test_destination_without_slash_is_a_directory(runner: Runner, ctx: Path) -> None:
    r = runner.run(add("/a.tar", "/opt"), sources={1: ContextTree(ctx)})
    assert r.entry("/opt")[0] == "dir"  # type: ignore[index]
    assert r.read("/opt/pkg/bin/tool") == "#!/bin/sh\n"


def test_chown_applies_chmod_does_not(runner: Runner, ctx: Path) -> None:
    r = runner.run(
        add("/a.tar.gz", "/opt/", chown=ChownSpec("7", "8"), chmod="0600"),
        sources={1: ContextTree(ctx)},
    )
    dump = r.dump()
    assert dump["/opt"][1:4] == (0o755, 7, 8)
    assert dump["/opt/pkg"][1:4] == (0o750, 7, 8)
    assert dump["/opt/pkg/bin/tool"][1:4] == (0o755, 7, 8)
    assert dump["/opt/pkg/bin"][2:4] == (0, 0)  # implied parents stay root's


def test_non_archives_are_copied_as_they_are(runner: Runner, tmp_path: Path) -> None:
    root = write(
        tmp_path / "na",
        {"fake.tar": "just text, not a tar\n", "empty.tar": "", "zeros.tar": b"\0" * 2048},
    )
    (root / "bad.tar.gz").write_bytes(b"\x1f\x8b\x08" + b"garbage" * 10)
    (root / "x.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    os.symlink("fake.tar", root / "link.tar")
    r = runner.run(add("/", "/in/"), sources={1: ContextTree(root)})
    dump = r.dump()
    assert dump["/in/fake.tar"][4] == "just text, not a tar\n"
    assert dump["/in/empty.tar"] == ("file", 0o644, 0, 0, "")
    assert dump["/in/zeros.tar"][0] == "file"
    assert dump["/in/bad.tar.gz"][0] == "file"
    assert dump["/in/x.tar.zst"][0] == "file"  # zstd: no decoder, copied (see module docs)
    assert dump["/in/link.tar"] == ("link", 0o777, 0, 0, "fake.tar")


def test_symlink_to_archive_is_extracted(runner: Runner, ctx: Path) -> None:
    os.symlink("a.tar", ctx / "alias.tar")
    r = runner.run(add("/alias.tar", "/x/"), sources={1: ContextTree(ctx)})
    assert r.read("/x/pkg/bin/tool") == "#!/bin/sh\n"


def test_wildcard_matches_are_each_extracted(runner: Runner, ctx: Path) -> None:
    (ctx / "notes.txt").write_text("n")
    r = runner.run(add("/a.tar*", "/all/"), sources={1: ContextTree(ctx)})
    assert r.read("/all/pkg/bin/tool") == "#!/bin/sh\n"
    assert not r.exists("/all/a.tar")


def test_entries_replace_existing_paths(runner: Runner, tmp_path: Path) -> None:
    base = write(
        runner.new_dir("base"),
        {
            "opt/pkg/bin/tool/inner": "a dir in the way",
            "opt/pkg/keep": "k",
            "opt/pkg/latest/": None,
        },
    )
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.tar").write_bytes(sample())
    r = runner.run(add("/a.tar", "/opt/"), dest=[base], sources={1: ContextTree(ctx)})
    dump = r.dump()
    assert dump["/opt/pkg/bin/tool"][0] == "file"  # the directory was removed first
    assert "/opt/pkg/bin/tool/inner" not in dump
    assert dump["/opt/pkg/latest"][0] == "link"
    assert dump["/opt/pkg/keep"][4] == "k"  # directories are merged
    assert dump["/opt/pkg"][1] == 0o750  # the entry's mode applies to the merged dir


def test_archive_details(runner: Runner, tmp_path: Path) -> None:
    x = tinfo("withx")
    x.pax_headers = {
        "SCHILY.xattr.user.color": "blue",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
    }
    hard = tinfo("hard", tarfile.LNKTYPE, link="withx")
    wh = tinfo(".wh.gone")  # a plain file for ADD (no whiteout conversion)
    fifo = tinfo("pipe", tarfile.FIFOTYPE, mode=0o600)
    dev = tinfo("null", tarfile.CHRTYPE, mode=0o666)
    dev.devmajor, dev.devminor = 1, 3
    dot = tinfo("./", tarfile.DIRTYPE, mode=0o700)
    archive = make_tar(
        [(dot, None), (x, b"x"), (hard, None), (wh, b""), (fifo, None), (dev, None)],
    )
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "d.tar").write_bytes(archive)
    r = runner.run(add("/d.tar", "/d/"), sources={1: ContextTree(ctx)})
    dump = r.dump()
    assert dump["/d"][1] == 0o755  # "." does not change the destination
    assert os.getxattr(r.out / "d" / "withx", "user.color") == b"blue"
    with pytest.raises(OSError):
        os.getxattr(r.out / "d" / "withx", "trusted.overlay.opaque")
    assert os.lstat(r.out / "d" / "hard").st_ino == os.lstat(r.out / "d" / "withx").st_ino
    assert dump["/d/.wh.gone"][0] == "file"
    assert dump["/d/pipe"] == ("fifo", 0o600, 0, 0, "")
    st = r.lstat("/d/null")
    assert st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_truncated_archive_fails(runner: Runner, tmp_path: Path) -> None:
    data = make_tar([(tinfo("big"), b"y" * 100_000)])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "t.tar").write_bytes(data[:5000])
    with pytest.raises(FileOpError, match=r"failed to extract /t\.tar"):
        runner.run(add("/t.tar", "/"), sources={1: ContextTree(ctx)})


def test_is_tar_stream_rules() -> None:
    good = make_tar([(tinfo("f"), b"x")])
    assert is_tar_stream(io.BytesIO(good))  # type: ignore[arg-type]
    assert not is_tar_stream(io.BytesIO(good[:100]))  # type: ignore[arg-type]
    assert not is_tar_stream(io.BytesIO(bytes(1024)))  # type: ignore[arg-type]
    broken = bytearray(good)
    broken[0] ^= 0xFF  # the checksum no longer matches
    assert not is_tar_stream(io.BytesIO(bytes(broken)))  # type: ignore[arg-type]
