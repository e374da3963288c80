"""``--output type=tar``: the final filesystem of a build as one deterministic tar.

Entries come from the merged view (:mod:`engine.exporters.merged`: whiteouts applied), sorted,
with numeric owners kept, written by the same writer as layer tars
(:mod:`engine.images.tarwriter`). With ``SOURCE_DATE_EPOCH`` every entry's time is the epoch, as
BuildKit's tar exporter writes it (``exporter/local/fs.go`` sets ``ModTime`` of each entry; only
image layers clamp newer times, with ``rewrite-timestamp``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from engine.exporters.merged import walk_merged
from engine.images.archive import open_output
from engine.images.errors import ImageError
from engine.images.tarwriter import TarWriter, Writable, entry_for, write_file_entry

__all__ = ["export_tar", "write_merged_tar"]


def write_merged_tar(
    layers: Sequence[Path], out: Writable, *, source_date_epoch: int | None = None
) -> None:
    """Write the merged filesystem of ``layers`` (bottom first) as a tar to ``out``.

    Raises:
        ImageError: a layer cannot be read.
    """
    writer = TarWriter(out)
    links: dict[tuple[int, int], bytes] = {}
    try:
        for item in walk_merged(layers):
            made = entry_for(item.rel, item.host, item.st, epoch=None, links=links)
            if made is None:
                continue
            entry, has_content = made
            if source_date_epoch is not None:
                entry.mtime = source_date_epoch
            if has_content:
                write_file_entry(writer, entry, item.host)
            else:
                writer.add(entry)
        writer.close()
    except OSError as exc:
        raise ImageError(f"cannot export the filesystem as a tar: {exc}") from None


def export_tar(
    layers: Sequence[Path], dest: Path | str, *, source_date_epoch: int | None = None
) -> None:
    """Write the merged filesystem of ``layers`` to the file ``dest`` (``-``: stdout).

    Raises:
        ImageError: ``dest`` cannot be written (missing directory, permissions, disk full).
    """
    try:
        with open_output(dest) as out:
            write_merged_tar(layers, out, source_date_epoch=source_date_epoch)
    except OSError as exc:
        raise ImageError(f"cannot export to {dest}: {exc.strerror or exc}") from None
