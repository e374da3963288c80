"""The ``nbbuild`` command line.

Imports of the engine happen inside the sub-commands so ``nbbuild --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.plan import Plan, PlanRequest

__all__ = ["main"]


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if not sep:
        # buildx: --build-arg KEY takes the value from the environment (skipped when unset).
        import os

        if key not in os.environ:
            raise argparse.ArgumentTypeError(f"{key} is not set in the environment")
        return key, os.environ[key]
    return key, value


# The sub-commands, in the order of `nbbuild --help`.
_COMMANDS = ("plan", "unshare", "build", "image", "cache", "doctor", "server")


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. When ``argv`` starts with a sub-command, only that sub-command's
    parser is made (parsing the same way: the top-level parser has no options but ``-h``, and
    sub-command names are never abbreviated); building all of them was ~5-8 ms of every run."""
    args = list(sys.argv[1:] if argv is None else argv)
    only = args[0] if args and args[0] in _COMMANDS else None
    parser = argparse.ArgumentParser(
        prog="nbbuild",
        description="Build Dockerfiles in-process with BuildKit's caching model.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if only in (None, "plan"):
        _add_plan(sub)
    if only in (None, "unshare"):
        _add_unshare(sub)
    if only in (None, "build"):
        from nbbuild import _cli_build

        _cli_build.register(sub, _key_value)
    if only in (None, "image"):
        from nbbuild import _cli_image

        _cli_image.register(sub)
    if only in (None, "cache"):
        from nbbuild import _cli_cache

        _cli_cache.register(sub)
    if only in (None, "doctor"):
        from nbbuild import _cli_doctor

        _cli_doctor.register(sub)
    if only in (None, "server"):
        _add_server(sub)
    return parser


def _add_plan(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="show the build graph and every step's cache key, without building",
        description="Parse and plan a build: the graph of steps and each step's cache key.",
    )
    p.add_argument("context", metavar="CONTEXT", help="build context directory")
    p.add_argument(
        "-f", "--file", default=None, help="Dockerfile (default CONTEXT/Dockerfile; - for stdin)"
    )
    p.add_argument("--target", default="", help="stage to build (default: the last)")
    p.add_argument("--build-arg", action="append", default=[], type=_key_value, metavar="K=V")
    p.add_argument(
        "--build-context", action="append", default=[], type=_key_value, metavar="NAME=VALUE"
    )
    p.add_argument("--label", action="append", default=[], type=_key_value, metavar="K=V")
    p.add_argument("--no-cache", action="store_true", help="mark every step to skip the cache")
    p.add_argument(
        "--no-cache-filter",
        action="append",
        default=[],
        metavar="STAGE",
        help="mark these stages to skip the cache (repeatable or comma-separated)",
    )
    p.add_argument(
        "--network",
        default=None,
        choices=("default", "none", "host"),
        help="network for RUN (part of its key)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--root", default=None, help="store directory (default $NBBUILD_ROOT or ~/.cache/nbbuild)"
    )
    p.set_defaults(run=_cmd_plan)


def _add_unshare(sub: Any) -> None:
    p = sub.add_parser(
        "unshare",
        help="run a command inside the user namespace rootless builds use",
        description=(
            "Run COMMAND (default: $SHELL) as root of the user namespace rootless builds run "
            "in, like `podman unshare`: snapshot files belong to your subordinate IDs, which "
            "only that namespace may read or remove (e.g. `nbbuild unshare rm -rf STORE`). "
            "As real root it just runs COMMAND."
        ),
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND")
    p.set_defaults(run=_cmd_unshare)


def _add_server(sub: Any) -> None:
    p = sub.add_parser(
        "server",
        help="list or stop the warm servers that run nbbuild commands",
        description=(
            "nbbuild commands run in a child of a warm server process of yours that has the "
            "engine imported already (like docker's daemon; started by the first command, it "
            "exits after NBBUILD_SERVER_IDLE seconds idle, default 900; NBBUILD_SERVER=0 "
            "turns it off). `status` lists your servers, `stop` stops them."
        ),
    )
    p.add_argument("action", choices=("status", "stop"))
    p.set_defaults(run=_cmd_server)


def _cmd_server(args: argparse.Namespace) -> int:
    from nbbuild import server

    found = server.stop() if args.action == "stop" else server.servers()
    verb = "stopped" if args.action == "stop" else "running"
    for info in found:
        print(f"{verb}: pid {info.pid}, key {info.key}")
        if info.last_error:
            print(f"  its last child could not start a command: {info.last_error}")
        if info.contexts:
            print(f"  {info.contexts}")
    if not found:
        print("no server is running")
    return 0


def _cmd_unshare(args: argparse.Namespace) -> int:
    import os
    import threading

    from engine.errors import UsageError
    from engine.userns.errors import UsernsUnavailable
    from engine.userns.namespace import mode, userns_error

    if mode() == "outside":  # _rootless could not enter one
        raise UsernsUnavailable(f"cannot enter a user namespace: {userns_error()}")
    if threading.active_count() > 1:
        raise UsageError("nbbuild unshare replaces the process: run it from a shell")
    cmd = args.cmd or [os.environ.get("SHELL") or "/bin/sh"]
    import shutil

    if shutil.which(cmd[0]) is None:
        raise UsageError(f"cannot run {cmd[0]!r}: no such command")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        raise UsageError(f"cannot run {cmd[0]!r}: {exc.strerror}") from None
    return 127  # not reached


def _read_dockerfile(file: str | None, context: Path) -> tuple[str, str, Path | None]:
    from engine.errors import UsageError

    if file == "-":
        return sys.stdin.read(), "Dockerfile", None
    path = Path(file) if file else context / "Dockerfile"
    try:
        return path.read_text(encoding="utf-8"), path.name, path
    except FileNotFoundError:
        raise UsageError(f"cannot read Dockerfile {str(path)!r}: no such file") from None
    except OSError as exc:
        raise UsageError(f"cannot read Dockerfile {str(path)!r}: {exc.strerror}") from None


def _cmd_plan(args: argparse.Namespace) -> int:
    from engine.plan import PlanRequest, default_store_root
    from nbbuild.render import plan_text

    context = Path(args.context)
    text, name, path = _read_dockerfile(args.file, context)
    filters: list[str] = []
    for item in args.no_cache_filter:
        filters.extend(s for s in item.split(",") if s)
    request = PlanRequest(
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
        network=args.network,
    )
    root = default_store_root(args.root)
    result = _plan_with_local_images(request, root)
    if args.format == "json":
        json.dump(result.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(plan_text(result))
    return 0


def _plan_with_local_images(request: PlanRequest, root: Path) -> Plan:
    """Plan with ``FROM`` resolved in the store's local images, so the keys are a build's."""
    from engine.images.store import ImageStore, resolver
    from engine.plan import plan
    from engine.store.store import Store

    store = Store.open(root)
    try:
        return plan(request, store_root=root, resolve_image=resolver(ImageStore(store)))
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    from nbbuild._fastimport import compiled_dataclasses

    with compiled_dataclasses():
        code = _main(argv)
    if argv is None:
        _exit_now(code)  # the console script or `python -m nbbuild`: this is the process's end
    return code


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown (freeing every module and object:
    ~20-30 ms of a ~150 ms no-op build), after what teardown would do that matters: flush the
    standard streams and run the ``atexit`` handlers (the executor drains its bundle remover
    there). Only when nothing else runs in this process: the CLI's own entry points."""
    import atexit
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            if code == 0:
                code = 120  # what the interpreter's own exit does when a flush fails
    atexit._run_exitfuncs()
    os._exit(code)


# What runs as the user, outside any namespace: what needs no snapshot files, and must keep
# working where user namespaces are not allowed.
_OUTSIDE_COMMANDS = frozenset({None, "plan", "doctor", "server"})


def _rootless(argv: Sequence[str] | None) -> int | None:
    """For a normal user: move this process into a user namespace before the command touches
    the store (snapshot files belong to the user's subordinate IDs), or, when ``main`` was
    called by another program (``%nbbuild cache prune`` in a kernel), run the whole command in
    a helper that is inside one. Returns the exit code when the helper ran it, None to go on here. Where no
    namespace can be made, the command goes on as the user and fails clearly if it must."""
    import os

    if os.geteuid() == 0:
        return None  # engine.userns.namespace.mode() is "root" or "inside": nothing to enter
    import contextlib
    import threading

    from engine.userns.errors import UsernsUnavailable

    # In-process only when this process *is* the CLI (the console script: argv None); a caller
    # of main(argv) - the notebook's %nbbuild, a test - must keep its own namespace, as must a
    # process with threads: the command runs in a helper inside one instead.
    if threading.active_count() > 1 or argv is not None:
        from engine.userns.forward import forward

        args = list(argv) if argv is not None else sys.argv[1:]
        try:
            code: int = forward("nbbuild.cli:main", args, capture=True)
        except UsernsUnavailable:
            return None
        return code
    from engine.userns.idmap import current_mapping
    from engine.userns.namespace import enter

    with contextlib.suppress(UsernsUnavailable):
        enter(current_mapping())  # else the build says why it cannot run (plan still works)
    return None


def _main(argv: Sequence[str] | None) -> int:
    args = _parser(argv).parse_args(argv)
    from engine.errors import NbbuildError

    try:
        forwarded = _rootless(argv) if args.command not in _OUTSIDE_COMMANDS else None
        if forwarded is not None:
            return forwarded
        code: int = args.run(args)
        return code
    except NbbuildError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        # `nbbuild cache du | head`: the reader went away; that is not an error of ours.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
