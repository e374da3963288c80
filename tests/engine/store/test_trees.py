"""Tree sizes, removal of container-made trees, ids, durability calls."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.errors import StoreError
from engine.store import fsync
from engine.store.trees import new_id, remove_tree, tree_size


def test_new_id_shape() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 25 and i.isalnum() and i == i.lower() for i in ids)


def test_tree_size_counts_blocks_and_hardlinks_once(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "big").write_bytes(b"x" * 100_000)
    base = tree_size(root)
    assert base >= 100_000
    os.link(root / "big", root / "link")
    assert tree_size(root) == base
    (root / "sub").mkdir()
    (root / "sub" / "small").write_bytes(b"y")
    assert tree_size(root) > base
    assert tree_size(tmp_path / "missing") == 0
    assert tree_size(root / "big") == os.lstat(root / "big").st_blocks * 512


def test_remove_tree_handles_locked_dirs_whiteouts_and_depth(tmp_path: Path) -> None:
    root = tmp_path / "t"
    deep = root
    for i in range(300):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    locked = root / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "f").write_text("x")
    os.chmod(locked / "inner", 0)
    os.chmod(locked, 0o500)
    os.mknod(root / "whiteout", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.mkfifo(root / "fifo")
    (root / "sym").symlink_to("/etc/passwd")
    remove_tree(root)
    assert not root.exists()
    assert os.path.exists("/etc/passwd")
    remove_tree(root)  # already gone: fine
    f = tmp_path / "file"
    f.write_text("x")
    remove_tree(f)
    assert not f.exists()


def test_syncfs_and_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "t"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("x")
    os.mkfifo(root / "fifo")  # opening it would block: the fallback must skip it
    os.mknod(root / "wh", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    fsync.syncfs(root)
    calls: list[Path] = []
    real = fsync.fsync_file
    monkeypatch.setattr(fsync, "_syncfs_loaded", True)
    monkeypatch.setattr(fsync, "_syncfs_fn", None)

    def recording(path: Path) -> None:
        calls.append(path)
        real(path)

    monkeypatch.setattr(fsync, "fsync_file", recording)
    fsync.syncfs(root)
    assert calls == [root / "sub" / "f"]
    with pytest.raises(StoreError):
        fsync.syncfs(tmp_path / "missing")
    with pytest.raises(StoreError):
        fsync.fsync_dir(tmp_path / "missing")
