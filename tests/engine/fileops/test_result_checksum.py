"""Content checksums of results: the context's equalities, except that owners count."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.context.checksum import checksum_path
from engine.context.source import ContextHasher
from engine.context.tree import ContextTree
from engine.errors import ContextError
from engine.fileops import DirTree, LayerTree, result_checksum
from engine.graph.ops import ContentSpec, LocalSource, PathSelector
from engine.snapshot.layers import LayerView

from .conftest import Runner, copy, write


def spec(*paths: str, **kw: object) -> ContentSpec:
    return ContentSpec(tuple(PathSelector(p, **kw) for p in paths))  # type: ignore[arg-type]


def cs(layers: list[Path], *paths: str, **kw: object) -> str:
    return result_checksum(LayerTree(layers), spec(*paths, **kw))


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    root = write(
        tmp_path / "layer",
        {
            "app/main.py": "print(1)\n",
            "app/lib/util.py": "x = 1\n",
            "a/x.txt": "same\n",
            "b/x.txt": "same\n",
        },
    )
    os.symlink("main.py", root / "app" / "link")
    return root


Mutation = Callable[[Path], None]


def _touch(root: Path) -> None:
    os.utime(root / "app" / "main.py", ns=(1, 1))
    os.utime(root / "app", ns=(5, 5))


def _selinux(root: Path) -> None:
    # If the kernel refuses, the rule itself is covered by the context's tests.
    with contextlib.suppress(OSError):
        os.setxattr(root / "app" / "main.py", "security.selinux", b"system_u:object_r:x_t:s0")


def _opaque(root: Path) -> None:
    os.setxattr(root / "app" / "lib", "trusted.overlay.opaque", b"y")


SAME: list[tuple[str, Mutation]] = [
    ("mtime only", _touch),
    ("security.selinux", _selinux),
    ("overlay opaque marker", _opaque),
]

DIFFERENT: list[tuple[str, Mutation]] = [
    ("content", lambda r: (r / "app" / "main.py").write_text("print(2)\n")),
    ("chmod +x", lambda r: os.chmod(r / "app" / "main.py", 0o755)),
    ("setuid", lambda r: os.chmod(r / "app" / "main.py", 0o4644)),
    ("dir mode", lambda r: os.chmod(r / "app" / "lib", 0o700)),
    ("uid", lambda r: os.chown(r / "app" / "main.py", 1000, 0)),
    ("gid", lambda r: os.chown(r / "app" / "lib", 0, 1000)),
    ("user xattr", lambda r: os.setxattr(r / "app" / "main.py", "user.k", b"v")),
    (
        "security.capability",
        lambda r: os.setxattr(
            r / "app" / "main.py", "security.capability", b"\x01\x00\x00\x02" + b"\0" * 16
        ),
    ),
    (
        "symlink target",
        lambda r: (os.unlink(r / "app" / "link"), os.symlink("lib", r / "app" / "link")),
    ),
    ("new file", lambda r: (r / "app" / "new").write_text("")),
    ("rename", lambda r: os.rename(r / "app" / "main.py", r / "app" / "main2.py")),
    ("file to dir", lambda r: (os.unlink(r / "app" / "main.py"), os.mkdir(r / "app" / "main.py"))),
]


@pytest.mark.parametrize(("what", "mutate"), SAME, ids=[w for w, _ in SAME])
def test_equal_after(layer: Path, what: str, mutate: Mutation) -> None:
    before = cs([layer], "/app")
    mutate(layer)
    assert cs([layer], "/app") == before


@pytest.mark.parametrize(("what", "mutate"), DIFFERENT, ids=[w for w, _ in DIFFERENT])
def test_different_after(layer: Path, what: str, mutate: Mutation) -> None:
    before = cs([layer], "/app")
    try:
        mutate(layer)
    except PermissionError:
        pytest.fail(f"cannot apply {what!r} (tests run as root)")
    assert cs([layer], "/app") != before


def test_owners_count_for_results_not_for_the_context(layer: Path) -> None:
    ctx_before = checksum_path(layer, "app")
    res_before = cs([layer], "/app")
    os.chown(layer / "app" / "main.py", 1234, 5678)
    assert checksum_path(layer, "app") == ctx_before
    assert cs([layer], "/app") != res_before
    # Downloads are read like the context: owners normalised.
    assert result_checksum(DirTree(layer), spec("/app")) == ctx_before


def test_same_bytes_elsewhere_are_equal(layer: Path) -> None:
    assert cs([layer], "/a/x.txt") == cs([layer], "/b/x.txt")
    assert cs([layer], "/a") == cs([layer], "/b")


def test_root_header_counts_for_results(layer: Path) -> None:
    before = cs([layer], "/")
    os.chmod(layer, 0o700)
    assert cs([layer], "/") != before
    ctx = checksum_path(layer, "/")
    os.chmod(layer, 0o755)
    assert checksum_path(layer, "/") == ctx  # the context's root header is a constant


def test_layer_structure_does_not_matter(tmp_path: Path, layer: Path) -> None:
    # The same files, as one layer or as a chain with later changes and deletions.
    l1 = write(
        tmp_path / "l1", {"app/main.py": "old\n", "app/lib/util.py": "x = 1\n", "app/junk": "j"}
    )
    l2 = write(
        tmp_path / "l2", {"app/main.py": "print(1)\n", "a/x.txt": "same\n", "b/x.txt": "same\n"}
    )
    os.mknod(l2 / "app" / "junk", stat.S_IFCHR, os.makedev(0, 0))
    os.symlink("main.py", l2 / "app" / "link")
    for p in ("app", "app/lib"):
        os.chmod(l1 / p, os.stat(layer / p).st_mode & 0o7777)
    os.chmod(l2 / "app", os.stat(layer / "app").st_mode & 0o7777)
    assert cs([l1, l2], "/app") == cs([layer], "/app")
    assert result_checksum(LayerView([l1, l2]), spec("/app")) == cs([layer], "/app")


def test_selectors_wildcards_and_filters(layer: Path) -> None:
    # One match with the same base name is that entry's digest (BuildKit's shortcut) ...
    assert cs([layer], "/ap?/main.py", wildcard=True) == cs([layer], "/app/main.py")
    # ... otherwise the match's name counts.
    assert cs([layer], "/app/*.py", wildcard=True) != cs([layer], "/app/main.py")
    assert cs([layer], "/app", exclude=("lib",)) != cs([layer], "/app")
    assert cs([layer], "/app/link", follow_links=True) == cs([layer], "/app/main.py")
    both = cs([layer], "/a/x.txt", "/app")
    assert both not in (cs([layer], "/a/x.txt"), cs([layer], "/app"))
    assert result_checksum(LayerTree([layer]), ContentSpec(())) == cs([layer], "/")


def test_missing_path_names_the_ref(layer: Path) -> None:
    with pytest.raises(
        ContextError, match=r'failed to calculate checksum of ref r1: "/nope": not found'
    ):
        result_checksum(LayerTree([layer]), spec("/nope"), ref="r1")


def test_combination_matches_the_context_hasher(layer: Path) -> None:
    hasher = ContextHasher()
    two = spec("/a/x.txt", "/app")
    try:
        assert result_checksum(DirTree(layer), two) == hasher.checksum(
            LocalSource(name="context", path=str(layer)), two
        )
    finally:
        hasher.close()


def test_copied_result_hashes_like_its_context_source(runner: Runner, tmp_path: Path) -> None:
    # COPY . /app/ then COPY --from=<that stage> /app/dir: the content key equals the one the
    # context's dir had (owners 0, modes, bytes, links and xattrs all carried over).
    ctx_root = write(tmp_path / "ctx", {"dir/f": "f", "dir/sub/g": "g"})
    os.chmod(ctx_root / "dir" / "sub", 0o700)
    os.setxattr(ctx_root / "dir" / "f", "user.x", b"1")
    os.symlink("f", ctx_root / "dir" / "l")
    os.chown(ctx_root / "dir" / "f", 1000, 1000)
    r = runner.run(copy("/", "/app/"), sources={1: ContextTree(ctx_root)})
    assert result_checksum(LayerTree(r.layers), spec("/app/dir")) == checksum_path(ctx_root, "dir")
    # From a stage, owners are kept and count.
    r2 = runner.run(copy("/", "/app/"), sources={1: LayerTree([ctx_root])})
    assert result_checksum(LayerTree(r2.layers), spec("/app/dir")) == checksum_path(
        ctx_root, "dir", normalize_owner=False
    )
