"""File operations: COPY, ADD and WORKDIR into a new layer, and content checksums of results.

The solver calls :func:`apply_file_op` to run a :class:`~engine.graph.ops.FileOp` and
:func:`result_checksum` for content keys of ``COPY --from`` inputs. Sources are read trees
(:mod:`engine.fileops.tree`); the destination is written as an overlayfs upper layer
(:mod:`engine.fileops.upper`). Behaviour follows BuildKit's file op backend and fsutil's copy.
"""

from __future__ import annotations

from engine.fileops.apply import apply_file_op, result_checksum
from engine.fileops.errors import FileOpError
from engine.fileops.tree import DirTree, EmptyTree, LayerTree, ReadTree

__all__ = [
    "DirTree",
    "EmptyTree",
    "FileOpError",
    "LayerTree",
    "ReadTree",
    "apply_file_op",
    "result_checksum",
]
