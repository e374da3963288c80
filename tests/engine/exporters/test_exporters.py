"""Build outputs: local dir, filesystem tar, OCI and docker archives; determinism."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from engine.errors import UsageError
from engine.exporters import export, export_local, export_tar, write_merged_tar
from engine.exporters.merged import walk_merged
from engine.graph.image import HistoryEntry, ImageConfig
from engine.images.archive import load
from engine.images.store import ImageStore
from engine.store.store import Store

OPAQUE = "trusted.overlay.opaque"
T = 2_000_000_000  # file times after the epochs used below


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def _chain(base: Path) -> list[Path]:
    """Three layers: files added, replaced, deleted, an opaque dir, a hardlink, owners."""
    l1, l2, l3 = base / "l1", base / "l2", base / "l3"
    for d in (l1, l2, l3):
        d.mkdir(parents=True)
    (l1 / "etc").mkdir()
    (l1 / "etc" / "keep").write_text("keep")
    (l1 / "etc" / "delete-me").write_text("x")
    (l1 / "cache").mkdir()
    (l1 / "cache" / "old").write_text("old")
    (l1 / "replaced").mkdir()
    (l1 / "replaced" / "child").write_text("child")
    (l1 / "owned").write_text("owned")
    os.chown(l1 / "owned", 1000, 2000)
    os.chmod(l1 / "owned", 0o640)
    (l2 / "etc").mkdir()
    _whiteout(l2 / "etc" / "delete-me")
    (l2 / "etc" / "new").write_text("new")
    (l2 / "cache").mkdir()
    os.setxattr(l2 / "cache", OPAQUE, b"y")
    (l2 / "cache" / "fresh").write_text("fresh")
    (l2 / "replaced").write_text("now a file")
    (l3 / "bin").mkdir()
    (l3 / "bin" / "tool").write_text("#!/bin/sh\n")
    os.chmod(l3 / "bin" / "tool", 0o755)
    os.link(l3 / "bin" / "tool", l3 / "bin" / "alias")
    os.symlink("tool", l3 / "bin" / "sym")
    (l3 / "etc").mkdir()
    (l3 / "etc" / "keep").write_text("keep v3")
    for layer in (l1, l2, l3):
        for dirpath, dirnames, filenames in os.walk(layer):
            for name in [*dirnames, *filenames]:
                os.utime(Path(dirpath, name), ns=(T * 10**9, T * 10**9), follow_symlinks=False)
    return [l1, l2, l3]


EXPECTED = {
    "bin": "d",
    "bin/alias": "tool",
    "bin/sym": "-> tool",
    "bin/tool": "#!/bin/sh\n",
    "cache": "d",
    "cache/fresh": "fresh",
    "etc": "d",
    "etc/keep": "keep v3",
    "etc/new": "new",
    "owned": "owned",
    "replaced": "now a file",
}


def _describe(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "d"
        else:
            out[rel] = path.read_text()
    out["bin/alias"] = "tool" if os.path.samefile(root / "bin/alias", root / "bin/tool") else "copy"
    return out


def test_merged_walk_applies_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    layers = _chain(tmp_path)
    names = [e.rel.decode() for e in walk_merged(layers)]
    assert names == sorted(EXPECTED, key=lambda n: n.split("/"))
    assert walk_merged([]) is not None and list(walk_merged([])) == []


def test_local_export_writes_the_final_filesystem(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    export_local(_chain(tmp_path), dest, source_date_epoch=1_000)
    assert _describe(dest) == EXPECTED
    owned = os.lstat(dest / "owned")
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1000, 2000, 0o640)
    assert stat.S_IMODE(os.lstat(dest / "bin" / "tool").st_mode) == 0o755
    assert os.lstat(dest / "etc" / "keep").st_mtime == 1_000  # clamped
    assert os.lstat(dest / "etc").st_mtime == 1_000
    assert not os.listxattr(dest / "cache")  # overlay's opaque marker is not exported


def test_local_export_never_follows_symlinks_in_dest(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("victim")
    dest = tmp_path / "out"
    dest.mkdir()
    os.symlink(outside, dest / "etc")  # a pre-existing symlink where the image has a dir
    os.symlink(outside / "keep", dest / "owned")  # and where the image has a file
    export_local(_chain(tmp_path / "layers"), dest)
    assert (outside / "keep").read_text() == "victim"
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (dest / "etc").is_dir() and not (dest / "etc").is_symlink()
    assert (dest / "owned").read_text() == "owned"


def test_tar_export_is_the_final_filesystem_and_deterministic(tmp_path: Path) -> None:
    layers = _chain(tmp_path / "a")
    out = tmp_path / "fs.tar"
    export_tar(layers, out, source_date_epoch=1_000)
    with tarfile.open(out) as tar:
        members = {m.name.rstrip("/"): m for m in tar.getmembers()}
        assert set(members) == set(EXPECTED)
        # the first name in walk order holds the content, the second links to it
        assert members["bin/alias"].isfile()
        assert members["bin/tool"].islnk() and members["bin/tool"].linkname == "bin/alias"
        assert members["owned"].uid == 1000 and members["owned"].gid == 2000
        assert {m.mtime for m in members.values()} == {1_000}
        fresh = tar.extractfile(members["cache/fresh"])
        assert fresh is not None and fresh.read() == b"fresh"
    # the same content made elsewhere, later, gives the same bytes
    other = _chain(tmp_path / "b")
    for layer in other:
        for path in layer.rglob("*"):
            os.utime(path, ns=(T * 10**9 + 5, T * 10**9 + 5), follow_symlinks=False)
    buf = io.BytesIO()
    write_merged_tar(other, buf, source_date_epoch=1_000)
    assert buf.getvalue() == out.read_bytes()


def _commit_chain(store: Store, layers: list[Path]) -> tuple[str, ...]:
    """Commit layer dirs as a snapshot chain (``cp -a`` keeps hardlinks, xattrs, whiteouts)."""
    chain: tuple[str, ...] = ()
    with store.lease() as lease:
        for i, layer in enumerate(layers):
            d = store.new_diff_dir(lease)
            subprocess.run(["cp", "-a", "--preserve=all", f"{layer}/.", str(d)], check=True)
            result = store.commit(
                keys=[f"test-{i}-{hashlib.sha256(repr(chain).encode()).hexdigest()}"],
                base=chain,
                diff=d,
                exec_ns=0,
                description="",
                lease=lease,
            )
            chain = result.layers
    return chain


CONFIG = ImageConfig(
    env=("PATH=/bin",),
    cmd=("/bin/tool",),
    history=(HistoryEntry("a"), HistoryEntry("b"), HistoryEntry("c")),
).to_json()


@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_image_archives_load_back_and_are_reproducible(kind: str, tmp_path: Path) -> None:
    results = []
    for name in ("one", "two"):
        with Store.open(tmp_path / f"store-{name}") as store:
            images = ImageStore(store)
            chain = _commit_chain(store, _chain(tmp_path / f"src-{name}"))
            dest = tmp_path / f"{name}.tar"
            image_id = export(
                store,
                images,
                kind,
                str(dest),
                {},
                layers=chain,
                config=CONFIG,
                source_date_epoch=1_234,
                name="example.com/app:v1",
            )
            results.append((image_id, dest.read_bytes()))
            assert images.list() == []  # an archive output names nothing in the store
    (id1, bytes1), (id2, bytes2) = results
    assert id1 == id2 and bytes1 == bytes2  # two empty stores, same input: same image
    with tarfile.open(tmp_path / "one.tar") as tar:
        names = tar.getnames()
    assert ("manifest.json" in names) == (kind == "docker")
    with Store.open(tmp_path / "reload") as store:
        (image,) = load(ImageStore(store), tmp_path / "one.tar")
        assert image.name == "example.com/app:v1"
        assert image.config_digest == id1
        assert image.config["created"] == "1970-01-01T00:20:34Z"
        assert len(image.layers) == 3
        assert image.config["config"]["Cmd"] == ["/bin/tool"]
        out = tmp_path / "reload-out"
        export_local([store.diff_path(s) for s in image.layers], out)
        assert _describe(out) == EXPECTED


def test_export_image_type_names_it_in_the_store(
    store: Store, images: ImageStore, tmp_path: Path
) -> None:
    chain = _commit_chain(store, _chain(tmp_path))
    image_id = export(
        store,
        images,
        "image",
        None,
        {"name": "a:1,b:2"},
        layers=chain,
        config=CONFIG,
        source_date_epoch=0,
    )
    a, b = images.get("a:1"), images.get("b:2")
    assert a is not None and b is not None
    assert a.config_digest == b.config_digest == image_id


@pytest.mark.parametrize(
    ("kind", "dest", "attrs", "message"),
    [
        ("zip", "x", {}, "unsupported output type"),
        ("tar", None, {}, "needs dest"),
        ("local", "-", {}, "needs a directory"),
        ("image", None, {}, "needs name"),
    ],
)
def test_export_usage_errors(
    kind: str,
    dest: str | None,
    attrs: dict[str, str],
    message: str,
    store: Store,
    images: ImageStore,
) -> None:
    with pytest.raises(UsageError, match=message):
        export(store, images, kind, dest, attrs, layers=(), config=CONFIG)


def test_local_and_tar_outputs_through_export(
    store: Store, images: ImageStore, tmp_path: Path
) -> None:
    chain = _commit_chain(store, _chain(tmp_path / "src"))
    assert (
        export(store, images, "local", str(tmp_path / "dir"), {}, layers=chain, config=CONFIG)
        is None
    )
    assert _describe(tmp_path / "dir") == EXPECTED
    export(
        store,
        images,
        "tar",
        str(tmp_path / "fs.tar"),
        {},
        layers=chain,
        config=CONFIG,
        source_date_epoch=5,
    )
    with tarfile.open(tmp_path / "fs.tar") as tar:
        assert {m.name.rstrip("/") for m in tar.getmembers()} == set(EXPECTED)
