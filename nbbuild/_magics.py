"""``%%dockerfile`` and ``%nbbuild``: the notebook's magics, kept thin.

:class:`DockerfileMagics` holds the kernel's state (a :class:`~nbbuild._session.Session`:
workers, the open store, warnings given) and the settings users change with ``%config`` or in
``ipython_config.py`` (``c.DockerfileMagics.progress = "plain"``). The cell magic parses its
line (:mod:`nbbuild._options`), builds with a live view (:func:`nbbuild._session.run_build`)
and returns the result; the line magic dispatches sub-commands (history, cache, doctor, run,
images, explain, what-if).
"""

from __future__ import annotations

import argparse
import codecs
import inspect
import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser
from traitlets import Bool, CaselessStrEnum, Int, Unicode

from engine.errors import UsageError as EngineUsageError
from nbbuild._options import PROGRESS_MODES, build_arguments, parse_line, to_request
from nbbuild._session import Session, Settings, run_build, store_root

if TYPE_CHECKING:
    from pathlib import Path

    from IPython.core.interactiveshell import InteractiveShell

__all__ = ["DockerfileMagics", "line_parser"]

GRAPH_FORMATS = ("auto", "svg", "text", "off")


@magics_class
class DockerfileMagics(Magics):
    """The ``%%dockerfile`` cell magic and the ``%nbbuild`` line magic."""

    store_root = Unicode(
        "",
        help="Store directory (the build cache, images, history). NBBUILD_ROOT wins over it; "
        "empty: ~/.cache/nbbuild.",
    ).tag(config=True)
    progress = CaselessStrEnum(
        PROGRESS_MODES,
        default_value="auto",
        help="How builds show progress: auto (the widget in Jupyter, plain text elsewhere), "
        "widget, html, plain or none.",
    ).tag(config=True)
    graph_format = CaselessStrEnum(
        GRAPH_FORMATS,
        default_value="auto",
        help="How the build graph is drawn: auto (SVG when graphviz's dot is installed), svg, "
        "text, or off.",
    ).tag(config=True)
    max_log_lines = Int(200, help="Lines of each step's log the live view keeps.").tag(config=True)
    raise_on_error = Bool(
        True,
        help="A failed build raises an error (so nbval and nbconvert fail the cell); False "
        "returns the failed result, as --no-raise-error does.",
    ).tag(config=True)
    store_warn_size = Int(
        5 * 1000 * 1000 * 1000,
        help="Warn once when the store grows past this many bytes (0: never).",
    ).tag(config=True)

    def __init__(self, shell: InteractiveShell | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.session = Session()

    @property
    def settings(self) -> Settings:
        """The current settings (traits) as the build takes them."""
        return Settings(
            store_setting=self.store_root,
            progress=self.progress,
            graph_format=self.graph_format,
            max_log_lines=self.max_log_lines,
            raise_on_error=self.raise_on_error,
            store_warn_size=self.store_warn_size,
        )

    def root(self) -> tuple[Path, str]:
        """The store directory and why it is that one."""
        return store_root(self.store_root)

    @build_arguments
    @cell_magic
    def dockerfile(self, line: str, cell: str) -> Any:
        """Build the cell as a Dockerfile: live progress, then the result (graph, keys, logs).

        The cell is the Dockerfile as written (only this line is ``{var}``/``$var``-expanded;
        ``$$`` is a literal ``$``). The context is the kernel's working directory unless
        --context says otherwise, without the notebook's own files (*.ipynb,
        .ipynb_checkpoints) unless its .dockerignore brings them back. A failed build shows
        its result, then raises an error naming the step, its line in the cell, the exit
        code and the last lines of its log (--no-raise-error returns the result instead).
        """
        options = parse_line(line)
        try:
            request = to_request(options, cell)
        except EngineUsageError as exc:
            raise UsageError(str(exc)) from None

        def bind(result: Any) -> None:
            if options.out:
                self.shell.user_ns[options.out] = result  # type: ignore[union-attr]

        try:
            return run_build(
                self.session,
                self.settings,
                request,
                progress=options.progress,
                raise_error=options.raise_error,
                on_result=bind,
            )
        except EngineUsageError as exc:
            if getattr(exc, "result", None) is not None:
                raise  # the build ran: its error belongs to the result shown
            raise UsageError(str(exc)) from None

    @line_magic
    def nbbuild(self, line: str) -> Any:
        """Inspect and manage builds::

        %nbbuild history [-n N] [NAME]     recent builds, newest first
        %nbbuild cache du|ls|prune|check … the build cache (flags as `nbbuild cache`)
        %nbbuild images                    images in the local image store
        %nbbuild doctor                    what this host can do for builds, how to fix it
        %nbbuild run [--network N] [-e K=V] [-u USER] [-w DIR] IMAGE [CMD …]
                                           run a command in an image, like docker run --rm
        %nbbuild explain [NAME]            why the steps of the last build re-ran
        %nbbuild whatif [NAME] --changed PATH … | --build-arg K=V …
                                           which steps a change would re-run
        """
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%nbbuild: cannot split the line: {exc}") from None
        if not argv:
            print(inspect.cleandoc(DockerfileMagics.nbbuild.__doc__ or ""))
            return None
        args = line_parser().parse_args(argv)
        command: Callable[[argparse.Namespace], Any] = getattr(self, f"_cmd_{args.command}")
        return command(args)

    # -- sub-commands -----------------------------------------------------------------------

    def _cmd_history(self, args: argparse.Namespace) -> None:
        root, _ = self.root()
        records = self.session.store(root).builds(limit=args.n * 4 if args.name else args.n)
        if args.name:
            records = [r for r in records if r.name == args.name]
        print(history_table(records[: args.n]) or "no builds yet")

    def _cmd_cache(self, args: argparse.Namespace) -> None:
        rest = list(args.rest)
        if rest[:1] == ["prune"] and not {"-f", "--force"} & set(rest):
            if not _confirm_prune(rest):
                return
            rest.append("--force")
        _cli(["cache", *rest], self.root()[0])

    def _cmd_images(self, args: argparse.Namespace) -> None:
        _cli(["image", "ls"], self.root()[0])

    def _cmd_doctor(self, args: argparse.Namespace) -> Any:
        from nbbuild._doctor import doctor

        root, source = self.root()
        return doctor(root, root_source=source)

    def _cmd_run(self, args: argparse.Namespace) -> None:
        from engine.run import run_image_at

        root, _ = self.root()
        decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in (1, 2)}

        def work(cancel: threading.Event, emit: Callable[[tuple[int, bytes]], None]) -> Any:
            return run_image_at(
                root,
                args.image,
                args.cmd,
                network=args.network,
                env=args.env,
                user=args.user,
                workdir=args.workdir,
                on_output=lambda fd, data: emit((fd, data)),
                cancel=cancel,
            )

        def show(chunks: list[tuple[int, bytes]]) -> None:
            for fd, data in chunks:
                stream = sys.stdout if fd == 1 else sys.stderr
                stream.write(decoders[fd].decode(data))
            if chunks:
                sys.stdout.flush()

        outcome = self.session.run(work, show, name="nbbuild-run")
        for fd, decoder in decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                (sys.stdout if fd == 1 else sys.stderr).write(tail)
        if outcome.interrupted:
            raise KeyboardInterrupt
        if outcome.error is not None:
            raise outcome.error
        result = outcome.value
        if result is not None and result.exit_code != 0:
            print(f"exit code {result.exit_code}", file=sys.stderr)

    def _cmd_explain(self, args: argparse.Namespace) -> None:
        from engine.explain import explain_recorded

        store = self.session.store(self.root()[0])
        name = args.name or self.session.last_name
        if name is None:
            latest = store.builds(limit=1)
            if not latest:
                raise UsageError("%nbbuild explain: no builds yet")
            name = latest[0].name
        print(explain_recorded(store, name))

    def _cmd_whatif(self, args: argparse.Namespace) -> None:
        from engine.whatif import whatif
        from nbbuild._options import pairs

        name = args.name or self.session.last_name
        request = self.session.requests.get(name) if name is not None else None
        if request is None:
            raise UsageError(
                f"%nbbuild whatif: no build {'named ' + repr(name) + ' ' if name else ''}in "
                "this kernel yet: run its %%dockerfile cell first"
            )
        if not args.changed and not args.build_arg:
            raise UsageError("%nbbuild whatif: give --changed PATH … and/or --build-arg K=V")
        try:
            build_args = pairs(args.build_arg, "build-arg", from_env=True)
        except EngineUsageError as exc:
            raise UsageError(str(exc)) from None
        predictions = whatif(
            request,
            root=self.root()[0],
            changed_paths=args.changed,
            build_args=build_args,
            name=name,
        )
        print(whatif_table(predictions))


# -- helpers ----------------------------------------------------------------------------------


def line_parser() -> MagicArgumentParser:
    """The parser of ``%nbbuild``'s line (raises IPython's ``UsageError`` on bad input)."""
    parser = MagicArgumentParser(  # type: ignore[no-untyped-call]
        prog="nbbuild", description="Inspect and manage builds."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=MagicArgumentParser)
    sub.required = True
    p = sub.add_parser("history", help="recent builds, newest first")
    p.add_argument("-n", type=int, default=20, help="how many (default 20)")
    p.add_argument("name", nargs="?", default="", help="only builds of this name")
    p = sub.add_parser("cache", help="du, ls, prune or check the build cache", prefix_chars="+")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="as for `nbbuild cache`")
    sub.add_parser("images", help="images in the local image store")
    sub.add_parser("doctor", help="what this host can do for builds")
    p = sub.add_parser("run", help="run a command in an image (docker run --rm)")
    p.add_argument("--network", default="none", choices=("none", "default", "host"))
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("-u", "--user", default=None)
    p.add_argument("-w", "--workdir", default=None)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD")
    p = sub.add_parser("explain", help="why the steps of a build re-ran")
    p.add_argument("name", nargs="?", default=None)
    p = sub.add_parser("whatif", help="which steps a change would re-run")
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--changed", nargs="+", default=[], metavar="PATH")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    return parser


def history_table(records: Sequence[Any]) -> str:
    """Builds as a table: when, name, target, status, step counts, tag."""
    if not records:
        return ""
    rows = [("WHEN", "NAME", "TARGET", "STATUS", "STEPS", "TAG")]
    for r in records:
        counts: dict[str, int] = {}
        for s in r.steps:
            if not s.name.startswith("[internal]"):
                counts[s.status] = counts.get(s.status, 0) + 1
        steps = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "-"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time_ns / 1e9))
        rows.append((when, r.name, r.target or "-", r.status, steps, r.tag or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def whatif_table(predictions: Sequence[Any]) -> str:
    """Predictions as aligned lines: step, verdict, reason."""
    if not predictions:
        return "no steps"
    width = max(len(p.step_name) for p in predictions)
    verdicts = max(len(p.verdict) for p in predictions)
    return "\n".join(
        f"{p.step_name.ljust(width)}  {p.verdict.ljust(verdicts)}  {p.reason}".rstrip()
        for p in predictions
    )


def _cli(argv: list[str], root: Path) -> None:
    """Run ``nbbuild ARGV --root ROOT`` in this kernel (its output goes to the cell)."""
    from nbbuild.cli import main

    try:
        main([*argv, "--root", str(root)])
    except SystemExit as exc:  # argparse: --help (0) or a usage error, already printed
        if exc.code not in (0, None):
            raise UsageError(f"%nbbuild {' '.join(argv)}: invalid arguments (see above)") from None


def _confirm_prune(rest: list[str]) -> bool:
    from nbbuild import _cli_cache

    if "-a" in rest or "--all" in rest:
        warning = _cli_cache._ALL_WARNING
    elif any(a == "--filter" or a.startswith("--filter=") for a in rest):
        warning = _cli_cache._FILTER_WARNING
    else:
        warning = _cli_cache._NORMAL_WARNING
    try:
        answer = input(f"{warning} [y/N] ")
    except (EOFError, OSError, RuntimeError):  # no stdin (StdinNotImplementedError, nbconvert)
        print("not confirmed: add -f to prune without asking", file=sys.stderr)
        return False
    return answer.strip().lower() in ("y", "yes")
