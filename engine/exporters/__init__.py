"""Build outputs (``--output type=…``): local directory, filesystem tar, OCI and docker archives.

:func:`export` is what a build calls for each ``--output``; the per-type functions are usable on
their own. Every output is deterministic given ``SOURCE_DATE_EPOCH``: two builds of the same
input in two empty stores give byte-identical tars and the same image digest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.errors import UsageError
from engine.exporters.image import export_docker, export_oci
from engine.exporters.local import export_local
from engine.exporters.tar import export_tar, write_merged_tar
from engine.images.store import ImageStore
from engine.store.store import Store

__all__ = [
    "OUTPUT_TYPES",
    "export",
    "export_docker",
    "export_local",
    "export_oci",
    "export_tar",
    "write_merged_tar",
]

OUTPUT_TYPES = ("local", "tar", "oci", "docker", "image")


def export(
    store: Store,
    images: ImageStore,
    type: str,
    dest: str | Path | None,
    attrs: Mapping[str, str],
    *,
    layers: Sequence[str],
    config: dict[str, Any],
    source_date_epoch: int | None = None,
    name: str = "",
) -> str | None:
    """Write one build output; returns the image ID (config digest) for image outputs.

    Args:
        store: the store holding ``layers``.
        images: the image store (layer blobs, and names for ``type=image``).
        type: ``local``, ``tar``, ``oci``, ``docker`` or ``image``.
        dest: the directory (local) or file (``-`` for stdout) to write.
        attrs: the output's other attributes (``name=`` overrides ``name``).
        layers: the result's snapshot ids, bottom first.
        config: the build's image config (``ImageConfig.to_json()``).
        source_date_epoch: fixes times and clamps file times.
        name: the image name (the first ``--tag``) for archive outputs.

    Raises:
        UsageError: unknown type, or a missing ``dest``/``name``.
        ImageError: writing the output failed.
    """
    name = attrs.get("name", name)
    if type == "image":
        if not name:
            raise UsageError("--output type=image needs name=<image name> (or --tag)")
        image = None
        for n in name.split(","):
            image = images.put(
                n, layers=tuple(layers), config=config, source_date_epoch=source_date_epoch
            )
        return image.config_digest if image is not None else None
    if type not in OUTPUT_TYPES:
        raise UsageError(f"unsupported output type {type!r}: use one of {', '.join(OUTPUT_TYPES)}")
    if not dest:
        raise UsageError(f"--output type={type} needs dest=<path>")
    if type == "local":
        if str(dest) == "-":
            raise UsageError("--output type=local needs a directory, not -")
        export_local(
            [store.diff_path(s) for s in layers], Path(dest), source_date_epoch=source_date_epoch
        )
        return None
    if type == "tar":
        export_tar([store.diff_path(s) for s in layers], dest, source_date_epoch=source_date_epoch)
        return None
    exporter = export_oci if type == "oci" else export_docker
    return exporter(
        images,
        layers=layers,
        config=config,
        dest=dest,
        name=name,
        source_date_epoch=source_date_epoch,
    )
