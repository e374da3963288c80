"""Reading a step's diff: the upper dir of its overlay.

overlayfs records a step's changes in the upper dir in its own encoding, which this module
turns into a list of :class:`Change`:

* a regular entry is an addition, or a modification when the lower chain has the same path;
* a whiteout (character device 0:0) is a deletion of that path;
* a directory with ``trusted.overlay.opaque=y`` (or ``user.overlay.opaque=y``) replaces the lower
  directory of the same name wholesale: nothing below it in the lower chain shows through.

A directory in the upper dir without the opaque marker is only a copy-up: it exists because
something beneath it changed (or its own metadata did), so it is reported as modified and its
children are walked. Symlinks are never followed.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.snapshot.layers import LayerView, is_opaque_dir, is_whiteout

__all__ = ["Change", "ChangeKind", "read_diff"]


class ChangeKind(enum.Enum):
    ADDED = "A"
    MODIFIED = "M"
    DELETED = "D"


@dataclass(frozen=True)
class Change:
    """One entry of a diff.

    Attributes:
        path: absolute in-container path (``/etc/passwd``).
        kind: added, modified or deleted.
        opaque: for directories: this directory replaces the lower one entirely.
        source: the host path in the upper dir (for a deletion, the whiteout itself).
    """

    path: str
    kind: ChangeKind
    source: Path
    opaque: bool = False


def _walk(upper: Path, rel: str) -> Iterator[tuple[str, Path, os.stat_result]]:
    with os.scandir(upper / rel if rel else upper) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        yield child, Path(entry.path), st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(upper, child)


def read_diff(upper: Path, lowers: Sequence[Path] = ()) -> list[Change]:
    """The changes recorded in ``upper`` relative to ``lowers`` (bottom first), sorted by path.

    Without ``lowers`` every non-whiteout entry is reported as added.
    """
    view = LayerView(lowers) if lowers else None
    changes: list[Change] = []
    for rel, host, st in _walk(upper, ""):
        path = "/" + rel
        if is_whiteout(st):
            changes.append(Change(path, ChangeKind.DELETED, host))
            continue
        existed = view is not None and view.lookup(path) is not None
        kind = ChangeKind.MODIFIED if existed else ChangeKind.ADDED
        opaque = stat.S_ISDIR(st.st_mode) and is_opaque_dir(host)
        changes.append(Change(path, kind, host, opaque))
    return changes
