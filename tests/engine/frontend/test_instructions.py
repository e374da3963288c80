from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import DockerfileError
from engine.frontend.instructions import (
    AddCommand,
    ArgCommand,
    ArgDef,
    CmdCommand,
    Command,
    CopyCommand,
    EntrypointCommand,
    EnvCommand,
    ExposeCommand,
    FromCommand,
    Healthcheck,
    HealthcheckCommand,
    KeyValue,
    LabelCommand,
    MaintainerCommand,
    OnbuildCommand,
    RunCommand,
    ShellCommand,
    ShellFile,
    SourceContent,
    StopSignalCommand,
    UserCommand,
    VolumeCommand,
    WorkdirCommand,
    parse_commands,
    parse_duration,
    parse_instruction,
    parse_stages,
)
from engine.frontend.parser import Node, parse

SECOND = 1_000_000_000


def one(line: str) -> Command:
    """Parse ``FROM scratch`` + ``line`` and return the command made from ``line``."""
    cmds = parse_commands(parse("FROM scratch\n" + line + "\n"))
    assert len(cmds) == 2
    return cmds[1]


def fails(text: str, filename: str = "Dockerfile") -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        parse_commands(parse(text, filename))
    return info.value


def fails_one(line: str) -> DockerfileError:
    return fails("FROM scratch\n" + line + "\n")


def node(
    instruction: str, *args: str, flags: tuple[str, ...] = (), json_form: bool = False
) -> Node:
    original = " ".join((instruction.upper(), *flags, *args))
    return Node(instruction, original, flags, args, json_form, (), 7, 7)


# --- happy paths, one per instruction --------------------------------------------------------


def test_from() -> None:
    cmd = parse_commands(parse("FROM --platform=$BUILDPLATFORM golang:1.22 AS Build-1\n"))[0]
    assert isinstance(cmd, FromCommand)
    assert (cmd.base_name, cmd.stage_name, cmd.platform) == (
        "golang:1.22",
        "build-1",
        "$BUILDPLATFORM",
    )
    assert cmd.line == 1
    assert cmd.name == "from"


def test_from_without_name() -> None:
    cmd = parse_commands(parse("from alpine\n"))[0]
    assert isinstance(cmd, FromCommand)
    assert (cmd.base_name, cmd.stage_name, cmd.platform) == ("alpine", "", "")


def test_arg() -> None:
    cmd = one("ARG A=1 B C=")
    assert isinstance(cmd, ArgCommand)
    assert cmd.args == (ArgDef("A", "1"), ArgDef("B", None), ArgDef("C", ""))


def test_env_both_forms() -> None:
    cmd = one("ENV A=1 B=two")
    assert isinstance(cmd, EnvCommand)
    assert cmd.env == (KeyValue("A", "1"), KeyValue("B", "two"))
    legacy = one("ENV PATH /usr/bin:$PATH")
    assert isinstance(legacy, EnvCommand)
    assert legacy.env == (KeyValue("PATH", "/usr/bin:$PATH", no_delim=True),)


def test_label() -> None:
    cmd = one('LABEL a=b "c d"=e')
    assert isinstance(cmd, LabelCommand)
    assert [kv.value for kv in cmd.labels] == ["b", "e"]
    assert len(cmd.labels) == 2


def test_maintainer_workdir_user_stopsignal() -> None:
    m = one("MAINTAINER me <me@x>")
    assert isinstance(m, MaintainerCommand)
    assert m.maintainer == "me <me@x>"
    w = one("WORKDIR /app/$X")
    assert isinstance(w, WorkdirCommand)
    assert w.path == "/app/$X"
    u = one("USER app:staff")
    assert isinstance(u, UserCommand)
    assert u.user == "app:staff"
    s = one("STOPSIGNAL SIGTERM")
    assert isinstance(s, StopSignalCommand)
    assert s.signal == "SIGTERM"


def test_shell() -> None:
    cmd = one('SHELL ["/bin/bash", "-o", "pipefail", "-c"]')
    assert isinstance(cmd, ShellCommand)
    assert cmd.shell == ("/bin/bash", "-o", "pipefail", "-c")


def test_run_shell_and_exec_form() -> None:
    cmd = one("RUN echo $HOME && ls")
    assert isinstance(cmd, RunCommand)
    assert (cmd.cmd_line, cmd.prepend_shell) == (("echo $HOME && ls",), True)
    assert (cmd.network, cmd.security, cmd.mounts, cmd.files) == ("default", "sandbox", (), ())
    ex = one('RUN ["echo", "hi"]')
    assert isinstance(ex, RunCommand)
    assert (ex.cmd_line, ex.prepend_shell) == (("echo", "hi"), False)


def test_run_flags() -> None:
    cmd = one(
        "RUN --mount=type=cache,target=/c --mount=type=secret,id=s --network=none --security=insecure make"
    )
    assert isinstance(cmd, RunCommand)
    assert cmd.mounts is not None
    assert [m.type for m in cmd.mounts] == ["cache", "secret"]
    assert cmd.mount_specs == ("type=cache,target=/c", "type=secret,id=s")
    assert (cmd.network, cmd.security) == ("none", "insecure")
    assert cmd.flags_used == {"mount", "network", "security"}


def test_run_heredoc() -> None:
    cmd = one("RUN <<EOF\necho hi\nEOF")
    assert isinstance(cmd, RunCommand)
    assert cmd.files == (ShellFile("EOF", "echo hi\n", False),)
    assert cmd.cmd_line == ("<<EOF",)


def test_run_mount_with_variables_is_parsed_on_expand() -> None:
    cmd = one("RUN --mount=type=$T,target=/c true")
    assert isinstance(cmd, RunCommand)
    assert cmd.mounts is None
    expanded = cmd.expand(lambda w: w.replace("$T", "cache"))
    assert expanded.mounts is not None
    assert expanded.mounts[0].type == "cache"
    assert expanded.mounts[0].effective_cache_id == "/c"
    assert cmd.mounts is None  # the original is unchanged (frozen)


def test_run_mount_bad_type_after_expansion_is_located() -> None:
    cmd = one("RUN --mount=type=$T,target=/c true")
    with pytest.raises(DockerfileError) as info:
        cmd.expand(lambda w: "cahce" if w == "$T" else w)
    assert info.value.message == 'unsupported mount type "cahce"'
    assert info.value.suggestion == "cache"
    assert info.value.line == 2


def test_cmd_and_entrypoint() -> None:
    c = one('CMD ["nginx", "-g", "daemon off;"]')
    assert isinstance(c, CmdCommand)
    assert (c.cmd_line, c.prepend_shell) == (("nginx", "-g", "daemon off;"), False)
    e = one("ENTRYPOINT exec top -b")
    assert isinstance(e, EntrypointCommand)
    assert (e.cmd_line, e.prepend_shell) == (("exec top -b",), True)
    reset = one("ENTRYPOINT []")
    assert isinstance(reset, EntrypointCommand)
    assert reset.cmd_line == ()


def test_copy_all_flags() -> None:
    cmd = one(
        "COPY --from=build --chown=1:2 --chmod=0755 --link --parents=false "
        "--exclude=*.md --exclude=tmp a b /dst/"
    )
    assert isinstance(cmd, CopyCommand)
    assert (cmd.sources, cmd.dest, cmd.from_) == (("a", "b"), "/dst/", "build")
    assert (cmd.chown, cmd.chmod, cmd.link, cmd.parents) == ("1:2", "0755", True, False)
    assert cmd.excludes == ("*.md", "tmp")


def test_copy_defaults() -> None:
    cmd = one("COPY a /b")
    assert isinstance(cmd, CopyCommand)
    assert (cmd.from_, cmd.chown, cmd.chmod, cmd.link, cmd.parents, cmd.excludes) == (
        "",
        "",
        "",
        False,
        False,
        (),
    )


def test_copy_heredoc_sources() -> None:
    cmd = one('COPY <<EOF <<"RAW" /dst/\nhi $X\nEOF\nraw $Y\nRAW')
    assert isinstance(cmd, CopyCommand)
    assert cmd.sources == ()
    assert cmd.source_contents == (
        SourceContent("EOF", "hi $X\n", True),
        SourceContent("RAW", "raw $Y\n", False),
    )
    expanded = cmd.expand_raw(lambda w: w.replace("$X", "x").replace("$Y", "y"))
    assert [c.data for c in expanded.source_contents] == ["hi x\n", "raw $Y\n"]


def test_add_all_flags() -> None:
    cmd = one(
        "ADD --chown=app --chmod=644 --link=true --checksum=sha256:abc --keep-git-dir "
        "--unpack=false --exclude=x https://example.com/a.tgz /opt/"
    )
    assert isinstance(cmd, AddCommand)
    assert (cmd.sources, cmd.dest) == (("https://example.com/a.tgz",), "/opt/")
    assert (cmd.chown, cmd.chmod, cmd.link, cmd.checksum) == ("app", "644", True, "sha256:abc")
    assert (cmd.keep_git_dir, cmd.unpack, cmd.excludes) == (True, False, ("x",))


def test_add_unset_optional_bools_are_none() -> None:
    cmd = one("ADD a /b")
    assert isinstance(cmd, AddCommand)
    assert (cmd.keep_git_dir, cmd.unpack, cmd.link) == (None, None, False)


def test_expose_sorted_and_volume() -> None:
    e = one("EXPOSE 8080/tcp 443 80")
    assert isinstance(e, ExposeCommand)
    assert e.ports == ("443", "80", "8080/tcp")
    v = one('VOLUME ["/data", "/logs"]')
    assert isinstance(v, VolumeCommand)
    assert v.volumes == ("/data", "/logs")


def test_healthcheck_cmd_with_options() -> None:
    cmd = one(
        "HEALTHCHECK --interval=5s --timeout=1m30s --start-period=1.5s --start-interval=100ms --retries=4 CMD curl -f http://x/"
    )
    assert isinstance(cmd, HealthcheckCommand)
    assert cmd.health == Healthcheck(
        test=("CMD-SHELL", "curl -f http://x/"),
        interval=5 * SECOND,
        timeout=90 * SECOND,
        start_period=1_500_000_000,
        start_interval=100_000_000,
        retries=4,
    )


def test_healthcheck_exec_form_and_none() -> None:
    cmd = one('HEALTHCHECK CMD ["/check", "-q"]')
    assert isinstance(cmd, HealthcheckCommand)
    assert cmd.health.test == ("CMD", "/check", "-q")
    assert (cmd.health.interval, cmd.health.retries) == (0, 0)
    none = one("HEALTHCHECK NONE")
    assert isinstance(none, HealthcheckCommand)
    assert none.health.test == ("NONE",)


def test_healthcheck_zero_durations_mean_unset() -> None:
    cmd = one("HEALTHCHECK --interval=0s --timeout=0 CMD x")
    assert isinstance(cmd, HealthcheckCommand)
    assert (cmd.health.interval, cmd.health.timeout) == (0, 0)


def test_onbuild_holds_the_parsed_trigger() -> None:
    cmd = one("ONBUILD COPY --from=x a /b")
    assert isinstance(cmd, OnbuildCommand)
    assert isinstance(cmd.trigger, CopyCommand)
    assert cmd.trigger.from_ == "x"
    assert cmd.expression == "COPY --from=x a /b"
    run = one("onbuild RUN echo hi")
    assert isinstance(run, OnbuildCommand)
    assert isinstance(run.trigger, RunCommand)
    assert run.expression == "RUN echo hi"


# --- bool and repeatable flags -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--link", True),
        ("--link=true", True),
        ("--link=TRUE", True),
        ("--link=false", False),
        ("--link=False", False),
    ],
)
def test_bool_flag_forms(flag: str, value: bool) -> None:
    cmd = one(f"COPY {flag} a /b")
    assert isinstance(cmd, CopyCommand)
    assert cmd.link is value


def test_bool_flag_bad_value() -> None:
    assert (
        fails_one("COPY --link=yes a /b").message
        == "expecting boolean value for flag --link, not: yes"
    )


def test_bool_flag_empty_value() -> None:
    assert fails_one("COPY --parents= a /b").message == "missing a value on flag: --parents"


def test_string_flag_needs_value() -> None:
    assert fails_one("COPY --from a /b").message == "missing a value on flag: --from"


def test_repeatable_flag_needs_value_each_time() -> None:
    assert (
        fails_one("COPY --exclude=a --exclude b /c").message == "missing a value on flag: --exclude"
    )


def test_duplicate_non_repeatable_flag() -> None:
    assert fails_one("COPY --from=a --from=b x /y").message == "duplicate flag specified: --from"
    assert fails_one("COPY --link --link=false x /y").message == "duplicate flag specified: --link"


def test_repeated_mounts_keep_order() -> None:
    cmd = one("RUN --mount=target=/a --mount=target=/b --mount=target=/c true")
    assert isinstance(cmd, RunCommand)
    assert cmd.mounts is not None
    assert [m.target for m in cmd.mounts] == ["/a", "/b", "/c"]


def test_double_dash_ends_flags() -> None:
    cmd = parse_instruction(node("copy", "a", "/b", flags=("--link", "--", "--nonsense")))
    assert isinstance(cmd, CopyCommand)
    assert cmd.link is True


def test_flag_without_dashes() -> None:
    err = _parse_error(node("copy", "a", "/b", flags=("-link",)))
    assert err.message == "arg should start with -- : -link"


# --- error messages, verbatim ----------------------------------------------------------------


def _parse_error(n: Node, filename: str = "Dockerfile") -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        parse_instruction(n, filename)
    return info.value


def test_unknown_flag_with_suggestion_and_location() -> None:
    err = fails("FROM scratch\n\nCOPY --chmodd=755 a /b\n", filename="app.Dockerfile")
    assert err.message == "unknown flag: --chmodd"
    assert err.suggestion == "--chmod"
    assert (err.filename, err.line, err.instruction) == (
        "app.Dockerfile",
        3,
        "COPY --chmodd=755 a /b",
    )


def test_unknown_flag_without_suggestion() -> None:
    err = fails_one("COPY --banana=1 a /b")
    assert (err.message, err.suggestion) == ("unknown flag: --banana", None)


def test_flag_on_instruction_without_flags() -> None:
    err = fails_one("WORKDIR --link /x")
    assert (err.message, err.suggestion) == ("unknown flag: --link", None)


def test_flag_of_copy_on_add_suggests_nothing_wrong() -> None:
    # --from is a COPY flag; ADD does not take it
    assert fails_one("ADD --from=x a /b").message == "unknown flag: --from"


def test_flags_ignored_where_buildkit_ignores_them() -> None:
    arg = one("ARG --whatever x")
    assert isinstance(arg, ArgCommand)
    assert arg.args == (ArgDef("x"),)


def test_unknown_instruction_with_suggestion() -> None:
    err = fails("FROM scratch\nRUNN echo\n")
    assert err.message == "unknown instruction: RUNN"
    assert err.suggestion == "RUN"
    assert (err.line, err.instruction) == (2, "RUNN echo")


def test_unknown_instruction_lowercase_suggestion() -> None:
    err = fails("FROM scratch\ncopyy a b\n")
    assert (err.message, err.suggestion) == ("unknown instruction: copyy", "copy")


def test_unknown_instruction_without_suggestion() -> None:
    err = fails("FROM scratch\nFROBNICATE\n")
    assert (err.message, err.suggestion) == ("unknown instruction: FROBNICATE", None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD FROM alpine", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD MAINTAINER me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
    ],
)
def test_onbuild_restrictions(line: str, message: str) -> None:
    assert fails_one(line).message == message


@pytest.mark.parametrize("name", ["1stage", "my stage!", "-x", "a/b"])
def test_bad_stage_name(name: str) -> None:
    n = node("from", "alpine", "AS", name)
    err = _parse_error(n)
    assert (
        err.message
        == f'invalid name for build stage: "{name}", name can\'t start with a number or contain symbols'
    )
    assert err.line == 7


def test_stage_name_is_lowercased_before_validation() -> None:
    cmd = parse_instruction(node("from", "alpine", "as", "Builder_2.x"))
    assert isinstance(cmd, FromCommand)
    assert cmd.stage_name == "builder_2.x"


def test_from_argument_count() -> None:
    assert (
        _parse_error(node("from", "a", "b")).message
        == "FROM requires either one or three arguments"
    )
    assert (
        _parse_error(node("from", "a", "to", "b")).message
        == "FROM requires either one or three arguments"
    )


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--interval=5", 'time: missing unit in duration "5"'),
        ("--timeout=5x", 'time: unknown unit "x" in duration "5x"'),
        ("--interval=abc", 'time: invalid duration "abc"'),
        ("--start-period=500us", 'Interval "start-period" cannot be less than 1ms'),
        ("--interval=-1s", 'Interval "interval" cannot be less than 1ms'),
        ("--retries=three", 'strconv.ParseInt: parsing "three": invalid syntax'),
        ("--retries=-1", "--retries cannot be negative (-1)"),
        ("--retries=9999999999", 'strconv.ParseInt: parsing "9999999999": value out of range'),
    ],
)
def test_healthcheck_bad_options(flag: str, message: str) -> None:
    assert fails_one(f"HEALTHCHECK {flag} CMD true").message == message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("HEALTHCHECK NONE extra", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK CONNECT TCP 7000", 'Unknown type "CONNECT" in HEALTHCHECK (try CMD)'),
        ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK --intervall=1s CMD x", "unknown flag: --intervall"),
    ],
)
def test_healthcheck_errors(line: str, message: str) -> None:
    assert fails_one(line).message == message


def test_shell_not_json() -> None:
    assert (
        fails_one("SHELL /bin/sh -c").message == "SHELL requires the arguments to be in JSON form"
    )


def test_shell_empty_json() -> None:
    assert fails_one("SHELL []").message == "SHELL requires at least one argument"


@pytest.mark.parametrize("line", ["RUN echo", "ENV A=1", "COPY a b", "WORKDIR /x", "LABEL a=b"])
def test_instruction_before_from(line: str) -> None:
    err = fails(f"ARG V=1\n{line}\nFROM scratch\n")
    assert err.message == "no build stage in current context"
    assert (err.line, err.instruction) == (2, line)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("RUN --network=bridge true", 'invalid network mode "bridge"'),
        ("RUN --security=privileged true", 'security "privileged" is not valid'),
        ("RUN --mount=type=cahce,target=/c true", 'unsupported mount type "cahce"'),
        (
            "RUN --mount=type=bind,from=$S,target=/c true",
            "'from' doesn't support variable expansion, define alias stage instead",
        ),
        ("RUN --device=/dev/x true", "unknown flag: --device"),
        (
            "COPY a",
            "COPY requires at least two arguments, but only one was provided. Destination could not be determined",
        ),
        (
            "ADD a",
            "ADD requires at least two arguments, but only one was provided. Destination could not be determined",
        ),
        ("COPY a <<EOF\nx\nEOF", "COPY cannot accept a heredoc as a destination"),
        ("MAINTAINER", "MAINTAINER requires exactly one argument"),
        ("ARG =x", "ARG names can not be blank"),
        ('VOLUME [" "]', "VOLUME specified can not be an empty string"),
    ],
)
def test_other_errors(line: str, message: str) -> None:
    assert fails_one(line).message == message


@pytest.mark.parametrize("instruction", ["workdir", "user", "stopsignal", "maintainer"])
def test_exactly_one_argument(instruction: str) -> None:
    # BuildKit's parser gives these the rest of the line as one word; two args only come
    # from hand-made nodes, but the check must hold.
    err = _parse_error(node(instruction, "a", "b"))
    assert err.message == f"{instruction.upper()} requires exactly one argument"


def test_mount_type_suggestion_through_run() -> None:
    err = fails_one("RUN --mount=type=cahce,target=/c true")
    assert err.suggestion == "cache"
    assert err.line == 2


# --- stages ----------------------------------------------------------------------------------


def test_parse_stages_groups_commands_and_meta_args() -> None:
    text = (
        "ARG BASE=alpine\nARG V\nFROM $BASE AS one\nRUN a\nARG X\nFROM one\nCOPY --from=one /a /b\n"
    )
    meta, stages = parse_stages(parse(text))
    assert [a.args for a in meta] == [(ArgDef("BASE", "alpine"),), (ArgDef("V"),)]
    assert [s.name for s in stages] == ["one", ""]
    assert [s.base_name for s in stages] == ["$BASE", "one"]
    assert [[c.name for c in s.commands] for s in stages] == [["run", "arg"], ["copy"]]


def test_parse_commands_flat_order() -> None:
    cmds = parse_commands(parse("ARG A\nFROM x\nRUN y\n"))
    assert [c.name for c in cmds] == ["arg", "from", "run"]
    assert [c.line for c in cmds] == [1, 2, 3]


# --- expansion -------------------------------------------------------------------------------


def upper_vars(word: str) -> str:
    return word.replace("$A", "aa").replace("$B", "bb")


def test_expand_only_touches_expanding_fields() -> None:
    env = one("ENV $A=$B")
    assert isinstance(env, EnvCommand)
    assert env.expand(upper_vars).env == (KeyValue("aa", "bb"),)
    cmd = one("CMD echo $A")
    assert cmd.expand(upper_vars) is cmd
    copy = one("COPY --from=$A --chown=$A --chmod=$B $A $B/")
    assert isinstance(copy, CopyCommand)
    out = copy.expand(upper_vars)
    assert (out.from_, out.chown, out.chmod, out.sources, out.dest) == (
        "$A",
        "aa",
        "bb",
        ("aa",),
        "bb/",
    )
    arg = one("ARG $A=$B C")
    assert isinstance(arg, ArgCommand)
    assert arg.expand(upper_vars).args == (ArgDef("aa", "bb"), ArgDef("C", None))


def test_expand_add_checksum_and_volume() -> None:
    add = one("ADD --checksum=$A x y")
    assert isinstance(add, AddCommand)
    assert add.expand(upper_vars).checksum == "aa"
    vol = one("VOLUME $A $B")
    assert isinstance(vol, VolumeCommand)
    assert vol.expand(upper_vars).volumes == ("aa", "bb")


def test_expander_error_gets_location() -> None:
    w = one("WORKDIR ${X:?unset}")

    def boom(word: str) -> str:
        raise DockerfileError("X: unset")

    with pytest.raises(DockerfileError) as info:
        w.expand(boom)
    assert (info.value.message, info.value.line) == ("X: unset", 2)


# --- Go durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("1ns", 1),
        ("1.5h", 5400 * SECOND),
        ("2h45m", (2 * 3600 + 45 * 60) * SECOND),
        ("-1.5s", -1_500_000_000),
        ("+3ms", 3_000_000),
        ("1us", 1000),
        ("1\u00b5s", 1000),
        (".5s", 500_000_000),
        ("1.s", SECOND),
    ],
)
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", ".", "s", "-", "+", "s1", "9999999999999999999ns"])
def test_parse_duration_invalid(text: str) -> None:
    with pytest.raises(DockerfileError) as info:
        parse_duration(text)
    assert info.value.message == f'time: invalid duration "{text}"'


def test_parse_duration_second_number_needs_its_own_unit() -> None:
    # Go reads "1.2" then a unit that stops at the next "."; the unit is empty.
    with pytest.raises(DockerfileError) as info:
        parse_duration("1.2.3s")
    assert info.value.message == 'time: missing unit in duration "1.2.3s"'


# --- ported from BuildKit's instructions/parse_test.go --------------------------------------


def _first_node_error(text: str) -> DockerfileError:
    return _parse_error(parse(text).nodes[0])


@pytest.mark.parametrize("instruction", ["MAINTAINER", "WORKDIR", "USER", "STOPSIGNAL"])
def test_buildkit_exactly_one_argument(instruction: str) -> None:
    assert _first_node_error(instruction).message == f"{instruction} requires exactly one argument"


@pytest.mark.parametrize(
    "instruction", ["ENV", "LABEL", "ONBUILD", "HEALTHCHECK", "EXPOSE", "VOLUME"]
)
def test_buildkit_at_least_one_argument(instruction: str) -> None:
    assert _first_node_error(instruction).message == f"{instruction} requires at least one argument"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("COPY\t\n\t\tquux \\\n      bar", "COPY requires at least two arguments"),
        ("ONBUILD FROM scratch", "FROM isn't allowed as an ONBUILD trigger"),
        ("MAINTAINER --boo joe@example.com", "unknown flag: --boo"),
        (
            "ONBUILD ONBUILD RUN touch foobar",
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        ),
        ("FOO bar", "unknown instruction: FOO"),
        ("foo bar", "unknown instruction: foo"),
    ],
)
def test_buildkit_error_cases(text: str, message: str) -> None:
    assert message in _first_node_error(text).message


def test_buildkit_run_flags_used() -> None:
    cmd = parse_instruction(parse("RUN --mount=type=tmpfs,target=/foo/ echo hello").nodes[0])
    assert isinstance(cmd, RunCommand)
    assert cmd.flags_used == {"mount"}


def test_onbuild_heredoc_goes_to_trigger_and_expression() -> None:
    cmd = one("ONBUILD RUN <<EOF\necho hi\nEOF")
    assert isinstance(cmd, OnbuildCommand)
    assert cmd.expression == "RUN <<EOF\necho hi\nEOF"
    assert isinstance(cmd.trigger, RunCommand)
    assert cmd.trigger.files == (ShellFile("EOF", "echo hi\n", False),)


def test_onbuild_trigger_errors_are_located_at_onbuild() -> None:
    err = fails_one("ONBUILD COPY --chmodd=1 a /b")
    assert (err.message, err.suggestion, err.line) == ("unknown flag: --chmodd", "--chmod", 2)


# --- robustness --------------------------------------------------------------------------------


_words = st.sampled_from(
    ["a", "/b", "AS", "x", "--link", "--from=s", "--chmod=7", "--mount=type=cache", "NONE", "CMD",
     "ONBUILD", "FROM", "--interval=1s", "--retries=x", "<<EOF", "=", "k=v", ""]
)  # fmt: skip


@given(
    st.sampled_from([*sorted({"add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from",
                              "healthcheck", "label", "maintainer", "run", "shell", "stopsignal",
                              "user", "volume", "workdir", "bogus"})]),
    st.lists(_words, max_size=4),
    st.lists(_words.filter(lambda w: w.startswith("--")), max_size=3),
    st.booleans(),
)  # fmt: skip
def test_any_node_gives_a_command_or_a_dockerfile_error(
    instruction: str, args: list[str], flags: list[str], json_form: bool
) -> None:
    n = Node(instruction, instruction.upper(), tuple(flags), tuple(args), json_form, (), 1, 1)
    try:
        cmd = parse_instruction(n)
    except DockerfileError as err:
        assert err.line == 1
        return
    assert cmd.node is n


def test_parse_duration_non_ascii_unit() -> None:
    # Go reads every non-digit, non-"." character as part of the unit.
    with pytest.raises(DockerfileError) as info:
        parse_duration("1\u0663s")
    assert info.value.message == 'time: unknown unit "\u0663s" in duration "1\u0663s"'
