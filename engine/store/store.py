"""The persistent store: one directory holding everything a build keeps.

CONTRACT (the solver, exporters and image store are written against it; the bodies are being
implemented). Layout under ``root`` (``--root`` > ``NBBUILD_ROOT`` > ``~/.cache/nbbuild``)::

    meta.db                 SQLite (WAL): cache keys, results, snapshots, leases, images, history
    blobs/sha256/<hex>      content-addressed blobs (OCI layout compatible)
    blobs/ingest/           partial blob writes (temp → fsync → rename)
    snapshots/<id>/         committed layer diffs (overlayfs upper dirs: whiteouts are 0/0 char
                            devices, opaque dirs carry trusted.overlay.opaque=y)
    snapshots/tmp/<id>/     diffs being written by a live build (swept when their owner is dead)

A *result* is what a vertex produced: an ordered chain of layer diffs (bottom first), the time
it took to make, and the keys it is stored under. Exec and file results are the input chain plus
one new diff; a merge is the concatenation of its inputs' chains; an image is its layers.

Crash safety: a diff is written under ``snapshots/tmp``, made durable with one ``syncfs``, renamed
to ``snapshots/<id>``, and only then published in one SQLite transaction together with its
result and keys. A kill at any moment leaves either an unpublished directory (swept) or a
complete, published result. Concurrency: SQLite serialises writers; lookups take a lease in the
same transaction, so a concurrent prune never removes what a running build holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BuildRecord", "Lease", "Result", "Store", "StepRecord"]


@dataclass(frozen=True, slots=True)
class Result:
    """A stored result: a chain of layer diffs."""

    id: str
    layers: tuple[str, ...]  # snapshot ids, bottom first
    exec_ns: int  # how long making it took (so a cache hit can say what it saved)
    created_ns: int
    description: str = ""  # the vertex's name when it was made


@dataclass(frozen=True, slots=True)
class Lease:
    """Holds results and snapshots for a running build (never removed while its owner lives)."""

    id: str


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One vertex of a recorded build (for history and "why did this re-run?")."""

    digest: str
    name: str
    step: int | None
    stage: str
    line: int | None
    instruction: str
    key: str | None
    status: str  # pending|running|cached|executed|failed|canceled|skipped
    duration_ns: int = 0
    saved_ns: int = 0  # for cached steps: the recorded execution time of the result reused
    preimage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BuildRecord:
    """A build in the history."""

    name: str
    time_ns: int
    target: str
    status: str  # executed|failed|canceled
    steps: tuple[StepRecord, ...]
    tag: str = ""
    context: str = ""


class Store:
    """An open store. Thread-safe; several processes may open the same root at once."""

    root: Path

    @classmethod
    def open(cls, root: Path) -> Store:
        """Open (creating with mode 0700) the store at ``root``; sweeps dead owners' leftovers.

        Raises:
            StoreError: the directory or database cannot be used.
        """
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- leases ---------------------------------------------------------------------------

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        """A lease owned by this process (pid + process start time, so a reused pid is stale)."""
        raise NotImplementedError
        yield  # pragma: no cover

    # -- snapshots ------------------------------------------------------------------------

    def new_diff_dir(self, lease: Lease) -> Path:
        """A fresh, empty directory under ``snapshots/tmp`` to write one diff into."""
        raise NotImplementedError

    def diff_path(self, snapshot_id: str) -> Path:
        """The directory of a committed diff."""
        raise NotImplementedError

    def layer_paths(self, result: Result) -> list[Path]:
        """The diff directories of a result's chain, bottom first (overlay lowerdirs reversed)."""
        raise NotImplementedError

    # -- results --------------------------------------------------------------------------

    def lookup(self, keys: Sequence[str], lease: Lease) -> Result | None:
        """The first result stored under any of ``keys``, added to ``lease`` in the same
        transaction (and its last-used time bumped); None when there is none."""
        raise NotImplementedError

    def commit(
        self,
        *,
        keys: Sequence[str],
        base: Sequence[str],
        diff: Path | None,
        exec_ns: int,
        description: str,
        lease: Lease,
    ) -> Result:
        """Publish a result: ``base`` layers plus ``diff`` (a dir from :meth:`new_diff_dir`, or
        None for a result that adds no layer). ``syncfs`` once, rename, then one transaction
        that inserts the snapshot, the result, every key and the lease reference. When a
        result with the same key already exists (another process won the race) the new diff is
        discarded and the existing result returned."""
        raise NotImplementedError

    def add_keys(self, result: Result, keys: Sequence[str]) -> None:
        """Store ``result`` under more keys (content keys learned after it was made)."""
        raise NotImplementedError

    def get_checksum(self, result: Result, spec_digest: str) -> str | None:
        """A remembered content checksum of ``result`` for a selector spec."""
        raise NotImplementedError

    def set_checksum(self, result: Result, spec_digest: str, checksum: str) -> None:
        raise NotImplementedError

    # -- history --------------------------------------------------------------------------

    def record_build(self, record: BuildRecord) -> None:
        raise NotImplementedError

    def last_build(self, name: str) -> BuildRecord | None:
        raise NotImplementedError

    def builds(self, limit: int = 50) -> list[BuildRecord]:
        raise NotImplementedError
