"""Symlinks, ``..`` and archives never lead a file op outside its trees (BuildKit's tests).

Each test runs the op under a spy that records every path handed to the OS: writes must land
in the op's output layer, reads in its sources or destination layers, and the directory each
path is opened in must really be inside those roots.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.context.tree import ContextTree
from engine.fileops import FileOpError
from engine.fileops.tree import LayerTree
from engine.graph.ops import ChownSpec, MkdirAction, MkfileAction

from .conftest import Result, Runner, copy, write

_WRITES = ("mkdir", "symlink", "link", "mknod", "chmod", "chown", "utime", "setxattr", "unlink")
_READS = ("lstat", "readlink", "listxattr", "getxattr", "scandir")


class Spy:
    def __init__(self) -> None:
        self.writes: list[str] = []
        self.reads: list[str] = []

    def check(self, write_roots: list[Path], read_roots: list[Path]) -> None:
        def inside(path: str, roots: list[Path]) -> bool:
            norm = os.path.normpath(path)
            parent = os.path.realpath(os.path.dirname(norm))
            for root in roots:
                r = os.path.realpath(root)
                in_root = norm == r or norm.startswith(r + os.sep)
                parent_in_root = parent == r or parent.startswith(r + os.sep) or norm == r
                if in_root and parent_in_root:
                    return True
            return False

        bad_w = [p for p in self.writes if not inside(p, write_roots)]
        bad_r = [p for p in self.reads if not inside(p, read_roots + write_roots)]
        assert not bad_w, f"writes outside the output layer: {bad_w}"
        assert not bad_r, f"reads outside the op's trees: {bad_r}"
        assert self.writes, "the spy saw no writes at all"


@contextmanager
def spying(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    spy = Spy()

    def wrap(name: str, sink: list[str], arg: int = 0) -> None:
        real = getattr(os, name)

        def spied(*args: Any, **kwargs: Any) -> Any:
            if "dir_fd" not in kwargs and len(args) > arg and isinstance(args[arg], (str, Path)):
                sink.append(os.path.abspath(args[arg]))
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, spied)

    for name in _WRITES:
        wrap(name, spy.writes, 1 if name in ("symlink", "link") else 0)
    for name in _READS:
        wrap(name, spy.reads)
    real_open = os.open

    def spied_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if "dir_fd" not in kwargs and isinstance(path, (str, Path)):
            writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            (spy.writes if writing else spy.reads).append(os.path.abspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spied_open)
    try:
        yield spy
    finally:
        monkeypatch.undo()


def run_spied(
    runner: Runner,
    monkeypatch: pytest.MonkeyPatch,
    action: Any,
    *,
    dest: list[Path] | None = None,
    sources: dict[int, Any] | None = None,
    read_roots: list[Path] = (),  # type: ignore[assignment]
    expect: type[Exception] | None = None,
    match: str = "",
) -> Result | None:
    out_holder: list[Path] = []
    original = runner.new_dir

    def capture(name: str) -> Path:
        path = original(name)
        if name == "out":
            out_holder.append(path)
        return path

    runner.new_dir = capture  # type: ignore[method-assign]
    try:
        with spying(monkeypatch) as spy:
            if expect is not None:
                with pytest.raises(expect, match=match):
                    runner.run(action, dest=dest, sources=sources, check_kernel=False)
                result = None
            else:
                result = runner.run(action, dest=dest, sources=sources, check_kernel=False)
    finally:
        runner.new_dir = original  # type: ignore[method-assign]
    spy.check(out_holder, [*(dest or []), *read_roots])
    if result is not None:
        # Now outside the spy: the kernel agrees with our reading of the layers.
        from .conftest import kernel_dump

        assert result.dump() == kernel_dump(result.layers, runner.tmp / "kernel-check")
    return result


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]], compression: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as tf:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def tinfo(
    name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.mtime = 1_600_000_000
    return info


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory no op may touch."""
    path = write(
        tmp_path / "outside", {"secret": "host secret", "etc/passwd": "host:x:7:7::/:/bin/sh\n"}
    )
    return path


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes | str]]:
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            content: bytes | str = ""
            if os.path.isfile(p) and not os.path.islink(p):
                content = Path(p).read_bytes()
            out[p] = (st.st_mode, st.st_mtime_ns, content)
    return out


# -- BuildKit's tests -------------------------------------------------------------------


def test_copy_through_symlink_context(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # testCopyThroughSymlinkContext: COPY link/foo . with link -> sub.
    root = write(tmp_path / "ctx", {"sub/foo": "contents"})
    os.chmod(root / "sub", 0o700)
    os.symlink("sub", root / "link")
    r = run_spied(
        runner,
        monkeypatch,
        copy("/link/foo", "/"),
        sources={1: ContextTree(root)},
        read_roots=[root],
    )
    assert r is not None and r.read("/foo") == "contents"


def test_copy_through_symlink_multi_stage(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # testCopyThroughSymlinkMultiStage: /sub -> /out/sub (absolute), /sub2 -> out/sub.
    stage = write(tmp_path / "stage", {"out/sub/foo": "data"})
    os.symlink("/out/sub", stage / "sub")
    os.symlink("out/sub", stage / "sub2")
    tree = LayerTree([stage])
    r = run_spied(
        runner,
        monkeypatch,
        [copy("/sub/foo", "/"), copy("/sub2/foo", "/bar")],
        sources={1: tree},
        read_roots=[stage],
    )
    assert r is not None and r.read("/foo") == "data" and r.read("/bar") == "data"


def test_symlink_destination(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # testSymlinkDestination: ADD a tar with symlink -> ../tmp/symlink-target, then COPY foo
    # /symlink/ lands in /tmp/symlink-target/foo.
    ctx = write(tmp_path / "ctx", {"foo": "content0"})
    (ctx / "t.tar").write_bytes(
        make_tar(
            [(tinfo("symlink", tarfile.SYMTYPE, mode=0o755, link="../tmp/symlink-target"), None)]
        )
    )
    tree = ContextTree(ctx)
    first = run_spied(
        runner,
        monkeypatch,
        copy("/t.tar", "/", attempt_unpack=True),
        sources={1: tree},
        read_roots=[ctx],
    )
    assert first is not None
    assert first.entry("/symlink") == ("link", 0o777, 0, 0, "../tmp/symlink-target")
    second = run_spied(
        runner,
        monkeypatch,
        copy("/foo", "/symlink/"),
        dest=first.layers,
        sources={1: tree},
        read_roots=[ctx],
    )
    assert second is not None
    assert second.read("/tmp/symlink-target/foo") == "content0"
    assert second.entry("/symlink")[0] == "link"  # type: ignore[index]


def test_copy_follow_all_symlinks(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # testCopyFollowAllSymlinks (#1197): COPY foo / ; COPY foo/sub bar, foo/sub -> ../bar.
    ctx = write(tmp_path / "ctx", {"bar": "bar-contents", "foo/": None})
    os.chmod(ctx / "foo", 0o700)
    os.symlink("../bar", ctx / "foo" / "sub")
    r = run_spied(
        runner,
        monkeypatch,
        [copy("/foo", "/"), copy("/foo/sub", "/bar")],
        sources={1: ContextTree(ctx)},
        read_roots=[ctx],
    )
    assert r is not None
    assert r.entry("/sub") == ("link", 0o777, 0, 0, "../bar")
    assert r.entry("/bar") == ("file", 0o644, 0, 0, "bar-contents")


def test_add_archive_through_absolute_symlink(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # testDockerfileAddArchiveThroughAbsoluteSymlink: rootfs var/run -> /run; a payload tar
    # writing var/run/act/... and a hard link lands in /run.
    rootfs = make_tar(
        [
            (tinfo("run/", tarfile.DIRTYPE, mode=0o755), None),
            (tinfo("var/", tarfile.DIRTYPE, mode=0o755), None),
            (tinfo("var/run", tarfile.SYMTYPE, mode=0o777, link="/run"), None),
        ]
    )
    head = b"ref: refs/heads/main\n"
    payload = make_tar(
        [
            (tinfo("var/run/act/", tarfile.DIRTYPE, mode=0o755), None),
            (tinfo("var/run/act/actions/", tarfile.DIRTYPE, mode=0o755), None),
            (tinfo("var/run/act/actions/broad/", tarfile.DIRTYPE, mode=0o755), None),
            (tinfo("var/run/act/actions/broad/.git/", tarfile.DIRTYPE, mode=0o755), None),
            (tinfo("var/run/act/actions/broad/.git/HEAD"), head),
            (
                tinfo(
                    "var/run/act/actions/broad/.git/HEAD.link",
                    tarfile.LNKTYPE,
                    link="var/run/act/actions/broad/.git/HEAD",
                ),
                None,
            ),
        ]
    )
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "rootfs.tar").write_bytes(rootfs)
    (ctx / "payload.tar").write_bytes(payload)
    tree = ContextTree(ctx)
    first = run_spied(
        runner,
        monkeypatch,
        copy("/rootfs.tar", "/", attempt_unpack=True),
        sources={1: tree},
        read_roots=[ctx],
    )
    assert first is not None
    second = run_spied(
        runner,
        monkeypatch,
        copy("/payload.tar", "/", attempt_unpack=True),
        dest=first.layers,
        sources={1: tree},
        read_roots=[ctx],
    )
    assert second is not None
    assert second.read("/run/act/actions/broad/.git/HEAD") == head.decode()
    assert second.read("/run/act/actions/broad/.git/HEAD.link") == head.decode()
    a = os.lstat(second.out / "run/act/actions/broad/.git/HEAD")
    b = os.lstat(second.out / "run/act/actions/broad/.git/HEAD.link")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert second.entry("/var/run")[0] == "link"  # type: ignore[index]


def test_local_symlink_escape(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outside: Path
) -> None:
    # testLocalSymlinkEscape: links to host files are copied as links, their targets not read;
    # followed, they resolve inside the context.
    ctx = write(tmp_path / "deep" / "ctx", {"foo": "contents", "sub/bar": "bar"})
    os.symlink("/etc/passwd", ctx / "bar")
    os.symlink("../../../etc/group", ctx / "sub" / "baz")
    os.symlink(str(outside / "secret"), ctx / "abs")
    os.symlink("../../outside", ctx / "up")
    tree = ContextTree(ctx)
    r = run_spied(runner, monkeypatch, copy("/", "/"), sources={1: tree}, read_roots=[ctx])
    assert r is not None
    assert r.entry("/bar") == ("link", 0o777, 0, 0, "/etc/passwd")
    assert r.entry("/sub/baz") == ("link", 0o777, 0, 0, "../../../etc/group")
    assert r.entry("/abs")[4] == str(outside / "secret")  # type: ignore[index]
    # Followed: /etc/passwd is <ctx>/etc/passwd (absent), never the host's.
    run_spied(
        runner,
        monkeypatch,
        copy("/bar", "/x"),
        sources={1: tree},
        read_roots=[ctx],
        expect=FileOpError,
        match="lstat /etc/passwd: no such file",
    )
    run_spied(
        runner,
        monkeypatch,
        copy("/up/secret", "/x"),
        sources={1: tree},
        read_roots=[ctx],
        expect=FileOpError,
        match="no such file",
    )
    write(ctx, {"etc/passwd": "context passwd\n"})
    r = run_spied(
        runner, monkeypatch, copy("/bar", "/x"), sources={1: ContextTree(ctx)}, read_roots=[ctx]
    )
    assert r is not None and r.read("/x") == "context passwd\n"


# -- destinations that point outside ------------------------------------------------------


def test_destination_symlinks_stay_in_the_root(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outside: Path
) -> None:
    base = write(runner.new_dir("base"), {"real/": None})
    os.symlink("/", base / "etc")
    os.symlink("../../../../../..", base / "up")
    os.symlink(str(outside), base / "abs")
    os.symlink(str(outside / "secret"), base / "secretlink")
    ctx = write(tmp_path / "ctx", {"f": "payload"})
    before = snapshot(outside)
    r = run_spied(
        runner,
        monkeypatch,
        [
            copy("/f", "/etc/a"),
            copy("/f", "/up/b"),
            copy("/f", "/abs/c"),
            copy("/f", "/abs/secret"),
            copy("/f", "/secretlink"),
            MkdirAction("/up/../../w/x"),
            MkfileAction("/etc/passwd", "root:x:0:0::/:/bin/sh\n"),
        ],
        dest=[base],
        sources={1: ContextTree(ctx)},
        read_roots=[ctx],
    )
    assert r is not None
    assert r.read("/a") == "payload" and r.read("/b") == "payload"
    inner = str(outside).lstrip("/")
    assert r.read(f"/{inner}/c") == "payload"
    assert r.read(f"/{inner}/secret") == "payload"  # the link's target, inside the image
    assert r.exists("/w/x") and r.read("/passwd").startswith("root:")
    assert snapshot(outside) == before


def test_chown_name_lookup_through_hostile_links(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outside: Path
) -> None:
    base = runner.new_dir("base")
    os.symlink(str(outside / "etc"), base / "etc")  # /etc -> a host directory with a passwd
    ctx = write(tmp_path / "ctx", {"f": "x"})
    r = run_spied(
        runner,
        monkeypatch,
        copy("/f", "/f", chown=ChownSpec("host")),
        dest=[base],
        sources={1: ContextTree(ctx)},
        read_roots=[ctx],
    )
    # The host's passwd names "host" uid 7; inside the image there is no such file: uid 0.
    assert r is not None and r.entry("/f")[2:4] == (0, 0)  # type: ignore[index]


# -- archives -------------------------------------------------------------------------


def test_hostile_archive_stays_inside_the_destination(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outside: Path
) -> None:
    archive = make_tar(
        [
            (tinfo("../../../escape.txt"), b"dotdot"),
            (tinfo("/abs.txt"), b"absolute"),
            (tinfo("evil", tarfile.SYMTYPE, mode=0o777, link="/"), None),
            (tinfo("evil/etc/x"), b"through absolute link"),
            (tinfo("up", tarfile.SYMTYPE, mode=0o777, link="../../../../.."), None),
            (tinfo("up/y"), b"through relative link"),
            (tinfo("host", tarfile.SYMTYPE, mode=0o777, link=str(outside)), None),
            (tinfo("hl", tarfile.LNKTYPE, link="../../etc/x"), None),
        ],
        "gz",
    )
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.tar.gz").write_bytes(archive)
    base = write(runner.new_dir("base"), {"keep": "k"})
    before = snapshot(outside)
    r = run_spied(
        runner,
        monkeypatch,
        copy("/a.tar.gz", "/sub/", attempt_unpack=True),
        dest=[base],
        sources={1: ContextTree(ctx)},
        read_roots=[ctx],
    )
    assert r is not None
    dump = r.dump()
    assert dump["/sub/escape.txt"][4] == "dotdot"
    assert dump["/sub/abs.txt"][4] == "absolute"
    assert dump["/sub/etc/x"][4] == "through absolute link"  # "/" is /sub in the chroot
    assert dump["/sub/y"][4] == "through relative link"
    assert dump["/sub/host"] == ("link", 0o777, 0, 0, str(outside))
    assert dump["/sub/hl"][4] == "through absolute link"  # hard link target clamped too
    assert {p for p in dump if not p.startswith("/sub")} == {"/", "/keep"}
    assert snapshot(outside) == before


def test_archive_entry_below_a_link_to_a_host_dir_fails(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outside: Path
) -> None:
    # In the chroot the host directory does not exist: go-archive fails with ENOENT.
    archive = make_tar(
        [
            (tinfo("host", tarfile.SYMTYPE, mode=0o777, link=str(outside)), None),
            (tinfo("host/secret"), b"overwrite?"),
        ]
    )
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.tar").write_bytes(archive)
    before = snapshot(outside)
    run_spied(
        runner,
        monkeypatch,
        copy("/a.tar", "/", attempt_unpack=True),
        sources={1: ContextTree(ctx)},
        read_roots=[ctx],
        expect=FileOpError,
        match="open /host/secret: no such file or directory",
    )
    assert snapshot(outside) == before


def test_archive_hardlink_to_missing_target_fails(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    archive = make_tar([(tinfo("shadow", tarfile.LNKTYPE, link="../../../../etc/shadow"), None)])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.tar").write_bytes(archive)
    run_spied(
        runner,
        monkeypatch,
        copy("/a.tar", "/", attempt_unpack=True),
        sources={1: ContextTree(ctx)},
        read_roots=[ctx],
        expect=FileOpError,
        match="link /etc/shadow /shadow: no such file or directory",
    )


def test_spy_catches_a_write_outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The spy itself: a write outside the allowed roots is reported.
    allowed = tmp_path / "ok"
    allowed.mkdir()
    with spying(monkeypatch) as spy:
        os.mkdir(tmp_path / "not-ok")
        os.mkdir(allowed / "fine")
    with pytest.raises(AssertionError, match="writes outside"):
        spy.check([allowed], [])


_ = Callable
