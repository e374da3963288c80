"""The build options of ``%%dockerfile`` and :func:`nbbuild.build`, with buildx's names.

One option set serves both entry points: :func:`build_arguments` is the decorator stack the
magic wears (``%%script`` composes its shared options the same way), :func:`parse_line` turns a
magic line into :class:`Options` without a shell, and :func:`options_from_kwargs` does the same
for the Python API. :func:`to_request` makes the engine's
:class:`~engine.build.BuildRequest` from them.

Option errors raise the engine's :class:`~engine.errors.UsageError`; the magic turns it into
IPython's ``UsageError`` (one short line, no traceback).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from IPython.core.magic_arguments import argument, magic_arguments

from engine.errors import UsageError

if TYPE_CHECKING:
    from engine.build import BuildRequest

__all__ = [
    "CELL_NAME",
    "NOTEBOOK_EXCLUDES",
    "PROGRESS_MODES",
    "Options",
    "build_arguments",
    "options_from_kwargs",
    "pairs",
    "parse_line",
    "to_request",
]

F = TypeVar("F", bound=Callable[..., Any])

PROGRESS_MODES: tuple[str, ...] = ("auto", "widget", "html", "plain", "none")
NETWORKS: tuple[str, ...] = ("default", "none", "host")
ENTITLEMENTS: frozenset[str] = frozenset({"network.host", "security.insecure"})
CELL_NAME = "<cell>"
# The notebook's own files, left out of the context before its .dockerignore (a ``!`` line
# there brings them back): an autosave must never invalidate ``COPY . .``. ``**/`` so that
# notebooks in sub-directories count too (Go's ``*`` does not cross ``/``).
NOTEBOOK_EXCLUDES: tuple[str, ...] = ("**/*.ipynb", "**/.ipynb_checkpoints")


@dataclass(frozen=True, slots=True)
class Options:
    """What one build was asked for (the magic's line, or the API's keyword arguments).

    ``None`` means "the configured default" (the ``DockerfileMagics`` settings).
    """

    tags: tuple[str, ...] = ()
    target: str = ""
    build_args: Mapping[str, str] = field(default_factory=dict)
    build_contexts: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    context: str | None = None
    no_cache: bool = False
    no_cache_filter: tuple[str, ...] = ()
    network: str | None = None
    allow: frozenset[str] = frozenset()
    outputs: tuple[str, ...] = ()
    progress: str | None = None
    name: str = ""
    out: str | None = None
    raise_error: bool | None = None

    def context_dir(self, cwd: Path | None = None) -> Path:
        """The build context: ``--context`` (``~`` expanded, relative to ``cwd``), else ``cwd``
        (the kernel's working directory)."""
        base = Path(os.getcwd()) if cwd is None else cwd
        if not self.context:
            return base
        return base / Path(self.context).expanduser()


# -- the decorator stack ----------------------------------------------------------------------


_ARGUMENTS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (
        ("-t", "--tag"),
        {
            "action": "append",
            "default": [],
            "metavar": "NAME[:TAG]",
            "help": "name the image in the local image store (repeatable)",
        },
    ),
    (("--target",), {"default": "", "help": "the stage to build (default: the last)"}),
    (
        ("--build-arg",),
        {
            "action": "append",
            "default": [],
            "metavar": "K=V",
            "help": "set a build-time variable (K alone: from the environment)",
        },
    ),
    (
        ("--build-context",),
        {
            "action": "append",
            "default": [],
            "metavar": "NAME=VALUE",
            "help": "an additional named context (a directory, docker-image://REF, …)",
        },
    ),
    (
        ("--label",),
        {"action": "append", "default": [], "metavar": "K=V", "help": "image label"},
    ),
    (
        ("--context",),
        {
            "default": None,
            "metavar": "DIR",
            "help": "build context directory (default: the kernel's working directory); "
            "notebooks and .ipynb_checkpoints are left out unless .dockerignore brings them back",
        },
    ),
    (
        ("--no-cache",),
        {
            "action": "store_true",
            "default": False,
            "help": "do not use the cache (results are still saved)",
        },
    ),
    (
        ("--no-cache-filter",),
        {
            "action": "append",
            "default": [],
            "metavar": "STAGE",
            "help": "do not use the cache for these stages (repeatable or comma-separated)",
        },
    ),
    (
        ("--network",),
        {"default": None, "metavar": "|".join(NETWORKS), "help": "network for RUN steps"},
    ),
    (
        ("--allow",),
        {
            "action": "append",
            "default": [],
            "metavar": "ENTITLEMENT",
            "help": "grant network.host or security.insecure",
        },
    ),
    (
        ("-o", "--output"),
        {
            "action": "append",
            "default": [],
            "metavar": "type=TYPE,dest=PATH",
            "help": "export the result: local, tar, oci, docker or image (repeatable)",
        },
    ),
    (
        ("--progress",),
        {
            "default": None,
            "metavar": "|".join(PROGRESS_MODES),
            "help": "how progress is shown (default: the progress setting, auto)",
        },
    ),
    (
        ("--name",),
        {
            "default": "",
            "help": "name of the build in the history (explain compares builds of one name; "
            "default: the tag, else the context directory)",
        },
    ),
    (
        ("--out",),
        {
            "default": None,
            "metavar": "VAR",
            "help": "also bind the result to VAR in the notebook's namespace",
        },
    ),
    (
        ("--no-raise-error",),
        {
            "action": "store_true",
            "default": False,
            "help": "return the result of a failed build instead of raising an error",
        },
    ),
)


def build_arguments(func: F) -> F:
    """Give a magic the build options: ``@magic_arguments()`` with one ``@argument`` each
    (its ``%%name?`` help is made from them and the docstring)."""
    # magic_arguments builds the parser from the last decorator applied to the first, so the
    # options are applied bottom up to appear in the order listed.
    for flags, kwargs in reversed(_ARGUMENTS):
        func = argument(*flags, **kwargs)(func)  # type: ignore[no-untyped-call]
    return cast(F, magic_arguments()(func))  # type: ignore[no-untyped-call]


@build_arguments
def dockerfile(line: str, cell: str) -> None:
    """Build the cell as a Dockerfile (the line parser's stand-in for the real magic)."""


# -- parsing ----------------------------------------------------------------------------------


def pairs(items: Sequence[str], what: str, *, from_env: bool = False) -> dict[str, str]:
    """``KEY=VALUE`` items as a dict (with ``from_env``, a bare ``KEY`` takes its value from
    the environment, as buildx's ``--build-arg KEY`` does).

    Raises:
        UsageError: an item without a key, or (without ``from_env``) without ``=``.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid {what} {item!r}: expected KEY=VALUE")
        if not sep:
            if not from_env:
                raise UsageError(f"invalid {what} {item!r}: expected KEY=VALUE")
            # buildx: --build-arg KEY takes its value from the environment
            if key not in os.environ:
                raise UsageError(f"--{what} {key}: {key} is not set in the environment")
            value = os.environ[key]
        out[key] = value
    return out


def _split(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(s.strip() for item in items for s in item.split(",") if s.strip())


def parse_line(line: str) -> Options:
    """The options of a ``%%dockerfile`` line (already ``{var}``-expanded by IPython).

    The line is split like a shell would (``--build-arg "MSG=hello world"``).

    Raises:
        IPython.core.error.UsageError: unknown option, bad value, unbalanced quote.
    """
    from IPython.core.error import UsageError as IPythonUsageError

    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise IPythonUsageError(f"%%dockerfile: cannot split the line: {exc}") from None
    args = dockerfile.parser.parse_args(argv)  # type: ignore[attr-defined,unused-ignore]
    try:
        return _options(
            tags=tuple(args.tag),
            target=args.target,
            build_args=pairs(args.build_arg, "build-arg", from_env=True),
            build_contexts=pairs(args.build_context, "build-context"),
            labels=pairs(args.label, "label"),
            context=args.context,
            no_cache=args.no_cache,
            no_cache_filter=_split(args.no_cache_filter),
            network=args.network,
            allow=frozenset(_split(args.allow)),
            outputs=tuple(args.output),
            progress=args.progress,
            name=args.name,
            out=args.out,
            raise_error=False if args.no_raise_error else None,
        )
    except UsageError as exc:
        raise IPythonUsageError(str(exc)) from None


def _options(**kwargs: Any) -> Options:
    options = Options(**kwargs)
    if options.network is not None and options.network not in NETWORKS:
        raise UsageError(f"invalid --network {options.network!r}: use {', '.join(NETWORKS)}")
    unknown = options.allow - ENTITLEMENTS
    if unknown:
        raise UsageError(
            f"unknown entitlement {', '.join(sorted(unknown))}: use network.host or "
            "security.insecure"
        )
    if options.progress is not None and options.progress not in PROGRESS_MODES:
        raise UsageError(
            f"invalid --progress {options.progress!r}: use {', '.join(PROGRESS_MODES)}"
        )
    if options.out is not None and not options.out.isidentifier():
        raise UsageError(f"--out {options.out!r} is not a Python variable name")
    if options.context is not None and not options.context_dir().is_dir():
        raise UsageError(f"--context {options.context!r} is not a directory")
    _check_outputs(options.outputs)
    _check_tags(options.tags)
    return options


def _check_outputs(outputs: Sequence[str]) -> None:
    from engine.build import OutputSpec

    for text in outputs:
        OutputSpec.parse(text)


def _check_tags(tags: Sequence[str]) -> None:
    from engine.images.errors import ImageError
    from engine.images.store import normalize_name

    for tag in tags:
        try:
            normalize_name(tag)
        except ImageError:
            raise UsageError(
                f"invalid tag {tag!r}: expected name[:tag], lowercase (e.g. app:1)"
            ) from None


def _strings(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def options_from_kwargs(
    *,
    context: str | os.PathLike[str] | None = None,
    tags: str | Sequence[str] = (),
    target: str = "",
    build_args: Mapping[str, str] | None = None,
    build_contexts: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    no_cache: bool = False,
    no_cache_filter: str | Sequence[str] = (),
    network: str | None = None,
    allow: str | Sequence[str] = (),
    outputs: str | Sequence[str] = (),
    progress: str | None = None,
    name: str = "",
    raise_error: bool | None = None,
) -> Options:
    """The options of a :func:`nbbuild.build` call (a string where a list is expected means
    one item; ``no_cache_filter`` and ``allow`` also take comma-separated lists).

    Raises:
        UsageError: a bad value (the engine's ``UsageError``, an ``NbbuildError``).
    """
    return _options(
        tags=_strings(tags),
        target=target,
        build_args={str(k): str(v) for k, v in (build_args or {}).items()},
        build_contexts={str(k): str(v) for k, v in (build_contexts or {}).items()},
        labels={str(k): str(v) for k, v in (labels or {}).items()},
        context=None if context is None else os.fspath(context),
        no_cache=no_cache,
        no_cache_filter=_split(_strings(no_cache_filter)),
        network=network,
        allow=frozenset(_split(_strings(allow))),
        outputs=_strings(outputs),
        progress=progress,
        name=name,
        out=None,
        raise_error=raise_error,
    )


def to_request(
    options: Options,
    dockerfile: str,
    *,
    cwd: Path | None = None,
    dockerfile_name: str = CELL_NAME,
    dockerfile_path: Path | None = None,
    excludes: tuple[str, ...] = NOTEBOOK_EXCLUDES,
) -> BuildRequest:
    """The engine's request for ``dockerfile`` built with ``options``.

    Raises:
        UsageError: an invalid ``--output``.
    """
    from engine.build import BuildRequest, OutputSpec

    return BuildRequest(
        dockerfile=dockerfile,
        context=options.context_dir(cwd),
        dockerfile_name=dockerfile_name,
        dockerfile_path=dockerfile_path,
        target=options.target,
        build_args=dict(options.build_args),
        build_contexts=dict(options.build_contexts),
        no_cache=options.no_cache,
        no_cache_filter=options.no_cache_filter,
        labels=dict(options.labels),
        tags=options.tags,
        outputs=tuple(OutputSpec.parse(o) for o in options.outputs),
        allow=options.allow,
        network=options.network,
        name=options.name,
        context_excludes=excludes,
    )
