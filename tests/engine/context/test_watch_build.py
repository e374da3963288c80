"""Whole builds in one process with the context watch on: an unchanged context is reused, an
edited one re-runs its COPY with the new bytes (real containers, as tests/engine/test_build.py).
"""

from __future__ import annotations

import importlib.util
import mmap
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from engine.context import source as source_mod
from engine.context import watch
from engine.context.tree import ContextTree


def _load_base() -> ModuleType:
    name = "nbbuild_tests_buildkit_base"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[2] / "buildkit_base.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


base = _load_base()
busybox_archive = base.busybox_archive
bk = base.bk
statuses = base.statuses

DOCKERFILE = """\
FROM busybox
COPY . /ctx
RUN cat /ctx/src/app.txt
"""


@pytest.fixture
def watching(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process watches contexts from their first walk, as a kernel does (a rootless build
    runs in the helper process, which does the same)."""
    fresh = watch.Watcher()
    monkeypatch.delenv("NBBUILD_CONTEXT_WATCH", raising=False)
    monkeypatch.setattr(watch, "_WATCHER", fresh)
    monkeypatch.setattr(watch, "_MODE", True)
    monkeypatch.setattr(source_mod, "_KEPT", {})
    # The context was just written: trust it at once (tests/engine/context/test_watch.py has
    # the racy window's test).
    monkeypatch.setattr(source_mod, "_RACY_WINDOW_NS", 0)
    yield
    fresh.clear()


def test_an_edit_between_warm_builds_reruns_the_copy_with_the_new_bytes(
    bk: object, watching: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    bk.write({"src/app.txt": "version one\n", "src/other.txt": "unchanged\n"})  # type: ignore[attr-defined]
    first = bk.build(DOCKERFILE)  # type: ignore[attr-defined]
    assert first.step("[3/3]").logs == b"version one\n"
    listed: list[str] = []
    scan = ContextTree._scan_children

    def counting(self: ContextTree, rel: str) -> list[str]:
        listed.append(rel)
        return scan(self, rel)

    monkeypatch.setattr(ContextTree, "_scan_children", counting)
    for _ in range(2):
        again = bk.build(DOCKERFILE)  # type: ignore[attr-defined]
        assert set(statuses(again).values()) == {"cached"}
    assert listed == []  # the unchanged context was not walked again
    # Same size, same mtime: only the bytes (and ctime) differ.
    app = bk.ctx / "src" / "app.txt"  # type: ignore[attr-defined]
    st = app.stat()
    app.write_text("version two\n")
    os.utime(app, ns=(st.st_atime_ns, st.st_mtime_ns))
    third = bk.build(DOCKERFILE)  # type: ignore[attr-defined]
    assert third.step("[2/3]").status == "executed"
    assert third.step("[3/3]").status == "executed"
    assert third.step("[3/3]").logs == b"version two\n"
    fourth = bk.build(DOCKERFILE)  # type: ignore[attr-defined]
    assert set(statuses(fourth).values()) == {"cached"}


def test_a_write_through_a_shared_mapping_between_warm_builds_is_seen(
    bk: object, watching: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As numpy.memmap(path, mode="r+") writes: open, map, close the descriptor, write through
    the mapping. Nothing of it is an inotify event; the file's mtime and ctime change."""
    bk.write({"src/app.txt": "version one\n", "src/other.txt": "unchanged\n"})  # type: ignore[attr-defined]
    first = bk.build(DOCKERFILE)  # type: ignore[attr-defined]
    assert first.step("[3/3]").logs == b"version one\n"
    listed: list[str] = []
    scan = ContextTree._scan_children

    def counting(self: ContextTree, rel: str) -> list[str]:
        listed.append(rel)
        return scan(self, rel)

    monkeypatch.setattr(ContextTree, "_scan_children", counting)
    app = bk.ctx / "src" / "app.txt"  # type: ignore[attr-defined]
    with open(app, "r+b") as f:
        mapping = mmap.mmap(f.fileno(), 0)
    try:
        again = bk.build(DOCKERFILE)  # type: ignore[attr-defined]
        assert set(statuses(again).values()) == {"cached"}
        assert listed == []  # still reused: mapping the file changed nothing
        mapping[:12] = b"version two\n"
        mapping.flush()
        second = bk.build(DOCKERFILE)  # type: ignore[attr-defined]
        assert second.step("[2/3]").status == "executed"
        assert second.step("[3/3]").status == "executed"
        assert second.step("[3/3]").logs == b"version two\n"
        listed.clear()
        third = bk.build(DOCKERFILE)  # type: ignore[attr-defined]
        assert set(statuses(third).values()) == {"cached"}
        assert listed == []  # the new state is reused (a rootless build hashes in its helper)
    finally:
        mapping.close()
