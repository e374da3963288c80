"""Errors of the image layer: layer tars, the local image store, archives and exporters."""

from __future__ import annotations

from engine.errors import NbbuildError

__all__ = ["ArchiveError", "ImageError", "LayerError"]


class ImageError(NbbuildError):
    """An image cannot be found, stored, read or written."""


class LayerError(ImageError):
    """A layer tar cannot be written or unpacked (invalid or hostile archive, I/O error)."""


class ArchiveError(ImageError):
    """An image archive (docker-archive, OCI layout tar) is malformed or fails verification."""
