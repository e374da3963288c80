"""File-level work of rootless builds, run for real as unprivileged users in user namespaces.

``nbbuild-rl`` has a subordinate range (container uid N is host uid ``start + N - 1``);
``nbbuild-single`` has none (only container root is mapped). See ``conftest.py``.
"""

from __future__ import annotations

import errno
import functools
import http.server
import io
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Rootless, RootlessUser


def _member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = 1_600_000_000
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], *, gzip: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gzip else "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def _owned_layer() -> bytes:
    """A layer like a distro's: several owners, a setuid file, devices, whiteout, opaque dir."""
    d, f, sym, lnk, chr_, blk, fifo = (
        tarfile.DIRTYPE,
        tarfile.REGTYPE,
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.FIFOTYPE,
    )
    return _tar(
        [
            (_member("etc/", d), b""),
            (_member("etc/foo", f, uid=1000, gid=1000), b"foo"),
            (_member("etc/link", sym, linkname="foo", uid=1000, gid=1001), b""),
            (_member("srv/", d, uid=33, gid=33), b""),
            (_member("srv/www", f, uid=33, gid=33, mode=0o640), b"www"),
            (_member("usr/bin/tool", f, uid=0, gid=50, mode=0o4755), b"#!"),
            (_member("var/lib/app/", d, uid=999, gid=65534), b""),
            (_member("run/fifo", fifo, uid=1000, gid=1000), b""),
            (_member("dev/", d), b""),
            (_member("dev/null", chr_, devmajor=1, devminor=3, mode=0o666), b""),
            (_member("dev/null2", lnk, linkname="dev/null"), b""),
            (_member("dev/sda", blk, devmajor=8, devminor=0, mode=0o660, gid=6), b""),
            (_member("opq/", d), b""),
            (_member("opq/.wh..wh..opq", f), b""),
            (_member("opq/new", f, uid=1000, gid=1000), b"new"),
            (_member(".wh.gone", f), b""),
        ]
    )


def _root_layer() -> bytes:
    """Everything owned by root, with a device, a whiteout and an opaque directory."""
    return _tar(
        [
            (_member("bin/", tarfile.DIRTYPE), b""),
            (_member("bin/sh", mode=0o755), b"sh"),
            (_member("dev/", tarfile.DIRTYPE), b""),
            (_member("dev/zero", tarfile.CHRTYPE, devmajor=1, devminor=5, mode=0o666), b""),
            (_member("opq/", tarfile.DIRTYPE), b""),
            (_member("opq/.wh..wh..opq"), b""),
            (_member(".wh.gone"), b""),
        ]
    )


def _put(rootless: Rootless, user: RootlessUser, data: bytes, name: str = "layer.tar") -> Path:
    directory = rootless.dir(user, "input")
    path = directory / name
    path.write_bytes(data)
    os.chmod(path, 0o644)
    return path


_STAT = """
import os, stat
def st(root, rel):
    path = os.path.join(root, rel)
    if not os.path.lexists(path):
        return None
    s = os.lstat(path)
    return [s.st_uid, s.st_gid, stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode), s.st_rdev]
"""

_UNPACK = (
    _STAT
    + """
from pathlib import Path
from engine.images.layer import unpack_layer
out = Path(ARGS["out"])
with open(ARGS["tar"], "rb") as f:
    unpack_layer(f, out)
result = {rel: st(out, rel) for rel in ARGS["paths"]}
"""
)

_PATHS = [
    "etc/foo", "etc/link", "srv", "srv/www", "usr/bin/tool", "var/lib/app", "run/fifo",
    "dev/null", "dev/null2", "dev/sda", "opq/new", "gone",
]  # fmt: skip


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as exc:
        assert exc.errno == errno.ENODATA, exc
        return None


def _setup_message(message: str) -> None:
    """The message says what to set up: Debian's uidmap and a subordinate range."""
    assert "maps only your own ID" in message, message
    assert "apt-get install uidmap" in message, message
    assert "--add-subuids" in message and "--add-subgids" in message, message


# -- image layers -------------------------------------------------------------------------


def test_layer_with_many_owners_unpacks_into_the_range(rootless: Rootless) -> None:
    user = rootless.ranged
    tar = _put(rootless, user, _owned_layer())
    out = rootless.dir(user, "layer") / "diff"
    got = rootless.run(user, _UNPACK, {"tar": str(tar), "out": str(out), "paths": _PATHS}).value()

    # Inside the namespace the owners are the tar's...
    assert got["etc/foo"][:2] == [1000, 1000]
    assert got["etc/link"][:3] == [1000, 1001, stat.S_IFLNK]
    assert got["srv"][:2] == [33, 33] and got["srv/www"][:2] == [33, 33]
    assert got["srv/www"][3] == 0o640
    assert got["usr/bin/tool"][:2] == [0, 50] and got["usr/bin/tool"][3] == 0o4755
    assert got["var/lib/app"][:2] == [999, 65534]
    assert got["run/fifo"][:3] == [1000, 1000, stat.S_IFIFO]
    assert got["opq/new"][:2] == [1000, 1000]
    # ... devices are skipped (and a hard link to one), as rootless containerd does ...
    assert got["dev/null"] is None and got["dev/null2"] is None and got["dev/sda"] is None
    # ... and whiteouts, which a user namespace may create, are kept.
    assert got["gone"][2:] == [stat.S_IFCHR, 0, 0]

    # Outside, they are the user's subordinate IDs (container root is the user itself).
    def owner(rel: str) -> tuple[int, int]:
        st = os.lstat(out / rel)
        return st.st_uid, st.st_gid

    assert owner("etc/foo") == (user.host_uid(1000), user.host_gid(1000))
    assert owner("etc/link") == (user.host_uid(1000), user.host_gid(1001))
    assert owner("srv/www") == (user.host_uid(33), user.host_gid(33))
    assert owner("usr/bin/tool") == (user.uid, user.host_gid(50))
    assert owner("var/lib/app") == (user.host_uid(999), user.host_gid(65534))
    assert user.subuid is not None
    assert user.host_uid(1000) == user.subuid[0] + 999
    # The opaque directory carries the marker overlayfs reads when mounted with userxattr.
    assert _xattr(out / "opq", "user.overlay.opaque") == b"y"
    assert _xattr(out / "opq", "trusted.overlay.opaque") is None


def test_layer_with_many_owners_fails_clearly_without_a_range(rootless: Rootless) -> None:
    user = rootless.single
    tar = _put(rootless, user, _owned_layer())
    out = rootless.dir(user, "layer") / "diff"
    run = rootless.run(user, _UNPACK, {"tar": str(tar), "out": str(out), "paths": _PATHS})
    message = run.raised("IdMappingError")
    assert message.startswith("the image layer has files owned by uid 1000 (etc/foo)"), message
    _setup_message(message)
    assert "Invalid argument" not in message


def test_root_owned_layer_unpacks_without_a_range(rootless: Rootless) -> None:
    user = rootless.single
    tar = _put(rootless, user, _root_layer())
    out = rootless.dir(user, "layer") / "diff"
    paths = ["bin/sh", "dev/zero", "opq", "gone"]
    got = rootless.run(user, _UNPACK, {"tar": str(tar), "out": str(out), "paths": paths}).value()
    assert got["bin/sh"][:2] == [0, 0] and got["bin/sh"][3] == 0o755
    assert got["dev/zero"] is None  # skipped: no device nodes in a user namespace
    assert got["gone"][2:] == [stat.S_IFCHR, 0, 0]
    assert os.lstat(out / "bin/sh").st_uid == user.uid
    assert _xattr(out / "opq", "user.overlay.opaque") == b"y"


# -- COPY / ADD ---------------------------------------------------------------------------

_COPY = (
    _STAT
    + """
from pathlib import Path
from engine.fileops import apply_file_op
from engine.fileops.tree import DirTree
from engine.graph.ops import ChownSpec, CopyAction, FileOp
ctx = Path(ARGS["ctx"])
(ctx / "d").mkdir(parents=True)
(ctx / "app.txt").write_text("hi")
(ctx / "d" / "x").write_text("x")
out = Path(ARGS["out"])
out.mkdir()
user, _, group = ARGS["chown"].partition(":")
action = CopyAction(
    src_input=1, src=("/",), dest="/app/", chown=ChownSpec(user, group),
    allow_empty_wildcard=True,
)
apply_file_op(FileOp(actions=(action,), dest_input=-1), dest=None, sources={1: DirTree(ctx)},
              out=out)
result = {rel: st(out, rel) for rel in ("app", "app/app.txt", "app/d", "app/d/x")}
"""
)


def test_copy_chown_gives_ids_of_the_range(rootless: Rootless) -> None:
    user = rootless.ranged
    work = rootless.dir(user)
    args = {"ctx": str(work / "ctx"), "out": str(work / "out"), "chown": "1000:1000"}
    got = rootless.run(user, _COPY, args).value()
    for rel in ("app", "app/app.txt", "app/d", "app/d/x"):
        assert got[rel][:2] == [1000, 1000], rel
        st = os.lstat(work / "out" / rel)
        assert (st.st_uid, st.st_gid) == (user.host_uid(1000), user.host_gid(1000)), rel
    assert user.subuid is not None and user.host_uid(1000) == user.subuid[0] + 999


def test_copy_chown_fails_clearly_without_a_range(rootless: Rootless) -> None:
    user = rootless.single
    work = rootless.dir(user)
    args = {"ctx": str(work / "ctx"), "out": str(work / "out"), "chown": "1000:1000"}
    message = rootless.run(user, _COPY, args).raised("IdMappingError")
    assert message.startswith("--chown=1000:1000 needs uid 1000 (/app)"), message
    _setup_message(message)


def test_copy_chown_to_root_works_without_a_range(rootless: Rootless) -> None:
    user = rootless.single
    work = rootless.dir(user)
    args = {"ctx": str(work / "ctx"), "out": str(work / "out"), "chown": "0:0"}
    got = rootless.run(user, _COPY, args).value()
    assert got["app/app.txt"][:2] == [0, 0]
    assert os.lstat(work / "out/app/app.txt").st_uid == user.uid


def test_copy_chown_beyond_the_range_names_the_range(rootless: Rootless) -> None:
    user = rootless.ranged
    work = rootless.dir(user)
    args = {"ctx": str(work / "ctx"), "out": str(work / "out"), "chown": "70000:70000"}
    run = rootless.run(user, _COPY, args)
    message = run.raised("IdMappingError")
    assert run.error is not None and "IdRangeError" in run.error["mro"]
    assert message.startswith("--chown=70000:70000 needs uid 70000 (/app)"), message
    assert "1-65536→" in message and "subordinate range" in message, message


_ADD = (
    _STAT
    + """
from pathlib import Path
from engine.fileops import apply_file_op
from engine.fileops.tree import DirTree
from engine.graph.ops import ChownSpec, CopyAction, FileOp
out = Path(ARGS["out"])
out.mkdir()
action = CopyAction(src_input=1, src=("/a.tar.gz",), dest="/srv/", attempt_unpack=True,
                    allow_empty_wildcard=True)
apply_file_op(FileOp(actions=(action,), dest_input=-1), dest=None,
              sources={1: DirTree(Path(ARGS["ctx"]))}, out=out)
result = {rel: st(out, rel) for rel in ("srv/etc/foo", "srv/srv/www", "srv/dev/null",
                                        "srv/dev/null2", "srv/run/fifo", "srv/opq/new")}
"""
)


def test_add_archive_with_owners_and_devices(rootless: Rootless) -> None:
    user = rootless.ranged
    tar = _put(rootless, user, _tar([(m, d) for m, d in _archive_members()], gzip=True), "a.tar.gz")
    work = rootless.dir(user)
    got = rootless.run(user, _ADD, {"ctx": str(tar.parent), "out": str(work / "out")}).value()
    assert got["srv/etc/foo"][:2] == [1000, 1000]
    assert got["srv/srv/www"][:2] == [33, 33]
    assert got["srv/run/fifo"][:3] == [1000, 1000, stat.S_IFIFO]
    assert got["srv/dev/null"] is None and got["srv/dev/null2"] is None
    st = os.lstat(work / "out/srv/etc/foo")
    assert (st.st_uid, st.st_gid) == (user.host_uid(1000), user.host_gid(1000))


def test_add_archive_with_owners_fails_clearly_without_a_range(rootless: Rootless) -> None:
    user = rootless.single
    tar = _put(rootless, user, _tar(_archive_members(), gzip=True), "a.tar.gz")
    work = rootless.dir(user)
    run = rootless.run(user, _ADD, {"ctx": str(tar.parent), "out": str(work / "out")})
    message = run.raised("IdMappingError")
    assert message.startswith("the archive /a.tar.gz has files owned by uid 1000 (etc/foo)"), (
        message
    )
    _setup_message(message)


def _archive_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        (_member("etc/", tarfile.DIRTYPE), b""),
        (_member("etc/foo", uid=1000, gid=1000), b"foo"),
        (_member("srv/", tarfile.DIRTYPE, uid=33, gid=33), b""),
        (_member("srv/www", uid=33, gid=33), b"www"),
        (_member("dev/", tarfile.DIRTYPE), b""),
        (_member("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), b""),
        (_member("dev/null2", tarfile.LNKTYPE, linkname="dev/null"), b""),
        (_member("run/fifo", tarfile.FIFOTYPE, uid=1000, gid=1000), b""),
    ]


# -- opaque directories -------------------------------------------------------------------

_OPAQUE = """
import os
from pathlib import Path
from engine.fileops.upper import Upper
from engine.snapshot.overlay import mount_overlay
work = Path(ARGS["work"])
lower = work / "lower"
(lower / "d").mkdir(parents=True)
(lower / "d" / "old").write_text("old")
out = work / "out"
out.mkdir()
upper = Upper(out, [lower])
upper.remove("d")
upper.mkdir("d", 0o755)
os.close(upper.create_file("d/new"))
(work / "work").mkdir()
(work / "merged").mkdir()
# The kernel's view: overlayfs in this namespace (userxattr) must honour the marker.
mount_overlay([lower], out, work / "work", work / "merged")
result = {"merged": sorted(os.listdir(work / "merged" / "d")),
          "xattrs": sorted(os.listxattr(out / "d"))}
"""


@pytest.mark.parametrize("which", ["ranged", "single"])
def test_file_op_opaque_dirs_use_the_user_xattr(rootless: Rootless, which: str) -> None:
    user = rootless.ranged if which == "ranged" else rootless.single
    work = rootless.dir(user)
    got = rootless.run(user, _OPAQUE, {"work": str(work)}).value()
    assert got["xattrs"] == ["user.overlay.opaque"]
    assert got["merged"] == ["new"]  # the lower d/old is hidden
    assert _xattr(work / "out/d", "user.overlay.opaque") == b"y"
    assert _xattr(work / "out/d", "trusted.overlay.opaque") is None


# -- --output type=local ------------------------------------------------------------------

_EXPORT = (
    _UNPACK
    + """
from engine.exporters.local import export_local
export_local([out, Path(ARGS["devices"])], Path(ARGS["dest"]))
dest = Path(ARGS["dest"])
result = {rel: st(dest, rel) for rel in ARGS["paths"] + ["dev/tty"]}
"""
)


def test_local_export_writes_everything_as_the_user(rootless: Rootless) -> None:
    user = rootless.ranged
    tar = _put(rootless, user, _owned_layer())
    work = rootless.dir(user)
    # A layer made by real root, with a device node a user namespace cannot recreate.
    devices = rootless.dir(user, "devices")
    (devices / "dev").mkdir()
    os.mknod(devices / "dev/tty", stat.S_IFCHR | 0o666, os.makedev(5, 0))
    os.chmod(devices, 0o755)
    args = {
        "tar": str(tar),
        "out": str(work / "diff"),
        "devices": str(devices),
        "dest": str(work / "dest"),
        "paths": _PATHS,
    }
    got = rootless.run(user, _EXPORT, args).value()
    assert got["dev/tty"] is None and got["dev/null"] is None
    assert got["etc/foo"][:2] == [0, 0] and got["srv/www"][3] == 0o640
    assert got["usr/bin/tool"][3] == 0o4755
    assert got["run/fifo"][2] == stat.S_IFIFO
    owners = set()
    for dirpath, dirnames, filenames in os.walk(work / "dest"):
        for name in [*dirnames, *filenames]:
            st = os.lstat(Path(dirpath) / name)
            owners.add((st.st_uid, st.st_gid))
    assert owners == {(user.uid, user.gid)}
    # So the user can remove the output from outside the namespace.
    rm = "import shutil; shutil.rmtree(ARGS['dest']); result = True"
    assert rootless.run(user, rm, {"dest": str(work / "dest")}, enter=False).value() is True
    assert not (work / "dest").exists()


# -- ADD <url> --chown --------------------------------------------------------------------


@pytest.fixture
def http_url(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "file.txt").write_text("payload")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/file.txt"
    finally:
        server.shutdown()
        server.server_close()


_FETCH = (
    _STAT
    + """
from engine.sources.http import HttpSource, fetch
got = fetch(HttpSource(url=ARGS["url"], filename="f", uid=1000, gid=1000), ARGS["dest"])
result = st(ARGS["dest"], "f")
"""
)


def test_http_download_owner_in_the_range(rootless: Rootless, http_url: str) -> None:
    user = rootless.ranged
    dest = rootless.dir(user)
    got = rootless.run(user, _FETCH, {"url": http_url, "dest": str(dest)}).value()
    assert got[:2] == [1000, 1000]
    assert os.lstat(dest / "f").st_uid == user.host_uid(1000)


def test_http_download_owner_fails_clearly_without_a_range(
    rootless: Rootless, http_url: str
) -> None:
    user = rootless.single
    dest = rootless.dir(user)
    message = rootless.run(user, _FETCH, {"url": http_url, "dest": str(dest)}).raised(
        "IdMappingError"
    )
    assert message.startswith(f"ADD --chown=1000:1000 needs uid 1000 ({http_url})"), message
    _setup_message(message)
    assert os.listdir(dest) == []  # the partial download is gone
