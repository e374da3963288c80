"""``nbbuild doctor``: what this host can do for builds, and how to fix what it cannot.

The probe is :func:`engine.doctor.probe` (the same as ``%nbbuild doctor``); this prints it as
text (one line per finding, a ``fix:`` line under those that need one, the verdict last) or
as JSON (``{"findings": [...], "can_run": ..., "verdict": ...}``). The exit code is 1 when a
finding is ``fail``, else 0 (``warn`` is a limit, not a failure), so scripts and CI can gate
on it. :func:`register` adds the sub-command; the engine is imported only when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``doctor`` to the ``nbbuild`` sub-commands."""
    p = subparsers.add_parser(
        "doctor",
        help="check what this host can do for builds, and how to fix what it cannot",
        description=(
            "Check this host for builds: root or rootless (user namespaces, subordinate ID "
            "ranges, newuidmap), overlayfs, runtimes, cgroups, graphviz and the store. Exits "
            "with 1 when a check fails."
        ),
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--root", default=None, help="store directory (default $NBBUILD_ROOT or ~/.cache/nbbuild)"
    )
    p.set_defaults(run=_cmd_doctor)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from engine.doctor import probe
    from engine.plan import default_store_root

    if args.root:
        source = "--root"
    elif os.environ.get("NBBUILD_ROOT"):
        source = "NBBUILD_ROOT"
    else:
        source = "the default"
    root = Path(default_store_root(args.root)).expanduser()
    report = probe(root, root_source=source)
    if args.format == "json":
        doc = {
            "findings": report.to_json(),
            "can_run": report.can_run,
            "verdict": report.verdict(),
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report.text())
    return 1 if report.failed else 0
