"""``--output type=oci`` and ``type=docker``: the built image as an archive file.

The image is assembled like BuildKit's image exporter (:meth:`ImageStore.assemble`: layer blobs
made deterministically and remembered, config and manifest completed) and written as an OCI
layout tar, plus ``manifest.json`` for ``docker load`` (:func:`engine.images.archive.write_archive`).
Nothing is named in the image store: that is what ``--tag`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.images.archive import ArchiveImage, open_output, write_archive
from engine.images.errors import ImageError
from engine.images.store import ImageStore, normalize_name

__all__ = ["export_docker", "export_oci"]


def _export(
    images: ImageStore,
    *,
    layers: Sequence[str],
    config: dict[str, Any],
    dest: Path | str,
    name: str,
    source_date_epoch: int | None,
    docker: bool,
) -> str:
    assembled = images.assemble(layers=layers, config=config, source_date_epoch=source_date_epoch)
    names = tuple(normalize_name(n) for n in name.split(",") if n) if name else ()
    entry = ArchiveImage(
        names=names,
        manifest=assembled.manifest_bytes,
        config=assembled.config_bytes,
        layers=assembled.layers,
    )
    try:
        with open_output(dest) as out:
            write_archive(out, [entry], images.store.blobs.path, docker=docker)
    except OSError as exc:
        raise ImageError(f"cannot export to {dest}: {exc.strerror or exc}") from None
    return assembled.config_digest


def export_oci(
    images: ImageStore,
    *,
    layers: Sequence[str],
    config: dict[str, Any],
    dest: Path | str,
    name: str = "",
    source_date_epoch: int | None = None,
) -> str:
    """Write the image as an OCI layout tar; returns its config digest (the image ID).

    Raises:
        ImageError: a layer is missing or the name is invalid.
    """
    return _export(
        images,
        layers=layers,
        config=config,
        dest=dest,
        name=name,
        source_date_epoch=source_date_epoch,
        docker=False,
    )


def export_docker(
    images: ImageStore,
    *,
    layers: Sequence[str],
    config: dict[str, Any],
    dest: Path | str,
    name: str = "",
    source_date_epoch: int | None = None,
) -> str:
    """Write the image as a tar ``docker load`` reads; returns its config digest.

    Raises:
        ImageError: a layer is missing or the name is invalid.
    """
    return _export(
        images,
        layers=layers,
        config=config,
        dest=dest,
        name=name,
        source_date_epoch=source_date_epoch,
        docker=True,
    )
