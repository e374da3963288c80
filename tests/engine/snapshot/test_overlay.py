"""Overlay mounts in a private namespace, layer views and diffs (whiteouts, opaque dirs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from engine.snapshot import (
    ChangeKind,
    LayerView,
    OverlayMount,
    SnapshotError,
    is_opaque_dir,
    is_whiteout,
    read_diff,
)


def in_overlay(
    overlay: OverlayMount, target: Path, script: str
) -> subprocess.CompletedProcess[str]:
    """Mount ``overlay`` at ``target`` in a private mount namespace and run ``script`` there."""
    assert os.geteuid() == 0, "overlay tests need root (as in CI)"
    overlay.upper.mkdir(parents=True, exist_ok=True)
    overlay.work.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    mount = " ".join(f"'{a}'" for a in overlay.mount_argv(target))
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-ec",
            f"{mount}\ncd '{target}'\n{script}",
        ],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def base(tmp_path: Path) -> Path:
    root = tmp_path / "base"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "a").write_text("a")
    (root / "dir" / "sub" / "b").write_text("b")
    (root / "keep").write_text("keep")
    return root


def test_overlay_changes_become_upper_dir_entries(tmp_path: Path, base: Path) -> None:
    ov = OverlayMount((base,), tmp_path / "upper", tmp_path / "work")
    proc = in_overlay(
        ov,
        tmp_path / "merged",
        "echo new > x\nrm keep\nrm -r dir\nmkdir dir\necho c > dir/c\necho more >> etc/passwd",
    )
    assert proc.returncode == 0, proc.stderr
    upper = ov.upper
    assert (upper / "x").read_text() == "new\n"
    assert is_whiteout(os.lstat(upper / "keep"))
    assert is_opaque_dir(upper / "dir")
    assert (base / "keep").read_text() == "keep"  # lower untouched
    changes = {c.path: c for c in read_diff(upper, ov.lowers)}
    assert changes["/x"].kind is ChangeKind.ADDED
    assert changes["/keep"].kind is ChangeKind.DELETED
    assert changes["/dir"].kind is ChangeKind.MODIFIED and changes["/dir"].opaque
    assert changes["/dir/c"].kind is ChangeKind.ADDED
    assert changes["/etc/passwd"].kind is ChangeKind.MODIFIED
    assert changes["/etc"].kind is ChangeKind.MODIFIED and not changes["/etc"].opaque
    assert "/dir/a" not in changes


def test_nothing_stays_mounted_on_the_host(tmp_path: Path, base: Path) -> None:
    ov = OverlayMount((base,), tmp_path / "upper", tmp_path / "work")
    assert in_overlay(ov, tmp_path / "merged", "test -f keep").returncode == 0
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert str(ov.upper) not in f.read()


def test_chain_of_diffs_as_lowers(tmp_path: Path, base: Path) -> None:
    first = OverlayMount((base,), tmp_path / "u1", tmp_path / "w1")
    assert (
        in_overlay(
            first, tmp_path / "m1", "rm keep; rm -r dir; mkdir dir; echo 1 > dir/one"
        ).returncode
        == 0
    )
    second = OverlayMount((base, first.upper), tmp_path / "u2", tmp_path / "w2")
    proc = in_overlay(second, tmp_path / "m2", "ls -A dir; test ! -e keep && echo gone")
    assert proc.stdout == "one\ngone\n", proc.stderr
    view = LayerView([base, first.upper])
    assert view.lookup("/keep") is None
    assert view.lookup("/dir/a") is None  # hidden by the opaque dir
    assert view.lookup("/dir/one") == first.upper / "dir" / "one"
    assert view.lookup("/etc/passwd") == base / "etc" / "passwd"


def test_options_order_and_validation(tmp_path: Path) -> None:
    ov = OverlayMount((Path("/l/base"), Path("/l/top")), Path("/u"), Path("/w"))
    assert ov.options().startswith("lowerdir=/l/top:/l/base,upperdir=/u,workdir=/w,")
    with pytest.raises(SnapshotError, match="','"):
        OverlayMount((Path("/a,b"),), Path("/u"), Path("/w")).options()
    with pytest.raises(SnapshotError, match="absolute"):
        OverlayMount((Path("rel"),), Path("/u"), Path("/w")).options()
    with pytest.raises(SnapshotError, match="at most"):
        OverlayMount(
            tuple(Path(f"/layer/{'x' * 100}/{i}") for i in range(50)), Path("/u"), Path("/w")
        ).options()
    with pytest.raises(SnapshotError):
        OverlayMount((), Path("/u"), Path("/w"))


def test_volatile_option_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    ov = OverlayMount((Path("/l"),), Path("/u"), Path("/w"))
    assert "volatile" not in ov.options()
    assert ov.options(volatile=True).split(",")[-1] == "volatile"
    from engine.snapshot import overlay

    for release, expected in [("5.4.0-150-generic", False), ("5.10.0", True), ("6.18.1", True)]:
        overlay.volatile_supported.cache_clear()
        monkeypatch.setattr(overlay.os, "uname", lambda r=release: os.uname_result(("", "", r, "", "")))
        assert overlay.volatile_supported() is expected, release
    overlay.volatile_supported.cache_clear()


def test_layer_view_resolves_symlinks_inside_the_view(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "private" / "etc").mkdir(parents=True)
    (root / "private" / "etc" / "passwd").write_text("inside\n")
    (root / "etc").symlink_to("/private/etc")
    (root / "up").symlink_to("../../../../../../../../etc")
    view = LayerView([root])
    assert view.read_file("/etc/passwd") == b"inside\n"
    # `..` stops at the view's root: this is /etc inside, never the host's /etc
    assert view.read_file("/up/passwd") == b"inside\n"
    assert view.resolve("/etc/passwd")[0] == "/private/etc/passwd"


def test_layer_view_refuses_escape_to_host_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("/etc/hostname")  # absolute: resolves inside the view
    assert LayerView([root]).read_file("/etc/passwd") is None


def test_layer_view_symlink_loop(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(SnapshotError, match="symbolic links"):
        LayerView([root]).read_file("/a")


def test_layer_view_non_regular_file_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "passwd").mkdir(parents=True)
    assert LayerView([root]).read_file("/etc/passwd") is None


def test_whiteout_in_plain_layer_dirs(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "f").write_text("f")
    (upper / "d").mkdir(parents=True)
    os.mknod(upper / "d" / "f", 0o600 | 0o020000, os.makedev(0, 0))
    view = LayerView([lower, upper])
    assert view.lookup("/d/f") is None
    assert view.lookup("/d") == upper / "d"
    [change] = [c for c in read_diff(upper, [lower]) if c.path == "/d/f"]
    assert change.kind is ChangeKind.DELETED
