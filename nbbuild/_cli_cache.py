"""``nbbuild cache``: ``du``, ``ls``, ``prune`` and ``check`` of the build cache.

Flags and output follow ``docker buildx du`` / ``docker buildx prune``: sizes are parsed like
buildx (docker/go-units ``RAMInBytes``: ``512MB``, ``2GiB``, ``1.5g``; the multipliers are
binary, so ``MB`` means MiB as in buildx) and printed like buildx (go-units ``HumanSize``:
decimal, four significant digits); durations are Go durations (``48h``, ``10m``, ``1h30m``).

:func:`register` adds the sub-command to the ``nbbuild`` parser; the engine is imported only
when a command runs, so ``nbbuild --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.store.gc import UsageRecord
    from engine.store.store import Store

__all__ = [
    "human_duration",
    "human_size",
    "parse_duration",
    "parse_filter",
    "parse_size",
    "register",
]

_ALL_WARNING = "WARNING! This will remove all build cache. Are you sure you want to continue?"
_NORMAL_WARNING = (
    "WARNING! This will remove all dangling build cache. Are you sure you want to continue?"
)
_FILTER_WARNING = (
    "WARNING! This will remove all dangling build cache that matches the filter. "
    "Are you sure you want to continue?"
)
_FILTER_KEYS = ("until",)


# -- parsing ------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """A size like buildx's ``--max-used-space``: ``512MB``, ``2GiB``, ``100`` (bytes).

    Raises:
        argparse.ArgumentTypeError: not a size, or negative.
    """
    from engine.frontend.mounts import parse_ram_bytes

    try:
        value = parse_ram_bytes(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid size: '{text}'")
    return value


def parse_duration(text: str) -> int:
    """A Go duration (``48h``, ``10m``, ``1h30m``, ``1.5s``) in nanoseconds.

    Raises:
        argparse.ArgumentTypeError: not a duration, or negative.
    """
    from engine.errors import DockerfileError
    from engine.frontend.instructions import parse_duration as go_duration

    try:
        value = go_duration(text.strip())
    except DockerfileError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"duration must not be negative: {text!r}")
    return value


def parse_filter(text: str) -> tuple[str, str]:
    """A ``--filter KEY=VALUE`` of ``cache prune`` (only ``until`` is supported).

    Raises:
        argparse.ArgumentTypeError: not KEY=VALUE, or an unsupported key.
    """
    key, sep, value = text.partition("=")
    key = key.strip().lower()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"bad filter {text!r}: expected KEY=VALUE")
    if key not in _FILTER_KEYS:
        raise argparse.ArgumentTypeError(
            f"unsupported filter {key!r} (supported: {', '.join(_FILTER_KEYS)})"
        )
    if key == "until":
        parse_duration(value)
    return key, value


# -- formatting (docker/go-units) -----------------------------------------------------------

_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human_size(size: float) -> str:
    """go-units ``HumanSize``: decimal units, four significant digits (``1.235MB``)."""
    i = 0
    while size >= 1000.0 and i < len(_DECIMAL_UNITS) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.4g}{_DECIMAL_UNITS[i]}"


def human_duration(ns: int) -> str:
    """go-units ``HumanDuration`` (``About an hour``, ``3 days``)."""
    seconds = ns // 1_000_000_000
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = seconds // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = (ns + 1_800_000_000_000) // 3_600_000_000_000  # rounded to the hour
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{ns // 3_600_000_000_000 // 24 // 365} years"


def _ago(ns: int, now: int) -> str:
    return human_duration(max(0, now - ns)) + " ago"


def _table(rows: Sequence[Sequence[str]]) -> str:
    # docker's table formatter: tabwriter with minwidth 10, padding 3, spaces.
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell if i == len(row) - 1 else cell.ljust(max(widths[i] + 3, 10))
            for i, cell in enumerate(row)
        ]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _kv(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs) + 2
    return "".join(f"{(k + ':').ljust(width)}{v}\n" for k, v in pairs)


def _usage_row(record: UsageRecord, now: int) -> list[str]:
    size = human_size(record.size) + ("*" if record.shared else "")
    return [
        record.id,
        "true" if record.reclaimable else "false",
        size,
        _ago(record.last_used_ns, now),
    ]


def _verbose(record: UsageRecord) -> str:
    pairs = [("ID", record.id)]
    if record.parents:
        pairs.append(("Parents", ";".join(record.parents)))
    pairs += [
        ("Created at", _timestamp(record.created_ns)),
        ("Mutable", "false"),
        ("Reclaimable", "true" if record.reclaimable else "false"),
        ("Shared", "true" if record.shared else "false"),
        ("Size", human_size(record.size)),
    ]
    if record.description:
        pairs.append(("Description", record.description))
    pairs += [
        ("Usage count", str(record.usage_count)),
        ("Last used", _ago(record.last_used_ns, time.time_ns())),
        ("Type", "regular" if record.kind == "result" else "layer"),
    ]
    return _kv(pairs) + "\n"


def _timestamp(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(ns / 1e9))


# -- commands -------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> Store:
    from engine.plan import default_store_root
    from engine.store.store import Store

    return Store.open(default_store_root(args.root))


def _record_json(record: UsageRecord) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["parents"] = list(record.parents)
    return data


def _cmd_du(args: argparse.Namespace) -> int:
    from engine.store.gc import disk_usage

    with _open(args) as store:
        records = disk_usage(store)
    if args.format == "json":
        json.dump([_record_json(r) for r in records], sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    now = time.time_ns()
    records = sorted(records, key=lambda r: (-r.size, r.id))
    out = sys.stdout
    if args.verbose:
        for record in records:
            out.write(_verbose(record))
    else:
        rows = [["ID", "RECLAIMABLE", "SIZE", "LAST ACCESSED"]]
        rows += [_usage_row(r, now) for r in records]
        out.write(_table(rows))
    total = sum(r.size for r in records)
    shared = sum(r.size for r in records if r.shared)
    reclaimable = sum(r.size for r in records if r.reclaimable)
    summary: list[tuple[str, str]] = []
    if shared:
        summary += [("Shared", human_size(shared)), ("Private", human_size(total - shared))]
    summary += [("Reclaimable", human_size(reclaimable)), ("Total", human_size(total))]
    out.write(_kv(summary))
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    from engine.store.gc import disk_usage

    with _open(args) as store:
        records = [r for r in disk_usage(store) if r.kind == "result" or args.all]
    if args.format == "json":
        json.dump([_record_json(r) for r in records], sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    now = time.time_ns()
    rows = [["ID", "SIZE", "CREATED", "LAST ACCESSED", "USES", "IN USE", "DESCRIPTION"]]
    for r in records:
        rows.append(
            [
                r.id,
                human_size(r.size) + ("*" if r.shared else ""),
                _ago(r.created_ns, now),
                _ago(r.last_used_ns, now),
                str(r.usage_count),
                "yes" if r.in_use else "no",
                r.description,
            ]
        )
    sys.stdout.write(_table(rows))
    return 0


def _confirm(message: str) -> bool:
    sys.stdout.write(f"{message} [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline()
    if not sys.stdin.isatty():
        sys.stdout.write("\n")  # the answer was not echoed: end the prompt's line
    return answer.strip().lower() in ("y", "yes")


def _cmd_prune(args: argparse.Namespace) -> int:
    from engine.store.gc import prune

    until: int | None = None
    for key, value in args.filter:
        if key == "until":
            until = parse_duration(value)
    reserved = args.reserved_space if args.reserved_space is not None else args.keep_storage
    if not args.force:
        warning = _ALL_WARNING if args.all else _FILTER_WARNING if args.filter else _NORMAL_WARNING
        if not _confirm(warning):
            return 0
    with _open(args) as store:
        report = prune(
            store,
            all=args.all,
            until_ns=until,
            max_used_space=args.max_used_space,
            reserved_space=reserved,
            min_free_space=args.min_free_space,
        )
    now = time.time_ns()
    out = sys.stdout
    if report.removed:
        if args.verbose:
            for record in report.removed:
                out.write(_verbose(record))
        else:
            rows = [["ID", "RECLAIMABLE", "SIZE", "LAST ACCESSED"]]
            rows += [_usage_row(r, now) for r in report.removed]
            out.write(_table(rows))
    out.write(_kv([("Total", human_size(report.reclaimed))]))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from engine.store.check import check

    with _open(args) as store:
        report = check(store, repair=args.repair)
        root = store.root
    out = sys.stdout
    repaired = {(p.kind, p.id) for p in report.repaired}
    held = {(p.kind, p.id) for p in report.held}
    for p in report.problems:
        mark = ""
        if (p.kind, p.id) in repaired:
            mark = " [repaired]"
        elif (p.kind, p.id) in held:
            mark = " [held by a running build: left alone]"
        out.write(f"{p.kind}\t{p.id}\t{p.detail}{mark}\n")
    checked = (
        f"checked {report.checked_snapshots} snapshots, {report.checked_results} results, "
        f"{report.checked_blobs} blobs in {root}"
    )
    if report.clean:
        out.write(f"{checked}: no problems\n")
        return 0
    if args.repair:
        out.write(
            f"{checked}: {len(report.problems)} problems, {len(report.repaired)} repaired"
            + (f", {report.quarantined} items quarantined" if report.quarantined else "")
            + (f", {len(report.held)} held by a running build" if report.held else "")
            + "\n"
        )
        return 1 if report.held else 0
    out.write(
        f"{checked}: {len(report.problems)} problems; run 'nbbuild cache check --repair' "
        "to fix them\n"
    )
    return 1


# -- registration ---------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cache`` (``du``, ``ls``, ``prune``, ``check``) to the ``nbbuild`` sub-commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root", default=None, help="store directory (default $NBBUILD_ROOT or ~/.cache/nbbuild)"
    )
    cache = subparsers.add_parser(
        "cache",
        help="show, prune and check the build cache",
        description="Inspect and manage the build cache of the store.",
    )
    sub = cache.add_subparsers(dest="cache_command", metavar="COMMAND")
    sub.required = True

    du = sub.add_parser(
        "du", parents=[common], help="disk usage", description="Show the cache's disk usage."
    )
    du.add_argument("-v", "--verbose", action="store_true", help="one block per record")
    du.add_argument("--format", choices=("table", "json"), default="table")
    du.set_defaults(run=_cmd_du)

    ls = sub.add_parser(
        "ls",
        parents=[common],
        help="list cache records",
        description="List cached results with their description and use.",
    )
    ls.add_argument("-a", "--all", action="store_true", help="also list layers kept only by images")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    ls.set_defaults(run=_cmd_ls)

    pr = sub.add_parser(
        "prune",
        parents=[common],
        help="remove build cache",
        description=(
            "Remove build cache. Without --all, only records no running build holds and no "
            "image shares. With a space limit, least recently used first until it is met."
        ),
    )
    pr.add_argument("-a", "--all", action="store_true", help="also remove cache shared with images")
    pr.add_argument(
        "--filter",
        action="append",
        default=[],
        type=parse_filter,
        metavar="until=DURATION",
        help="only cache not used within DURATION (Go duration: 48h, 1h30m)",
    )
    pr.add_argument(
        "--max-used-space", type=parse_size, default=None, metavar="SIZE",
        help="remove until the cache uses at most SIZE",
    )  # fmt: skip
    pr.add_argument(
        "--reserved-space", type=parse_size, default=None, metavar="SIZE",
        help="always keep at least SIZE of cache",
    )  # fmt: skip
    pr.add_argument(
        "--keep-storage", type=parse_size, default=None, metavar="SIZE",
        help="old name of --reserved-space",
    )  # fmt: skip
    pr.add_argument(
        "--min-free-space", type=parse_size, default=None, metavar="SIZE",
        help="remove until the filesystem has SIZE free",
    )  # fmt: skip
    pr.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    pr.add_argument("-v", "--verbose", action="store_true", help="one block per removed record")
    pr.set_defaults(run=_cmd_prune)

    ck = sub.add_parser(
        "check",
        parents=[common],
        help="check the store for damage",
        description=(
            "Verify blobs, snapshots, results and keys. With --repair, remove leftovers and "
            "quarantine damaged records and everything that depends on them."
        ),
    )
    ck.add_argument("--repair", action="store_true", help="fix or quarantine what is broken")
    ck.set_defaults(run=_cmd_check)
