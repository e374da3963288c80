"""Dockerfile → graph conversion, checked against BuildKit's dockerfile2llb behaviour.

Expected values come from BuildKit (``frontend/dockerfile/dockerfile2llb/convert.go``,
``convert_copy.go``, ``convert_test.go``, ``dockerfile_test.go``): progress names from
``prefixCommand``, step totals from ``buildDispatchStates``, history strings from
``commitToHistory`` callers, error messages verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from engine.errors import DockerfileError
from engine.frontend.convert import BuildOptions, ResolvedImage, convert, host_platform
from engine.frontend.parser import parse
from engine.graph.image import DEFAULT_PATH, ImageConfig
from engine.graph.ops import (
    ChownSpec,
    CopyAction,
    ExecOp,
    FileOp,
    GitSource,
    HttpSource,
    ImageSource,
    LocalSource,
    MergeOp,
    MkdirAction,
    MkfileAction,
    Platform,
)
from engine.graph.vertex import Definition, Vertex

AMD64 = Platform("linux", "amd64")
ALPINE = "docker.io/library/alpine:latest"
BUSYBOX = "docker.io/library/busybox:latest"


def conv(
    text: str,
    *,
    resolve: Mapping[str, ResolvedImage] | None = None,
    **options: object,
) -> Definition:
    opts = BuildOptions(platform=options.pop("platform", AMD64), context_dir="/ctx", **options)  # type: ignore[arg-type]
    images = dict(resolve or {})
    return convert(
        parse(text, filename="Dockerfile"),
        opts,
        resolve_image=lambda ref, _platform: images.get(ref),
    )


def names(d: Definition) -> list[str]:
    return [v.meta.name for v in d.vertices if v.meta.step is not None]


def by_type(d: Definition, kind: type) -> list[Vertex]:
    return [v for v in d.vertices if isinstance(v.op, kind)]


def last_exec(d: Definition) -> ExecOp:
    op = by_type(d, ExecOp)[-1].op
    assert isinstance(op, ExecOp)
    return op


def env_of(op: ExecOp) -> dict[str, str]:
    return dict(e.split("=", 1) for e in op.env)


def copy_actions(v: Vertex) -> list[CopyAction]:
    assert isinstance(v.op, FileOp)
    return [a for a in v.op.actions if isinstance(a, CopyAction)]


def last_file(d: Definition) -> Vertex:
    return by_type(d, FileOp)[-1]


def error_of(text: str, **options: object) -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        conv(text, **options)
    return info.value


def ancestors(d: Definition, digest: str) -> set[str]:
    index = d.by_digest()
    out: set[str] = set()
    stack = [digest]
    while stack:
        cur = stack.pop()
        if cur not in out:
            out.add(cur)
            stack.extend(index[cur].inputs)
    return out


def image(ref: str, config: ImageConfig | None = None) -> ResolvedImage:
    return ResolvedImage(ref=ref, chain_id="sha256:" + "c" * 64, config=config or ImageConfig())


# ----------------------------------------------------------------------------- step names


def test_multi_stage_names_and_totals() -> None:
    d = conv(
        "FROM alpine AS builder\nWORKDIR /app\nCOPY . .\nRUN make\n"
        "FROM busybox\nCOPY --from=builder /app/bin /bin\n"
    )
    assert names(d) == [
        f"[builder 1/4] FROM {ALPINE}",
        "[builder 2/4] WORKDIR /app",
        "[builder 3/4] COPY . .",
        "[builder 4/4] RUN make",
        f"[stage-1 1/2] FROM {BUSYBOX}",
        "[stage-1 2/2] COPY --from=builder /app/bin /bin",
    ]
    assert d.target_stage == ""
    steps = [v for v in d.vertices if v.meta.step is not None]
    assert [v.meta.stage for v in steps] == ["builder"] * 4 + ["stage-1"] * 2
    assert [v.meta.line for v in steps] == [1, 2, 3, 4, 5, 6]


def test_single_stage_has_no_stage_name() -> None:
    d = conv("FROM alpine\nRUN a\nRUN b\n")
    assert names(d) == [f"[1/3] FROM {ALPINE}", "[2/3] RUN a", "[3/3] RUN b"]


def test_step_number_padding() -> None:
    d = conv("FROM alpine\n" + "".join(f"RUN echo {i}\n" for i in range(11)))
    got = names(d)
    assert got[0] == f"[ 1/12] FROM {ALPINE}"
    assert got[8] == "[ 9/12] RUN echo 7"
    assert got[-1] == "[12/12] RUN echo 10"


def test_from_counts_only_for_image_bases() -> None:
    d = conv("FROM scratch\nCOPY a /a\nRUN x\n")
    assert names(d) == ["[1/2] COPY a /a", "[2/2] RUN x"]
    d = conv("FROM alpine AS base\nRUN x\nFROM base\nRUN y\n")
    assert names(d) == [f"[base 1/2] FROM {ALPINE}", "[base 2/2] RUN x", "[stage-1 1/1] RUN y"]


def test_unnamed_stages_use_their_index() -> None:
    d = conv("FROM alpine\nRUN a\nFROM busybox\nRUN b\nFROM scratch\nCOPY --from=1 /x /x\n")
    assert names(d) == [
        f"[stage-1 1/2] FROM {BUSYBOX}",
        "[stage-1 2/2] RUN b",
        "[stage-2 1/1] COPY --from=1 /x /x",
    ]


def test_workdir_root_counts_in_total_without_a_number() -> None:
    # BuildKit counts WORKDIR in cmdTotal, but WORKDIR / makes no op and never calls
    # prefixCommand, so its number is skipped.
    d = conv("FROM alpine\nWORKDIR /\nRUN x\n")
    assert names(d) == [f"[1/3] FROM {ALPINE}", "[2/3] RUN x"]


def test_names_expand_variables_and_uppercase_the_keyword() -> None:
    d = conv("FROM alpine\nENV D=/data\nworkdir $D/x\nrun echo $D $UNSET\n")
    assert names(d)[1:] == ["[2/3] WORKDIR /data/x", "[3/3] RUN echo /data $UNSET"]


def test_copy_from_image_source_has_no_step_prefix() -> None:
    d = conv("FROM alpine\nCOPY --from=nginx:1.27 /etc/nginx /etc/nginx\n")
    sources = {v.op.ref: v for v in by_type(d, ImageSource) if isinstance(v.op, ImageSource)}
    nginx = sources["docker.io/library/nginx:1.27"]
    assert nginx.meta.name == "FROM docker.io/library/nginx:1.27"
    assert nginx.meta.step is None
    # BuildKit adds the image's state to the stage list before it drops the name of a lone
    # stage, so a single-stage Dockerfile with `COPY --from=<image>` keeps "stage-0".
    assert names(d) == [
        f"[stage-0 1/2] FROM {ALPINE}",
        "[stage-0 2/2] COPY --from=nginx:1.27 /etc/nginx /etc/nginx",
    ]


# ----------------------------------------------------------------------------- reachability


def test_only_stages_reachable_from_target() -> None:
    text = (
        "FROM alpine AS a\nRUN build-a\n"
        "FROM busybox AS b\nRUN build-b\n"
        "FROM debian AS unused\nRUN never\n"
        "FROM scratch AS final\nCOPY --from=a /x /x\nCOPY --from=b /y /y\n"
    )
    d = conv(text)
    runs = [v.op.args[-1] for v in by_type(d, ExecOp) if isinstance(v.op, ExecOp)]
    assert runs == ["build-a", "build-b"]
    assert d.target_stage == "final"
    # a and b are independent subgraphs.
    (run_a,) = [v for v in by_type(d, ExecOp) if v.meta.stage == "a"]
    (run_b,) = [v for v in by_type(d, ExecOp) if v.meta.stage == "b"]
    assert run_b.digest not in ancestors(d, run_a.digest)
    assert run_a.digest not in ancestors(d, run_b.digest)
    # --target a: only a.
    d = conv(text, target="a")
    assert d.target_stage == "a"
    assert [v.meta.stage for v in d.vertices] == ["a", "a"]


def test_target_is_case_insensitive() -> None:
    d = conv("FROM alpine AS Builder\nRUN x\nFROM busybox\n", target="BUILDER")
    assert d.target_stage.lower() == "builder"
    assert names(d)[-1] == "[builder 2/2] RUN x"


def test_definition_vertices_in_dependency_order() -> None:
    d = conv("FROM alpine AS a\nRUN x\nFROM busybox\nCOPY --from=a /x /x\nRUN y\n")
    seen: set[str] = set()
    for v in d.vertices:
        assert set(v.inputs) <= seen
        seen.add(v.digest)
    assert d.target == d.vertices[-1].digest


# ----------------------------------------------------------------------------- ARG scoping


def test_global_arg_only_in_from_unless_redeclared() -> None:
    d = conv("ARG V=1\nARG IMG=alpine\nFROM $IMG\nRUN echo $V\n")
    assert by_type(d, ImageSource)[0].op == ImageSource(ALPINE, None, AMD64)
    assert "V" not in env_of(last_exec(d))
    d = conv("ARG V=1\nFROM alpine\nARG V\nRUN echo $V\n")
    assert env_of(last_exec(d))["V"] == "1"


def test_build_arg_overrides_default() -> None:
    d = conv("ARG V=1\nFROM alpine\nARG V\nARG W=a\nRUN x\n", build_args={"V": "2", "W": "b"})
    env = env_of(last_exec(d))
    assert env["V"] == "2"
    assert env["W"] == "b"


def test_arg_with_value_enters_later_runs_only() -> None:
    d = conv("FROM alpine\nRUN before\nARG A=1\nARG B\nRUN after\n")
    before, after = (v.op for v in by_type(d, ExecOp))
    assert isinstance(before, ExecOp) and isinstance(after, ExecOp)
    assert "A" not in env_of(before)
    assert env_of(after)["A"] == "1"
    assert "B" not in env_of(after)  # declared without a value: not in the environment
    assert after.env == (f"PATH={DEFAULT_PATH}", "A=1")


def test_undeclared_build_arg_is_ignored() -> None:
    d = conv("FROM alpine\nRUN x\n", build_args={"NOPE": "1"})
    assert "NOPE" not in env_of(last_exec(d))


def test_env_overrides_arg() -> None:
    d = conv("FROM alpine\nARG X=a\nENV X=b\nRUN echo\n", build_args={"X": "c"})
    assert env_of(last_exec(d))["X"] == "b"
    assert ImageConfig.get_env(d.config, "X") == "b"


def test_arg_default_expands_with_stage_env() -> None:
    d = conv("FROM alpine\nENV BASE=/opt\nARG DIR=$BASE/app\nRUN x\n")
    assert env_of(last_exec(d))["DIR"] == "/opt/app"


def test_stage_args_are_inherited_by_child_stages() -> None:
    d = conv("FROM alpine AS a\nARG A=1\nFROM a\nRUN x\n")
    assert env_of(last_exec(d))["A"] == "1"


def test_platform_args() -> None:
    text = (
        "FROM alpine\nARG TARGETARCH\nARG TARGETPLATFORM\nARG TARGETVARIANT\n"
        "ARG BUILDARCH\nARG TARGETSTAGE\nRUN x\n"
    )
    d = conv(text, platform=Platform("linux", "arm", "v7"))
    env = env_of(last_exec(d))
    assert env["TARGETARCH"] == "arm"
    assert env["TARGETPLATFORM"] == "linux/arm/v7"
    assert env["TARGETVARIANT"] == "v7"
    assert env["BUILDARCH"] == host_platform().architecture
    assert env["TARGETSTAGE"] == "default"  # the last stage has no name
    assert last_exec(d).platform == Platform("linux", "arm", "v7")


def test_target_stage_arg_names_the_target() -> None:
    d = conv("FROM alpine AS build\nARG TARGETSTAGE\nRUN x\nFROM busybox\n", target="build")
    assert env_of(last_exec(d))["TARGETSTAGE"] == "build"


def test_from_platform_uses_global_args() -> None:
    d = conv("FROM --platform=$BUILDPLATFORM alpine\nRUN x\n", platform=Platform("linux", "s390x"))
    (src,) = by_type(d, ImageSource)
    assert isinstance(src.op, ImageSource)
    assert src.op.platform == host_platform()
    assert last_exec(d).platform == host_platform()


# ----------------------------------------------------------------------------- RUN state


def test_env_user_workdir_shell_reach_the_exec() -> None:
    d = conv(
        'FROM alpine\nENV A=1 B="two words"\nUSER nobody\nWORKDIR /w\n'
        'SHELL ["/bin/bash", "-eo", "pipefail", "-c"]\nRUN echo hi\nRUN ["ls", "-l"]\n'
    )
    shell_run, exec_run = (v.op for v in by_type(d, ExecOp))
    assert isinstance(shell_run, ExecOp) and isinstance(exec_run, ExecOp)
    assert shell_run.args == ("/bin/bash", "-eo", "pipefail", "-c", "echo hi")
    assert exec_run.args == ("ls", "-l")
    assert shell_run.env == (f"PATH={DEFAULT_PATH}", "A=1", "B=two words")
    assert shell_run.user == "nobody"
    assert shell_run.cwd == "/w"
    (mkdir_vertex,) = [v for v in by_type(d, FileOp) if v.meta.name.endswith("WORKDIR /w")]
    assert isinstance(mkdir_vertex.op, FileOp)
    assert mkdir_vertex.op.actions == (
        MkdirAction(path="/w", mode=0o755, make_parents=True, chown=ChownSpec("nobody")),
    )


def test_default_run_state() -> None:
    op = last_exec(conv("FROM alpine\nRUN x\n"))
    assert op.args == ("/bin/sh", "-c", "x")
    assert op.cwd == "/"
    assert op.user == ""
    assert op.network == "default"
    assert op.security == "sandbox"


def test_relative_workdir() -> None:
    d = conv("FROM alpine\nWORKDIR /a\nWORKDIR b\nWORKDIR ../c\nRUN pwd\n")
    assert last_exec(d).cwd == "/a/c"
    assert d.config.working_dir == "/a/c"
    assert names(d)[1:4] == ["[2/5] WORKDIR /a", "[3/5] WORKDIR b", "[4/5] WORKDIR ../c"]


def test_workdir_from_base_image_config() -> None:
    base = image("docker.io/library/base:1", ImageConfig(working_dir="/srv", user="app"))
    d = conv("FROM base:1\nWORKDIR sub\nRUN x\n", resolve={"docker.io/library/base:1": base})
    assert last_exec(d).cwd == "/srv/sub"
    assert last_exec(d).user == "app"


def test_run_network_and_security_flags() -> None:
    op = last_exec(conv("FROM alpine\nRUN --network=none --security=insecure x\n"))
    assert op.network == "none"
    assert op.security == "insecure"


# ----------------------------------------------------------------------------- COPY / ADD


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        ("b", "/app/b"),
        ("b/", "/app/b/"),
        (".", "/app/"),
        ("./", "/app/"),
        ("/abs", "/abs"),
        ("/abs/", "/abs/"),
        ("../up", "/up"),
    ],
)
def test_copy_dest_relative_to_workdir(dest: str, expected: str) -> None:
    d = conv(f"FROM alpine\nWORKDIR /app\nCOPY a {dest}\n")
    (action,) = copy_actions(last_file(d))
    assert action.dest == expected


def test_copy_from_context() -> None:
    d = conv("FROM alpine\nCOPY a.txt dir/ /dst/\n")
    v = last_file(d)
    assert isinstance(v.op, FileOp)
    (ctx,) = by_type(d, LocalSource)
    assert ctx.op == LocalSource(name="context", path="/ctx")
    assert ctx.meta.name == "[internal] load build context"
    assert v.inputs[1] == ctx.digest
    assert [(a.src, a.src_input, a.attempt_unpack) for a in copy_actions(v)] == [
        (("/a.txt",), 1, False),
        (("/dir",), 1, False),
    ]
    assert v.op.dest_input == 0
    assert d.config.history[-1].created_by == "COPY a.txt dir/ /dst/ # buildkit"


def test_copy_from_stage_index_and_image() -> None:
    text = "FROM alpine AS b\nRUN x\nFROM busybox\nCOPY --from={} /x /x\n"
    by_name = conv(text.format("b"))
    by_index = conv(text.format("0"))
    run_b = by_type(by_name, ExecOp)[0]
    assert last_file(by_name).inputs[1] == run_b.digest
    assert last_file(by_index).inputs[1] == by_type(by_index, ExecOp)[0].digest
    d = conv("FROM alpine\nCOPY --from=nginx /x /x\n")
    srcs = [v for v in by_type(d, ImageSource) if isinstance(v.op, ImageSource)]
    refs = {v.op.ref: v.digest for v in srcs}
    assert set(refs) == {ALPINE, "docker.io/library/nginx:latest"}
    assert last_file(d).inputs == (refs[ALPINE], refs["docker.io/library/nginx:latest"])


def test_copy_from_stage_named_like_an_image() -> None:
    # A stage name wins over an image of the same name.
    d = conv("FROM alpine AS nginx\nRUN x\nFROM busybox\nCOPY --from=nginx /x /x\n")
    assert [v.op.ref for v in by_type(d, ImageSource) if isinstance(v.op, ImageSource)] == [
        ALPINE,
        BUSYBOX,
    ]


@pytest.mark.parametrize("mode", ["0755", "7777", "644", "u+x", "u=rwX,go=rX", "a-w", "g+s"])
def test_chmod_accepted(mode: str) -> None:
    d = conv(f"FROM alpine\nCOPY --chmod={mode} a /a\n")
    assert copy_actions(last_file(d))[0].chmod == mode
    assert f"--chmod={mode}" in d.config.history[-1].created_by


@pytest.mark.parametrize("mode", ["10000", "77777", "999", "0o755"])
def test_chmod_rejected_octal(mode: str) -> None:
    err = error_of(f"FROM alpine\nCOPY --chmod={mode} a /a\n")
    assert (
        f"invalid chmod parameter: '{mode}'. it should be octal string and between 0 and 07777"
        in str(err)
    )
    assert err.line == 2


def test_chmod_rejected_symbolic() -> None:
    err = error_of("FROM alpine\nCOPY --chmod=u+q a /a\n")
    assert "invalid chmod parameter" in str(err)
    assert err.line == 2


def test_chown() -> None:
    d = conv("FROM alpine\nCOPY --chown=1000:1000 a /a\nCOPY --chown=app:staff b /b\n")
    first, second = (copy_actions(v)[0] for v in by_type(d, FileOp))
    assert first.chown == ChownSpec("1000", "1000")
    assert second.chown == ChownSpec("app", "staff")
    by_name = by_type(d, FileOp)[-1].op
    assert isinstance(by_name, FileOp)
    assert by_name.user_db_input == 0  # names resolve against the destination's /etc/passwd
    d = conv("FROM alpine\nARG U=5\nCOPY --chown=$U a /a\n")
    assert copy_actions(last_file(d))[0].chown == ChownSpec("5", "")


def test_copy_link_is_a_merge() -> None:
    d = conv("FROM alpine\nRUN x\nCOPY --link a /a\n")
    merge = d.vertices[-1]
    assert isinstance(merge.op, MergeOp)
    run = by_type(d, ExecOp)[0]
    copy_vertex = d.by_digest()[merge.inputs[1]]
    assert merge.inputs[0] == run.digest
    assert isinstance(copy_vertex.op, FileOp)
    assert copy_vertex.op.dest_input == -1  # onto scratch
    assert copy_vertex.meta.name == "[3/3] COPY --link a /a"
    assert merge.meta.name == "[3/3] LINK COPY --link a /a"
    # --chmod disables the merge (BuildKit: cfg.link && cfg.chmod == "").
    d = conv("FROM alpine\nCOPY --link --chmod=644 a /a\n")
    assert not by_type(d, MergeOp)


def test_copy_parents() -> None:
    d = conv("FROM alpine\nCOPY --parents a/./b/c.txt x/y.txt /dst/\n")
    pivot, plain = copy_actions(last_file(d))
    assert (pivot.src, pivot.include, pivot.parents) == (("/a",), ("b/c.txt",), True)
    assert (plain.src, plain.include) == (("/",), ("x/y.txt",))
    assert d.config.history[-1].created_by.startswith("COPY --parents ")


def test_copy_exclude() -> None:
    d = conv("FROM alpine\nCOPY --exclude=*.md --exclude=tmp . /app\n")
    (action,) = copy_actions(last_file(d))
    assert action.exclude == ("*.md", "tmp")


def test_add_local_tar_attempts_unpack() -> None:
    d = conv("FROM alpine\nADD rootfs.tar.gz /\nCOPY rootfs.tar.gz /\nADD --unpack=false r.tar /\n")
    add, copy, no_unpack = (copy_actions(v)[0] for v in by_type(d, FileOp))
    assert add.attempt_unpack is True
    assert copy.attempt_unpack is False
    assert no_unpack.attempt_unpack is False


def test_add_http() -> None:
    d = conv("FROM alpine\nADD https://example.com/files/tool.tar.gz /opt/\n")
    (http,) = by_type(d, HttpSource)
    assert http.op == HttpSource(
        url="https://example.com/files/tool.tar.gz", filename="tool.tar.gz"
    )
    assert http.meta.name == "[2/2] ADD https://example.com/files/tool.tar.gz /opt/"
    (action,) = copy_actions(last_file(d))
    assert action.src == ("/tool.tar.gz",)
    assert action.attempt_unpack is False  # remote archives are not unpacked
    assert action.dest == "/opt/"


def test_add_http_with_checksum() -> None:
    digest = "sha256:" + "a" * 64
    d = conv(f"FROM alpine\nADD --checksum={digest} https://example.com/x /x\n")
    (http,) = by_type(d, HttpSource)
    assert isinstance(http.op, HttpSource)
    assert http.op.checksum == digest
    err = error_of("FROM alpine\nADD --checksum=sha256:zz https://example.com/x /x\n")
    assert err.line == 2
    err = error_of(f"FROM alpine\nADD --checksum={digest} local.txt /x\n")
    assert "checksum requires HTTP(S) or Git sources" in str(err)


def test_add_http_without_path_is_unnamed() -> None:
    d = conv("FROM alpine\nADD https://example.com/ /x\n")
    (http,) = by_type(d, HttpSource)
    assert isinstance(http.op, HttpSource)
    assert http.op.filename == "__unnamed__"


def test_add_git() -> None:
    d = conv("FROM alpine\nADD https://github.com/moby/buildkit.git#v0.10.1:docs /bk\n")
    (git,) = by_type(d, GitSource)
    assert isinstance(git.op, GitSource)
    assert git.op.remote == "https://github.com/moby/buildkit.git"
    assert git.op.ref == "v0.10.1"
    assert git.op.subdir == "docs"
    assert git.op.commit is None  # a tag: known only after resolving
    (action,) = copy_actions(last_file(d))
    assert action.src == ("/",)
    assert action.dest == "/bk"


def test_add_git_full_sha_is_a_known_commit() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    d = conv(f"FROM alpine\nADD --keep-git-dir=true https://github.com/a/b.git#{sha} /src\n")
    (git,) = by_type(d, GitSource)
    assert isinstance(git.op, GitSource)
    assert git.op.commit == sha
    assert git.op.keep_git_dir is True


def test_copy_rejects_remote_sources() -> None:
    err = error_of("FROM scratch\nCOPY http://github.com/moby/buildkit/blob/master/README.md /\n")
    assert "source can't be a URL for COPY" in str(err)
    err = error_of("FROM alpine AS s\nFROM alpine\nCOPY --from=s https://example.com/x /\n")
    assert "source can't be a URL for COPY" in str(err)


# ----------------------------------------------------------------------------- heredocs


def test_run_heredoc() -> None:
    d = conv("FROM alpine\nRUN <<EOF\necho hi\necho there\nEOF\n")
    assert last_exec(d).args == ("/bin/sh", "-c", "echo hi\necho there\n")
    assert names(d)[-1] == "[2/2] RUN <<EOF (echo hi...)"


def test_run_heredoc_with_shebang_runs_a_file() -> None:
    d = conv("FROM alpine\nRUN <<EOT\n#!/usr/bin/env python3\nprint(1)\nEOT\n")
    op = last_exec(d)
    assert op.args == ("/bin/sh", "-c", "/dev/pipes/EOT")
    (pipes,) = [m for m in op.mounts if m.dest == "/dev/pipes/"]
    assert pipes.readonly
    script = d.by_digest()[by_type(d, ExecOp)[-1].inputs[pipes.input]]
    assert isinstance(script.op, FileOp)
    assert script.op.actions == (
        MkfileAction(path="/EOT", data="#!/usr/bin/env python3\nprint(1)\n", mode=0o755),
    )
    assert script.meta.name == "preparing inline document"


def test_run_heredoc_with_command() -> None:
    d = conv("FROM alpine\nRUN python3 <<EOF\nprint(1)\nEOF\n")
    assert last_exec(d).args == ("/bin/sh", "-c", "python3 <<EOF\nprint(1)\nEOF")


def test_copy_heredoc() -> None:
    d = conv("FROM alpine\nENV NAME=world\nCOPY <<EOF /hello.txt\nhello $NAME\nEOF\n")
    (action,) = copy_actions(last_file(d))
    assert action.dest == "/hello.txt"
    source = d.by_digest()[last_file(d).inputs[action.src_input]]
    assert isinstance(source.op, FileOp)
    (mkfile,) = source.op.actions
    assert isinstance(mkfile, MkfileAction)
    assert (mkfile.path, mkfile.mode) == ("/EOF", 0o644)
    assert mkfile.data == "hello world\n"
    assert action.src == ("/EOF",)
    assert d.config.history[-1].created_by == "COPY <<EOF /hello.txt # buildkit"


# ----------------------------------------------------------------------------- ONBUILD


def test_onbuild_from_image_is_replayed() -> None:
    base = image(
        "docker.io/library/base:latest",
        ImageConfig(onbuild=("RUN echo trig", "ENV T=1"), env=("PATH=/usr/bin",)),
    )
    d = conv("FROM base\nRUN mine\n", resolve={"docker.io/library/base:latest": base})
    # initOnBuildTriggers adds every trigger to the total, whatever its instruction.
    assert names(d) == [
        "[1/4] FROM docker.io/library/base:latest",
        "[2/4] ONBUILD RUN echo trig",
        "[3/4] RUN mine",
    ]
    first, second = (v.op for v in by_type(d, ExecOp))
    assert isinstance(first, ExecOp) and isinstance(second, ExecOp)
    assert first.env == ("PATH=/usr/bin",)
    assert env_of(second)["T"] == "1"
    assert d.config.onbuild == ()  # the triggers fired; the result does not inherit them


def test_onbuild_from_stage_is_replayed() -> None:
    d = conv("FROM alpine AS a\nONBUILD RUN t\nRUN x\nFROM a\nRUN m\n")
    assert names(d)[-2:] == ["[stage-1 1/2] ONBUILD RUN t", "[stage-1 2/2] RUN m"]
    assert d.config.onbuild == ()
    d = conv("FROM alpine AS a\nONBUILD RUN t\nFROM a\n", target="a")
    assert d.config.onbuild == ("RUN t",)
    assert [n for n in names(d) if "ONBUILD" in n] == []


def test_onbuild_copy_from_adds_a_dependency() -> None:
    d = conv(
        "FROM alpine AS assets\nRUN make\nFROM busybox AS base\nONBUILD COPY --from=assets /a /a\n"
        "FROM base\nRUN x\n"
    )
    run_make = [v for v in by_type(d, ExecOp) if v.meta.stage == "assets"]
    assert run_make  # reachable only through the trigger
    copy_vertex = [v for v in by_type(d, FileOp) if "ONBUILD" in v.meta.name]
    assert copy_vertex[0].inputs[1] == run_make[0].digest


# ----------------------------------------------------------------------------- image config


def test_image_config() -> None:
    d = conv(
        "FROM alpine\n"
        "ENV A=1\n"
        'LABEL org.example.a="x y" b=2\n'
        "EXPOSE 80 53/udp\n"
        "VOLUME /data\n"
        'VOLUME ["/cache", "/logs"]\n'
        "STOPSIGNAL SIGINT\n"
        "HEALTHCHECK --interval=5s --retries=3 CMD curl -f http://localhost/\n"
        "WORKDIR /srv\n"
        "USER app\n"
        "CMD echo hi\n"
        "MAINTAINER someone\n"
    )
    c = d.config
    assert c.env == (f"PATH={DEFAULT_PATH}", "A=1")
    assert dict(c.labels) == {"org.example.a": "x y", "b": "2"}
    assert set(c.exposed_ports) == {"80/tcp", "53/udp"}
    assert c.volumes == ("/data", "/cache", "/logs")
    assert c.stop_signal == "SIGINT"
    assert c.healthcheck is not None
    assert c.healthcheck.test == ("CMD-SHELL", "curl -f http://localhost/")
    assert (c.healthcheck.interval_ns, c.healthcheck.retries) == (5_000_000_000, 3)
    assert c.working_dir == "/srv"
    assert c.user == "app"
    assert c.cmd == ("/bin/sh", "-c", "echo hi")
    assert c.entrypoint is None
    assert (c.os, c.architecture) == ("linux", "amd64")
    assert [h.created_by for h in c.history] == [
        "ENV A=1",
        "LABEL org.example.a=x y b=2",
        "EXPOSE [53/udp 80/tcp]",  # parseExpose sorts the words
        "VOLUME [/data]",
        "VOLUME [/cache /logs]",
        "STOPSIGNAL SIGINT",
        "HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/] Interval:5s Timeout:0s "
        "StartPeriod:0s StartInterval:0s Retries:3}",
        "WORKDIR /srv",
        "USER app",
        'CMD ["/bin/sh" "-c" "echo hi"]',
        "MAINTAINER someone",
    ]
    assert [h.empty_layer for h in c.history] == [True] * 7 + [False] + [True] * 3
    assert all(h.comment == "buildkit.dockerfile.v0" for h in c.history)


def test_run_history() -> None:
    d = conv("FROM alpine\nARG V=1\nARG W\nRUN make\n")
    assert [h.created_by for h in d.config.history] == [
        "ARG V=1",
        "ARG W",
        "RUN |2 V=1 W= /bin/sh -c make # buildkit",
    ]
    assert d.config.history[-1].empty_layer is False


def test_default_path_kept_from_base_image() -> None:
    base = image("docker.io/library/b:latest", ImageConfig(env=("PATH=/custom", "X=1")))
    d = conv("FROM b\nRUN x\n", resolve={"docker.io/library/b:latest": base})
    assert d.config.env == ("PATH=/custom", "X=1")
    assert last_exec(d).env == ("PATH=/custom", "X=1")


def test_shell_form_cmd_and_entrypoint_use_shell() -> None:
    d = conv('FROM alpine\nSHELL ["/bin/bash", "-c"]\nENTRYPOINT exec app\n')
    assert d.config.entrypoint == ("/bin/bash", "-c", "exec app")
    assert d.config.shell == ("/bin/bash", "-c")


def test_entrypoint_resets_inherited_cmd() -> None:
    base = image("docker.io/library/b:latest", ImageConfig(cmd=("bash",)))
    resolve = {"docker.io/library/b:latest": base}
    d = conv('FROM b\nENTRYPOINT ["app"]\n', resolve=resolve)
    assert d.config.entrypoint == ("app",)
    assert d.config.cmd is None
    d = conv('FROM b\nCMD ["--help"]\nENTRYPOINT ["app"]\n', resolve=resolve)
    assert d.config.cmd == ("--help",)
    d = conv("FROM b\nRUN x\n", resolve=resolve)
    assert d.config.cmd == ("bash",)


def test_label_options_are_added_to_the_target() -> None:
    d = conv("FROM alpine\nLABEL a=1 b=2\n", labels={"b": "opt", "c": "3"})
    assert dict(d.config.labels) == {"a": "1", "b": "opt", "c": "3"}


def test_config_follows_target_platform() -> None:
    d = conv("FROM alpine\n", platform=Platform("linux", "arm64", "v8"))
    assert (d.config.os, d.config.architecture, d.config.variant) == ("linux", "arm64", "v8")


# ----------------------------------------------------------------------------- no-cache


def test_no_cache_marks_run_and_copy() -> None:
    d = conv("FROM alpine\nWORKDIR /w\nCOPY a /a\nRUN x\n", no_cache=True)
    flags = {type(v.op).__name__ + ":" + v.meta.name: v.meta.ignore_cache for v in d.vertices}
    assert flags == {
        f"ImageSource:[1/4] FROM {ALPINE}": False,  # FROM resolution is unaffected
        "FileOp:[2/4] WORKDIR /w": False,  # dispatchWorkdir sets no IgnoreCache
        "LocalSource:[internal] load build context": False,
        "FileOp:[3/4] COPY a /a": True,
        "ExecOp:[4/4] RUN x": True,
    }


def test_no_cache_filter_marks_named_stages_only() -> None:
    d = conv(
        "FROM alpine AS deps\nRUN fetch\nFROM alpine AS build\nRUN make\n"
        "FROM busybox\nCOPY --from=deps /d /d\nCOPY --from=build /b /b\n",
        no_cache_filter=("BUILD",),
    )
    runs = {v.meta.stage: v.meta.ignore_cache for v in by_type(d, ExecOp)}
    assert runs == {"deps": False, "build": True}
    assert not any(v.meta.ignore_cache for v in by_type(d, FileOp))


# ----------------------------------------------------------------------------- errors


def test_unknown_instruction_in_any_stage() -> None:
    err = error_of("FROM alpine AS unused\nFOO bar\nFROM busybox\nRUN x\n")
    assert err.line == 2
    assert err.filename == "Dockerfile"
    assert "unknown instruction" in str(err).lower()


def test_instruction_error_in_unreachable_stage_is_an_error() -> None:
    err = error_of("FROM alpine AS unused\nCOPY onlyone\nFROM busybox\nRUN x\n")
    assert err.line == 2


def test_expansion_error_in_unreachable_stage_is_not_an_error() -> None:
    # scratch, not an image: over an unresolved image an unset variable is kept as written.
    text = "FROM scratch AS unused\nENV A=${B:?required}\nFROM busybox AS used\nRUN x\n"
    d = conv(text)
    assert names(d)[-1] == "[used 2/2] RUN x"
    err = error_of(text, target="unused")
    assert err.line == 2
    assert "required" in str(err)


def test_copy_from_later_stage() -> None:
    # The default target (the last stage) does not need stage "first": no error.
    conv("FROM alpine AS first\nCOPY --from=later /x /x\nFROM busybox AS later\nRUN x\n")
    err = error_of(
        "FROM alpine AS first\nCOPY --from=later /x /x\nFROM busybox AS later\nRUN x\n",
        target="first",
    )
    assert (
        'cannot copy from stage "later", it needs to be defined before current stage "first"'
        in str(err)
    )
    assert err.line == 2


def test_circular_dependency() -> None:
    err = error_of("FROM busybox AS stage0\nCOPY --from=stage0 f1 /sub/\n")
    assert "circular dependency detected on stage: stage0" in str(err)
    assert err.line == 2
    err = error_of(
        "FROM busybox AS stage0\nCOPY --from=stage2 f1 /sub/\n"
        "FROM busybox AS stage1\nCOPY --from=stage0 f2 /sub/\n"
        "FROM busybox AS stage2\nCOPY --from=stage1 f2 /sub/\n"
    )
    assert "circular dependency detected on stage: stage0" in str(err)
    assert err.filename == "Dockerfile"
    assert err.line is not None


def test_unknown_target_suggests() -> None:
    err = error_of("FROM alpine AS builder\nFROM busybox AS final\n", target="bulder")
    assert 'target stage "bulder" could not be found' in str(err)
    assert err.suggestion is not None and "builder" in err.suggestion


@pytest.mark.parametrize(
    "syntax", ["docker/dockerfile:1", "docker/dockerfile:1.7-labs", "docker.io/docker/dockerfile:1"]
)
def test_standard_syntax_accepted(syntax: str) -> None:
    conv(f"# syntax={syntax}\nFROM alpine\nRUN x\n")


def test_nonstandard_syntax_rejected() -> None:
    err = error_of("# syntax=example.com/my/frontend:2\nFROM alpine\n")
    assert "example.com/my/frontend:2" in str(err)
    assert err.line == 1
    assert err.filename == "Dockerfile"


def test_variable_in_copy_from() -> None:
    err = error_of("FROM alpine AS a\nFROM busybox\nARG S=a\nCOPY --from=$S /x /x\n")
    assert "variable expansion is not supported for --from" in str(err)
    assert err.line == 4


@pytest.mark.parametrize("text", ['FROM "" AS foo\n', "FROM ${BLANK} AS foo\n", "ARG X\nFROM $X\n"])
def test_empty_base_name(text: str) -> None:
    err = error_of(text)
    assert "should not be blank" in str(err)
    assert err.line == text.count("\n")


def test_bad_platform() -> None:
    err = error_of("FROM --platform=linux/ alpine\n")
    assert err.line == 1
    assert "platform" in str(err)
    err = error_of("FROM --platform=$NOPE alpine\n")
    assert "empty platform value from expression $NOPE" in str(err)


def test_invalid_stage_index() -> None:
    err = error_of("FROM alpine\nCOPY --from=3 /x /x\n")
    assert "invalid stage index 3" in str(err)
    assert err.line == 2


def test_no_stages() -> None:
    err = error_of("ARG A=1\n")
    assert "dockerfile contains no stages to build" in str(err)


def test_duplicate_stage_name() -> None:
    err = error_of("FROM alpine AS a\nFROM busybox AS a\n")
    assert err.line == 2


# ----------------------------------------------------------------------------- provisional


def test_unresolved_base_keeps_unknown_variables() -> None:
    # The base image's ENV is unknown: `$HOME` is not "" (which would fail), it stays as written.
    d = conv('FROM jupyter/base\nWORKDIR "${HOME}"\nCOPY --chown=${NB_UID}:${NB_GID} a b\n')
    (src,) = by_type(d, ImageSource)
    assert isinstance(src.op, ImageSource) and src.op.provisional
    (action,) = copy_actions(last_file(d))
    assert action.chown == ChownSpec("${NB_UID}", "${NB_GID}")


def test_resolved_base_expands_its_env() -> None:
    base = image(
        "docker.io/jupyter/base:latest",
        ImageConfig(env=("HOME=/home/jovyan", "NB_UID=1000", "NB_GID=100")),
    )
    d = conv(
        'FROM jupyter/base\nWORKDIR "${HOME}"\nCOPY --chown=${NB_UID}:${NB_GID} a b\n',
        resolve={"docker.io/jupyter/base:latest": base},
    )
    assert d.config.working_dir == "/home/jovyan"
    (action,) = copy_actions(last_file(d))
    assert action.chown == ChownSpec("1000", "100")
    assert action.dest == "/home/jovyan/b"
    (src,) = by_type(d, ImageSource)
    assert isinstance(src.op, ImageSource) and src.op.chain_id == "sha256:" + "c" * 64


# ----------------------------------------------------------------------------- named contexts


def test_named_context_replaces_the_whole_stage() -> None:
    d = conv(
        "FROM busybox AS base\nRUN never\nFROM base\nRUN y\n",
        build_contexts={"base": "docker-image://alpine"},
    )
    assert [v.meta.name for v in d.vertices] == [
        "[context base] alpine",  # BuildKit's name for a named context; no step
        "[stage-1 1/1] RUN y",
    ]
    d = conv(
        "FROM busybox AS base\nRUN never\nFROM alpine\nCOPY --from=base /a /a\n",
        build_contexts={"base": "/tmp/base"},
    )
    (local,) = by_type(d, LocalSource)
    assert local.op == LocalSource(name="base", path="/tmp/base")
    assert last_file(d).inputs[1] == local.digest
    assert not by_type(d, ExecOp)
