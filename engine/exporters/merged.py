"""The merged filesystem of a layer chain, walked without mounting it.

The local and tar exporters write the *final* filesystem of a build: every layer applied in
order, whiteouts removing what is below them, opaque directories hiding everything below. This
module walks that merged view straight from the layer directories with overlayfs's rules (the
same as :class:`engine.snapshot.layers.LayerView`): the topmost layer with an entry for a name
decides; a whiteout hides the name; a non-directory hides everything below it; a directory
merges with the directories below it until one of them is opaque, or a layer has a whiteout or a
non-directory there. Entries come depth-first, each directory's names sorted bytewise, so the
walk (and the tar written from it) is deterministic. Symlinks are never followed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.snapshot.layers import is_opaque_dir, is_whiteout

__all__ = ["MergedEntry", "walk_merged"]


@dataclass(frozen=True, slots=True)
class MergedEntry:
    """One visible entry: its path relative to the root and the layer file that provides it."""

    rel: bytes  # '/'-separated, no leading '/'
    host: bytes
    st: os.stat_result


def walk_merged(layers: Sequence[Path]) -> Iterator[MergedEntry]:
    """Every entry of the merged view of ``layers`` (bottom first), parents before children.

    The root directory itself is not yielded.
    """
    top_first = [os.fsencode(p) for p in reversed(layers)]
    roots: list[bytes] = []
    for root in top_first:
        roots.append(root)
        if is_opaque_dir(os.fsdecode(root)):
            break
    yield from _walk(roots, b"")


def _walk(dirs: list[bytes], rel: bytes) -> Iterator[MergedEntry]:
    names: set[bytes] = set()
    for directory in dirs:
        try:
            names.update(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
    for name in sorted(names):
        child_rel = rel + b"/" + name if rel else name
        found: tuple[bytes, os.stat_result] | None = None
        below: list[bytes] = []
        for directory in dirs:
            host = os.path.join(directory, name)
            try:
                st = os.lstat(host)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if found is None:
                if is_whiteout(st):
                    break
                found = (host, st)
                if not stat.S_ISDIR(st.st_mode):
                    break
            elif is_whiteout(st) or not stat.S_ISDIR(st.st_mode):
                break  # the directory above starts afresh here
            below.append(host)
            if is_opaque_dir(os.fsdecode(host)):
                break
        if found is None:
            continue
        yield MergedEntry(child_rel, found[0], found[1])
        if stat.S_ISDIR(found[1].st_mode):
            yield from _walk(below, child_rel)
