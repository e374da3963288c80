"""engine.userns.ownership as real root (the CI run), and the pieces its errors are made of.

What it does inside a user namespace is tested for real in ``test_rootless_files.py``; here:
root keeps the plain behaviour (owners, devices), and the errors read and travel well.
"""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest

from engine.fileops.chown import Owner, resolve_owner
from engine.graph.ops import ChownSpec
from engine.userns import IdMappingError, mode
from engine.userns.ownership import IdRangeError, chown, is_device, mknod, unmapped_error


@pytest.fixture(autouse=True)
def _as_root() -> None:
    assert mode() == "root", "these tests describe real root; the suite runs as root"


def test_chown_as_root_sets_any_owner(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    chown(path, 1000, 70000, what="test needs {id}")
    st = os.lstat(path)
    assert (st.st_uid, st.st_gid) == (1000, 70000)
    link = tmp_path / "link"
    link.symlink_to("f")
    chown(link, 5, 6, what="test")  # the link itself
    assert (os.lstat(link).st_uid, os.lstat(path).st_uid) == (5, 1000)
    chown(link, 7, 8, follow_symlinks=True, what="test")  # its target
    assert (os.lstat(link).st_uid, os.lstat(path).st_uid) == (5, 7)
    fd = os.open(path, os.O_RDONLY)
    try:
        chown(fd, 9, -1, what="test")
    finally:
        os.close(fd)
    st = os.lstat(path)
    assert (st.st_uid, st.st_gid) == (9, 8)


def test_other_errors_stay_os_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        chown(tmp_path / "missing", 1, 1, what="test")


def test_no_mapping_error_outside_a_user_namespace() -> None:
    assert unmapped_error(1000, 1000, "--chown=1000 needs {id}") is None


def test_devices_are_made_as_root(tmp_path: Path) -> None:
    assert mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3)) is True
    st = os.lstat(tmp_path / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert mknod(tmp_path / "wh", stat.S_IFCHR, 0) is True
    assert mknod(tmp_path / "fifo", stat.S_IFIFO | 0o600) is True
    with pytest.raises(FileExistsError):
        mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))


def test_is_device_leaves_out_whiteouts_and_fifos() -> None:
    assert is_device(stat.S_IFCHR, os.makedev(1, 3))
    assert is_device(stat.S_IFBLK, os.makedev(8, 0))
    assert is_device(stat.S_IFBLK, 0)
    assert not is_device(stat.S_IFCHR, 0)  # overlayfs's whiteout
    assert not is_device(stat.S_IFIFO, 0)
    assert not is_device(stat.S_IFREG, 0)


def test_errors_name_what_needed_the_id_and_the_setup() -> None:
    single = IdMappingError("--chown=1000:1000 needs uid 1000 (/app)")
    assert str(single).startswith("--chown=1000:1000 needs uid 1000 (/app), but this rootless")
    assert "uidmap" in str(single) and "subuid" in str(single)
    ranged = IdRangeError("--chown=70000 needs uid 70000 (/app)", "0→1002, 1-65536→165536-231071")
    assert isinstance(ranged, IdMappingError)
    assert "maps only container IDs 0→1002, 1-65536→165536-231071" in str(ranged)
    assert "subordinate range" in str(ranged)


def test_errors_survive_pickling_to_and_from_the_helper() -> None:
    ranged = IdRangeError("x needs uid 70000", "0→1, 1-10→100-109")
    back = pickle.loads(pickle.dumps(ranged))
    assert type(back) is IdRangeError
    assert str(back) == str(ranged) and back.what == ranged.what and back.mapping == ranged.mapping


def test_owner_says_how_it_was_given_without_changing_equality() -> None:
    owner = resolve_owner(ChownSpec("1000", "50"), None)
    assert owner == Owner(1000, 50)
    assert owner.needs("app/f") == "--chown=1000:50 needs {id} (/app/f)"
    assert resolve_owner(ChownSpec("7"), None).needs("") == "--chown=7 needs {id} (/)"
    assert Owner(1, 2).needs("x") == "--chown=1:2 needs {id} (/x)"
