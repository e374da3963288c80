"""Tests for the Dockerfile parser, against BuildKit's own parser test data and tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.errors import DockerfileError
from engine.frontend.parser import (
    Directives,
    Heredoc,
    Node,
    _heredoc_from_word,
    _heredocs_from_line,
    dump,
    dump_file,
    go_quote,
    parse,
)

REPO = Path(__file__).resolve().parents[3]
REFERENCE = REPO.parent / "shared" / "reference-data"
PARSER_DATA = REFERENCE / "buildkit" / "frontend" / "dockerfile" / "parser"
REAL_DOCKERFILES = REFERENCE / "real-dockerfiles"
MISSING = "<reference data missing>"


def _subdirs(path: Path) -> list[str]:
    # A missing data directory must fail the test, not skip it: parametrize with a marker
    # value that the test turns into a failure.
    if not path.is_dir():
        return [MISSING]
    names = sorted(p.name for p in path.iterdir() if p.is_dir())
    return names or [MISSING]


def _require(path: Path) -> None:
    if path.name == MISSING or not path.exists():
        pytest.fail(f"reference data missing: {path.parent if path.name == MISSING else path}")


def _read(path: Path) -> str:
    # newline="" keeps \r\n so the parser sees the bytes BuildKit sees.
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as f:
        return f.read()


def _real_dockerfiles() -> list[str]:
    if not REAL_DOCKERFILES.is_dir():
        return [MISSING]
    found = sorted(
        str(p.relative_to(REAL_DOCKERFILES))
        for p in REAL_DOCKERFILES.rglob("*")
        if p.is_file()
        and (
            p.name.startswith("Dockerfile")
            or p.name.endswith("_Dockerfile")
            or p.name.endswith(".template")
            or p.name.endswith(".dockerfile")
        )
    )
    return found or [MISSING]


# ------------------------------------------------------------------------------------------
# 1-3: BuildKit's parser test data.


@pytest.mark.reference
@pytest.mark.parametrize("case", _subdirs(PARSER_DATA / "testfiles"))
def test_testfiles_dump_matches_buildkit_result(case: str) -> None:
    directory = PARSER_DATA / "testfiles" / case
    _require(directory)
    result = parse(_read(directory / "Dockerfile"))
    assert dump_file(result) + "\n" == _read(directory / "result")


@pytest.mark.reference
@pytest.mark.parametrize("case", _subdirs(PARSER_DATA / "testfiles-negative"))
def test_negative_testfiles_are_rejected(case: str) -> None:
    directory = PARSER_DATA / "testfiles-negative" / case
    _require(directory)
    with pytest.raises(DockerfileError):
        parse(_read(directory / "Dockerfile"))


@pytest.mark.reference
def test_negative_testfiles_wording_and_lines() -> None:
    negative = PARSER_DATA / "testfiles-negative"
    _require(negative)
    expected = {
        "empty_dockerfile": ("file with no instructions", None),
        "only_comments": ("file with no instructions", 3),
        "env_no_value": ("ENV must have two arguments", 3),
        "shykes-nested-json": (
            "when using JSON array syntax, arrays must be comprised of strings only",
            1,
        ),
    }
    for case, (message, line) in expected.items():
        with pytest.raises(DockerfileError) as info:
            parse(_read(negative / case / "Dockerfile"))
        assert (info.value.message, info.value.line) == (message, line), case


@pytest.mark.reference
def test_testfile_line_numbers() -> None:
    path = PARSER_DATA / "testfile-line" / "Dockerfile"
    _require(path)
    result = parse(_read(path))
    assert [(n.start_line, n.end_line) for n in result.nodes] == [(5, 5), (11, 12), (17, 31)]
    # The directive on line 1 is "# ESCAPE=\": the default, so it changes nothing.
    assert result.directives.escape == "\\"


# ------------------------------------------------------------------------------------------
# 4: heredocs, ported from BuildKit's parser_heredoc_test.go.

HEREDOC_DOCKERFILE = """
FROM alpine:3.6

ENV NAME=me

RUN ls

USER <<INVALID
INVALID

RUN <<EMPTY
EMPTY

RUN 3<<EMPTY2
EMPTY2

RUN "<<NOHEREDOC"

RUN <<INDENT
\tfoo
\tbar
INDENT

RUN <<-UNINDENT
\tbaz
\tquux
UNINDENT

RUN <<-UNINDENT2
\tbaz
\tquux
\tUNINDENT2

RUN <<-EXPAND
\texpand $NAME
EXPAND

RUN <<-'NOEXPAND'
\tdon't expand $NAME
NOEXPAND

RUN <<COPY
echo hello world
echo foo bar
COPY

RUN <<COMMENT
# internal comment
echo hello world
echo foo bar # trailing comment
COMMENT

RUN --mount=type=cache,target=/foo <<MOUNT
echo hello
MOUNT

COPY <<FILE1 <<FILE2 /dest
content 1
FILE1
content 2
FILE2

COPY <<EOF /quotes
"foo"
'bar'
EOF

COPY <<X <<Y /dest
Y
X
X
Y

RUN <<COMPLEX python3
print('hello world')
COMPLEX

COPY <<file.txt /dest
hello world
file.txt

RUN <<eo'f'
echo foo
eof

RUN <<eo\\'f
echo foo
eo'f

RUN <<'e'o\\'f
echo foo
eo'f

RUN <<'one two'
echo bar
one two

RUN <<$EOF
$EOF

RUN <<  EOF
EOF

RUN <<  EOF  > foo
EOF
\t"""


def _h(name: str, content: str, expand: bool = True, chomp: bool = False) -> Heredoc:
    return Heredoc(name=name, content=content, expand=expand, chomp=chomp)


# For <<- BuildKit's parser keeps the tabs ("\tbaz\n\tquux\n") and strips them when the
# instruction is dispatched; our contract hands out the stripped body.
HEREDOC_EXPECTED: list[tuple[Heredoc, ...]] = [
    (),  # ENV NAME=me
    (),  # RUN ls
    (),  # USER <<INVALID: not an instruction that takes heredocs
    (),  # INVALID: an (unknown) instruction of its own
    (_h("EMPTY", ""),),
    (_h("EMPTY2", ""),),
    (),  # RUN "<<NOHEREDOC"
    (_h("INDENT", "\tfoo\n\tbar\n"),),
    (_h("UNINDENT", "baz\nquux\n", chomp=True),),
    (_h("UNINDENT2", "baz\nquux\n", chomp=True),),
    (_h("EXPAND", "expand $NAME\n", chomp=True),),
    (_h("NOEXPAND", "don't expand $NAME\n", expand=False, chomp=True),),
    (_h("COPY", "echo hello world\necho foo bar\n"),),
    (_h("COMMENT", "# internal comment\necho hello world\necho foo bar # trailing comment\n"),),
    (_h("MOUNT", "echo hello\n"),),
    (_h("FILE1", "content 1\n"), _h("FILE2", "content 2\n")),
    (_h("EOF", "\"foo\"\n'bar'\n"),),
    (_h("X", "Y\n"), _h("Y", "X\n")),
    (_h("COMPLEX", "print('hello world')\n"),),
    (_h("file.txt", "hello world\n"),),
    (_h("eof", "echo foo\n", expand=False),),
    (_h("eo'f", "echo foo\n"),),
    (_h("eo'f", "echo foo\n", expand=False),),
    (_h("one two", "echo bar\n", expand=False),),
    (_h("$EOF", ""),),
    (_h("EOF", ""),),
    (_h("EOF", ""),),
]


def test_heredocs_extracted_like_buildkit() -> None:
    result = parse(HEREDOC_DOCKERFILE)
    nodes = result.nodes[1:]
    assert len(nodes) == len(HEREDOC_EXPECTED)
    for node, expected in zip(nodes, HEREDOC_EXPECTED, strict=True):
        assert node.heredocs == expected, node.original


def test_heredoc_line_bookkeeping() -> None:
    result = parse(HEREDOC_DOCKERFILE)
    by_original = {n.original: n for n in result.nodes}
    # "COPY <<FILE1 <<FILE2 /dest" is on line 57; its two bodies end on line 61.
    two = by_original["COPY <<FILE1 <<FILE2 /dest"]
    assert (two.start_line, two.end_line) == (57, 61)
    assert [h.name for h in two.heredocs] == ["FILE1", "FILE2"]
    # The instruction after the heredoc starts after the closing delimiter.
    quotes = by_original["COPY <<EOF /quotes"]
    assert (quotes.start_line, quotes.end_line) == (63, 66)
    # Heredoc bodies are not instructions: "INVALID" after USER is, because USER takes none.
    invalid = result.nodes[4]
    assert (invalid.instruction, invalid.start_line) == ("invalid", 9)


def test_json_form_has_no_heredocs() -> None:
    result = parse('FROM alpine:3.6\n\nRUN ["whoami"]\nRUN ["<<EOF"]\nRUN ["<<\'EOF\'"]\n')
    assert [n.heredocs for n in result.nodes[1:]] == [(), (), ()]
    assert result.nodes[2].args == ("<<EOF",)
    assert result.nodes[2].json_form


@pytest.mark.parametrize(
    "word",
    [
        "<<EOF",
        "<<'EOF'",
        '<<"EOF"',
        "<<-EOF",
        "<<-'EOF'",
        '<<-"EOF"',
        '<<EO"F"',
        "<< EOF",
        "<<- EOF",
    ],
)
def test_heredoc_word_valid(word: str) -> None:
    doc = _heredoc_from_word(word)
    assert doc is not None
    assert doc.name == "EOF"
    assert doc.chomp == word.startswith("<<-")
    assert doc.expand == ("'" not in word and '"' not in word)


@pytest.mark.parametrize("word", ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"])
def test_heredoc_word_not_a_heredoc(word: str) -> None:
    assert _heredoc_from_word(word) is None


@pytest.mark.parametrize("word", ["<<'EOF", '<<"EOF', "<<EOF'", '<<EOF"'])
def test_heredoc_word_invalid(word: str) -> None:
    with pytest.raises(Exception, match="failed to process"):
        _heredoc_from_word(word)


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ("RUN <<EOF", ["EOF"]),
        ("RUN <<-EOF", ["EOF"]),
        # "<<-" and "EOF" are two words on a line (the lexer keeps only blanks after "<<").
        ("RUN <<- EOF", []),
        ("RUN << -EOF", ["-EOF"]),
        ("RUN <<'EOF'", ["EOF"]),
        ("RUN 4<<EOF", ["EOF"]),
        ("RUN <<EOF <<EOF2", ["EOF", "EOF2"]),
        ("RUN '<<EOF'", []),
        ('RUN "<<EOF"', []),
        ("RUN echo ${X:-a} <<EOF", ["EOF"]),
        ("RUN echo 'unterminated <<EOF", []),
    ],
)
def test_heredocs_from_line(line: str, names: list[str]) -> None:
    assert [h.name for h in _heredocs_from_line(line)] == names


def test_heredoc_unterminated_names_line() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("FROM alpine\n\nRUN <<EOF\necho hi\n")
    assert info.value.message == "unterminated heredoc"
    assert info.value.line == 3
    assert "RUN <<EOF" in str(info.value)


def test_heredoc_second_unterminated() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("FROM alpine\nCOPY <<A <<B /dst\na\nA\nb\n")
    assert (info.value.message, info.value.line) == ("unterminated heredoc", 2)


def test_heredoc_keeps_crlf_and_body_looks_like_instructions() -> None:
    result = parse("FROM a\r\nRUN <<EOF\r\nFROM b\r\nEOF\r\nRUN x\r\n")
    run = result.nodes[1]
    assert run.heredocs == (_h("EOF", "FROM b\r\n"),)
    assert (run.start_line, run.end_line) == (2, 4)
    assert [n.instruction for n in result.nodes] == ["from", "run", "run"]
    assert result.nodes[2].args == ("x",)


def test_heredoc_on_onbuild_attaches_to_onbuild() -> None:
    result = parse("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n")
    onbuild = result.nodes[1]
    assert onbuild.heredocs == (_h("EOF", "echo hi\n"),)
    assert onbuild.sub is not None
    assert (onbuild.sub.instruction, onbuild.sub.args) == ("run", ("<<EOF",))
    assert (onbuild.start_line, onbuild.end_line) == (2, 4)


def test_heredoc_with_continuation_and_chomp_terminator() -> None:
    result = parse("FROM a\nRUN \\\n  <<-EOT cat\n\t\tx\n\tEOT\n")
    run = result.nodes[1]
    assert run.heredocs == (_h("EOT", "x\n", chomp=True),)
    assert (run.start_line, run.end_line) == (2, 5)


# ------------------------------------------------------------------------------------------
# 5: real Dockerfiles.


@pytest.mark.reference
@pytest.mark.parametrize("relpath", _real_dockerfiles())
def test_real_dockerfiles_parse(relpath: str) -> None:
    _require(REAL_DOCKERFILES / relpath)
    result = parse(_read(REAL_DOCKERFILES / relpath), relpath)
    assert result.nodes
    assert all(n.start_line <= n.end_line for n in result.nodes)
    # Lines are ordered and do not overlap.
    ends = [n.end_line for n in result.nodes]
    starts = [n.start_line for n in result.nodes]
    assert all(s > e for s, e in zip(starts[1:], ends[:-1], strict=True))


@pytest.mark.reference
def test_real_dockerfiles_found() -> None:
    files = _real_dockerfiles()
    assert MISSING not in files, f"reference data missing: {REAL_DOCKERFILES}"
    assert len(files) >= 40


# ------------------------------------------------------------------------------------------
# Directives, continuations, warnings.


def test_escape_backtick_directive() -> None:
    result = parse("# escape=`\nFROM windows\nRUN dir `\n  c:\\\nENV A b\\\n")
    assert result.directives == Directives(escape="`")
    assert result.nodes[1].args == ("dir   c:\\",)
    # With ` as escape, a trailing backslash is just a character.
    assert result.nodes[2].args == ("A", "b\\", "")
    assert len(result.nodes) == 3


def test_escape_after_comment_is_ignored() -> None:
    result = parse("# a comment\n# escape=`\nFROM a\nRUN x \\\n y\n")
    assert result.directives.escape == "\\"
    assert result.nodes[1].args == ("x  y",)


def test_escape_after_blank_line_is_ignored() -> None:
    assert parse("\n# escape=`\nFROM a\n").directives.escape == "\\"


def test_syntax_and_check_directives() -> None:
    text = "# syntax=docker/dockerfile:1.7\n# check=skip=JSONArgsRecommended;error=true\nFROM a\n"
    result = parse(text)
    assert result.directives == Directives(
        syntax="docker/dockerfile:1.7", check="skip=JSONArgsRecommended;error=true"
    )


def test_syntax_after_shebang_and_not_after_instruction() -> None:
    assert parse("#!/usr/bin/env buildctl\n# syntax = x/y\nFROM a\n").directives.syntax == "x/y"
    assert parse("FROM a\n# syntax=x/y\n").directives.syntax is None


def test_duplicate_directive_is_an_error() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("# escape=`\n# escape=\\\nFROM a\n")
    assert info.value.message == "only one escape parser directive can be used"
    assert info.value.line == 2


def test_invalid_escape_token() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("# escape=x\nFROM a\n")
    assert info.value.message == "invalid escape token 'x' does not match ` or \\"
    assert info.value.line == 1


def test_empty_continuation_lines_warn() -> None:
    # Ported from BuildKit's TestParseWarnsOnEmptyContinutationLine.
    text = """
FROM alpine:3.6

RUN valid \\
    continuation

RUN something \\

    following \\

    more

RUN another \\

    thing

RUN non-indented \\
# this is a comment
   after-comment

RUN indented \\
    # this is an indented comment
    comment
\t"""
    result = parse(text)
    assert len(result.warnings) == 2
    assert "Empty continuation line found in" in result.warnings[0]
    assert "RUN something     following     more" in result.warnings[0]
    assert "RUN another     thing" in result.warnings[1]
    assert [n.args for n in result.nodes[-2:]] == [
        ("non-indented    after-comment",),
        ("indented     comment",),
    ]


def test_comment_inside_continuation_keeps_line_numbers() -> None:
    result = parse("FROM a\nRUN a \\\n# c\n  b \\\n\n  c\nUSER x\n")
    run, user = result.nodes[1], result.nodes[2]
    assert (run.start_line, run.end_line) == (2, 6)
    assert run.original == "RUN a   b   c"
    assert (user.start_line, user.end_line) == (7, 7)


def test_bom_and_crlf() -> None:
    result = parse("\ufeffFROM a\r\nRUN b \\\r\n c\r\n")
    assert [dump(n) for n in result.nodes] == ['from "a"', 'run "b  c"']


def test_continuation_at_eof_without_newline() -> None:
    result = parse("FROM a\nRUN b \\")
    assert result.nodes[1].args == ("b",)
    assert (result.nodes[1].start_line, result.nodes[1].end_line) == (2, 2)


# ------------------------------------------------------------------------------------------
# Per-instruction argument forms.


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ENV A=1 B='x y' C", None),  # error: no = in C
        ("ENV A 1 2", 'env "A" "1 2" ""'),
        ('ENV A="a b" B=c\\ d', 'env "A" "\\"a b\\"" "=" "B" "c\\\\ d" "="'),
        ("LABEL a=b", 'label "a" "b" "="'),
        ("ARG a b=c 'd'", 'arg "a" "b=c" "\'d\'"'),
        ("ARG", "arg"),
        (
            "FROM --platform=$BUILDPLATFORM a AS b",
            'from ["--platform=$BUILDPLATFORM"] "a" "AS" "b"',
        ),
        ('COPY --from=x --chmod="7 5" ["a b", "c"]', 'copy ["--from=x" "--chmod=7 5"] "a b" "c"'),
        ("COPY -- --a b", 'copy "--a" "b"'),
        ("ADD a   b\tc", 'add "a" "b" "c"'),
        ("CMD", "cmd"),
        ("CMD []", "cmd"),
        ('CMD ["a", 1]', None),
        ('CMD ["a", NaN]', 'cmd "[\\"a\\", NaN]"'),
        ("CMD [ 'a' ]", "cmd \"[ 'a' ]\""),
        ('ENTRYPOINT ["a"] x', 'entrypoint "[\\"a\\"] x"'),
        ('SHELL ["pwsh", "-c"]', 'shell "pwsh" "-c"'),
        ("HEALTHCHECK NONE", 'healthcheck "NONE"'),
        ('HEALTHCHECK --interval=5s CMD ["a"]', 'healthcheck ["--interval=5s"] "CMD" "a"'),
        ("EXPOSE 80/tcp  443", 'expose "80/tcp" "443"'),
        ('VOLUME ["/a", "/b"]', 'volume "/a" "/b"'),
        ("WORKDIR  /a b ", 'workdir "/a b"'),
        ("USER a:b", 'user "a:b"'),
        ("STOPSIGNAL SIGKILL", 'stopsignal "SIGKILL"'),
        ("MAINTAINER Me <me@x>", 'maintainer "Me <me@x>"'),
        ("ONBUILD --x ADD . /app", 'onbuild ["--x"] (add "." "/app")'),
        ("ONBUILD", "onbuild"),
        ("RuN echo\ttab", 'run "echo\\ttab"'),
        ("RUNN foo", 'runn ""'),
        ("run \u00e9\u00e0 \u00a0x", 'run "\u00e9\u00e0 \\u00a0x"'),
    ],
)
def test_argument_forms(line: str, expected: str | None) -> None:
    text = f"FROM a\n{line}\n"
    if expected is None:
        with pytest.raises(DockerfileError) as info:
            parse(text)
        assert info.value.line == 2
        return
    assert dump(parse(text).nodes[1]) == expected


def test_env_syntax_error_wording() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nENV A=1 B\n")
    assert info.value.message == (
        'Syntax error - can\'t find = in "B". Must be of the form: name=value'
    )


def test_json_form_flag_and_node_fields() -> None:
    result = parse('FROM a\nCOPY --link ["a", "b"]\nRUN echo\n')
    copy, run = result.nodes[1], result.nodes[2]
    assert copy == Node(
        instruction="copy",
        original='COPY --link ["a", "b"]',
        flags=("--link",),
        args=("a", "b"),
        json_form=True,
        heredocs=(),
        start_line=2,
        end_line=2,
    )
    assert not run.json_form


def test_malformed_json_non_string_names_line() -> None:
    with pytest.raises(DockerfileError) as info:
        parse('FROM a\n\nRUN ["a", \\\n  {"b": 1}]\n')
    assert info.value.line == 3


def test_unknown_instruction_is_not_a_parse_error() -> None:
    result = parse("FROM a\nRUNN x\n")
    assert result.nodes[1].instruction == "runn"
    assert result.nodes[1].original == "RUNN x"


def test_line_too_long_is_an_error() -> None:
    # Ported from BuildKit's TestParseReturnsScannerErrors.
    text = "\n\t\tFROM image\n\t\tLABEL test=" + "a" * (64 * 1024) + "\n"
    with pytest.raises(DockerfileError) as info:
        parse(text)
    assert info.value.message == "dockerfile line greater than max allowed size of 65535"


def test_go_quote() -> None:
    assert go_quote('a"b\\c\n\x01\x7f\u00a0\u00e9\U0001f600') == (
        '"a\\"b\\\\c\\n\\x01\\x7f\\u00a0\u00e9\U0001f600"'
    )


def test_dump_file_matches_line_format() -> None:
    result = parse("FROM a\nONBUILD RUN b\n")
    assert dump_file(result) == '(from "a")\n(onbuild (run "b"))'


def test_parse_is_fast() -> None:
    lines = ["FROM python:3.12 AS base", "ARG A=1"]
    for i in range(66):
        lines += [
            f'ENV VAR_{i}=value_{i} OTHER_{i}="quoted value"',
            f"RUN --mount=type=cache,target=/root/.cache pip install pkg{i} && \\",
            f"    echo done {i}",
        ]
    text = "\n".join(lines) + "\n"
    assert len(text.splitlines()) >= 200
    best = min(_timed(text) for _ in range(5))
    assert best < 0.005, f"parsing 200 lines took {best * 1000:.2f} ms"


def _timed(text: str) -> float:
    start = time.perf_counter()
    parse(text)
    return time.perf_counter() - start
