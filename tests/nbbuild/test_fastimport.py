"""The CLI's cache of the code @dataclass generates (nbbuild._fastimport)."""

from __future__ import annotations

import builtins
import dataclasses
import sys
from pathlib import Path

import pytest

from nbbuild._fastimport import compiled_dataclasses


def _make() -> tuple[type, type]:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Point:
        x: int
        y: int = 2
        tags: tuple[str, ...] = ()

    @dataclasses.dataclass(order=True)
    class Box:
        size: int
        items: list[int] = dataclasses.field(default_factory=list)

    return Point, Box


def _exercise(point: type, box: type) -> list[object]:
    p = point(1)
    b = box(3)
    b.items.append(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 5  # type: ignore[misc]
    return [repr(p), p == point(1, 2), hash(p) == hash(point(1)), repr(b), box(1) < box(2)]


def test_same_classes_with_and_without_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    cache = tmp_path / "dc.marshal"
    plain = _exercise(*_make())
    with compiled_dataclasses(cache):
        first = _exercise(*_make())
    assert cache.is_file()
    assert "exec" not in vars(dataclasses)  # restored

    compiled: list[str] = []
    real_compile = builtins.compile

    def counting(*args: object, **kwargs: object) -> object:
        compiled.append(str(args[0])[:40])
        return real_compile(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "compile", counting)
    with compiled_dataclasses(cache):
        second = _exercise(*_make())
    monkeypatch.undo()
    assert compiled == []  # every generated function came from the file
    assert plain == first == second


def test_dont_write_bytecode_and_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "dc.marshal"
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    with compiled_dataclasses(cache):
        _exercise(*_make())
    assert not cache.exists()
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    cache.write_bytes(b"not marshal data")
    with compiled_dataclasses(cache):
        assert _exercise(*_make()) == _exercise(*_make())
    assert "exec" not in vars(dataclasses)
