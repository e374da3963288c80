"""Layer tars ⇄ overlay diff dirs: round trips, determinism, epoch clamping, hostile tars."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import uuid
from pathlib import Path

import pytest

from engine.images.errors import LayerError
from engine.images.layer import (
    layer_diff_id,
    open_layer_stream,
    unpack_layer,
    write_layer_blob,
    write_layer_tar,
)

OPAQUE = "trusted.overlay.opaque"


def _tar_bytes(diff: Path, epoch: int | None = None) -> bytes:
    buf = io.BytesIO()
    write_layer_tar(diff, buf, source_date_epoch=epoch)
    return buf.getvalue()


def _unpack(data: bytes, dest: Path) -> None:
    unpack_layer(io.BytesIO(data), dest)


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything about a tree that a layer must preserve, keyed by relative path."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            xattrs = {
                k: os.getxattr(path, k, follow_symlinks=False)
                for k in os.listxattr(path, follow_symlinks=False)
            }
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
            mtime = None if stat.S_ISCHR(st.st_mode) and rdev == 0 else st.st_mtime_ns
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                content,
                rdev,
                tuple(sorted(xattrs.items())),
                mtime,
                st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0,
            )
    return out


def _rich_diff(root: Path, mtime: int = 1_600_000_000) -> Path:
    """A diff dir with every kind of entry a layer can hold."""
    root.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc" / "secret").write_bytes(b"\x00\x01binary")
    os.chmod(root / "etc" / "secret", 0o600)
    os.chown(root / "etc" / "secret", 1234, 5678)
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool", 0o4755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-hardlink")
    os.symlink("tool", root / "bin" / "sym")
    os.symlink("/etc/passwd", root / "abs-link")
    os.lchown(root / "abs-link", 42, 43)
    os.mknod(root / "removed", stat.S_IFCHR, os.makedev(0, 0))  # whiteout
    (root / "etc" / "gone.d").mkdir()
    os.mknod(root / "etc" / "gone.d" / "x", stat.S_IFCHR, os.makedev(0, 0))
    (root / "opaque").mkdir()
    os.setxattr(root / "opaque", OPAQUE, b"y")
    (root / "opaque" / "kept").write_text("kept")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(root / "fifo", 0o640)
    os.setxattr(root / "etc" / "passwd", "user.note", b"\xff\x00binary-value")
    os.setxattr(root / "bin" / "tool", "security.capability", b"\x01\x00\x00\x02" + b"\0" * 16)
    (root / ("long-" + "n" * 150)).write_text("long name")
    (root / "caf\u00e9").write_text("non-ascii")
    os.symlink("t" * 200, root / "long-target")
    (root / "sticky").mkdir(mode=0o1777)
    os.chmod(root / "sticky", 0o1777)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(Path(dirpath, name), ns=(mtime * 10**9, mtime * 10**9), follow_symlinks=False)
    return root


def test_round_trip_preserves_everything(tmp_path: Path) -> None:
    src = _rich_diff(tmp_path / "src")
    data = _tar_bytes(src)
    info = unpack_layer(io.BytesIO(data), tmp_path / "dst")
    assert info.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert info.size == len(data)
    before, after = _snapshot(src), _snapshot(tmp_path / "dst")
    assert before == after
    # whiteouts and opaque dirs come back in overlay format
    assert stat.S_ISCHR(os.lstat(tmp_path / "dst" / "removed").st_mode)
    assert os.getxattr(tmp_path / "dst" / "opaque", OPAQUE) == b"y"
    assert (
        os.stat(tmp_path / "dst" / "bin" / "tool").st_ino
        == os.stat(tmp_path / "dst" / "bin" / "tool-hardlink").st_ino
    )
    # and a second tar of the unpacked tree is byte-identical
    assert _tar_bytes(tmp_path / "dst") == data


def test_tar_uses_oci_whiteout_names_and_numeric_owners(tmp_path: Path) -> None:
    src = _rich_diff(tmp_path / "src")
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(src, epoch=0))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert ".wh.removed" in members and "removed" not in members
    assert "etc/gone.d/.wh.x" in members
    assert "opaque/.wh..wh..opq" in members
    assert members["opaque/kept"].isfile()
    assert members["bin/tool-hardlink"].islnk()
    assert members["bin/tool-hardlink"].linkname == "bin/tool"
    assert members["etc/secret"].uid == 1234 and members["etc/secret"].gid == 5678
    assert all(m.uname == "" and m.gname == "" for m in members.values())
    assert members["bin/tool"].mode == 0o4755
    assert members["sticky"].mode == 0o1777
    assert members["null"].ischr() and (members["null"].devmajor, members["null"].devminor) == (
        1,
        3,
    )
    assert members["fifo"].isfifo()
    assert members["long-target"].linkname == "t" * 200
    assert "caf\u00e9" in members
    # overlay's own xattrs never reach the tar; others do
    assert all("overlay" not in k for m in members.values() for k in m.pax_headers)
    assert (
        members["etc/passwd"]
        .pax_headers["SCHILY.xattr.user.note"]
        .encode("utf-8", "surrogateescape")
        == b"\xff\x00binary-value"
    )
    assert "SCHILY.xattr.security.capability" in members["bin/tool"].pax_headers
    # entries are sorted depth-first by name; a directory comes before its children
    names = [n.rstrip("/") for n in members]
    assert names.index("bin") < names.index("bin/sym") < names.index("etc")


def test_same_content_gives_identical_tars_whatever_the_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root, order in ((a, ["z", "m", "a"]), (b, ["a", "m", "z"])):
        root.mkdir()
        for name in order:
            (root / name).write_text(name * 3)
            os.utime(root / name, (1_000_000, 1_000_000))
        os.utime(root, (1_000_000, 1_000_000))
    assert _tar_bytes(a) == _tar_bytes(b)
    assert layer_diff_id(a) == layer_diff_id(b)


def test_epoch_clamps_only_newer_times(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "old").write_text("old")
    (root / "new").write_text("new")
    os.utime(root / "old", (100, 100))
    os.utime(root / "new", (5_000_000_000, 5_000_000_000))
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(root, epoch=1_000))) as tar:
        assert tar.getmember("old").mtime == 100
        assert tar.getmember("new").mtime == 1_000
    # files touched at different times but all after the epoch give the same tar
    other = tmp_path / "e"
    other.mkdir()
    (other / "old").write_text("old")
    (other / "new").write_text("new")
    os.utime(other / "old", (100, 100))
    os.utime(other / "new", (6_000_000_000, 6_000_000_000))
    assert _tar_bytes(root, epoch=1_000) == _tar_bytes(other, epoch=1_000)
    assert _tar_bytes(root) != _tar_bytes(other)


def test_diff_id_without_writing_matches_the_written_tar(tmp_path: Path) -> None:
    src = _rich_diff(tmp_path / "src")
    data = _tar_bytes(src, epoch=7)
    info = layer_diff_id(src, 7)
    assert info.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert info.size == len(data)


def test_gzip_blob_is_deterministic_and_carries_the_diff_id(tmp_path: Path) -> None:
    src = _rich_diff(tmp_path / "src")
    one, two = io.BytesIO(), io.BytesIO()
    blob1 = write_layer_blob(src, one, source_date_epoch=0)
    blob2 = write_layer_blob(src, two, source_date_epoch=0)
    assert one.getvalue() == two.getvalue()
    raw = one.getvalue()
    assert blob1 == blob2
    assert blob1.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0
    assert raw[3] & 0x08 == 0  # no file name
    assert blob1.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(raw)).hexdigest()
    # the gzip blob unpacks through open_layer_stream
    info = unpack_layer(open_layer_stream(io.BytesIO(raw)), tmp_path / "out")
    assert info.diff_id == blob1.diff_id


def test_whiteout_never_hides_an_entry_of_its_own_layer(tmp_path: Path) -> None:
    data = _make_tar(
        [
            ("dir/file", b"content", {}),
            ("dir/.wh.file", b"", {}),
            ("dir/.wh..wh..opq", b"", {}),
            ("dir/later", b"later", {}),
        ]
    )
    _unpack(data, tmp_path / "out")
    assert (tmp_path / "out" / "dir" / "file").read_bytes() == b"content"
    assert (tmp_path / "out" / "dir" / "later").read_bytes() == b"later"
    assert os.getxattr(tmp_path / "out" / "dir", OPAQUE) == b"y"


def test_unpack_with_user_opaque_xattr(tmp_path: Path) -> None:
    data = _make_tar([("dir/.wh..wh..opq", b"", {})])
    unpack_layer(io.BytesIO(data), tmp_path / "out", opaque_xattr="user.overlay.opaque")
    assert os.getxattr(tmp_path / "out" / "dir", "user.overlay.opaque") == b"y"


# ----------------------------------------------------------------------------- hostile tars


def _make_tar(entries: list[tuple[str, bytes, dict[str, object]]]) -> bytes:
    """A tar written with Python's tarfile: (name, content, TarInfo attributes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, attrs in entries:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            for key, value in attrs.items():
                setattr(info, key, value)
            if info.type != tarfile.REGTYPE:
                info.size = 0
            tar.addfile(info, io.BytesIO(content) if info.size else None)
    return buf.getvalue()


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path, str]:
    """(layer dir to unpack into, a sibling 'outside' dir with a victim file, unique name)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    return tmp_path / "a" / "b" / "layer", outside, f"nbbuild-hostile-{uuid.uuid4().hex}"


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_dotdot_names_are_clamped_inside(arena: tuple[Path, Path, str]) -> None:
    layer, outside, unique = arena
    data = _make_tar(
        [
            (f"../../../{unique}", b"escaped?", {}),
            ("../../outside/victim", b"overwritten?", {}),
            (f"x/../../../../{unique}-2", b"x", {}),
        ]
    )
    _unpack(data, layer)
    assert (outside / "victim").read_text() == "original"
    assert not (layer.parents[2] / unique).exists()
    assert not Path("/", unique).exists()
    assert _listing(layer) == {unique, "outside", "outside/victim", f"{unique}-2"}
    assert (layer / "outside" / "victim").read_bytes() == b"overwritten?"


def test_absolute_names_land_inside(arena: tuple[Path, Path, str]) -> None:
    layer, _outside, unique = arena
    _unpack(_make_tar([(f"/tmp/{unique}/abs", b"abs", {})]), layer)
    assert not Path("/tmp", unique).exists()
    assert (layer / "tmp" / unique / "abs").read_bytes() == b"abs"


def test_symlink_parent_to_root_is_followed_inside(arena: tuple[Path, Path, str]) -> None:
    layer, outside, unique = arena
    data = _make_tar(
        [
            ("a", b"", {"type": tarfile.SYMTYPE, "linkname": "/"}),
            (f"a/tmp/{unique}/passwd", b"pwned", {}),
            ("up", b"", {"type": tarfile.SYMTYPE, "linkname": "../../../.."}),
            ("up/outside/victim", b"pwned", {}),
            ("out", b"", {"type": tarfile.SYMTYPE, "linkname": str(outside)}),
            ("out/victim", b"pwned", {}),
        ]
    )
    _unpack(data, layer)
    assert (outside / "victim").read_text() == "original"
    assert not Path("/tmp", unique).exists()
    assert (layer / "tmp" / unique / "passwd").read_bytes() == b"pwned"
    assert (layer / "outside" / "victim").read_bytes() == b"pwned"
    assert (layer / str(outside).lstrip("/") / "victim").read_bytes() == b"pwned"
    assert os.readlink(layer / "a") == "/"


def test_hardlink_to_outside_is_refused(arena: tuple[Path, Path, str]) -> None:
    layer, outside, _unique = arena
    for linkname in ("../../outside/victim", str(outside / "victim")):
        target = layer.parent / f"try-{abs(hash(linkname))}"
        data = _make_tar([("link", b"", {"type": tarfile.LNKTYPE, "linkname": linkname})])
        with pytest.raises(LayerError, match="not in the layer"):
            _unpack(data, target)
        assert os.stat(outside / "victim").st_nlink == 1
    # a hardlink through a symlink parent is resolved inside the layer too
    data = _make_tar(
        [
            ("d", b"", {"type": tarfile.SYMTYPE, "linkname": str(outside)}),
            ("link", b"", {"type": tarfile.LNKTYPE, "linkname": "d/victim"}),
        ]
    )
    with pytest.raises(LayerError):
        _unpack(data, layer.parent / "third")
    assert os.stat(outside / "victim").st_nlink == 1


def test_final_symlink_is_replaced_not_followed(arena: tuple[Path, Path, str]) -> None:
    layer, outside, _unique = arena
    data = _make_tar(
        [
            ("f", b"", {"type": tarfile.SYMTYPE, "linkname": str(outside / "victim")}),
            ("f", b"new content", {}),
            ("d", b"", {"type": tarfile.SYMTYPE, "linkname": str(outside)}),
            ("d", b"", {"type": tarfile.DIRTYPE, "mode": 0o755}),
            ("d/victim", b"inside", {}),
        ]
    )
    _unpack(data, layer)
    assert (outside / "victim").read_text() == "original"
    assert (layer / "f").read_bytes() == b"new content" and not (layer / "f").is_symlink()
    assert (layer / "d").is_dir() and not (layer / "d").is_symlink()


def test_invalid_whiteouts_and_overlay_xattrs_from_tars(arena: tuple[Path, Path, str]) -> None:
    layer, _outside, _unique = arena
    with pytest.raises(LayerError, match="invalid whiteout"):
        _unpack(_make_tar([("dir/.wh..", b"", {})]), layer.parent / "w1")
    with pytest.raises(LayerError, match="invalid whiteout"):
        _unpack(_make_tar([(".wh.", b"", {})]), layer.parent / "w2")
    data = _make_tar(
        [
            (
                "dir",
                b"",
                {
                    "type": tarfile.DIRTYPE,
                    "mode": 0o755,
                    "pax_headers": {
                        "SCHILY.xattr.trusted.overlay.opaque": "y",
                        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
                        "SCHILY.xattr.user.ok": "fine",
                    },
                },
            )
        ]
    )
    _unpack(data, layer)
    names = os.listxattr(layer / "dir")
    assert "user.ok" in names
    assert not [n for n in names if "overlay" in n]


def test_devices_and_owners_are_created_as_root(tmp_path: Path) -> None:
    data = _make_tar(
        [
            (
                "dev/null",
                b"",
                {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3, "mode": 0o666},
            ),
            ("dev/loop", b"", {"type": tarfile.BLKTYPE, "devmajor": 7, "devminor": 0}),
            ("owned", b"x", {"uid": 1000, "gid": 1001, "mode": 0o2750, "mtime": 12345}),
        ]
    )
    _unpack(data, tmp_path / "out")
    st = os.lstat(tmp_path / "out" / "dev" / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert stat.S_ISBLK(os.lstat(tmp_path / "out" / "dev" / "loop").st_mode)
    owned = os.lstat(tmp_path / "out" / "owned")
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1000, 1001, 0o2750)
    assert owned.st_mtime == 12345


def test_garbage_is_a_layer_error(tmp_path: Path) -> None:
    with pytest.raises(LayerError):
        _unpack(b"this is not a tar archive at all" * 40, tmp_path / "out")
    with pytest.raises(LayerError, match="zstd"):
        open_layer_stream(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 20))


def test_corrupt_header_mid_archive_is_not_a_silent_truncation(tmp_path: Path) -> None:
    data = bytearray(_make_tar([("a", b"xyz", {}), ("b", b"xyz", {}), ("c", b"xyz", {})]))
    # find the second header and damage its name field
    offset = data.index(b"b\0", 512)
    data[offset + 50] ^= 0xFF
    with pytest.raises(LayerError, match="corrupt header"):
        _unpack(bytes(data), tmp_path / "out")
    # a tar that simply ends after an entry (no end-of-archive blocks) is fine
    whole = _make_tar([("a", b"xyz", {})])
    _unpack(whole[:1024], tmp_path / "short")
    assert (tmp_path / "short" / "a").read_bytes() == b"xyz"
