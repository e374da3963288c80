"""Helpers for file-op tests: build layers and contexts, run ops, and read results two ways.

Every result is read through :class:`~engine.fileops.tree.LayerTree` *and* checked against
the kernel: the layers are mounted as a read-only overlayfs in a private mount namespace and
the two listings must agree, so "``dest + [out]`` seen with overlayfs's rules" is what Linux
itself shows, not what our own reader believes.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.context.tree import ReadTree
from engine.fileops import apply_file_op
from engine.fileops.tree import LayerTree
from engine.graph.ops import CopyAction, FileAction, FileOp

# kind, permission bits, uid, gid, payload (file bytes as text, or a symlink's target)
Entry = tuple[str, int, int, int, str]

_DUMP = r"""
import json, os, stat, sys
root = sys.argv[1]
out = {}
def kind(m):
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "link"),
                       (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"), (stat.S_ISFIFO, "fifo")):
        if test(m):
            return name
    return "other"
def visit(path, rel):
    st = os.lstat(path)
    k = kind(st.st_mode)
    payload = ""
    if k == "file":
        with open(path, "rb") as fh:
            payload = fh.read().decode("utf-8", "replace")
    elif k == "link":
        payload = os.readlink(path)
    out[rel or "/"] = [k, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, payload]
    if k == "dir":
        for name in sorted(os.listdir(path)):
            visit(os.path.join(path, name), rel + "/" + name)
visit(root, "")
print(json.dumps(out))
"""


def tree_dump(tree: ReadTree) -> dict[str, Entry]:
    """Every entry of a read tree, as ``{"/path": (kind, perm, uid, gid, payload)}``."""
    out: dict[str, Entry] = {}

    def visit(rel: str) -> None:
        st = tree.lstat(rel)
        assert st is not None
        mode = st.st_mode
        payload = ""
        if stat.S_ISDIR(mode):
            kind = "dir"
        elif stat.S_ISREG(mode):
            kind = "file"
            with open(tree.real(rel), "rb") as fh:
                payload = fh.read().decode("utf-8", "replace")
        elif stat.S_ISLNK(mode):
            kind = "link"
            payload = tree.readlink(rel)
        elif stat.S_ISCHR(mode):
            kind = "chr"
        elif stat.S_ISBLK(mode):
            kind = "blk"
        elif stat.S_ISFIFO(mode):
            kind = "fifo"
        else:
            kind = "other"
        out["/" + rel] = (kind, stat.S_IMODE(mode), st.st_uid, st.st_gid, payload)
        if kind == "dir":
            for name in sorted(tree.children(rel)):
                visit(f"{rel}/{name}" if rel else name)

    visit("")
    return out


def kernel_dump(layers: Sequence[Path], where: Path) -> dict[str, Entry]:
    """What Linux shows for ``layers`` (bottom first) mounted as a read-only overlay."""
    assert os.geteuid() == 0, "file-op tests compare with real overlay mounts: run as root"
    target = where / "kernel-mount"
    target.mkdir(parents=True, exist_ok=True)
    script = where / "dump.py"
    script.write_text(_DUMP)
    if len(layers) == 1:
        mount = f"mount --bind '{layers[0]}' '{target}'"
    else:
        lower = ":".join(str(p) for p in reversed(layers))
        mount = f"mount -t overlay overlay -o 'lowerdir={lower}' '{target}'"
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-ec",
            f"{mount}\n'{sys.executable}' '{script}' '{target}'",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    raw = json.loads(proc.stdout)
    return {k: (v[0], v[1], v[2], v[3], v[4]) for k, v in raw.items()}


@dataclass
class Result:
    """The outcome of one file op: its layer and the whole chain it completes."""

    out: Path
    layers: list[Path]
    tree: LayerTree = field(init=False)

    def __post_init__(self) -> None:
        self.tree = LayerTree(self.layers)

    def dump(self) -> dict[str, Entry]:
        return tree_dump(self.tree)

    def entry(self, path: str) -> Entry | None:
        return self.dump().get(path)

    def read(self, path: str) -> str:
        res = self.tree.resolve(path, True)
        assert res.st is not None, f"{path} missing"
        with open(self.tree.real(res.rel), "rb") as fh:
            return fh.read().decode()

    def lstat(self, path: str) -> os.stat_result | None:
        return self.tree.lstat(path.strip("/"))

    def exists(self, path: str) -> bool:
        return self.lstat(path) is not None


@dataclass
class Runner:
    """Runs file ops in a test's temporary directory."""

    tmp: Path
    count: int = 0

    def new_dir(self, name: str) -> Path:
        self.count += 1
        path = self.tmp / f"{self.count:02d}-{name}"
        path.mkdir(parents=True)
        return path

    def run(
        self,
        actions: Sequence[FileAction] | FileAction,
        *,
        dest: Sequence[Path] | None = None,
        sources: Mapping[int, ReadTree] | None = None,
        user_db_input: int | None = None,
        created_ns: int | None = None,
        check_kernel: bool = True,
    ) -> Result:
        if not isinstance(actions, Sequence):
            actions = (actions,)
        op = FileOp(
            actions=tuple(actions),
            dest_input=0 if dest else -1,
            user_db_input=user_db_input,
        )
        out = self.new_dir("out")
        apply_file_op(op, dest=dest, sources=sources or {}, out=out, created_ns=created_ns)
        layers = [*(dest or []), out]
        result = Result(out, layers)
        if check_kernel:
            assert result.dump() == kernel_dump(layers, self.tmp / f"k{self.count}")
        return result


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


def copy(src: str | Sequence[str], dest: str, index: int = 1, **kw: object) -> CopyAction:
    """A copy action with the Dockerfile COPY defaults (follow links, dir contents, wildcards)."""
    srcs = (src,) if isinstance(src, str) else tuple(src)
    opts: dict[str, object] = {"allow_empty_wildcard": True, **kw}
    return CopyAction(src_input=index, src=srcs, dest=dest, **opts)  # type: ignore[arg-type]


def write(root: Path, files: Mapping[str, str | bytes | None]) -> Path:
    """Create files (str/bytes), directories (None, or a trailing ``/``) below ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name.strip("/")
        if content is None or name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root
