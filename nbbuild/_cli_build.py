"""``nbbuild build``: buildx's flags, the embedded engine, BuildKit's progress output."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["register"]


def register(sub: Any, key_value: Any) -> None:
    """Add ``build`` to the CLI's sub-parsers."""
    p = sub.add_parser(
        "build",
        help="build a Dockerfile with the embedded engine",
        description="Build a Dockerfile with the embedded engine (flags as docker buildx build).",
    )
    p.add_argument("context", metavar="CONTEXT", help="build context directory")
    p.add_argument(
        "-f", "--file", default=None, help="Dockerfile (default CONTEXT/Dockerfile; - for stdin)"
    )
    p.add_argument(
        "-t", "--tag", action="append", default=[], help="name[:tag] in the local image store"
    )
    p.add_argument("--target", default="", help="stage to build (default: the last)")
    p.add_argument("--build-arg", action="append", default=[], type=key_value, metavar="K=V")
    p.add_argument(
        "--build-context", action="append", default=[], type=key_value, metavar="NAME=VALUE"
    )
    p.add_argument("--label", action="append", default=[], type=key_value, metavar="K=V")
    p.add_argument(
        "--no-cache", action="store_true", help="do not use the cache (results are still saved)"
    )
    p.add_argument("--no-cache-filter", action="append", default=[], metavar="STAGE")
    p.add_argument(
        "--network", default=None, choices=("default", "none", "host"), help="network for RUN"
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="ENTITLEMENT",
        help="grant network.host or security.insecure",
    )
    p.add_argument("--platform", default=None, help="target platform (this host's only, for now)")
    p.add_argument("-o", "--output", action="append", default=[], metavar="type=…,dest=…")
    p.add_argument("--iidfile", default=None, help="write the image id to this file")
    p.add_argument("--metadata-file", default=None, help="write build metadata (JSON) to this file")
    p.add_argument(
        "--progress",
        default="auto",
        choices=("auto", "plain", "tty", "quiet", "rawjson", "none"),
        help="progress output",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the image ID (same as --progress=quiet)",
    )
    p.add_argument(
        "--root", default=None, help="store directory (default $NBBUILD_ROOT or ~/.cache/nbbuild)"
    )
    p.set_defaults(run=_cmd_build)


def store_root(explicit: str | None) -> Path:
    """``--root`` > ``NBBUILD_ROOT`` > ``~/.cache/nbbuild``: engine.plan.default_store_root's
    rule, without importing engine.plan (and with it the Dockerfile parser and converter,
    which a build of a remembered conversion does not load)."""
    import os

    if explicit:
        return Path(explicit)
    env = os.environ.get("NBBUILD_ROOT")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "nbbuild"


def _check_platform(value: str | None) -> None:
    from engine.errors import UsageError
    from engine.frontend.convert import host_platform

    if not value:
        return
    host = host_platform()
    wanted = value.lower().split(",")
    for item in wanted:
        os_, _, arch = item.partition("/")
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(arch.split("/")[0], arch.split("/")[0])
        if os_ != host.os or (arch and arch != host.architecture):
            raise UsageError(
                f"platform {item!r} is not this host's ({host}): building for another platform "
                "needs the BuildKit backend (arrives later)"
            )


def _cmd_build(args: argparse.Namespace) -> int:
    from engine.build import BuildRequest, OutputSpec, build
    from engine.errors import BuildCanceled, UsageError
    from engine.events import QueueReporter
    from nbbuild.cli import _read_dockerfile
    from nbbuild.progress import open_renderer, pump

    _check_platform(args.platform)
    context = Path(args.context)
    text, name, path = _read_dockerfile(args.file, context)
    filters: list[str] = []
    for item in args.no_cache_filter:
        filters.extend(s for s in item.split(",") if s)
    allow = frozenset(a for item in args.allow for a in item.split(",") if a)
    unknown = allow - {"network.host", "security.insecure"}
    if unknown:
        raise UsageError(f"unknown entitlement(s): {', '.join(sorted(unknown))}")
    request = BuildRequest(
        dockerfile=text,
        context=context,
        dockerfile_name=name,
        dockerfile_path=path,
        target=args.target,
        build_args=dict(args.build_arg),
        build_contexts=dict(args.build_context),
        no_cache=args.no_cache,
        no_cache_filter=tuple(filters),
        labels=dict(args.label),
        tags=tuple(args.tag),
        outputs=tuple(OutputSpec.parse(o) for o in args.output),
        allow=allow,
        network=args.network,
    )
    # An output written to stdout (dest=-) owns it: quiet's image ID goes to stderr instead.
    to_stdout = any(o.dest == "-" for o in request.outputs)
    renderer = open_renderer(
        "quiet" if args.quiet else args.progress, stdout=sys.stderr if to_stdout else None
    )
    queue = QueueReporter()
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = build(
                request, root=store_root(args.root), reporter=queue, cancel=cancel
            )
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc
        finally:
            queue.close()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Ctrl-C or SIGTERM: stop the steps (SIGINT → SIGTERM → SIGKILL), keep the store
        # consistent, and keep showing progress until the build has wound down (the canceled
        # steps say so). Handled here rather than as KeyboardInterrupt, which would unwind the
        # renderer in the middle of an event. A second Ctrl-C stops waiting.
        if signum == signal.SIGINT and cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    worker = threading.Thread(target=work, name="nbbuild-build", daemon=True)
    worker.start()
    try:
        # The main thread owns the terminal: it drains the events while the build runs.
        pump(queue, renderer)
        worker.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, BuildCanceled):
            sys.stderr.write("error: build canceled\n")
            return 130
        raise error
    result = outcome["result"]
    if args.iidfile and result.image_id:
        Path(args.iidfile).write_text(result.image_id)
    if args.metadata_file:
        Path(args.metadata_file).write_text(
            json.dumps(_metadata(result), indent=2, sort_keys=True) + "\n"
        )
    return 0


def _metadata(result: Any) -> dict[str, Any]:
    """What buildx writes to ``--metadata-file``, plus nbbuild's per-step statuses."""
    out: dict[str, Any] = {}
    if result.image_id:
        out["containerimage.config.digest"] = result.image_id
    if result.descriptor:
        out["containerimage.descriptor"] = dict(result.descriptor)
        out["containerimage.digest"] = result.descriptor["digest"]
    if result.tags:
        out["image.name"] = ",".join(result.tags)
    out["nbbuild.build.name"] = result.name
    out["nbbuild.steps"] = [
        {"name": s.name, "step": s.step, "stage": s.stage, "status": s.status, "key": s.key}
        for s in result.steps
    ]
    return out
