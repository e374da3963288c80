"""Typed, validated Dockerfile instructions, like BuildKit's ``frontend/dockerfile/instructions``.

:func:`parse_instruction` turns one parser :class:`~engine.frontend.parser.Node` into a frozen
command object; :func:`parse_stages` groups a whole Dockerfile into meta ARGs and stages the
way BuildKit's ``instructions.Parse`` does.

Variable expansion is *not* done here. Values keep their raw ``$VAR`` text, and every command
has ``expand(fn) -> Self`` (BuildKit's ``SupportsSingleWordExpansion.Expand``): the converter
passes its word expander and gets back a copy with the fields in the class's ``EXPANDS``
expanded. Commands BuildKit does not expand this way have ``EXPANDS == ()`` and ``expand``
returns the command unchanged; some of their fields are expanded by the converter itself
(FROM's base name and ``--platform`` with the meta ARGs, ``COPY --from``, EXPOSE ports), as
noted on each class. COPY and ADD also have ``expand_raw(fn)`` for heredoc sources whose
delimiter was unquoted (BuildKit's ``ExpandRaw``). RUN's ``--mount`` values are re-parsed by
``expand`` because BuildKit only validates them after expansion.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Self

from engine.errors import DockerfileError
from engine.frontend.flags import Flags
from engine.frontend.mounts import Mount, check_unexpanded, parse_mount
from engine.frontend.parser import Dockerfile, Node
from engine.frontend.suggest import did_you_mean

__all__ = [
    "INSTRUCTIONS",
    "AddCommand",
    "ArgCommand",
    "ArgDef",
    "CmdCommand",
    "Command",
    "CopyCommand",
    "EntrypointCommand",
    "EnvCommand",
    "Expander",
    "ExposeCommand",
    "FromCommand",
    "Healthcheck",
    "HealthcheckCommand",
    "KeyValue",
    "LabelCommand",
    "MaintainerCommand",
    "OnbuildCommand",
    "RunCommand",
    "ShellCommand",
    "ShellFile",
    "SourceContent",
    "Stage",
    "StopSignalCommand",
    "UserCommand",
    "VolumeCommand",
    "WorkdirCommand",
    "parse_commands",
    "parse_duration",
    "parse_instruction",
    "parse_stages",
]

Expander = Callable[[str], str]

# Every instruction BuildKit knows (frontend/dockerfile/command), for "did you mean".
INSTRUCTIONS: tuple[str, ...] = (
    "add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck",
    "label", "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir",
)  # fmt: skip

NETWORK_MODES: tuple[str, ...] = ("default", "none", "host")
SECURITY_MODES: tuple[str, ...] = ("sandbox", "insecure")

_VALID_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")
_HEREDOC_WORD = re.compile(r"^(\d*)<<(-?)\s*([^<]*)$")


# ----------------------------------------------------------------------------- value objects


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One ``key=value`` of ENV or LABEL. ``no_delim`` is true for the legacy ``ENV k v``."""

    key: str
    value: str
    no_delim: bool = False


@dataclass(frozen=True, slots=True)
class ArgDef:
    """One ``ARG name[=default]``; ``default`` is None when there is no ``=``."""

    key: str
    default: str | None = None


@dataclass(frozen=True, slots=True)
class SourceContent:
    """A COPY/ADD heredoc source: a file named ``path`` holding ``data``."""

    path: str
    data: str
    expand: bool  # the delimiter was unquoted: variables in ``data`` are expanded


@dataclass(frozen=True, slots=True)
class ShellFile:
    """A heredoc attached to RUN, CMD or ENTRYPOINT (BuildKit's ``ShellInlineFile``)."""

    name: str
    data: str
    chomp: bool


@dataclass(frozen=True, slots=True)
class Healthcheck:
    """The image config's healthcheck. Durations are nanoseconds (Go ``time.Duration``).

    ``test`` is ``("NONE",)``, ``("CMD", exe, args...)`` or ``("CMD-SHELL", "cmd line")``.
    Zero durations and retries mean "not set" (the runtime's defaults apply).
    """

    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


# ----------------------------------------------------------------------------- commands


class _CommandBase:
    """Behaviour shared by every command class (they are frozen dataclasses with ``node``)."""

    __slots__ = ()

    node: Node
    #: Names of the fields BuildKit expands with the stage's variables (see module docstring).
    EXPANDS: ClassVar[tuple[str, ...]] = ()

    @property
    def name(self) -> str:
        """Lower-case instruction name, e.g. ``"run"``."""
        return self.node.instruction

    @property
    def line(self) -> int:
        """1-based line of the instruction."""
        return self.node.start_line

    @property
    def source_code(self) -> str:
        """The instruction as written, trimmed (BuildKit's ``String()``)."""
        return self.node.original.strip()

    def expand(self, fn: Expander) -> Self:
        """Return a copy with the ``EXPANDS`` fields expanded by ``fn``.

        Raises:
            DockerfileError: from ``fn`` or from re-validation, located at this instruction.
        """
        if not self.EXPANDS:
            return self
        try:
            return self._expand(fn)
        except DockerfileError as err:
            raise _locate(err, self.node, None) from None

    def _expand(self, fn: Expander) -> Self:
        changes: dict[str, object] = {}
        for field_name in self.EXPANDS:
            changes[field_name] = _expand_value(getattr(self, field_name), fn)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _expand_value(value: object, fn: Expander) -> object:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, KeyValue):
        return KeyValue(fn(value.key), fn(value.value), value.no_delim)
    if isinstance(value, ArgDef):
        return ArgDef(fn(value.key), None if value.default is None else fn(value.default))
    if isinstance(value, tuple):
        return tuple(_expand_value(item, fn) for item in value)
    return value


@dataclass(frozen=True, slots=True)
class FromCommand(_CommandBase):
    """``FROM [--platform=p] base [AS name]``: starts a stage.

    ``base_name`` and ``platform`` are expanded by the converter with the meta ARGs only
    (ARGs before the first FROM), not by :meth:`expand`. ``stage_name`` is lower-cased.
    """

    node: Node
    base_name: str
    stage_name: str  # "" when there is no AS
    platform: str  # "" when not given


@dataclass(frozen=True, slots=True)
class ArgCommand(_CommandBase):
    """``ARG name[=default] ...``."""

    node: Node
    args: tuple[ArgDef, ...]
    EXPANDS: ClassVar[tuple[str, ...]] = ("args",)


@dataclass(frozen=True, slots=True)
class EnvCommand(_CommandBase):
    """``ENV key=value ...`` (keys and values expanded)."""

    node: Node
    env: tuple[KeyValue, ...]
    EXPANDS: ClassVar[tuple[str, ...]] = ("env",)


@dataclass(frozen=True, slots=True)
class LabelCommand(_CommandBase):
    """``LABEL key=value ...`` (keys and values expanded)."""

    node: Node
    labels: tuple[KeyValue, ...]
    EXPANDS: ClassVar[tuple[str, ...]] = ("labels",)


@dataclass(frozen=True, slots=True)
class MaintainerCommand(_CommandBase):
    """``MAINTAINER name`` (deprecated; becomes the image's author)."""

    node: Node
    maintainer: str


@dataclass(frozen=True, slots=True)
class WorkdirCommand(_CommandBase):
    """``WORKDIR path``."""

    node: Node
    path: str
    EXPANDS: ClassVar[tuple[str, ...]] = ("path",)


@dataclass(frozen=True, slots=True)
class UserCommand(_CommandBase):
    """``USER user[:group]``."""

    node: Node
    user: str
    EXPANDS: ClassVar[tuple[str, ...]] = ("user",)


@dataclass(frozen=True, slots=True)
class ShellCommand(_CommandBase):
    """``SHELL ["exe", "arg", ...]`` (JSON form only; not expanded)."""

    node: Node
    shell: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RunCommand(_CommandBase):
    """``RUN [--mount=...] [--network=...] [--security=...] command``.

    ``cmd_line`` is the JSON array (``prepend_shell`` false) or a one-element tuple holding
    the shell-form command line (``prepend_shell`` true); the command itself is not expanded
    (the shell does that at run time). ``mounts`` is None while a ``--mount`` value still
    holds a ``$``: :meth:`expand` parses them all (``mount_specs`` keeps the raw values).
    """

    node: Node
    cmd_line: tuple[str, ...]
    prepend_shell: bool
    files: tuple[ShellFile, ...]
    mount_specs: tuple[str, ...]
    mounts: tuple[Mount, ...] | None
    network: str  # default | none | host
    security: str  # sandbox | insecure
    flags_used: frozenset[str]
    EXPANDS: ClassVar[tuple[str, ...]] = ("mounts",)

    def _expand(self, fn: Expander) -> Self:
        mounts = tuple(parse_mount(spec, fn) for spec in self.mount_specs)
        return dataclasses.replace(self, mounts=mounts)


@dataclass(frozen=True, slots=True)
class CmdCommand(_CommandBase):
    """``CMD`` in exec or shell form (not expanded)."""

    node: Node
    cmd_line: tuple[str, ...]
    prepend_shell: bool
    files: tuple[ShellFile, ...]


@dataclass(frozen=True, slots=True)
class EntrypointCommand(_CommandBase):
    """``ENTRYPOINT`` in exec or shell form (not expanded).

    An empty ``cmd_line`` (``ENTRYPOINT []`` or ``ENTRYPOINT ""``) resets the entrypoint:
    BuildKit stores it as null.
    """

    node: Node
    cmd_line: tuple[str, ...]
    prepend_shell: bool
    files: tuple[ShellFile, ...]


class _SourcesMixin(_CommandBase):
    __slots__ = ()

    source_contents: tuple[SourceContent, ...]

    def expand_raw(self, fn: Expander) -> Self:
        """Expand heredoc sources whose delimiter was unquoted (BuildKit's ``ExpandRaw``)."""
        try:
            contents = tuple(
                SourceContent(c.path, fn(c.data), c.expand) if c.expand else c
                for c in self.source_contents
            )
        except DockerfileError as err:
            raise _locate(err, self.node, None) from None
        return dataclasses.replace(self, source_contents=contents)  # type: ignore[type-var]


@dataclass(frozen=True, slots=True)
class CopyCommand(_SourcesMixin):
    """``COPY [--from] [--chown] [--chmod] [--link] [--parents] [--exclude]... src... dest``.

    ``from_`` is expanded by the converter (it picks the stage), not by :meth:`expand`;
    exclude patterns are not expanded.
    """

    node: Node
    sources: tuple[str, ...]
    source_contents: tuple[SourceContent, ...]
    dest: str
    from_: str
    chown: str
    chmod: str
    link: bool
    parents: bool
    excludes: tuple[str, ...]
    EXPANDS: ClassVar[tuple[str, ...]] = ("chown", "chmod", "sources", "dest")


@dataclass(frozen=True, slots=True)
class AddCommand(_SourcesMixin):
    """``ADD [--chown] [--chmod] [--link] [--checksum] [--keep-git-dir] [--unpack]
    [--exclude]... src... dest``.

    ``keep_git_dir`` and ``unpack`` are None when the flag is absent (BuildKit then applies
    its per-source default).
    """

    node: Node
    sources: tuple[str, ...]
    source_contents: tuple[SourceContent, ...]
    dest: str
    chown: str
    chmod: str
    link: bool
    checksum: str
    keep_git_dir: bool | None
    unpack: bool | None
    excludes: tuple[str, ...]
    EXPANDS: ClassVar[tuple[str, ...]] = ("chown", "chmod", "checksum", "sources", "dest")


@dataclass(frozen=True, slots=True)
class ExposeCommand(_CommandBase):
    """``EXPOSE port[/proto] ...``; ports sorted like BuildKit, expanded by the converter."""

    node: Node
    ports: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VolumeCommand(_CommandBase):
    """``VOLUME path ...``."""

    node: Node
    volumes: tuple[str, ...]
    EXPANDS: ClassVar[tuple[str, ...]] = ("volumes",)


@dataclass(frozen=True, slots=True)
class StopSignalCommand(_CommandBase):
    """``STOPSIGNAL signal``."""

    node: Node
    signal: str
    EXPANDS: ClassVar[tuple[str, ...]] = ("signal",)


@dataclass(frozen=True, slots=True)
class HealthcheckCommand(_CommandBase):
    """``HEALTHCHECK NONE`` or ``HEALTHCHECK [--interval ...] CMD ...`` (not expanded)."""

    node: Node
    health: Healthcheck


@dataclass(frozen=True, slots=True)
class OnbuildCommand(_CommandBase):
    """``ONBUILD <instruction>``.

    ``expression`` is the trigger text stored in the image config (the instruction without
    ``ONBUILD``, heredoc bodies appended); ``trigger`` is that instruction, parsed.
    """

    node: Node
    expression: str
    trigger: Command


Command = (
    FromCommand
    | ArgCommand
    | EnvCommand
    | LabelCommand
    | MaintainerCommand
    | WorkdirCommand
    | UserCommand
    | ShellCommand
    | RunCommand
    | CmdCommand
    | EntrypointCommand
    | CopyCommand
    | AddCommand
    | ExposeCommand
    | VolumeCommand
    | StopSignalCommand
    | HealthcheckCommand
    | OnbuildCommand
)


@dataclass(frozen=True, slots=True)
class Stage:
    """One build stage: its FROM and the commands after it."""

    from_cmd: FromCommand
    commands: tuple[Command, ...]

    @property
    def name(self) -> str:
        """The ``AS`` name, lower-cased, or ``""``."""
        return self.from_cmd.stage_name

    @property
    def base_name(self) -> str:
        """The unexpanded base image or stage name."""
        return self.from_cmd.base_name

    @property
    def platform(self) -> str:
        """The unexpanded ``--platform`` value, or ``""``."""
        return self.from_cmd.platform


# ----------------------------------------------------------------------------- parsing


def _first_line(node: Node) -> str:
    lines = node.original.strip().splitlines()
    return lines[0] if lines else node.original


def _locate(err: DockerfileError, node: Node, filename: str | None) -> DockerfileError:
    return DockerfileError(
        err.message,
        filename=filename if filename is not None else err.filename,
        line=err.line if err.line is not None else node.start_line,
        instruction=err.instruction if err.instruction is not None else _first_line(node),
        suggestion=err.suggestion,
    )


def _written_name(node: Node) -> str:
    # The parser lower-cases the instruction; messages quote it as the user wrote it.
    words = node.original.split(None, 1)
    if words and words[0].lower() == node.instruction.lower():
        return words[0]
    return node.instruction


def parse_instruction(node: Node, filename: str = "Dockerfile") -> Command:
    """Turn one parser node into its typed command.

    Args:
        node: the instruction as the parser gave it.
        filename: the Dockerfile's name, for error messages.

    Raises:
        DockerfileError: with filename, line and instruction set, in BuildKit's words.
    """
    try:
        return _parse(node, filename)
    except DockerfileError as err:
        raise _locate(err, node, filename) from None


def _parse(node: Node, filename: str) -> Command:
    parser = _PARSERS.get(node.instruction.lower())
    if parser is None:
        written = _written_name(node)
        raise DockerfileError(
            f"unknown instruction: {written}",
            suggestion=did_you_mean(written, [i.upper() for i in INSTRUCTIONS]),
        )
    return parser(node, filename)


def parse_commands(dockerfile: Dockerfile) -> tuple[Command, ...]:
    """Parse every instruction of ``dockerfile`` in order, FROMs included.

    Raises:
        DockerfileError: for the first invalid instruction, or for an instruction other
            than ARG before the first FROM (``no build stage in current context``).
    """
    meta_args, stages = parse_stages(dockerfile)
    out: list[Command] = list(meta_args)
    for stage in stages:
        out.append(stage.from_cmd)
        out.extend(stage.commands)
    return tuple(out)


def parse_stages(dockerfile: Dockerfile) -> tuple[tuple[ArgCommand, ...], tuple[Stage, ...]]:
    """Group ``dockerfile`` into meta ARGs and stages, like BuildKit's ``instructions.Parse``.

    Returns:
        ``(meta_args, stages)``: the ARGs before the first FROM, and each stage with its
        commands.

    Raises:
        DockerfileError: located at the offending instruction.
    """
    meta_args: list[ArgCommand] = []
    froms: list[FromCommand] = []
    bodies: list[list[Command]] = []
    for node in dockerfile.nodes:
        cmd = parse_instruction(node, dockerfile.filename)
        if isinstance(cmd, FromCommand):
            froms.append(cmd)
            bodies.append([])
        elif not froms:
            if not isinstance(cmd, ArgCommand):
                raise DockerfileError(
                    "no build stage in current context",
                    filename=dockerfile.filename,
                    line=node.start_line,
                    instruction=_first_line(node),
                )
            meta_args.append(cmd)
        else:
            bodies[-1].append(cmd)
    stages = tuple(Stage(f, tuple(b)) for f, b in zip(froms, bodies, strict=True))
    return tuple(meta_args), stages


# --- helpers ---


def _no_flags(node: Node) -> None:
    # Instructions without flags still run BuildKit's flag parser, so any flag is "unknown".
    Flags().parse(node.flags)


def _exactly_one(node: Node, name: str) -> str:
    if len(node.args) != 1:
        raise DockerfileError(f"{name} requires exactly one argument")
    return node.args[0]


def _at_least_one(node: Node, name: str) -> None:
    if not node.args:
        raise DockerfileError(f"{name} requires at least one argument")


def _json_args(node: Node, args: tuple[str, ...]) -> tuple[str, ...]:
    # BuildKit's handleJSONArgs: exec form as is, shell form joined into one string.
    if not args:
        return ()
    if node.json_form:
        return args
    return (" ".join(args),)


def _shell_files(node: Node) -> tuple[ShellFile, ...]:
    return tuple(ShellFile(h.name, h.content, h.chomp) for h in node.heredocs)


def _key_values(node: Node, name: str) -> tuple[KeyValue, ...]:
    args = node.args
    if not args:
        raise DockerfileError(f"{name} requires at least one argument")
    if len(args) % 3 != 0:
        raise DockerfileError(f"Bad input to {name}, too many arguments")
    out = []
    for i in range(0, len(args), 3):
        key, value, delim = args[i : i + 3]
        if not key:
            raise DockerfileError(f"{name} names can not be blank")
        out.append(KeyValue(key, value, no_delim=delim == ""))
    return tuple(out)


def _heredoc_word(word: str) -> tuple[str, bool] | None:
    """``(name, quoted)`` when ``word`` is a heredoc marker such as ``<<EOF`` or ``<<-"EOF"``."""
    match = _HEREDOC_WORD.match(word)
    if match is None or not match.group(3):
        return None
    rest = match.group(3)
    # Quoting any part of the delimiter turns expansion off, as in a POSIX shell.
    name = rest.replace('"', "").replace("'", "")
    if not name or any(c.isspace() for c in name):
        return None
    return name, name != rest


# --- one function per instruction ---


def _parse_from(node: Node, filename: str) -> FromCommand:
    args = node.args
    stage_name = ""
    if len(args) == 3 and args[1].lower() == "as":
        stage_name = args[2].lower()
        if not _VALID_STAGE_NAME.match(stage_name):
            raise DockerfileError(
                f'invalid name for build stage: "{args[2]}", '
                "name can't start with a number or contain symbols"
            )
    elif len(args) != 1:
        raise DockerfileError("FROM requires either one or three arguments")
    flags = Flags().add_string("platform").parse(node.flags)
    return FromCommand(node, args[0], stage_name, flags.string("platform"))


def _parse_arg(node: Node, filename: str) -> ArgCommand:
    # BuildKit never parses ARG's flags: they are ignored.
    _at_least_one(node, "ARG")
    out = []
    for arg in node.args:
        key, has_value, value = arg.partition("=")
        if has_value and not key:
            raise DockerfileError("ARG names can not be blank")
        out.append(ArgDef(key, value if has_value else None))
    return ArgCommand(node, tuple(out))


def _parse_env(node: Node, filename: str) -> EnvCommand:
    _no_flags(node)
    return EnvCommand(node, _key_values(node, "ENV"))


def _parse_label(node: Node, filename: str) -> LabelCommand:
    _no_flags(node)
    return LabelCommand(node, _key_values(node, "LABEL"))


def _parse_maintainer(node: Node, filename: str) -> MaintainerCommand:
    value = _exactly_one(node, "MAINTAINER")
    _no_flags(node)
    return MaintainerCommand(node, value)


def _parse_workdir(node: Node, filename: str) -> WorkdirCommand:
    value = _exactly_one(node, "WORKDIR")
    _no_flags(node)
    return WorkdirCommand(node, value)


def _parse_user(node: Node, filename: str) -> UserCommand:
    value = _exactly_one(node, "USER")
    _no_flags(node)
    return UserCommand(node, value)


def _parse_shell(node: Node, filename: str) -> ShellCommand:
    _no_flags(node)
    shell = _json_args(node, node.args)
    if not shell:
        raise DockerfileError("SHELL requires at least one argument")
    if not node.json_form:
        raise DockerfileError("SHELL requires the arguments to be in JSON form")
    return ShellCommand(node, shell)


def _parse_run(node: Node, filename: str) -> RunCommand:
    flags = (
        Flags()
        .add_strings("mount")
        .add_string("network", "default")
        .add_string("security", "sandbox")
        .parse(node.flags)
    )
    specs = flags.strings("mount")
    for spec in specs:
        check_unexpanded(spec)
    mounts: tuple[Mount, ...] | None = None
    if not any("$" in spec for spec in specs):
        # Nothing to expand: validate now so mistakes are reported at parse time.
        mounts = tuple(parse_mount(spec, _identity) for spec in specs)
    network = flags.string("network")
    if network not in NETWORK_MODES:
        raise DockerfileError(f'invalid network mode "{network}"')
    security = flags.string("security")
    if security not in SECURITY_MODES:
        raise DockerfileError(f'security "{security}" is not valid')
    return RunCommand(
        node,
        cmd_line=_json_args(node, node.args),
        prepend_shell=not node.json_form,
        files=_shell_files(node),
        mount_specs=specs,
        mounts=mounts,
        network=network,
        security=security,
        flags_used=flags.used,
    )


def _identity(word: str) -> str:
    return word


def _parse_cmd(node: Node, filename: str) -> CmdCommand:
    _no_flags(node)
    return CmdCommand(node, _json_args(node, node.args), not node.json_form, _shell_files(node))


def _parse_entrypoint(node: Node, filename: str) -> EntrypointCommand:
    _no_flags(node)
    return EntrypointCommand(
        node, _json_args(node, node.args), not node.json_form, _shell_files(node)
    )


def _sources_and_dest(
    node: Node, name: str
) -> tuple[tuple[str, ...], tuple[SourceContent, ...], str]:
    *srcs, dest = node.args
    if _heredoc_word(dest) is not None:
        raise DockerfileError(f"{name} cannot accept a heredoc as a destination")
    bodies = {h.name: h for h in node.heredocs}
    paths: list[str] = []
    contents: list[SourceContent] = []
    for src in srcs:
        heredoc = _heredoc_word(src)
        if heredoc is None:
            paths.append(src)
            continue
        doc_name, quoted = heredoc
        body = bodies.get(doc_name)
        # The parser already removed leading tabs for <<- (see parser.Heredoc.content).
        data = body.content if body is not None else ""
        expand = body.expand if body is not None else not quoted
        contents.append(SourceContent(doc_name, data, expand))
    return tuple(paths), tuple(contents), dest


def _no_destination(name: str) -> DockerfileError:
    return DockerfileError(
        f"{name} requires at least two arguments, but only one was provided. "
        "Destination could not be determined"
    )


def _parse_copy(node: Node, filename: str) -> CopyCommand:
    if len(node.args) < 2:
        raise _no_destination("COPY")
    flags = (
        Flags()
        .add_string("chown")
        .add_string("from")
        .add_string("chmod")
        .add_bool("link")
        .add_strings("exclude")
        .add_bool("parents")
        .parse(node.flags)
    )
    sources, contents, dest = _sources_and_dest(node, "COPY")
    return CopyCommand(
        node,
        sources=sources,
        source_contents=contents,
        dest=dest,
        from_=flags.string("from"),
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        link=flags.boolean("link"),
        parents=flags.boolean("parents"),
        excludes=flags.strings("exclude"),
    )


def _parse_add(node: Node, filename: str) -> AddCommand:
    if len(node.args) < 2:
        raise _no_destination("ADD")
    flags = (
        Flags()
        .add_string("chown")
        .add_string("chmod")
        .add_bool("link")
        .add_bool("keep-git-dir")
        .add_string("checksum")
        .add_bool("unpack")
        .add_strings("exclude")
        .parse(node.flags)
    )
    sources, contents, dest = _sources_and_dest(node, "ADD")
    return AddCommand(
        node,
        sources=sources,
        source_contents=contents,
        dest=dest,
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        link=flags.boolean("link"),
        checksum=flags.string("checksum"),
        keep_git_dir=flags.optional_bool("keep-git-dir"),
        unpack=flags.optional_bool("unpack"),
        excludes=flags.strings("exclude"),
    )


def _parse_expose(node: Node, filename: str) -> ExposeCommand:
    _at_least_one(node, "EXPOSE")
    _no_flags(node)
    return ExposeCommand(node, tuple(sorted(node.args)))


def _parse_volume(node: Node, filename: str) -> VolumeCommand:
    _at_least_one(node, "VOLUME")
    _no_flags(node)
    volumes = []
    for value in node.args:
        # Go's strings.TrimSpace: Unicode white space.
        trimmed = value.strip()
        if not trimmed:
            raise DockerfileError("VOLUME specified can not be an empty string")
        volumes.append(trimmed)
    return VolumeCommand(node, tuple(volumes))


def _parse_stopsignal(node: Node, filename: str) -> StopSignalCommand:
    # BuildKit never parses STOPSIGNAL's flags: they are ignored.
    return StopSignalCommand(node, _exactly_one(node, "STOPSIGNAL"))


def _parse_healthcheck(node: Node, filename: str) -> HealthcheckCommand:
    _at_least_one(node, "HEALTHCHECK")
    kind = node.args[0].upper()
    rest = node.args[1:]
    if kind == "NONE":
        # BuildKit does not look at the flags of HEALTHCHECK NONE.
        if rest:
            raise DockerfileError("HEALTHCHECK NONE takes no arguments")
        return HealthcheckCommand(node, Healthcheck(test=("NONE",)))
    flags = (
        Flags()
        .add_string("interval")
        .add_string("timeout")
        .add_string("start-period")
        .add_string("start-interval")
        .add_string("retries")
        .parse(node.flags)
    )
    if kind != "CMD":
        raise DockerfileError(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    cmd = _json_args(node, rest)
    if not cmd:
        raise DockerfileError("Missing command after HEALTHCHECK CMD")
    test = ("CMD", *cmd) if node.json_form else ("CMD-SHELL", *cmd)
    retries = 0
    if flags.string("retries"):
        retries = _parse_int32(flags.string("retries"))
        if retries < 0:
            raise DockerfileError(f"--retries cannot be negative ({retries})")
    return HealthcheckCommand(
        node,
        Healthcheck(
            test=test,
            interval=_interval(flags.string("interval"), "interval"),
            timeout=_interval(flags.string("timeout"), "timeout"),
            start_period=_interval(flags.string("start-period"), "start-period"),
            start_interval=_interval(flags.string("start-interval"), "start-interval"),
            retries=retries,
        ),
    )


def _parse_int32(value: str) -> int:
    # strconv.ParseInt(value, 10, 32).
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise DockerfileError(f'strconv.ParseInt: parsing "{value}": invalid syntax')
    number = int(value)
    if not -(1 << 31) <= number < 1 << 31:
        raise DockerfileError(f'strconv.ParseInt: parsing "{value}": value out of range')
    return number


_MILLISECOND = 1_000_000


def _interval(value: str, flag: str) -> int:
    # BuildKit's parseOptInterval: empty or zero means unset; otherwise at least 1ms.
    if value == "":
        return 0
    duration = parse_duration(value)
    if duration == 0:
        return 0
    if duration < _MILLISECOND:
        raise DockerfileError(f'Interval "{flag}" cannot be less than 1ms')
    return duration


_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": _MILLISECOND,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MAX_DURATION = (1 << 63) - 1


def parse_duration(text: str) -> int:
    """Parse a duration like Go's ``time.ParseDuration`` (``1h30m``, ``1.5s``, ``-2ms``).

    Returns:
        Nanoseconds.

    Raises:
        DockerfileError: with Go's message (``time: invalid duration "x"``,
            ``time: missing unit in duration "5"``, ``time: unknown unit "x" in duration "5x"``).
    """
    quoted = '"' + text + '"'
    invalid = DockerfileError(f"time: invalid duration {quoted}")
    s = text
    negative = False
    if s and s[0] in "+-":
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise invalid
    total = 0
    while s:
        if not (s[0] == "." or (s[0].isascii() and s[0].isdigit())):
            raise invalid
        match = re.match(r"([0-9]*)(?:\.([0-9]*))?", s)
        assert match is not None  # the pattern matches the empty string
        whole, fraction = match.group(1), match.group(2)
        if whole == "" and not fraction:
            raise invalid
        s = s[match.end() :]
        unit_end = 0
        while unit_end < len(s) and s[unit_end] not in ".0123456789":
            unit_end += 1
        unit = s[:unit_end]
        s = s[unit_end:]
        if unit == "":
            raise DockerfileError(f"time: missing unit in duration {quoted}")
        scale = _UNITS.get(unit)
        if scale is None:
            raise DockerfileError(f'time: unknown unit "{unit}" in duration {quoted}')
        value = int(whole or "0") * scale
        if fraction:
            value += int(fraction) * scale // 10 ** len(fraction)
        total += value
        if total > _MAX_DURATION + (1 if negative else 0):
            raise invalid
    return -total if negative else total


_TRIGGER_FORBIDDEN = ("MAINTAINER", "FROM")


def _parse_onbuild(node: Node, filename: str) -> OnbuildCommand:
    inner = node.sub
    if inner is None and not node.args:
        raise DockerfileError("ONBUILD requires at least one argument")
    _no_flags(node)
    trigger_name = (inner.instruction if inner is not None else node.args[0]).strip().upper()
    if trigger_name == "ONBUILD":
        raise DockerfileError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger_name in _TRIGGER_FORBIDDEN:
        raise DockerfileError(f"{trigger_name} isn't allowed as an ONBUILD trigger")
    if inner is None:
        raise DockerfileError("ONBUILD requires at least one argument")
    if node.heredocs and not inner.heredocs:
        # The parser attaches an ONBUILD's heredocs to the ONBUILD node; the trigger owns them.
        inner = dataclasses.replace(inner, heredocs=node.heredocs)
    expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", node.original, count=1)
    for heredoc in inner.heredocs:
        expression += "\n" + heredoc.content + heredoc.name
    trigger = _parse(inner, filename)
    return OnbuildCommand(node, expression, trigger)


_PARSERS: dict[str, Callable[[Node, str], Command]] = {
    "add": _parse_add,
    "arg": _parse_arg,
    "cmd": _parse_cmd,
    "copy": _parse_copy,
    "entrypoint": _parse_entrypoint,
    "env": _parse_env,
    "expose": _parse_expose,
    "from": _parse_from,
    "healthcheck": _parse_healthcheck,
    "label": _parse_label,
    "maintainer": _parse_maintainer,
    "onbuild": _parse_onbuild,
    "run": _parse_run,
    "shell": _parse_shell,
    "stopsignal": _parse_stopsignal,
    "user": _parse_user,
    "volume": _parse_volume,
    "workdir": _parse_workdir,
}
