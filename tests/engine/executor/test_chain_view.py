"""The OCI executor's view of a chain that is a previous step's chain plus one layer answers
every lookup exactly as a fresh view of the whole chain does (whiteouts, opaque directories,
files over directories and symlinks in the top layer included)."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.snapshot.errors import SnapshotError
from engine.snapshot.layers import ChainView, LayerView, chain_view

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts are 0:0 devices")

NAMES = ("etc", "usr", "a", "b")


def _opaque(path: Path) -> None:
    os.setxattr(path, "trusted.overlay.opaque", b"y")


def _layer(root: Path, rnd: random.Random) -> Path:
    """A layer with a few random entries two levels deep."""
    root.mkdir()
    for first in rnd.sample(NAMES, rnd.randint(0, 3)):
        kind = rnd.choice(["dir", "dir", "file", "whiteout", "symlink", "opaque"])
        path = root / first
        if kind == "file":
            path.write_text(first)
        elif kind == "whiteout":
            os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))
        elif kind == "symlink":
            path.symlink_to(rnd.choice(["/usr", "b", "/etc/passwd"]))
        else:
            path.mkdir()
            if kind == "opaque":
                _opaque(path)
            for second in rnd.sample(["passwd", "group", "hosts", "lib"], rnd.randint(0, 2)):
                inner = path / second
                if rnd.random() < 0.3:
                    os.mknod(inner, 0o600 | 0o020000, os.makedev(0, 0))
                elif second == "lib":
                    inner.mkdir()
                    if rnd.random() < 0.3:
                        _opaque(inner)
                    if rnd.random() < 0.5:
                        (inner / "deeper").write_text("deeper")
                else:
                    inner.write_text(f"{first}/{second} in {root.name}")
    return root


PATHS = [
    "/",
    *(f"/{a}" for a in NAMES),
    *(f"/{a}/{b}" for a, b in itertools.product(NAMES, ["passwd", "group", "hosts", "lib", "x"])),
    "/etc/lib/deeper",
    "/etc/lib/passwd",
    "/usr/lib/x/y",
    "//etc/./passwd",
]


@pytest.mark.parametrize("seed", range(60))
def test_a_chain_view_answers_as_a_fresh_view(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    layers = tuple(_layer(tmp_path / f"l{i}", rnd) for i in range(rnd.randint(2, 5)))
    below = LayerView(layers[:-1])
    for path in rnd.sample(PATHS, 8):  # the step below asked some paths already
        below.lookup(path)
    chained = ChainView(layers, below)
    fresh = LayerView(layers)
    for path in PATHS:
        assert chained.lookup(path) == fresh.lookup(path), path
        for follow in (True, False):
            assert _outcome(chained.resolve, path, follow_final=follow) == _outcome(
                fresh.resolve, path, follow_final=follow
            ), path
        assert _outcome(chained.read_file, path) == _outcome(fresh.read_file, path), path


def _outcome(fn: Callable[..., object], *args: object, **kwargs: object) -> object:
    """What ``fn`` returns, or the error it raises (a symlink loop is an error on both)."""
    try:
        return fn(*args, **kwargs)
    except SnapshotError as exc:
        return ("error", str(exc))


def test_a_chain_of_views_answers_from_the_view_below_without_rewalking_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 RUN-like layers: each holds a copied-up /etc (the stubs' parent) and its own file
    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    view: LayerView = LayerView([base])
    chain: tuple[Path, ...] = (base,)
    for i in range(40):
        layer = tmp_path / f"l{i}"
        (layer / "etc").mkdir(parents=True)
        (layer / f"s{i}").write_text(str(i))
        chain = (*chain, layer)
        view = ChainView(chain, view)
        assert view.read_file("/etc/passwd") == b"root:x:0:0:root:/root:/bin/sh\n"
        assert view.lookup("/etc/hosts") is None
    # the next step's view: its answers come from the top layer and the memo below
    layer = tmp_path / "top"
    (layer / "etc").mkdir(parents=True)
    top = ChainView((*chain, layer), view)
    looked: list[str] = []
    real_lstat = os.lstat

    def counting_lstat(path: str | Path) -> os.stat_result:
        looked.append(os.fspath(path))
        return real_lstat(path)

    monkeypatch.setattr(os, "lstat", counting_lstat)
    assert top.lookup("/etc/passwd") == base / "etc" / "passwd"
    assert top.lookup("/etc/hosts") is None
    assert all(p.startswith(os.fspath(layer)) for p in looked), looked


def test_chain_view_is_shared_and_chains_the_next_step(tmp_path: Path) -> None:
    # the runner (mount points) and the executor (USER, stubs) of one step share a view;
    # the next step's chain answers through it
    layers = []
    for i in range(3):
        layer = tmp_path / f"l{i}"
        (layer / "etc").mkdir(parents=True)
        layers.append(layer)
    (layers[0] / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    first = chain_view(layers[:2])
    assert chain_view(tuple(layers[:2])) is first
    following = chain_view(layers)
    assert isinstance(following, ChainView) and following is not first
    assert following.lookup("/etc/passwd") == layers[0] / "etc" / "passwd"
    assert first.lookup("/etc/passwd") == layers[0] / "etc" / "passwd"
