"""Why did this step re-run? A field-by-field diff of cache-key preimages between two builds.

Every build records each step's key preimage (``{"op": <op cache preimage>, "deps": [...]}``,
see docs/plan-format.md) and, for steps that read the build context, a manifest of the files
their content candidate covered (``StepRecord.manifests``, in :func:`compact_manifest`'s capped
form). :func:`explain` matches each step of a build with the same step of the previous build of
the same name and says, in one line, why a step that did not hit ran:

* ``first build`` / ``new step`` / ``--no-cache``;
* the op changed: ``command changed``, ``WORKDIR changed``, ``build-arg `V` 1.2 → 1.3``,
  ``env `X` added``, ``destination changed``, ``base image changed``…;
* the files it copies changed: ``file `src/main.go` changed``, ``files added: a, b``,
  ``3 files changed``;
* an input changed: ``input from step [builder 4/6] changed``;
* nothing changed: ``not in cache (pruned?)``.

:func:`explain_full` renders the whole diff for ``%nbbuild explain``. Nothing here touches the
store except :func:`explain_recorded`, which reads the history.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.frontend.parser import Dockerfile
    from engine.store.history import BuildRecord
    from engine.store.store import Store

__all__ = [
    "FINGERPRINT_LIMIT",
    "MANIFEST_LIMIT",
    "RAN",
    "Explanation",
    "FieldChange",
    "StepLike",
    "arg_names",
    "compact_manifest",
    "diff_preimages",
    "explain",
    "explain_full",
    "explain_recorded",
    "match_steps",
]

# Statuses of a step that did not hit (it ran, or started to).
RAN = frozenset({"executed", "failed", "canceled", "running"})

# A step's manifest is stored in full (paths and short digests) up to this many entries…
MANIFEST_LIMIT = 1000
# …then as fingerprints (8 hex of the path's hash + 8 of the file digest, no names) up to
# this many, which still counts changes exactly; beyond it only the count is kept.
FINGERPRINT_LIMIT = 10_000

_SOURCE_IMAGE = "buildkit.source.v0"
_SOURCE_LOCAL = "buildkit.source.local"
_SOURCE_REMOTE = frozenset({"buildkit.source.http", "buildkit.source.git"})


class StepLike(Protocol):
    """What :func:`explain` reads of a step (``StepRecord`` and ``StepResult`` both fit)."""

    @property
    def digest(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def step(self) -> int | None: ...
    @property
    def stage(self) -> str: ...
    @property
    def instruction(self) -> str: ...
    @property
    def key(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def preimage(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field that differs between the previous and the current preimage.

    ``path`` names the field: ``op.meta.args``, ``op.meta.env.VERSION``, ``op.actions[0].dest``,
    ``deps[1]`` (a candidate), ``deps[1].files[src/main.go]`` (a file of a content candidate,
    digests shortened; None when absent on that side).
    """

    path: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why one step did not hit.

    ``cause`` classifies ``reason``: ``first build``, ``new step``, ``no-cache``, ``changed``
    (its own op or copied files changed), ``input`` (only an input changed) or
    ``not in cache`` (nothing changed).
    """

    reason: str
    changes: tuple[FieldChange, ...] = ()
    cause: str = ""


# ------------------------------------------------------------------------------ manifests


def _hex(digest: str) -> str:
    return digest.partition(":")[2] or digest


@functools.lru_cache(maxsize=1 << 16)  # a warm process records the same context paths again
def _path_fp(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def compact_manifest(files: Mapping[str, str]) -> dict[str, Any]:
    """The stored form of a manifest ``{relpath: digest}`` (directories end in ``/``).

    * up to :data:`MANIFEST_LIMIT` entries: ``{"count": n, "files": {relpath: 16 hex}}``;
    * up to :data:`FINGERPRINT_LIMIT` non-directory entries:
      ``{"count": n, "fingerprints": "<16 hex per file, sorted>"}``;
    * more: ``{"count": n}``.
    """
    count = len(files)
    if count <= MANIFEST_LIMIT:
        return {"count": count, "files": {p: _hex(d)[:16] for p, d in sorted(files.items())}}
    plain = [(p, d) for p, d in files.items() if not p.endswith("/")]
    if len(plain) <= FINGERPRINT_LIMIT:
        prints = sorted(_path_fp(p) + _hex(d)[:8] for p, d in plain)
        return {"count": count, "fingerprints": "".join(prints)}
    return {"count": count}


@dataclass(frozen=True, slots=True)
class _ManifestDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    named: bool  # entries are paths (else fingerprints)
    old_digests: Mapping[str, str]
    new_digests: Mapping[str, str]


def _fingerprints(manifest: Mapping[str, Any]) -> dict[str, str] | None:
    files = manifest.get("files")
    if isinstance(files, dict):
        return {_path_fp(p): d[:8] for p, d in files.items() if not p.endswith("/")}
    prints = manifest.get("fingerprints")
    if isinstance(prints, str):
        return {prints[i : i + 8]: prints[i + 8 : i + 16] for i in range(0, len(prints), 16)}
    return None


def _diff_manifests(old: Mapping[str, Any], new: Mapping[str, Any]) -> _ManifestDiff | None:
    old_files, new_files = old.get("files"), new.get("files")
    a: Mapping[str, str]
    b: Mapping[str, str]
    if isinstance(old_files, dict) and isinstance(new_files, dict):
        a, b, named = old_files, new_files, True
    else:
        fa, fb = _fingerprints(old), _fingerprints(new)
        if fa is None or fb is None:
            return None
        a, b, named = fa, fb, False
    added = tuple(sorted(p for p in b if p not in a))
    removed = tuple(sorted(p for p in a if p not in b))
    changed = tuple(sorted(p for p in b if p in a and a[p] != b[p]))
    return _ManifestDiff(added, removed, changed, named, a, b)


def _quote(path: str) -> str:
    return f"`{path}`"


def _files_phrase(diff: _ManifestDiff) -> str | None:
    def plain(paths: Iterable[str]) -> list[str]:
        return [p for p in paths if not p.endswith("/")]

    kinds = {
        "added": plain(diff.added),
        "removed": plain(diff.removed),
        "changed": plain(diff.changed),
    }
    noun = "file"
    if not any(kinds.values()):
        # Only directories differ (a new empty directory, a directory's mode).
        kinds = {"added": list(diff.added), "removed": list(diff.removed)}
        kinds["changed"] = list(diff.changed)
        noun = "directory"
        if not any(kinds.values()):
            return None
    total = sum(len(v) for v in kinds.values())
    present = [k for k, v in kinds.items() if v]
    plural = "files" if noun == "file" else "directories"
    if not diff.named:
        if len(present) == 1:
            return f"{total} {noun if total == 1 else plural} {present[0]}"
        return f"{total} {plural} changed"
    if total == 1:
        kind = present[0]
        return f"{noun} {_quote(kinds[kind][0])} {kind}"
    if len(present) == 1 and total <= 3:
        return f"{plural} {present[0]}: " + ", ".join(kinds[present[0]])
    if len(present) == 1:
        return f"{total} {plural} {present[0]}"
    return f"{total} {plural} changed"


# ------------------------------------------------------------------------------ preimage diffs


def _leaf(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_leaf(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _leaf(v)) for k, v in value.items()))
    return value


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list) and path.endswith("meta.env"):
        for entry in value:
            name, _, val = str(entry).partition("=")
            out[f"{path}.{name}"] = val
    elif isinstance(value, list) and value and not path.endswith("meta.args"):
        for i, v in enumerate(value):
            _flatten(v, f"{path}[{i}]", out)
    else:
        out[path] = _leaf(value)


def diff_preimages(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    old_manifests: Mapping[str, Any] | None = None,
    new_manifests: Mapping[str, Any] | None = None,
) -> list[FieldChange]:
    """Every field that differs between two key preimages, op fields first.

    With manifests for a changed content candidate, each changed file is a change of its own
    (``deps[i].files[path]``).
    """
    changes: list[FieldChange] = []
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten(old.get("op") or {}, "op", a)
    _flatten(new.get("op") or {}, "op", b)
    for path in sorted(set(a) | set(b), key=lambda p: (p not in a or p not in b, p)):
        if a.get(path) != b.get(path):
            changes.append(FieldChange(path, a.get(path), b.get(path)))
    old_deps = list(old.get("deps") or [])
    new_deps = list(new.get("deps") or [])
    if len(old_deps) != len(new_deps):
        changes.append(FieldChange("deps", len(old_deps), len(new_deps)))
    for i, (o, n) in enumerate(zip(old_deps, new_deps, strict=False)):
        if o == n:
            continue
        changes.append(FieldChange(f"deps[{i}]", _leaf(o), _leaf(n)))
        om = (old_manifests or {}).get(str(i))
        nm = (new_manifests or {}).get(str(i))
        if isinstance(om, dict) and isinstance(nm, dict):
            diff = _diff_manifests(om, nm)
            if diff is not None:
                for p in (*diff.changed, *diff.added, *diff.removed):
                    changes.append(
                        FieldChange(
                            f"deps[{i}].files[{p}]",
                            diff.old_digests.get(p),
                            diff.new_digests.get(p),
                        )
                    )
    return changes


# ------------------------------------------------------------------------------ phrases


def _short_value(value: Any, limit: int = 32) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_META_PHRASES = {
    "args": "command changed",
    "cwd": "WORKDIR changed",
    "user": "USER changed",
    "network": "network changed",
    "security": "security mode changed",
    "hostname": "hostname changed",
}

_ACTION_PHRASES = {
    "dest": "destination changed",
    "src": "source changed",
    "chown": "--chown changed",
    "chmod": "--chmod changed",
    "include": "--include changed",
    "exclude": "--exclude changed",
    "flags": "COPY flags changed",
    "data_digest": "inline file changed",
    "mode": "mode changed",
    "make_parents": "mkdir flags changed",
}


def _op_phrase(
    change: FieldChange, op_type: str, actions: Sequence[Any], args: Collection[str]
) -> str:
    path = change.path
    if op_type in _SOURCE_REMOTE:
        return "remote source changed"
    if path == "op.image":
        return "base image changed"
    if path.startswith("op.meta.env."):
        name = path[len("op.meta.env.") :]
        what = "build-arg" if name in args else "env"
        if change.old is None:
            return f"{what} `{name}` added"
        if change.new is None:
            return f"{what} `{name}` removed"
        return f"{what} `{name}` {_short_value(change.old)} → {_short_value(change.new)}"
    if path.startswith("op.meta."):
        field = path[len("op.meta.") :].split(".")[0].split("[")[0]
        return _META_PHRASES.get(field, "instruction changed")
    if path.startswith("op.mounts"):
        return "mounts (--mount) changed"
    if path.startswith("op.platform"):
        return "platform changed"
    if path.startswith("op.actions["):
        index_text, _, rest = path[len("op.actions[") :].partition("]")
        field = rest.lstrip(".").split(".")[0].split("[")[0]
        action: Any = None
        if index_text.isdigit() and int(index_text) < len(actions):
            action = actions[int(index_text)]
        kind = action.get("action") if isinstance(action, dict) else None
        if field == "path":
            return "WORKDIR changed" if kind == "mkdir" else "destination changed"
        return _ACTION_PHRASES.get(field, "instruction changed")
    return "instruction changed"


def _label(step: StepLike) -> str:
    name = step.name
    if name.startswith("[") and "]" in name:
        return name[: name.index("]") + 1]
    return name


def _op_type(step: StepLike | None) -> str:
    if step is None:
        return ""
    op = step.preimage.get("op")
    return str(op.get("type", "")) if isinstance(op, Mapping) else ""


def _input_phrase(step: StepLike | None, index: int, ignored: Collection[str], now: Any) -> str:
    if step is None:
        return f"input {index} changed"
    kind = _op_type(step)
    if kind == _SOURCE_IMAGE:
        return "base image changed"
    if kind == _SOURCE_LOCAL:
        return "context files changed"
    if kind in _SOURCE_REMOTE:
        return f"remote source {_label(step)} changed"
    if step.digest in ignored and (now is None or now.get("kind") != "definition"):
        return f"input from step {_label(step)} ran with --no-cache"
    return f"input from step {_label(step)} changed"


def _join(phrases: Sequence[str], limit: int = 3) -> str:
    unique = list(dict.fromkeys(phrases))
    if len(unique) > limit:
        return "; ".join(unique[:limit]) + f"; and {len(unique) - limit} more"
    return "; ".join(unique)


# ------------------------------------------------------------------------------ matching


def _keyword(instruction: str) -> str:
    return instruction.split(None, 1)[0].upper() if instruction.strip() else ""


def match_steps(current: Sequence[StepLike], previous: Sequence[StepLike]) -> dict[str, StepLike]:
    """The previous build's counterpart of each current step (by digest), where there is one.

    Numbered steps match, in this order: the same instruction text in the same stage (the
    nearest position wins: inserting a step shifts nothing), then the same stage and position
    when the instruction keyword is the same (an edited ``RUN``), then the same text and
    position in a renamed stage. Other vertices (sources, internal ones) match by name.
    """
    out: dict[str, StepLike] = {}
    claimed: set[int] = set()
    prev = list(previous)

    def take(c: StepLike, candidates: list[int]) -> bool:
        free = [i for i in candidates if i not in claimed]
        if not free:
            return False
        best = min(free, key=lambda i: (abs((prev[i].step or 0) - (c.step or 0)), i))
        claimed.add(best)
        out[c.digest] = prev[best]
        return True

    numbered = [c for c in current if c.step is not None]
    for c in numbered:
        take(
            c,
            [
                i
                for i, p in enumerate(prev)
                if p.step is not None and p.stage == c.stage and p.instruction == c.instruction
            ],
        )
    for c in numbered:
        if c.digest in out:
            continue
        take(
            c,
            [
                i
                for i, p in enumerate(prev)
                if p.step == c.step
                and p.stage == c.stage
                and _keyword(p.instruction) == _keyword(c.instruction)
            ],
        )
    for c in numbered:
        if c.digest in out:
            continue
        take(
            c,
            [i for i, p in enumerate(prev) if p.step == c.step and p.instruction == c.instruction],
        )
    for c in current:
        if c.step is None:
            take(c, [i for i, p in enumerate(prev) if p.step is None and p.name == c.name])
    return out


# ------------------------------------------------------------------------------ explain


def arg_names(dockerfile: Dockerfile | str) -> frozenset[str]:
    """Names that reach RUN environments from ``ARG`` rather than ``ENV`` in ``dockerfile``.

    ARGs declared inside stages (redeclared meta ARGs included); a name that some ``ENV`` also
    sets is left out (its value may come from either).
    """
    from engine.frontend import instructions as ins
    from engine.frontend.parser import parse

    parsed = parse(dockerfile) if isinstance(dockerfile, str) else dockerfile
    _, stages = ins.parse_stages(parsed)
    args: set[str] = set()
    envs: set[str] = set()
    for stage in stages:
        for cmd in stage.commands:
            if isinstance(cmd, ins.ArgCommand):
                args.update(a.key for a in cmd.args)
            elif isinstance(cmd, ins.EnvCommand):
                envs.update(kv.key for kv in cmd.env)
    return frozenset(args - envs)


def _manifests(step: StepLike | None) -> Mapping[str, Any]:
    value = getattr(step, "manifests", None) if step is not None else None
    return value if isinstance(value, Mapping) else {}


def _explain_one(
    step: StepLike,
    before: StepLike | None,
    *,
    has_previous: bool,
    inputs_of: Sequence[StepLike | None],
    by_key: Mapping[str, StepLike],
    args: Collection[str],
    ignored: Collection[str],
) -> Explanation:
    if step.digest in ignored:
        return Explanation("--no-cache", (), "no-cache")
    if not has_previous:
        return Explanation("first build", (), "first build")
    if before is None:
        return Explanation("new step", (), "new step")
    changes = diff_preimages(before.preimage, step.preimage, _manifests(before), _manifests(step))
    if not changes:
        if before.status == "failed":
            reason = "failed in the previous build"
        elif before.status == "canceled":
            reason = "canceled in the previous build"
        elif before.status not in ("executed", "cached"):
            reason = "not in cache (the previous build did not build it)"
        elif _op_type(step) in _SOURCE_REMOTE:
            reason = "remote source: fetched again"
        else:
            reason = "not in cache (pruned?)"
        return Explanation(reason, (), "not in cache")
    op = step.preimage.get("op")
    op_type = str(op.get("type", "")) if isinstance(op, Mapping) else ""
    actions = op.get("actions", []) if isinstance(op, Mapping) else []
    own: list[str] = []
    via_inputs: list[str] = []
    old_deps = list(before.preimage.get("deps") or [])
    new_deps = list(step.preimage.get("deps") or [])
    for change in changes:
        if change.path.startswith("op."):
            own.append(
                _op_phrase(change, op_type, actions if isinstance(actions, list) else [], args)
            )
        elif change.path == "deps":
            own.append("inputs changed")
    for i, (o, n) in enumerate(zip(old_deps, new_deps, strict=False)):
        if o == n:
            continue
        src = inputs_of[i] if i < len(inputs_of) else None
        if src is None and isinstance(n, Mapping) and n.get("kind") == "definition":
            src = by_key.get(str(n.get("value")))
        # A content candidate known before the build is always a local context's files.
        content = isinstance(n, Mapping) and n.get("kind") == "content"
        om, nm = _manifests(before).get(str(i)), _manifests(step).get(str(i))
        if content:
            phrase = None
            if isinstance(om, Mapping) and isinstance(nm, Mapping):
                diff = _diff_manifests(om, nm)
                phrase = _files_phrase(diff) if diff is not None else None
            own.append(phrase or "files changed")
        elif (
            isinstance(o, Mapping)
            and isinstance(n, Mapping)
            and o.get("kind") == n.get("kind") == "definition"
            and o.get("value") == n.get("value")
        ):
            own.append("source paths changed")  # only the selector differs
        else:
            via_inputs.append(_input_phrase(src, i, ignored, n))
    if own:
        return Explanation(_join(own), tuple(changes), "changed")
    if via_inputs:
        return Explanation(_join(via_inputs), tuple(changes), "input")
    return Explanation("instruction changed", tuple(changes), "changed")


def explain(
    current: Sequence[StepLike],
    previous: BuildRecord | None,
    *,
    arg_names: Collection[str] = (),
    ignored: Collection[str] = (),
    inputs: Mapping[str, Sequence[str]] | None = None,
    statuses: Collection[str] = RAN,
) -> dict[str, Explanation]:
    """Why each step of ``current`` that did not hit ran, against ``previous``.

    Args:
        current: the build's steps (every vertex; ``StepRecord``/``StepResult``).
        previous: the last earlier build with the same name, or None.
        arg_names: env names that come from ``ARG`` (:func:`arg_names` of the Dockerfile):
            their changes read ``build-arg `X` a → b`` instead of ``env `X` a → b``.
        ignored: digests of the steps ``--no-cache``/``--no-cache-filter`` applied to.
        inputs: each step's input digests in op order (from the definition), to name the step
            an input comes from even when its key is not known.
        statuses: which steps to explain (default: those that ran).

    Returns:
        step digest → :class:`Explanation`, for the steps whose status is in ``statuses``.
    """
    by_digest = {s.digest: s for s in current}
    by_key = {s.key: s for s in current if s.key}
    matched = match_steps(current, previous.steps) if previous is not None else {}
    ignored = frozenset(ignored)
    out: dict[str, Explanation] = {}
    for step in current:
        if step.status not in statuses or _op_type(step) == _SOURCE_LOCAL:
            continue  # reading the context is no cache miss
        ins_of = [by_digest.get(d) for d in (inputs or {}).get(step.digest, ())]
        out[step.digest] = _explain_one(
            step,
            matched.get(step.digest),
            has_previous=previous is not None,
            inputs_of=ins_of,
            by_key=by_key,
            args=frozenset(arg_names),
            ignored=ignored,
        )
    return out


def _render(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        if value.startswith("sha256:") and len(value) > 20:
            return value[:19] + "…"
        return _short_value(value, 80)
    if (
        isinstance(value, tuple)
        and value
        and all(isinstance(v, tuple) and len(v) == 2 for v in value)
    ):
        return "{" + ", ".join(f"{k}: {_render(v)}" for k, v in value) + "}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    return _short_value(value, 80)


def explain_full(
    current: Sequence[StepLike],
    previous: BuildRecord | None,
    *,
    arg_names: Collection[str] = (),
    ignored: Collection[str] = (),
    inputs: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """``%nbbuild explain``: each step's status, why it ran and the full preimage diff.

    A step whose record carries a ``reason`` (the one computed at build time) shows it.
    """
    reasons = explain(current, previous, arg_names=arg_names, ignored=ignored, inputs=inputs)
    lines: list[str] = []
    if previous is None:
        lines.append("no previous build of this name: every step that ran is a first build")
    else:
        from engine.images.config import rfc3339

        lines.append(f"compared with the build of {rfc3339(previous.time_ns)} ({previous.status})")
    for step in current:
        explanation = reasons.get(step.digest)
        if explanation is None:
            if step.step is not None:
                lines.append(f"{step.name}: {step.status}")
            continue
        recorded = getattr(step, "reason", "")
        headline = recorded if isinstance(recorded, str) and recorded else explanation.reason
        lines.append(f"{step.name}: {step.status}: {headline}")
        for change in explanation.changes:
            lines.append(f"    {change.path}: {_render(change.old)} → {_render(change.new)}")
    return "\n".join(lines)


def explain_recorded(store: Store, name: str) -> str:
    """:func:`explain_full` of the last recorded build of ``name`` against the one before it
    (the history keeps each step's reason; ARG/ENV and ``--no-cache`` come from there)."""
    from engine.store.history import builds_named

    with store.db.reading() as conn:
        records = builds_named(conn, name, limit=2)
    if not records:
        return f"no build named {name!r} in the history"
    current = records[0]
    previous = records[1] if len(records) > 1 else None
    return explain_full(current.steps, previous)
