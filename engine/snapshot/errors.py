"""Errors of the snapshot layer (overlay mounts, layer views, diffs)."""

from __future__ import annotations

from engine.errors import NbbuildError

__all__ = ["SnapshotError"]


class SnapshotError(NbbuildError):
    """A snapshot cannot be mounted, read or diffed (bad paths, overlayfs refused the mount)."""
