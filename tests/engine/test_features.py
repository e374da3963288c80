"""Golden tests for the Dockerfile features newer than Dockerfile 1.2 (the BuildKit 0.8 that
Debian ships, so the differential tests cannot cover them): heredocs, ``COPY --link``,
``COPY --parents``, ``COPY --exclude``, symbolic ``--chmod``, ``--no-cache-filter``,
``SOURCE_DATE_EPOCH``, ``ADD --checksum``, ``ADD <git>`` / ``--keep-git-dir`` and
``RUN --security=insecure``.

Every expectation comes from current BuildKit (moby/buildkit at the snapshot in
../shared/reference/buildkit-semantics.md): each test names the BuildKit integration test
(``frontend/dockerfile/*_test.go``) or the section of ``frontend/dockerfile/docs/reference.md``
it mirrors. BuildKit's tests use alpine where they need a package manager; here everything runs
on the busybox image of tests/buildkit_base.py, with real containers, real overlayfs and a real
store. Remote sources are served on 127.0.0.1 (BuildKit's tests do the same with httptest).

Run by a normal user the builds are rootless (tests/buildkit_base.py); with a single ID mapping a
build that needs other IDs than root's (``--chown``) must fail with the clear error
(``bk.single_refuses``), everything else passes as it does as root.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine.errors import DockerfileError, EntitlementError, NbbuildError


def _load_helpers() -> ModuleType:
    name = "nbbuild_tests_features_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parent / "features_conftest.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


h = _load_helpers()
base = h.load_base()
busybox_archive = base.busybox_archive
bk = base.bk
http_server = h.http_server
git_server = h.git_server
tree = h.tree
files = h.files
changed = h.changed


def export(bk: Any, dockerfile: str, name: str = "out", **kw: Any) -> tuple[Any, Path]:
    """Build ``dockerfile`` with a ``type=local`` output; return the result and the directory."""
    out = bk.tmp / name
    result = bk.build(dockerfile, outputs=[f"type=local,dest={out}"], **kw)
    return result, out


# == heredocs (reference.md "Here-Documents"; dockerfile_heredoc_test.go) ==========================


def test_run_heredoc_runs_the_script_in_the_default_shell(bk: Any) -> None:
    # testRunBasicHeredoc
    result, out = export(
        bk,
        """\
FROM busybox AS build
RUN <<EOF
echo "i am" >> /dest
whoami >> /dest
EOF

FROM scratch
COPY --from=build /dest /dest
""",
    )
    assert files(out) == {"dest": "i am\nroot\n"}
    # BuildKit names the step after the first line of the document (summarizeHeredoc)
    assert [s.name for s in result.steps if s.step is not None][1] == (
        '[build 2/2] RUN <<EOF (echo "i am" >> /dest...)'
    )


def test_run_heredoc_uses_the_shell_instruction(bk: Any) -> None:
    # testRunFakeHeredoc: the document is handed to SHELL, whatever it is
    _, out = export(
        bk,
        """\
FROM busybox AS build
SHELL ["/bin/awk"]
RUN <<EOF
BEGIN {
	print "foo" > "/dest"
}
EOF

FROM scratch
COPY --from=build /dest /dest
""",
    )
    assert files(out) == {"dest": "foo\n"}


def test_run_heredoc_with_a_shebang_runs_the_interpreter(bk: Any) -> None:
    # testRunShebangHeredoc (including <<- tab stripping before the shebang is seen)
    _, out = export(
        bk,
        """\
FROM busybox AS build
WORKDIR /dest
RUN <<EOF
#!/bin/awk -f
BEGIN {
	print "hello" >> "./out1"
	print "world" >> "./out1"
}
EOF
RUN <<-EOF
	#!/bin/awk -f
	BEGIN {
		print "hello" >> "./out2"
		print "world" >> "./out2"
	}
EOF
RUN <<EOF
#!/bin/sh
echo "script: $0" > /dest/out3
EOF

FROM scratch
COPY --from=build /dest /
""",
    )
    # a shebang document is a file mounted read-only at /dev/pipes/<delimiter> and executed
    assert files(out) == {
        "out1": "hello\nworld\n",
        "out2": "hello\nworld\n",
        "out3": "script: /dev/pipes/EOF\n",
    }


def test_run_heredoc_shebang_file_is_mounted_not_left_in_the_image(bk: Any) -> None:
    # convert.go dispatchRun: the script is an llb.AddMount at /dev/pipes/ (read-only), so it is
    # never part of the RUN's layer
    _, out = export(
        bk,
        """\
FROM busybox
RUN <<EOF
#!/bin/sh
ls /dev/pipes > /seen
touch /dev/pipes/x 2>/dev/null && echo writable >> /seen || echo read-only >> /seen
EOF
""",
    )
    assert (out / "seen").read_text() == "EOF\nread-only\n"
    assert not (out / "dev" / "pipes" / "EOF").exists()


def test_run_complex_heredocs_are_handed_to_the_shell(bk: Any) -> None:
    # testRunComplexHeredoc: several documents, pipes and fd redirections are the shell's job
    _, out = export(
        bk,
        """\
FROM busybox AS build
WORKDIR /dest
RUN cat <<EOF1 | tr '[:upper:]' '[:lower:]' > ./out1; \\
	cat <<EOF2 | tr '[:lower:]' '[:upper:]' > ./out2
hello WORLD
EOF1
HELLO world
EOF2
RUN <<EOF 3<<IN1 4<<IN2 awk -f -
BEGIN {
	while ((getline line < "/proc/self/fd/3") > 0)
		print tolower(line) > "./fd3"
	while ((getline line < "/proc/self/fd/4") > 0)
		print toupper(line) > "./fd4"
}
EOF
hello WORLD
IN1
HELLO world
IN2

FROM scratch
COPY --from=build /dest /
""",
    )
    assert files(out) == {
        "out1": "hello world\n",
        "out2": "HELLO WORLD\n",
        "fd3": "hello world\n",
        "fd4": "HELLO WORLD\n",
    }


def test_run_with_two_heredocs_on_stdin_reads_the_last_one(bk: Any) -> None:
    # reference.md "More complex examples may use multiple here-documents": the command and its
    # documents are given to the shell as they are, so POSIX redirection rules apply and the
    # later ``<<B`` replaces ``<<A`` on stdin. The documented example writes two files.
    _, out = export(
        bk,
        """\
FROM busybox AS build
WORKDIR /dest
RUN cat <<A <<B > both
from a
A
from b
B
RUN <<FILE1 cat > file1 && <<FILE2 cat > file2
I am
first
FILE1
I am
second
FILE2

FROM scratch
COPY --from=build /dest /
""",
    )
    assert files(out) == {"both": "from b\n", "file1": "I am\nfirst\n", "file2": "I am\nsecond\n"}


def test_heredoc_indent_is_kept_by_lt_lt_and_stripped_by_lt_lt_dash(bk: Any) -> None:
    # testHeredocIndent
    _, out = export(
        bk,
        """\
FROM busybox AS build
COPY <<EOF /dest/foo-copy
	foo
EOF
COPY <<-EOF /dest/bar-copy
	bar
EOF
RUN <<EOF
echo "
	foo" > /dest/foo-run
EOF
RUN <<-EOF
echo "
	bar" > /dest/bar-run
EOF
RUN <<EOF
#!/bin/sh
echo "
	foo" > /dest/foo2-run
EOF
RUN <<-EOF
#!/bin/sh
echo "
	bar" > /dest/bar2-run
EOF
RUN <<EOF sh > /dest/foo3-run
echo "
	foo"
EOF
RUN <<-EOF sh > /dest/bar3-run
echo "
	bar"
EOF

FROM scratch
COPY --from=build /dest /
""",
    )
    assert files(out) == {
        "foo-copy": "\tfoo\n",
        "foo-run": "\n\tfoo\n",
        "foo2-run": "\n\tfoo\n",
        "foo3-run": "\n\tfoo\n",
        "bar-copy": "bar\n",
        "bar-run": "\nbar\n",
        "bar2-run": "\nbar\n",
        "bar3-run": "\nbar\n",
    }


def test_run_heredoc_with_a_command_runs_that_command(bk: Any) -> None:
    # reference.md "Example: Running a multi-line script" (``RUN <<EOT bash``): the document is
    # the stdin of the named command, not a script for the default shell
    _, out = export(
        bk,
        """\
FROM busybox AS build
RUN <<EOT awk '{ print NR ": " $0 }' > /numbered
first
second
EOT

FROM scratch
COPY --from=build /numbered /
""",
    )
    assert files(out) == {"numbered": "1: first\n2: second\n"}


def test_heredoc_variable_substitution(bk: Any) -> None:
    # testHeredocVarSubstitution: COPY documents are expanded by the frontend unless the
    # delimiter is quoted; RUN documents are scripts, so the shell expands them at run time
    _, out = export(
        bk,
        """\
FROM busybox as build
ARG name=world
COPY <<EOF /dest/c1
Hello ${name}!
EOF
COPY <<'EOF' /dest/c2
Hello ${name}!
EOF
COPY <<"EOF" /dest/c3
Hello ${name}!
EOF
COPY <<EOF /dest/q1
Hello '${name}'!
EOF
COPY <<EOF /dest/q2
Hello "${name}"!
EOF
COPY <<'EOF' /dest/qsingle1
Hello '${name}'!
EOF
COPY <<'EOF' /dest/qsingle2
Hello "${name}"!
EOF
COPY <<"EOF" /dest/qdouble1
Hello '${name}'!
EOF
COPY <<"EOF" /dest/qdouble2
Hello "${name}"!
EOF
RUN <<EOF
greeting="Hello"
echo "${greeting} ${name}!" > /dest/r1
EOF
RUN <<EOF
name="new world"
echo "Hello ${name}!" > /dest/r2
EOF

FROM scratch
COPY --from=build /dest /
""",
    )
    assert files(out) == {
        "c1": "Hello world!\n",
        "c2": "Hello ${name}!\n",
        "c3": "Hello ${name}!\n",
        "q1": "Hello 'world'!\n",
        "q2": 'Hello "world"!\n',
        "qsingle1": "Hello '${name}'!\n",
        "qsingle2": 'Hello "${name}"!\n',
        "qdouble1": "Hello '${name}'!\n",
        "qdouble2": 'Hello "${name}"!\n',
        "r1": "Hello world!\n",
        "r2": "Hello new world!\n",
    }


def test_run_heredoc_quoting_matters_only_when_the_shell_reads_the_document(bk: Any) -> None:
    # convert.go dispatchRun: a document that is the whole command is run as a script ("we
    # ignore the expand option"), so the shell expands it even with a quoted delimiter; a
    # document redirected into a command is passed on verbatim with its delimiter, so the
    # shell's own here-document rules apply and a quoted delimiter disables expansion.
    _, out = export(
        bk,
        """\
FROM busybox AS build
ENV WHO=shell
RUN mkdir /dest
RUN <<'EOF'
echo "script $WHO" > /dest/script-quoted
EOF
RUN cat <<EOF > /dest/cat-unquoted
cat $WHO
EOF
RUN cat <<'EOF' > /dest/cat-quoted
cat $WHO
EOF

FROM scratch
COPY --from=build /dest /
""",
    )
    assert files(out) == {
        "script-quoted": "script shell\n",
        "cat-unquoted": "cat shell\n",
        "cat-quoted": "cat $WHO\n",
    }


def test_copy_heredoc_files_modes_and_owners(bk: Any) -> None:
    # testCopyHeredoc (its ``adduser -D user`` is written out: Debian's busybox has no adduser)
    # (+ reference.md: inline files are 0644, "COPY <<EOF /path (file mode 0644
    # since 1.6)"; several documents into a directory are named after their delimiters)
    dockerfile = """\
FROM busybox AS build
RUN echo "user:x:1000:1000::/home/user:/bin/sh" >> /etc/passwd && echo "user:x:1000:" >> /etc/group
WORKDIR /dest
COPY <<EOF single
single file
EOF
COPY <<EOF <<EOF2 double/
first file
EOF
second file
EOF2
COPY <<a.txt <<b.txt /dest/named/
A
a.txt
B
b.txt
RUN mkdir -p /permfiles
COPY --chmod=777 <<EOF /permfiles/all
dummy content
EOF
COPY --chmod=0644 <<EOF /permfiles/rw
dummy content
EOF
COPY --chown=user:user <<EOF /permfiles/owned
dummy content
EOF
RUN stat -c "%04a" /permfiles/all >> perms && \\
	stat -c "%04a" /permfiles/rw >> perms && \\
	stat -c "%U:%G" /permfiles/owned >> perms && \\
	stat -c "%04a %u:%g" single double/EOF named/a.txt >> perms

FROM scratch
COPY --from=build /dest /
"""
    if bk.single_refuses(dockerfile):  # COPY --chown=user:user (uid 1000)
        return
    _, out = export(bk, dockerfile)
    assert files(out) == {
        "single": "single file\n",
        "double/EOF": "first file\n",
        "double/EOF2": "second file\n",
        "named/a.txt": "A\n",
        "named/b.txt": "B\n",
        "perms": "0777\n0644\nuser:user\n0644 0:0\n0644 0:0\n0644 0:0\n",
    }


def test_copy_heredoc_special_symbols(bk: Any) -> None:
    # testCopyHeredocSpecialSymbols: an unquoted document processes backslash escapes, a quoted
    # one is raw
    _, out = export(
        bk,
        """\
FROM scratch
COPY <<EOF quotefile
"quotes in file"
EOF
COPY <<EOF slashfile1
\\
EOF
COPY <<EOF slashfile2
\\\\
EOF
COPY <<EOF slashfile3
\\$
EOF
COPY <<"EOF" rawslashfile1
\\
EOF
COPY <<"EOF" rawslashfile2
\\\\
EOF
COPY <<"EOF" rawslashfile3
\\$
EOF
""",
    )
    assert files(out) == {
        "quotefile": '"quotes in file"\n',
        "slashfile1": "\n",
        "slashfile2": "\\\n",
        "slashfile3": "$\n",
        "rawslashfile1": "\\\n",
        "rawslashfile2": "\\\\\n",
        "rawslashfile3": "\\$\n",
    }


def test_onbuild_heredoc(bk: Any) -> None:
    # testOnBuildHeredoc: a RUN heredoc as an ONBUILD trigger runs in the child build
    bk.build('FROM busybox\nONBUILD RUN <<EOF\necho "hello world" >> /dest\nEOF\n', tags="base:1")
    _, out = export(bk, "FROM base:1 AS base\nFROM scratch\nCOPY --from=base /dest /dest\n")
    assert files(out) == {"dest": "hello world\n"}


def test_heredoc_steps_are_cached_and_a_document_edit_misses(bk: Any) -> None:
    # the document is part of the op (ExecOp args / the mkfile data): same text hits, new text
    # misses (BuildKit's cache keys, buildkit-semantics.md 1.2)
    dockerfile = "FROM busybox\nRUN <<EOF\necho {v} > /v\nEOF\nCOPY <<EOF /c\n{v}\nEOF\n"
    first = bk.build(dockerfile.format(v="one"))
    assert changed(first) == [
        "[2/3] RUN <<EOF (echo one > /v)",
        "[3/3] COPY <<EOF /c",
    ]
    assert changed(bk.build(dockerfile.format(v="one"))) == []
    assert changed(bk.build(dockerfile.format(v="two"))) == [
        "[2/3] RUN <<EOF (echo two > /v)",
        "[3/3] COPY <<EOF /c",
    ]


# == COPY --link (reference.md "COPY --link"; dockerfile_copy_test.go) ============================

LINK_FILES = {"a.txt": "alpha\n", "dir/b.txt": "beta\n", "dir/sub/c.txt": "gamma\n"}


def _link_dockerfile(link: str) -> str:
    return f"""\
FROM busybox
ARG V=1
RUN echo "$V" > /v
WORKDIR /app
COPY {link} a.txt dir ./
COPY {link} --chown=7:8 a.txt /owned/a.txt
"""


def test_copy_link_gives_the_same_files_as_a_plain_copy(bk: Any) -> None:
    # reference.md: ``COPY --link /foo /bar`` "is equivalent of doing two builds ... and merging
    # all the layers": the final filesystem is the one a plain COPY makes
    bk.write(LINK_FILES)
    if bk.single_refuses(_link_dockerfile("--link")):  # --chown=7:8
        return
    plain_result, plain = export(bk, _link_dockerfile(""), "plain")
    link_result, link = export(bk, _link_dockerfile("--link"), "link")
    assert tree(link) == tree(plain)
    assert files(link / "app") == {"a.txt": "alpha\n", "b.txt": "beta\n", "sub/c.txt": "gamma\n"}
    owned = tree(link)["owned/a.txt"]
    assert (owned.uid, owned.gid) == (7, 8)
    # one layer per COPY either way (the --link copy is a layer of its own, merged on top)
    assert len(link_result.layers) == len(plain_result.layers)


def test_copy_link_is_a_layer_of_its_own(bk: Any) -> None:
    # reference.md: "your source files are copied into an empty destination directory. That
    # directory is turned into a layer that is linked on top of your previous state": the layer
    # holds the copied files and the directories leading to them, nothing of the stage below
    bk.write(LINK_FILES)
    before = bk.build("FROM busybox\nRUN echo 1 > /v\n")
    result = bk.build("FROM busybox\nRUN echo 1 > /v\nCOPY --link a.txt /deep/er/a.txt\n")
    assert len(result.layers) == len(before.layers) + 1
    assert result.layers[:-1] == before.layers
    (diff,) = base.layer_files(bk.root, result)[-1:]
    assert files(diff) == {"deep/er/a.txt": "alpha\n"}
    assert {rel for rel, e in tree(diff).items() if e.kind == "d"} == {"deep", "deep/er"}


def test_copy_link_stays_cached_when_an_earlier_step_changes(bk: Any) -> None:
    # reference.md "Benefits of using --link": the copy "doesn't get invalidated when commands on
    # previous layers are changed"; the layer the previous build made is reused and merged on
    # top of the new layers. BuildKit: the copy runs on llb.Scratch(), so its key does not
    # include the stage below; only the merge (LINK) is redone.
    bk.write(LINK_FILES)
    dockerfile = _link_dockerfile("--link")
    if bk.single_refuses(dockerfile):  # --chown=7:8
        return
    first = bk.build(dockerfile, build_args={"V": "1"})
    second = bk.build(dockerfile, build_args={"V": "2"})
    assert base.status_list(second) == [
        ("[1/5] FROM docker.io/library/busybox:latest", "cached"),
        ('[2/5] RUN echo "2" > /v', "executed"),
        ("[3/5] WORKDIR /app", "executed"),
        ("[4/5] COPY --link a.txt dir ./", "cached"),
        ("[4/5] LINK COPY --link a.txt dir ./", "executed"),
        ("[5/5] COPY --link --chown=7:8 a.txt /owned/a.txt", "cached"),
        ("[5/5] LINK COPY --link --chown=7:8 a.txt /owned/a.txt", "executed"),
    ]
    # the --link layers are the very same snapshots as before, on top of the new RUN layer
    assert second.layers[-2:] == first.layers[-2:]
    assert second.layers[-3] != first.layers[-3]


def test_copy_without_link_reruns_when_an_earlier_step_changes(bk: Any) -> None:
    # the contrast: a plain COPY's key includes the stage it copies onto
    bk.write(LINK_FILES)
    dockerfile = _link_dockerfile("")
    if bk.single_refuses(dockerfile):  # --chown=7:8
        return
    bk.build(dockerfile, build_args={"V": "1"})
    second = bk.build(dockerfile, build_args={"V": "2"})
    copies = [s for s in second.steps if s.name.split("] ", 1)[-1].startswith("COPY")]
    assert [s.status for s in copies] == ["executed", "executed"]


def test_copy_link_with_chmod_is_a_plain_copy(bk: Any) -> None:
    # convert_copy.go: the merge is used only when ``cfg.link && cfg.chmod == ""``; with --chmod
    # the COPY is an ordinary copy onto the stage (so an earlier change re-runs it)
    bk.write(LINK_FILES)
    dockerfile = "FROM busybox\nARG V\nRUN echo $V > /v\nCOPY --link --chmod=0600 a.txt /a.txt\n"
    bk.build(dockerfile, build_args={"V": "1"})
    second = bk.build(dockerfile, build_args={"V": "2"})
    assert changed(second) == [
        "[2/3] RUN echo 2 > /v",
        "[3/3] COPY --link --chmod=0600 a.txt /a.txt",
    ]
    assert not any("LINK" in s.name for s in second.steps)


def test_copy_link_into_workdir_dot_and_empty_dest(bk: Any) -> None:
    # testCopyLinkDotDestDir, testCopyLinkEmptyDestDir
    bk.write({"testfile": "contents0"})
    for dest in (".", "$empty"):
        result = bk.build(
            f"""\
FROM busybox
WORKDIR /var/www
ENV empty=""
COPY --link testfile {dest}
RUN [ "$(cat testfile)" == "contents0" ] && cat /var/www/testfile # {dest}
"""
        )
        assert result.step("[4/4]").logs == b"contents0"


def test_copy_link_does_not_follow_a_symlink_in_the_destination(bk: Any) -> None:
    # reference.md "Incompatibilities with --link=false": the copy cannot read the previous
    # state, so a destination path through a symlink is not followed; "the destination path
    # created with --link will always be a path containing only directories" (the merged layer
    # replaces the symlink with its directory)
    bk.write({"a.txt": "alpha\n"})
    setup = "FROM busybox\nRUN mkdir /real && ln -s /real /via\n"
    _, plain = export(bk, setup + "COPY a.txt /via/a.txt\n", "plain")
    _, link = export(bk, setup + "COPY --link a.txt /via/a.txt\n", "link")
    assert tree(plain)["via"].kind == "l" and files(plain / "real") == {"a.txt": "alpha\n"}
    assert tree(link)["via"].kind == "d" and files(link / "via") == {"a.txt": "alpha\n"}
    assert files(link / "real") == {}


# == COPY --parents (reference.md "COPY --parents"; dockerfile_parents_test.go) ===================


def test_copy_parents_from_the_context(bk: Any) -> None:
    # testCopyParents, and the examples of reference.md "COPY --parents"
    bk.write(
        {
            "foo1/foo2/bar": "testing",
            "foo1/foo2/baz": "testing2",
            "x/a.txt": "xa",
            "y/a.txt": "ya",
            "x/y/b.txt": "xyb",
            "x/y/c.md": "xyc",
            "src/a.txt": "sa",
            "src/x/b.txt": "sxb",
            "src/x/y/c.txt": "sxyc",
            "src/x/y/d.md": "sxyd",
            "one/file": "1",
            "two/file": "2",
            "two/other": "2o",
        }
    )
    _, out = export(
        bk,
        """\
FROM scratch
COPY --parents foo1/foo2/bar /
WORKDIR /test
COPY --parents foo1/foo2/ba* .
COPY ./x/a.txt ./y/a.txt /no_parents/
COPY --parents ./x/a.txt ./y/a.txt /parents/
COPY --parents ./x/./y/*.txt /pivot/
COPY --parents ./src/**/*.txt /globstar/
COPY --parents */file /star/
""",
    )
    assert files(out) == {
        "foo1/foo2/bar": "testing",
        "test/foo1/foo2/bar": "testing",
        "test/foo1/foo2/baz": "testing2",
        "no_parents/a.txt": "ya",  # the later source silently overwrites the earlier one
        "parents/x/a.txt": "xa",
        "parents/y/a.txt": "ya",
        "pivot/y/b.txt": "xyb",
        "globstar/src/a.txt": "sa",
        "globstar/src/x/b.txt": "sxb",
        "globstar/src/x/y/c.txt": "sxyc",
        "star/one/file": "1",
        "star/two/file": "2",
    }


PARENTS_BASE = """\
FROM busybox AS base
WORKDIR /test
RUN <<eot
	set -ex
	mkdir -p a/b/c/d/e
	mkdir -p a/b2/c/d/e
	mkdir -p a/b/c2/d/e
	mkdir -p a/b/c2/d/e2
	touch a/b/c/d/foo
	touch a/b/c/d/e/bay
	touch a/b2/c/d/e/bar
	touch a/b/c2/d/e/baz
	touch a/b/c2/d/e2/baz
eot
"""


@pytest.mark.parametrize(
    ("copy", "expected"),
    [
        # testCopyRelativeParents: target "middle"
        ("/test/a/b/./c/d /out/", {"c/d/foo", "c/d/e/bay"}),
        # "end": a pivot at the end keeps every parent
        ("/test/a/b/c/d/. /out/", {"test/a/b/c/d/foo", "test/a/b/c/d/e/bay"}),
        # "start"
        ("./test/a/b/c/d /out/", {"test/a/b/c/d/foo", "test/a/b/c/d/e/bay"}),
        # "double": the first /./ is the pivot
        ("/test/a/./b/./c /out/", {"b/c/d/foo", "b/c/d/e/bay"}),
        # "wildcard"
        ("/test/a/./*/c /out/", {"b/c/d/foo", "b/c/d/e/bay", "b2/c/d/e/bar"}),
        # "doublewildcard"
        ("/test/a/b*/./c/**/e /out/", {"c/d/e/bay", "c/d/e/bar"}),
        # "doubleinputs"
        (
            "/test/a/b/c*/./d/**/baz /test/a/b*/./c/**/bar /out/",
            {"d/e/baz", "d/e2/baz", "c/d/e/bar"},
        ),
        # testCopyParentsMissingDirectory: "normal" (no pivot: the full path is kept)
        ("/test/a/b/c/d /out/", {"test/a/b/c/d/foo", "test/a/b/c/d/e/bay"}),
        # "wildcard-nonexistent" and "wildcard-afterpivot": nothing matches, /out is still made
        ("/test/a/b3*/c /out/", set()),
        ("/test/a/b/./c3* /out/", set()),
    ],
)
def test_copy_parents_from_a_stage(bk: Any, copy: str, expected: set[str]) -> None:
    # dockerfile_parents_test.go (alpine there, busybox here; the checks are on the exported
    # files instead of ``[ -d … ]`` in a RUN)
    _, out = export(bk, PARENTS_BASE + f"\nFROM scratch\nCOPY --from=base --parents {copy}\n")
    entries = tree(out)
    assert entries["out"].kind == "d"
    assert {rel.removeprefix("out/") for rel, e in entries.items() if e.kind == "f"} == expected


def test_copy_parents_of_a_missing_file_fails(bk: Any) -> None:
    # testCopyParentsMissingDirectory "nonexistentfile": without wildcards the path is required
    with pytest.raises(NbbuildError, match='"/test/nonexistent-file": not found'):
        bk.build(
            PARENTS_BASE
            + "\nFROM scratch\nCOPY --from=base --parents /test/nonexistent-file /out/\n"
        )


# == COPY --exclude (reference.md "COPY --exclude"; exclude_patterns_test.go) =====================

EXCLUDE_FILES = {
    "dir1/file-101.png": "2",
    "dir1/file-102.txt": "3",
    "dir1/file-103.jpeg": "4",
    "dir2/file-201.pdf": "6",
    "dir2/file-202.jpeg": "7",
    "dir2/file-203.png": "8",
    "dir3/file-301.mp3": "9",
    "dir3/file-302.mpeg": "10",
    "dir4/file-401.txt": "11",
}

EXCLUDE_BUILDERS = """\
# ignore all the image files
FROM scratch as builder1
COPY {from_} --exclude=*/*.png --exclude=*/*.jpeg . /1

# ignore all document files
FROM scratch as builder2
COPY {from_} --exclude=*/*.pdf --exclude=*/*.txt . /2

# ignore all mp3 files
FROM scratch as builder3
{add} --exclude=*.mp3 dir3/ /3/

# keep only .mpeg files, using src as a wildcard
FROM scratch as builder4
COPY {from_} --exclude=*.mp3 --exclude=*.jpeg --exclude=*.png --exclude=*.pdf --exclude=*.txt dir* /4/

# keep only txt files
FROM scratch as builder5
{add} --exclude=*.mp* --exclude=*.jpeg --exclude=*.png --exclude=*.pdf dir* /5

# exclude all files
FROM scratch as builder6
{add} --exclude=* dir* /6

FROM scratch
COPY --from=builder1 / /builder1
COPY --from=builder2 / /builder2
COPY --from=builder3 / /builder3
COPY --from=builder4 / /builder4
COPY --from=builder5 / /builder5
COPY --from=builder6 / /builder6
"""

# What testExcludedFilesOnCopy expects (symlinks: file-402 -> file-401.txt, file-403 dangling).
EXCLUDE_EXPECTED = {
    "builder1/1/dir1/file-102.txt": "3",
    "builder1/1/dir2/file-201.pdf": "6",
    "builder1/1/dir3/file-301.mp3": "9",
    "builder1/1/dir3/file-302.mpeg": "10",
    "builder1/1/dir4/file-401.txt": "11",
    "builder1/1/dir4/file-402.txt": "-> file-401.txt",
    "builder1/1/dir4/file-403.txt": "-> file-404.txt",
    "builder2/2/dir1/file-101.png": "2",
    "builder2/2/dir1/file-103.jpeg": "4",
    "builder2/2/dir2/file-202.jpeg": "7",
    "builder2/2/dir2/file-203.png": "8",
    "builder2/2/dir3/file-301.mp3": "9",
    "builder2/2/dir3/file-302.mpeg": "10",
    "builder3/3/file-302.mpeg": "10",
    "builder4/4/file-302.mpeg": "10",
    "builder5/5/file-102.txt": "3",
    "builder5/5/file-401.txt": "11",
    "builder5/5/file-402.txt": "-> file-401.txt",
    "builder5/5/file-403.txt": "-> file-404.txt",
}


def _leaves(out: Path) -> dict[str, str]:
    return {
        rel: ("-> " + e.text if e.kind == "l" else e.text)
        for rel, e in tree(out).items()
        if e.kind != "d"
    }


def test_copy_exclude_from_the_context(bk: Any) -> None:
    # testExcludedFilesOnCopy, first part (a plain context directory)
    bk.write(EXCLUDE_FILES)
    (bk.ctx / "dir4" / "file-402.txt").symlink_to("file-401.txt")
    (bk.ctx / "dir4" / "file-403.txt").symlink_to("file-404.txt")
    _, out = export(bk, EXCLUDE_BUILDERS.format(from_="", add="ADD"))
    assert _leaves(out) == EXCLUDE_EXPECTED
    # "As all files are excluded, the directory must be empty"
    assert list((out / "builder6" / "6").iterdir()) == []


def test_copy_exclude_from_a_stage(bk: Any) -> None:
    # testExcludedFilesOnCopy, second part: the same tree from another stage (BuildKit ADDs it
    # from git; here a stage COPYs the context, then every builder copies --from that stage)
    bk.write(EXCLUDE_FILES)
    (bk.ctx / "dir4" / "file-402.txt").symlink_to("file-401.txt")
    (bk.ctx / "dir4" / "file-403.txt").symlink_to("file-404.txt")
    dockerfile = "FROM scratch AS base\nCOPY . /\n\n" + EXCLUDE_BUILDERS.format(
        from_="--from=base", add="COPY --from=base"
    )
    _, out = export(bk, dockerfile)
    assert _leaves(out) == EXCLUDE_EXPECTED


def test_copy_exclude_directories_and_nested_paths(bk: Any) -> None:
    # reference.md: "--exclude ... follows the same format as <src>" (patterns relative to the
    # source root, matched with filepath.Match; a matched directory is left out with its
    # contents)
    bk.write(
        {
            "app/main.py": "main",
            "app/tests/test_main.py": "test",
            "app/node_modules/x/index.js": "x",
            "app/lib/node_modules/y.js": "y",
            "app/lib/util.py": "util",
            "app/README.md": "readme",
        }
    )
    _, out = export(
        bk,
        """\
FROM scratch
COPY --exclude=tests --exclude=node_modules --exclude=*.md app /a/
COPY --exclude=**/node_modules app /b/
COPY --exclude=lib/* app /c/
""",
    )
    assert files(out / "a") == {
        "main.py": "main",
        "lib/node_modules/y.js": "y",
        "lib/util.py": "util",
    }
    assert files(out / "b") == {
        "main.py": "main",
        "tests/test_main.py": "test",
        "lib/util.py": "util",
        "README.md": "readme",
    }
    assert files(out / "c") == {
        "main.py": "main",
        "tests/test_main.py": "test",
        "node_modules/x/index.js": "x",
        "README.md": "readme",
    }
    assert tree(out)["c/lib"].kind == "d"


def test_copy_exclude_is_part_of_the_cache_key(bk: Any) -> None:
    # buildkit-semantics.md 1.2: include/exclude patterns stay in the FileOp's CacheMap
    bk.write({"a.txt": "a", "b.log": "b"})
    bk.build("FROM busybox\nCOPY . /x/\n")
    result = bk.build("FROM busybox\nCOPY --exclude=*.log . /x/\n")
    assert changed(result) == ["[2/2] COPY --exclude=*.log . /x/"]
    assert changed(bk.build("FROM busybox\nCOPY --exclude=*.log . /x/\n")) == []


# == symbolic --chmod (reference.md "COPY --chmod"; testChmodNonOctal) ============================

CHMOD_INPUT = """\
FROM busybox AS base
RUN <<eot
	set -ex
	mkdir -p /input/d/e /expected
	echo data > /input/file
	chmod 666 /input/file
	mkdir /input/dir
	chmod 124 /input/dir
	echo f > /input/f && chmod 0640 /input/f
	echo x > /input/x && chmod 0750 /input/x
	echo df > /input/d/f && chmod 0600 /input/d/f
	chmod 0700 /input/d /input/d/e
	mkdir -p /input/wrap && cp -a /input/d /input/wrap/d
eot
"""


def test_symbolic_chmod_matches_chmod_1(bk: Any) -> None:
    # testChmodNonOctal: each --chmod result equals what chmod(1) makes of the same input
    cases = [
        ("file", "f1", "go-w", False),
        ("file", "f2", "u=rw,g=r,o=r", False),
        ("file", "f3", "a+X", False),
        ("dir", "d1", "go-w", True),
        ("dir", "d2", "u+rw,g+r,o-x,o+w", True),
        ("dir", "d3", "a+X", True),
    ]
    expected, copies, verify = [], [], []
    for src, dst, mode, is_dir in cases:
        if is_dir:
            expected.append(
                f"RUN mkdir -p /input/dirs/{dst} && cp -a /input/{src} /input/dirs/{dst}/{dst}"
            )
            expected.append(
                f"RUN cp -a /input/dirs/{dst}/. /expected/ && chmod {mode} /expected/{dst}"
            )
            copies.append(f"COPY --from=base --chmod={mode} /input/dirs/{dst} /")
        else:
            expected.append(
                f"RUN cp -a /input/{src} /expected/{dst} && chmod {mode} /expected/{dst}"
            )
            copies.append(f"COPY --from=base --chmod={mode} /input/{src} /{dst}")
        verify.append(
            f'RUN [ "$(stat -c %A /actual/{dst})" = "$(stat -c %A /expected/{dst})" ] && '
            f"stat -c '%n %A' /actual/{dst}"
        )
    dockerfile = (
        CHMOD_INPUT
        + "\n".join(expected)
        + "\n\nFROM scratch AS result\n"
        + "\n".join(copies)
        + "\n\nFROM base\nCOPY --from=result / /actual/\n"
        + "\n".join(verify)
        + "\n"
    )
    result = bk.build(dockerfile)
    logs = [s.logs.decode() for s in result.steps if "stat -c '%n %A' /actual/" in s.name]
    assert logs == [
        "/actual/f1 -rw-r--r--\n",
        "/actual/f2 -rw-r--r--\n",
        "/actual/f3 -rw-rw-rw-\n",
        "/actual/d1 d--x---r--\n",
        "/actual/d2 drwxrw-rw-\n",
        "/actual/d3 d--x-wxr-x\n",
    ]


def test_symbolic_chmod_on_files_and_directory_trees(bk: Any) -> None:
    # reference.md "COPY --chmod": ``u=rwX,go=rX`` "sets directories to 755 and files to 644,
    # while preserving the executable bit on files that already have it"; the mode applies to
    # every copied entry. Symbolic modes are applied as chmod(1)/setmode(3) with no umask.
    _, out = export(
        bk,
        CHMOD_INPUT
        + """
FROM scratch
COPY --from=base --chmod=u=rwX,go=rX /input/f /input/x /rx/
COPY --from=base --chmod=u=rwX,go=rX /input/wrap /rx/
COPY --from=base --chmod=+x /input/f /input/x /plusx/
COPY --from=base --chmod=+x /input/wrap /plusx/
COPY --from=base --chmod=a-w /input/f /input/x /nowrite/
COPY --from=base --chmod=a-w /input/wrap /nowrite/
COPY --from=base --chmod=g=u /input/f /gu/
""",
    )
    modes = {rel: oct(e.mode) for rel, e in tree(out).items() if "/" in rel}
    assert modes == {
        "rx/f": "0o644",
        "rx/x": "0o755",
        "rx/d": "0o755",
        "rx/d/f": "0o644",
        "rx/d/e": "0o755",
        "plusx/f": "0o751",
        "plusx/x": "0o751",
        "plusx/d": "0o711",
        "plusx/d/f": "0o711",
        "plusx/d/e": "0o711",
        "nowrite/f": "0o440",
        "nowrite/x": "0o550",
        "nowrite/d": "0o500",
        "nowrite/d/f": "0o400",
        "nowrite/d/e": "0o500",
        "gu/f": "0o660",
    }


def test_invalid_chmod_is_a_dockerfile_error(bk: Any) -> None:
    # testCopyInvalidChmod / testAddInvalidChmod: a numeric-looking value keeps the octal message
    bk.write({"foo": "foo-contents"})
    for value in ("64a", "10000"):
        with pytest.raises(DockerfileError) as info:
            bk.build(f"FROM scratch\nCOPY --chmod={value} foo /\n")
        assert (
            f"invalid chmod parameter: '{value}'. it should be octal string and between 0 and "
            "07777" in str(info.value)
        )


# == --no-cache-filter (buildkit-semantics.md 1.7; dockerfile_cache_test.go testNoCache) ==========

NO_CACHE = """\
FROM busybox AS s0
RUN cat /dev/urandom | head -c 100 | sha256sum | tee unique
FROM busybox AS s1
RUN cat /dev/urandom | head -c 100 | sha256sum | tee unique2
FROM scratch
COPY --from=s0 unique /
COPY --from=s1 unique2 /
"""


def _no_cache_runs(bk: Any) -> list[tuple[Any, dict[str, str]]]:
    runs = []
    options: list[tuple[str, dict[str, Any]]] = [
        ("one", {}),
        ("two", {"no_cache": True}),
        ("three", {"no_cache_filter": ("s1",)}),
        ("four", {}),
    ]
    for name, kw in options:
        result, out = export(bk, NO_CACHE, name, **kw)
        runs.append((result, files(out)))
    return runs


def _steps(result: Any) -> list[tuple[str, str]]:
    """(name, status) of the numbered steps, without FROM (one vertex for every stage that
    starts from the same image)."""
    return [(n, s) for n, s in base.status_list(result) if "] FROM " not in n]


def test_no_cache_and_no_cache_filter_statuses(bk: Any) -> None:
    # testNoCache: no-cache="" re-runs everything; no-cache="s1" re-runs s1 only, s0 is cached
    # with the result the no-cache build saved; afterwards a normal build is all cached
    (_, one), (_, two), (filtered, three), (again, _) = _no_cache_runs(bk)
    assert one["unique"] != two["unique"] and one["unique2"] != two["unique2"]
    assert three["unique"] == two["unique"]  # s0: the latest result of its key
    assert _steps(filtered) == [
        ("[s0 2/2] RUN cat /dev/urandom | head -c 100 | sha256sum | tee unique", "cached"),
        ("[s1 2/2] RUN cat /dev/urandom | head -c 100 | sha256sum | tee unique2", "executed"),
        ("[stage-2 1/2] COPY --from=s0 unique /", "cached"),
        ("[stage-2 2/2] COPY --from=s1 unique2 /", "executed"),
    ]
    assert {status for _, status in base.status_list(again)} == {"cached"}


def test_no_cache_filter_output_is_the_new_result_and_is_saved(bk: Any) -> None:
    # testNoCache: ``require.NotEqual(unique2Dir1, unique2Dir3)`` - the s1 that re-ran is what
    # the image contains; buildkit-semantics.md 1.7: "the result is still saved, so the next
    # normal build reuses it"
    (_, one), (_, two), (_, three), (_, four) = _no_cache_runs(bk)
    assert three["unique2"] not in (one["unique2"], two["unique2"])
    assert four == three


def test_no_cache_filter_reruns_copy_and_run_of_the_named_stage_only(bk: Any) -> None:
    # buildkit-semantics.md 1.7: in the named stages every RUN and COPY/ADD is IgnoreCache (FROM
    # resolution is not); other stages stay cached; the consumer of an unchanged result
    # matches by content
    bk.write({"src.txt": "source\n"})
    dockerfile = """\
FROM busybox AS deps
RUN echo deps > /deps
FROM busybox AS app
WORKDIR /w
COPY src.txt .
COPY --from=deps /deps .
RUN cat src.txt deps > out
FROM busybox
COPY --from=app /w/out /out
"""
    bk.build(dockerfile)
    result = bk.build(dockerfile, no_cache_filter=("APP",))  # stage names are case-insensitive
    assert _steps(result) == [
        ("[deps 2/2] RUN echo deps > /deps", "cached"),
        # convert.go dispatchWorkdir: the WORKDIR mkdir is not marked IgnoreCache
        ("[app 2/5] WORKDIR /w", "cached"),
        ("[app 3/5] COPY src.txt .", "executed"),
        ("[app 4/5] COPY --from=deps /deps .", "executed"),
        ("[app 5/5] RUN cat src.txt deps > out", "executed"),
        # same bytes: matched by content (the re-run stage's keys are not propagated)
        ("[stage-2 2/2] COPY --from=app /w/out /out", "cached"),
    ]
    assert {s for _, s in base.status_list(bk.build(dockerfile))} == {"cached"}


# == SOURCE_DATE_EPOCH (docs/build-repro.md; dockerfile_source_date_epoch_test.go) ================

EPOCH = 1673354096  # 2023-01-10T12:34:56Z, the epoch of testReproSourceDateEpoch
EPOCH_TEXT = "2023-01-10T12:34:56Z"


def _oci(path: Path) -> dict[str, Any]:
    """index, manifest, config and ``{layer digest: {name: mtime}}`` of an OCI archive."""
    import io
    import json
    import tarfile

    with tarfile.open(path) as tar:

        def blob(digest: str) -> bytes:
            f = tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
            assert f is not None
            return f.read()

        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        layers = {}
        for desc in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(blob(desc["digest"]))) as layer:
                layers[desc["digest"]] = {m.name: m.mtime for m in layer.getmembers()}
    return {"index": index, "manifest": manifest, "config": config, "layers": layers}


def test_source_date_epoch_sets_created_and_history_times(bk: Any) -> None:
    # testSourceDateEpochWithoutExporter: created and every history entry are the epoch
    bk.write({"foo": "foo"})
    dest = bk.tmp / "o.tar"
    bk.build(
        "FROM scratch\nENTRYPOINT foo bar\nCOPY foo .\n",
        build_args={"SOURCE_DATE_EPOCH": str(EPOCH)},
        outputs=[f"type=oci,dest={dest}"],
    )
    config = _oci(dest)["config"]
    assert config["created"] == EPOCH_TEXT
    assert [h["created"] for h in config["history"]] == [EPOCH_TEXT, EPOCH_TEXT]


def test_source_date_epoch_clamps_newer_file_times_in_new_layers(bk: Any) -> None:
    # testReproSourceDateEpoch "Basic" (rewrite-timestamp): times after the epoch become the
    # epoch, older times are kept; base layers are not rewritten
    dest = bk.tmp / "o.tar"
    bk.build(
        """\
FROM busybox
RUN touch /foo
RUN touch -d '2010-01-01 12:34:56' /foo-2010
RUN touch -d '2030-01-01 12:34:56' /foo-2030
RUN <<EOF
#!/bin/sh
mkdir -p /dir && touch -d '2010-01-01 12:34:56' /dir/old
EOF
COPY --link <<EOF /linked
linked
EOF
""",
        build_args={"SOURCE_DATE_EPOCH": str(EPOCH)},
        outputs=[f"type=oci,dest={dest}"],
    )
    oci = _oci(dest)
    base_layer, *new = [oci["layers"][d["digest"]] for d in oci["manifest"]["layers"]]
    assert max(base_layer.values()) > 0
    names: dict[str, int] = {}
    for layer in new:
        assert all(t <= EPOCH for t in layer.values()), layer
        names.update(layer)
    assert names["foo"] == EPOCH
    assert names["foo-2010"] == 1262349296  # 2010-01-01T12:34:56Z: kept
    assert names["foo-2030"] == EPOCH
    assert names["dir/old"] == 1262349296
    assert names["linked"] == EPOCH


def test_source_date_epoch_sets_every_time_in_local_and_tar_outputs(bk: Any) -> None:
    # docs/build-repro.md: the value is used for "the timestamp of the files exported with the
    # local exporter / the tar exporter" (exporter/local/fs.go: ModTime = epoch for each entry)
    import tarfile

    out, dest = bk.tmp / "local", bk.tmp / "fs.tar"
    bk.build(
        "FROM busybox\nRUN touch -d '2010-01-01 12:34:56' /old && touch /new\n",
        build_args={"SOURCE_DATE_EPOCH": str(EPOCH)},
        outputs=[f"type=local,dest={out}", f"type=tar,dest={dest}"],
    )
    for rel in ("old", "new", "bin", "bin/busybox", "etc/passwd"):
        assert (out / rel).lstat().st_mtime == EPOCH, rel
    with tarfile.open(dest) as tar:
        assert {m.mtime for m in tar.getmembers()} == {EPOCH}


def test_source_date_epoch_keeps_the_base_image_history_times(bk: Any) -> None:
    # testReproSourceDateEpoch: "Image history from the base config must remain immutable"
    # (exporter/containerimage/writer.go patchImageConfig, moby/buildkit#4614): entries equal to
    # the base image's keep their time even when it is newer than the epoch
    import json

    inspect = bk.cli("image", "inspect", "busybox:latest")
    assert inspect.code == 0, inspect.stderr
    base_history = json.loads(inspect.stdout)["history"]
    assert base_history and all(h["created"] > "2001" for h in base_history)
    dest = bk.tmp / "o.tar"
    bk.build(
        "FROM busybox\nRUN echo hi > /hi\n",
        build_args={"SOURCE_DATE_EPOCH": "946684800"},  # 2000-01-01T00:00:00Z, before the base
        outputs=[f"type=oci,dest={dest}"],
    )
    config = _oci(dest)["config"]
    history = config["history"]
    assert [h["created"] for h in history[: len(base_history)]] == [
        h["created"] for h in base_history
    ]
    assert [h["created"] for h in history[len(base_history) :]] == ["2000-01-01T00:00:00Z"]
    assert config["created"] == "2000-01-01T00:00:00Z"


def test_source_date_epoch_gives_one_image_id_from_two_cold_stores(bk: Any) -> None:
    # testReproSourceDateEpoch: the same Dockerfile and epoch give the same digest (here: two
    # empty stores, features of this file included)
    bk.write({"a.txt": "a\n", "dir/b.txt": "b\n", "dir/c.log": "c\n"})
    dockerfile = """\
FROM busybox AS build
RUN <<EOF
#!/bin/sh
mkdir -p /out && date > /out/stamp && rm /out/stamp && echo built > /out/built
EOF
FROM busybox
COPY --link --from=build /out /out
COPY --parents --exclude=*.log ./dir/* /p/
COPY --chmod=u=rwX,go=rX a.txt /a.txt
COPY <<EOF /inline
inline
EOF
"""
    ids, digests = [], []
    for name in ("a", "b"):
        dest = bk.tmp / f"{name}.tar"
        result = bk.build(
            dockerfile,
            root=bk.new_root(f"root-{name}"),
            build_args={"SOURCE_DATE_EPOCH": str(EPOCH)},
            outputs=[f"type=oci,dest={dest}"],
        )
        ids.append(result.image_id)
        digests.append(_oci(dest)["index"]["manifests"][0]["digest"])
    assert ids[0] == ids[1] and ids[0]
    assert digests[0] == digests[1]


def test_source_date_epoch_default_from_the_dockerfile(bk: Any) -> None:
    # testSourceDateEpochDockerfileDefault / ...DefaultOverride; docs/build-repro.md: "When the
    # caller does not pass SOURCE_DATE_EPOCH, the Dockerfile may define a default in the global
    # scope"
    bk.write({"foo": "foo"})
    dockerfile = f"ARG SOURCE_DATE_EPOCH={EPOCH}\nFROM scratch\nCOPY foo .\n"
    dest = bk.tmp / "default.tar"
    bk.build(dockerfile, outputs=[f"type=oci,dest={dest}"])
    oci = _oci(dest)
    assert oci["config"]["created"] == EPOCH_TEXT
    assert set(next(iter(oci["layers"].values())).values()) == {EPOCH}
    dest = bk.tmp / "override.tar"
    bk.build(
        dockerfile,
        build_args={"SOURCE_DATE_EPOCH": str(EPOCH + 1)},
        outputs=[f"type=oci,dest={dest}"],
    )
    assert _oci(dest)["config"]["created"] == "2023-01-10T12:34:57Z"


# == ADD <url> --checksum (reference.md "ADD --checksum", "Adding files from a URL";
#    dockerfile_add_test.go testAddChecksum, testDockerfileADDFromURL) ==============================


def _sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_add_url_with_matching_checksum(bk: Any, http_server: Any) -> None:
    # testAddChecksum "Valid" and "DigestFromEnv"; reference.md: "the destination will have
    # permissions of 600" and the mtime comes from Last-Modified
    modified = 1_600_000_000
    url = http_server.serve("/foo", b"content1", last_modified=modified)
    _, out = export(
        bk,
        f"""\
FROM busybox
ADD --checksum={_sha256(b"content1")} {url} /tmp/foo
ENV DIGEST={_sha256(b"content1")}
ENV LINK={url}
ADD --checksum=${{DIGEST}} ${{LINK}} /tmp/env
ADD --checksum={_sha256(b"content1")} {url} /dest/
""",
    )
    entries = tree(out)
    for rel in ("tmp/foo", "tmp/env", "dest/foo"):
        assert entries[rel].data == b"content1"
        assert (entries[rel].mode, entries[rel].uid, entries[rel].gid) == (0o600, 0, 0)
        assert (out / rel).stat().st_mtime == modified


def test_add_url_with_mismatching_checksum_fails(bk: Any, http_server: Any) -> None:
    # testAddChecksum "DigestMismatch"; source/http/source.go: "digest mismatch for <url>: <got>
    # (expected: <want>)"
    url = http_server.serve("/foo", b"content1")
    with pytest.raises(NbbuildError) as info:
        bk.build(f"FROM busybox\nADD --checksum={_sha256(b'')} {url} /tmp/foo\n")
    text = str(info.value)
    assert "digest mismatch" in text
    assert _sha256(b"content1") in text and _sha256(b"") in text


@pytest.mark.parametrize(
    ("checksum", "message"),
    [
        # testAddChecksum "DigestWithKnownButUnsupportedAlgoName", "DigestWithUnknownAlgoName",
        # "DigestWithoutAlgoName" (go-digest's digest.Parse errors)
        ("md5:7e55db001d319a94b0b713529a756623", "unsupported digest algorithm"),
        ("unknown:" + "a" * 64, "unsupported digest algorithm"),
        ("a" * 64, "invalid checksum digest format"),
    ],
)
def test_add_url_with_an_invalid_checksum_is_refused(
    bk: Any, http_server: Any, checksum: str, message: str
) -> None:
    url = http_server.serve("/foo", b"content1")
    with pytest.raises(NbbuildError, match=message):
        bk.build(f"FROM busybox\nADD --checksum={checksum} {url} /tmp/foo\n")
    assert http_server.requests == []  # refused before anything is downloaded


def test_add_checksum_of_a_local_file_is_refused(bk: Any) -> None:
    # testAddChecksum "NonHTTPSource"; convert_copy.go; and COPY has no --checksum at all
    bk.write({"foo": "local file"})
    with pytest.raises(DockerfileError, match="checksum requires HTTP\\(S\\) or Git sources"):
        bk.build(f"FROM busybox\nADD --checksum={_sha256(b'local file')} foo /tmp/foo\n")


def test_add_url_with_checksum_is_keyed_without_downloading(bk: Any, http_server: Any) -> None:
    # source/http/source.go resolveMetadataStatic: with a checksum the source's key is known
    # up front, so a cached rebuild does not contact the server
    url = http_server.serve("/foo", b"content1")
    dockerfile = f"FROM busybox\nADD --checksum={_sha256(b'content1')} {url} /tmp/foo\n"
    bk.build(dockerfile)
    assert [r for r in http_server.requests if r.startswith("GET")] == ["GET /foo"]
    http_server.requests.clear()
    again = bk.build(dockerfile)
    assert changed(again) == []
    assert http_server.requests == []


# == ADD <git> (reference.md "Adding files from a Git repository", "ADD --keep-git-dir",
#    "ADD --checksum"; dockerfile_addgit_test.go) ================================================
#
# BuildKit takes no local path or file:// URL as a git source (dfgitutil.ParseGitRef: http(s)
# URLs ending in .git, git://, ssh://, scp-like user@host:path); its own tests serve a
# repository over loopback HTTP with git's dumb protocol, and so do these.


def _tagged_repo(git_server: Any) -> tuple[Any, str, dict[str, str]]:
    repo = git_server.repo("repo")
    shas = {}
    for tag in ("v0.0.1", "v0.0.2", "v0.0.3"):
        shas[tag] = h.commit(
            repo,
            {"foo": f"foo of {tag}\n", "bin/run.sh*": "#!/bin/sh\necho run\n", "sub/x": "x\n"},
            tag,
            tag=tag,
        )
    return repo, git_server.url(repo), shas


def test_add_git_by_tag_commit_and_subdir(bk: Any, git_server: Any) -> None:
    # testAddGit "Basic case" and the ADD-by-commit case; reference.md: files 644, executables
    # 755, directories 755; "#ref:subdir" picks a directory; no .git by default
    _, url, shas = _tagged_repo(git_server)
    _, out = export(
        bk,
        f"""\
FROM scratch
ADD {url}#v0.0.1 /x
ADD {url}#{shas["v0.0.3"]} /commit
ADD {url}#v0.0.2:sub /sub
""",
    )
    entries = tree(out)
    assert files(out / "x") == {
        "foo": "foo of v0.0.1\n",
        "bin/run.sh": "#!/bin/sh\necho run\n",
        "sub/x": "x\n",
    }
    assert [entries[r].mode for r in ("x", "x/foo", "x/bin", "x/bin/run.sh")] == [
        0o755,
        0o644,
        0o755,
        0o755,
    ]
    assert (out / "commit" / "foo").read_text() == "foo of v0.0.3\n"
    assert files(out / "sub") == {"x": "x\n"}
    assert not (out / "x" / ".git").exists() and not (out / "commit" / ".git").exists()


def test_add_git_keep_git_dir_checksum_and_chown(bk: Any, git_server: Any) -> None:
    # testAddGit "Complicated case": --keep-git-dir=true --chown=4242:8484 --checksum=<commit>
    # of the tag; the checkout is complete (.git kept, HEAD at the commit)
    _, url, shas = _tagged_repo(git_server)
    dockerfile = f"""\
FROM busybox
ARG REPO="{url}"
ARG TAG="v0.0.2"
ADD --keep-git-dir=true --chown=4242:8484 --checksum={shas["v0.0.2"]} ${{REPO}}#${{TAG}} /buildkit-chowned
RUN cd /buildkit-chowned && [ "$(cat foo)" = "foo of v0.0.2" ] && \\
  [ "$(stat -c %u:%g foo)" = "4242:8484" ] && [ -d .git ] && cat .git/HEAD
ADD --checksum={shas["v0.0.3"][:7]} ${{REPO}}#v0.0.3 /nogitdir
"""
    if bk.single_refuses(dockerfile):  # --chown=4242:8484
        return
    result, out = export(bk, dockerfile)
    # source/git/source.go checkout: ``git checkout FETCH_HEAD``, a detached HEAD at the commit
    assert result.step("[3/4]").logs.decode() == shas["v0.0.2"] + "\n"
    entries = tree(out)
    assert (entries["buildkit-chowned/.git"].uid, entries["buildkit-chowned/.git"].gid) == (
        4242,
        8484,
    )
    assert files(out / "nogitdir") == {
        "foo": "foo of v0.0.3\n",
        "bin/run.sh": "#!/bin/sh\necho run\n",
        "sub/x": "x\n",
    }


def test_add_git_with_a_mismatching_checksum_fails(bk: Any, git_server: Any) -> None:
    # testAddGit "checksum does not match": "expected checksum to match"
    _, url, shas = _tagged_repo(git_server)
    with pytest.raises(NbbuildError) as info:
        bk.build(f"FROM busybox\nADD --checksum={shas['v0.0.2']} {url}#v0.0.3 /faildir\n")
    assert "expected checksum to match" in str(info.value)


def test_add_git_with_a_garbage_checksum_fails(bk: Any, git_server: Any) -> None:
    # testAddGit "checksum is garbage": "invalid checksum ... expected hex commit hash"
    _, url, _ = _tagged_repo(git_server)
    with pytest.raises(NbbuildError) as info:
        bk.build(f"FROM busybox\nADD --checksum=foobar {url}#v0.0.3 /faildir\n")
    assert "invalid checksum" in str(info.value)
    assert "expected hex commit hash" in str(info.value)


def test_add_git_checksum_does_not_change_the_cache_key(bk: Any, git_server: Any) -> None:
    # testAddGitChecksumCache: the same tag with and without --checksum hits the same cache
    _, url, shas = _tagged_repo(git_server)
    dockerfile = """\
FROM busybox AS src
ADD --keep-git-dir {flag}{url}#v0.0.2 /repo
RUN head -c 16 /dev/urandom | base64 > /repo/unique.txt

FROM scratch
COPY --from=src /repo/unique.txt /
"""
    _, first = export(bk, dockerfile.format(flag="", url=url), "first")
    result, second = export(
        bk, dockerfile.format(flag=f"--checksum={shas['v0.0.2']} ", url=url), "second"
    )
    assert files(second) == files(first)
    assert [s for s in changed(result) if "RUN" in s] == []


def test_add_git_new_commit_on_the_branch_misses(bk: Any, git_server: Any) -> None:
    # buildkit-semantics.md 1.2: the git source key is the resolved commit, so a new commit on
    # the branch misses and an unchanged branch hits
    repo = git_server.repo("moving")
    h.commit(repo, {"f": "one\n"}, "one")
    url = git_server.url(repo)
    dockerfile = f"FROM busybox\nADD {url}#main /src\nRUN cat /src/f\n"
    first = bk.build(dockerfile)
    assert first.step("[3/3]").logs == b"one\n"
    assert changed(bk.build(dockerfile)) == []
    h.commit(repo, {"f": "two\n"}, "two")
    third = bk.build(dockerfile)
    assert third.step("[3/3]").logs == b"two\n"


def test_add_git_over_dumb_http(bk: Any, git_server: Any) -> None:
    # dockerfile_addgit_test.go serves the repository with http.FileServer (git's dumb HTTP
    # protocol, which has no shallow fetches); BuildKit's git CLI wrapper retries without
    # --depth when git says so
    _, _, _ = _tagged_repo(git_server)
    url = git_server.url(git_server.root / "repo", dumb=True)
    _, out = export(bk, f"FROM scratch\nADD {url}#v0.0.1 /x\n")
    assert (out / "x" / "foo").read_text() == "foo of v0.0.1\n"


# == RUN --security=insecure (reference.md "RUN --security"; dockerfile_runsecurity_test.go) ======


def test_security_insecure_needs_the_entitlement(bk: Any) -> None:
    # testRunSecurityInsecure with the entitlement denied: "entitlement security.insecure is not
    # allowed"; buildx: --allow security.insecure
    with pytest.raises(EntitlementError) as info:
        bk.build("FROM busybox\nRUN --security=insecure cat /proc/self/status\n")
    text = str(info.value)
    assert "security.insecure is not allowed" in text
    assert "--allow security.insecure" in text


def test_security_sandbox_is_the_default_and_a_no_op(bk: Any) -> None:
    # testRunSecuritySandbox / testRunSecurityDefault: the sandbox's bounding set is BuildKit's
    # default capability set (0xa80425fb), with or without --security=sandbox
    result = bk.build(
        """\
FROM busybox
RUN --security=sandbox grep CapBnd /proc/self/status
RUN grep CapBnd /proc/self/status
"""
    )
    assert result.step("[2/3]").logs == b"CapBnd:\t00000000a80425fb\n"
    assert result.step("[3/3]").logs == b"CapBnd:\t00000000a80425fb\n"


def test_security_insecure_is_refused_before_any_step_runs(bk: Any) -> None:
    # solver/llbsolver/vertex.go ValidateEntitlements is a LoadOpt: every op of the definition
    # is checked when it is loaded, before anything is solved, so nothing of the refused build
    # is run (or cached)
    with pytest.raises(EntitlementError):
        bk.build("FROM busybox\nRUN echo a > /a\nRUN --security=insecure true\n")
    assert changed(bk.build("FROM busybox\nRUN echo a > /a\n")) == ["[2/2] RUN echo a > /a"]


def test_entitlement_is_required_even_when_the_step_is_cached(bk: Any) -> None:
    # ValidateEntitlements checks the definition, whatever the cache holds: a step built once
    # with --allow network.host cannot be reused by a build without it (the same holds for
    # security.insecure)
    dockerfile = "FROM busybox\nRUN --network=host echo hi\n"
    bk.build(dockerfile, allow=frozenset({"network.host"}))
    with pytest.raises(EntitlementError):
        bk.build(dockerfile)


def test_security_insecure_with_the_entitlement_has_every_capability(bk: Any) -> None:
    # testRunSecurityInsecure with the entitlement granted: the bounding set has all
    # capabilities (reference.md: "equivalent to running docker run --privileged"), and the next
    # RUN is sandboxed again
    # Every capability this host lets us grant: BuildKit's test expects all 38 low bits; a
    # sandbox that dropped some from our own bounding set cannot give them to a container.
    # Rootless, the container's capabilities are those of a new user namespace: all of them,
    # whatever the bounding set outside.
    with open("/proc/self/status", encoding="ascii") as status:
        own = next(int(ln.split()[1], 16) for ln in status if ln.startswith("CapBnd:"))
    if base.rootless():
        own = 0x3FFFFFFFFF
    expected = f"{own & 0x3FFFFFFFFF:x}"
    result = bk.build(
        f"""\
FROM busybox
RUN --security=insecure [ "$(printf '%x' $(( $(cat /proc/self/status | grep CapBnd | cut -f 2 | sed s#^#0x#) & 0x3fffffffff)))" == "{expected}" ]
RUN [ "$(cat /proc/self/status | grep CapBnd)" == "CapBnd:	00000000a80425fb" ]
""",
        allow=frozenset({"security.insecure"}),
    )
    assert changed(result) == [s.name for s in result.steps if s.step and s.step > 1]


# == ADD --unpack (reference.md "ADD --unpack"; Dockerfile 1.17) ==================================


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_add_unpack_flag(bk: Any, http_server: Any) -> None:
    # reference.md: "Local tar archives are unpacked by default, whereas remote tar archives
    # (where src is a URL) are downloaded without unpacking"; --unpack=true/false overrides
    archive = _tar_bytes({"inner/file.txt": b"inside\n"})
    bk.write({"local.tar.gz": archive})
    url = http_server.serve("/remote.tar.gz", archive)
    _, out = export(
        bk,
        f"""\
FROM scratch
ADD local.tar.gz /local-default/
ADD --unpack=false local.tar.gz /local-packed/
ADD {url} /remote-default/
ADD --unpack=true {url} /remote-unpacked/
ADD --link --unpack=true {url} /remote-linked/
""",
    )
    entries = tree(out)
    assert files(out / "local-default") == {"inner/file.txt": "inside\n"}
    assert entries["local-packed/local.tar.gz"].data == archive
    assert entries["remote-default/remote.tar.gz"].data == archive
    assert files(out / "remote-unpacked") == {"inner/file.txt": "inside\n"}
    assert files(out / "remote-linked") == {"inner/file.txt": "inside\n"}
