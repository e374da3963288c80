"""Subordinate ID ranges and the mapping a rootless build gets (pure logic, fake files)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from engine.userns import idmap
from engine.userns.idmap import IdMapping, IdRange, current_mapping, subordinate_ranges


def _me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def test_ranges_by_name_and_by_number_skipping_comments_and_junk(tmp_path: Path) -> None:
    sub = tmp_path / "subuid"
    sub.write_text(
        "# comment\n\n"
        f"{_me()}:100000:65536\n"
        "other:300000:65536\n"
        f"{os.getuid()}:500000:1000\n"
        f"{_me()}:bad:1\n"
        f"{_me()}:700000:0\n"
    )
    uids, gids = subordinate_ranges(subuid=sub, subgid=tmp_path / "missing")
    assert uids == [(100000, 65536), (500000, 1000)]
    assert gids == []


def test_mapping_with_a_range_maps_root_to_the_user_and_1_up_to_the_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "sub"
    sub.write_text(f"{_me()}:100000:65536\n")
    monkeypatch.setattr(idmap, "have_newidmap", lambda: True)
    m = current_mapping(subuid=sub, subgid=sub)
    assert m.uids == (IdRange(0, os.getuid(), 1), IdRange(1, 100000, 65536))
    assert m.gids == (IdRange(0, os.getgid(), 1), IdRange(1, 100000, 65536))
    assert not m.single
    assert m.maps_uid(0) and m.maps_uid(1000) and m.maps_uid(65536)
    assert not m.maps_uid(65537)
    assert IdMapping.decode(m.encode()) == m


def test_without_newuidmap_or_a_gid_range_only_the_own_id_is_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "sub"
    sub.write_text(f"{_me()}:100000:65536\n")
    monkeypatch.setattr(idmap, "have_newidmap", lambda: False)
    assert current_mapping(subuid=sub, subgid=sub).single
    monkeypatch.setattr(idmap, "have_newidmap", lambda: True)
    single = current_mapping(subuid=sub, subgid=tmp_path / "none")
    assert single.single
    assert single.maps_uid(0) and not single.maps_uid(1)


def test_describe_names_both_ranges() -> None:
    ranges = (IdRange(0, 1001, 1), IdRange(1, 100000, 65536))
    assert IdMapping(ranges, ranges).describe() == "0→1001, 1-65536→100000-165535"
    other = (IdRange(0, 1002, 1),)
    assert IdMapping(ranges, other).describe() == (
        "uids 0→1001, 1-65536→100000-165535; gids 0→1002"
    )
