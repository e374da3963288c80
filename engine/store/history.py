"""Build history: one row per build in ``meta.db``'s ``builds`` table, its steps as JSON.

"Why did this re-run?" compares a step's key and preimage with the same step of the previous
build of the same name; the default name rule lives in the caller.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BuildRecord", "StepRecord", "builds", "builds_named", "last_build", "record_build"]


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
    # Per input index (as a string, JSON's keys): what the step's content candidate covered,
    # for "file src/main.go changed" (engine.explain.compact_manifest's form: capped in size).
    manifests: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # why it ran, against the previous build of the name (engine.explain)


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


_COLUMNS = "name, time_ns, target, tag, context, status, steps"
_STEP_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(StepRecord))
_STEP_FIELDS = frozenset(_STEP_FIELD_NAMES)


def record_build(conn: sqlite3.Connection, record: BuildRecord) -> None:
    """Append a build (inside the caller's write transaction)."""
    # The fields as they are (preimages and manifests are plain JSON values): what
    # dataclasses.asdict gives, without its deep copy of every nested value (~30 us a step).
    steps = json.dumps(
        [{name: getattr(s, name) for name in _STEP_FIELD_NAMES} for s in record.steps],
        sort_keys=True,
    )
    conn.execute(
        f"INSERT INTO builds ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            record.name,
            record.time_ns,
            record.target,
            record.tag,
            record.context,
            record.status,
            steps,
        ),
    )


def last_build(conn: sqlite3.Connection, name: str) -> BuildRecord | None:
    """The most recent build recorded under ``name`` (the later record wins a tie)."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM builds WHERE name = ? ORDER BY time_ns DESC, id DESC LIMIT 1",
        (name,),
    ).fetchone()
    return None if row is None else _from_row(row)


def builds(conn: sqlite3.Connection, limit: int = 50) -> list[BuildRecord]:
    """The most recent builds, newest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM builds ORDER BY time_ns DESC, id DESC LIMIT ?", (limit,)
    ).fetchall()
    return [_from_row(r) for r in rows]


def builds_named(conn: sqlite3.Connection, name: str, limit: int = 2) -> list[BuildRecord]:
    """The most recent builds recorded under ``name``, newest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM builds WHERE name = ? ORDER BY time_ns DESC, id DESC LIMIT ?",
        (name, limit),
    ).fetchall()
    return [_from_row(r) for r in rows]


def _from_row(row: tuple[Any, ...]) -> BuildRecord:
    name, time_ns, target, tag, context, status, steps_json = row
    # Unknown fields are dropped: a newer nbbuild may record more about a step.
    steps = tuple(
        StepRecord(**{k: v for k, v in step.items() if k in _STEP_FIELDS})
        for step in json.loads(steps_json)
    )
    return BuildRecord(
        name=name,
        time_ns=int(time_ns),
        target=target,
        status=status,
        steps=steps,
        tag=tag,
        context=context,
    )
