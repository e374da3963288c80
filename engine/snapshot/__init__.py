"""Snapshots: overlay mounts of a layer chain, merged read-only views and diffs.

A snapshot chain is a list of plain directories, bottom (base rootfs) first. A step runs on an
overlay of that chain with a fresh upper dir (:class:`OverlayMount`); afterwards the upper dir
*is* the step's diff (:func:`read_diff`).
"""

from __future__ import annotations

from engine.snapshot.diff import Change, ChangeKind, read_diff
from engine.snapshot.errors import SnapshotError
from engine.snapshot.layers import LayerView, is_opaque_dir, is_whiteout
from engine.snapshot.overlay import OverlayMount, mount_overlay

__all__ = [
    "Change",
    "ChangeKind",
    "LayerView",
    "OverlayMount",
    "SnapshotError",
    "is_opaque_dir",
    "is_whiteout",
    "mount_overlay",
    "read_diff",
]
