"""Tests for BuildKit-compatible word expansion (``engine.frontend.shell``).

The data-driven tables are BuildKit's own (``frontend/dockerfile/shell/envVarTest`` and
``wordsTest``), driven the way ``lex_test.go`` drives them; the modifier tables are ported from
``lex_test.go`` (``TestProcessWithMatches`` and friends).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import DockerfileError, NbbuildError, UsageError
from engine.frontend.shell import (
    ExpansionResult,
    Lexer,
    _compile_pattern,
    _LexError,
    _reverse_pattern,
)

REPO = Path(__file__).resolve().parents[3]
SHELL_DATA = (
    REPO.parent / "shared" / "reference-data" / "buildkit" / "frontend" / "dockerfile" / "shell"
)
MISSING = f"BuildKit reference data is missing: expected the directory {SHELL_DATA}"


def _read_lines(name: str) -> list[str]:
    # Go's bufio.Scanner: split on \n, drop a trailing \r, no empty token after the last \n.
    text = (SHELL_DATA / name).read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _missing_param() -> list[Any]:
    # One case that fails loudly, so a missing data directory can never pass or skip.
    return [pytest.param(None, id="reference-data-missing")]


# --- envVarTest (TestShellParser4EnvVars) -------------------------------------------------

ENV_VAR_TEST_ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


def _env_var_cases() -> list[Any]:
    if not SHELL_DATA.is_dir():
        return _missing_param()
    cases: list[Any] = []
    for number, line in enumerate(_read_lines("envVarTest"), start=1):
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        fields = line.split("|")
        if len(fields) != 3:
            cases.append(pytest.param((number, "?", line, "bad row"), id=f"line{number}"))
            continue
        platform, source, expected = (f.strip() for f in fields)
        if platform == "W":
            continue  # Windows-only rows: env names are case-insensitive there.
        cases.append(pytest.param((number, platform, source, expected), id=f"line{number}"))
    return cases


@pytest.mark.parametrize("case", _env_var_cases())
def test_buildkit_env_var_table(case: tuple[int, str, str, str] | None) -> None:
    if case is None:
        pytest.fail(MISSING)
    number, platform, source, expected = case
    assert platform in ("A", "U"), f"invalid tag {platform!r} at line {number} of envVarTest"
    lexer = Lexer("\\")
    if expected == "error":
        with pytest.raises(DockerfileError):
            lexer.process_word(source, ENV_VAR_TEST_ENV)
    else:
        assert lexer.process_word(source, ENV_VAR_TEST_ENV) == expected, f"line {number}"


# --- wordsTest (TestShellParser4Words) ----------------------------------------------------


def _words_cases() -> list[Any]:
    if not SHELL_DATA.is_dir():
        return _missing_param()
    # lex_test.go loops over a second mode (RawQuotes + SkipUnsetEnv), but it reuses the
    # already-exhausted file reader, so only the normal mode ever runs against this table.
    cases: list[Any] = []
    env_lines: list[str] = []
    for number, line in enumerate(_read_lines("wordsTest"), start=1):
        if line.startswith("#"):
            continue
        if line.startswith("ENV "):
            env_lines.append(line[3:].lstrip(" "))
            continue
        fields = line.split("|")
        if len(fields) != 2:
            cases.append(pytest.param((number, line, {}, ["bad row"]), id=f"line{number}"))
            continue
        env: dict[str, str] = {}
        for entry in env_lines:  # EnvsFromSlice: split at the first "=", later entries win
            key, _, value = entry.partition("=")
            env[key] = value
        expected = fields[1].lstrip(" ").split(",")
        cases.append(pytest.param((number, fields[0].strip(), env, expected), id=f"line{number}"))
    return cases


@pytest.mark.parametrize("case", _words_cases())
def test_buildkit_words_table(case: tuple[int, str, dict[str, str], list[str]] | None) -> None:
    if case is None:
        pytest.fail(MISSING)
    number, source, env, expected = case
    assert expected != ["bad row"], f"line {number} of wordsTest needs exactly one |"
    try:
        result = Lexer("\\").process_words(source, env)
    except DockerfileError:
        result = ["error"]
    assert result == expected, f"line {number}: {source!r}"


# --- TestProcessWithMatches ---------------------------------------------------------------

FOO_BAR = {"FOO": "xxx", "BAR": ""}

# (input, env, expected result or None for an error, matched, unmatched)
WITH_MATCHES: list[tuple[str, dict[str, str], str | None, set[str], set[str]]] = [
    ("x", {"DUMMY": "dummy"}, "x", set(), set()),
    ("x ${UNUSED}", {"DUMMY": "dummy"}, "x ", set(), {"UNUSED"}),
    ("x ${FOO}", {"FOO": "y"}, "x y", {"FOO"}, set()),
    ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", FOO_BAR, "xxx  ccc", {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", FOO_BAR, "xxx bbb ccc", {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:-}", FOO_BAR, "xxx", {"FOO"}, set()),
    ("${FOO:-}", {}, "", set(), {"FOO"}),
    ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", FOO_BAR, "aaa bbb ", {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", FOO_BAR, "aaa  ", {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO?aaa}", FOO_BAR, "xxx", {"FOO"}, set()),
    ("${BAR?bbb}", FOO_BAR, "", {"BAR"}, set()),
    ("${BAZ?ccc}", FOO_BAR, None, set(), set()),
    ("${FOO:?aaa}", FOO_BAR, "xxx", {"FOO"}, set()),
    ("${BAR:?bbb}", FOO_BAR, None, set(), set()),
    ("${BAZ:?ccc}", FOO_BAR, None, set(), set()),
    ("${BAZ:?}", FOO_BAR, None, set(), set()),
    ("${FOO=aaa}", FOO_BAR, None, set(), set()),
    ("${FOO=:aaa}", FOO_BAR, None, set(), set()),
    ("${FOO=}", {}, None, set(), set()),
    # } must be escaped so it does not close the ${}; regex specials are literal.
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x", {"FOO"}, set()),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx", {"FOO"}, set()),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y", {"FOO"}, set()),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy", {"FOO", "BAR"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    ("${FOO#}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy", {"FOO"}, set()),
    ("${FOO##}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y", {"FOO"}, set()),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy.", {"FOO"}, {"ABC"}),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a", {"FOO"}, set()),
    ("${FOO%}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    ("${FOO:#}", {}, None, set(), set()),
    ("${FOO:##}", {}, None, set(), set()),
    ("${FOO:%}", {}, None, set(), set()),
    ("${FOO:%%}", {}, None, set(), set()),
    (
        "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
        {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"},
        "/foo.*/*.txt - /foo..*.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
        {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"},
        "/tmp/bar.txt - /bar.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
        {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"},
        "/foo/b/c.txt - /foo/c.txt",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT}",
        {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
        "https://google.de",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
    ),
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt", {"FOO"}, set()),
    ("${FOO/$BAR/ww}", {"FOO": "xxyy", "BAR": ""}, "wwxxyy", {"FOO", "BAR"}, set()),
    ("${FOO//ww}", {"FOO": "xxyy"}, None, set(), set()),
    ("${FOO//}", {"FOO": "xxyy"}, None, set(), set()),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO///}", {}, "", set(), {"FOO"}),
]


@pytest.mark.parametrize(
    ("word", "env", "expected", "matched", "unmatched"),
    WITH_MATCHES,
    ids=[f"{i}:{case[0]}" for i, case in enumerate(WITH_MATCHES)],
)
def test_process_with_matches(
    word: str, env: dict[str, str], expected: str | None, matched: set[str], unmatched: set[str]
) -> None:
    lexer = Lexer("\\")
    if expected is None:
        with pytest.raises(DockerfileError):
            lexer.process_word_with_matches(word, env)
        return
    result = lexer.process_word_with_matches(word, env)
    assert result == ExpansionResult(expected, frozenset(matched), frozenset(unmatched))
    assert lexer.process_word(word, env) == expected


RELEASE = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz"


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ({"TARGETARCH": "arm", "TARGETVARIANT": "v7"}, "something-v1.2.3.linux-arm-v7.tar.gz"),
        ({"TARGETARCH": "arm64", "TARGETVARIANT": ""}, "something-v1.2.3.linux-arm64.tar.gz"),
        ({"TARGETARCH": "arm64"}, "something-v1.2.3.linux-arm64.tar.gz"),
    ],
)
def test_process_with_matches_platform(platform: dict[str, str], expected: str) -> None:
    env = {"VERSION": "v1.2.3", "TARGETOS": "linux", **platform}
    assert Lexer().process_word_with_matches(RELEASE, env).result == expected


# --- TestShellParserMandatoryEnvVars --------------------------------------------------------

SET_ENV = {"VAR": "plain", "ARG": "x"}
EMPTY_ENV = {"VAR": "", "ARG": "x"}
UNSET_ENV = {"ARG": "x"}


@pytest.mark.parametrize(
    ("word", "env", "expected"),
    [
        ("${VAR:?message here$ARG}", SET_ENV, "plain"),
        ("${VAR:?message here$ARG}", EMPTY_ENV, None),
        ("${VAR:?message here$ARG}", UNSET_ENV, None),
        ("${VAR?message here$ARG}", SET_ENV, "plain"),
        ("${VAR?message here$ARG}", EMPTY_ENV, ""),
        ("${VAR?message here$ARG}", UNSET_ENV, None),
    ],
)
def test_mandatory_env_vars(word: str, env: dict[str, str], expected: str | None) -> None:
    lexer = Lexer("\\")
    if expected is None:
        with pytest.raises(DockerfileError, match="message herex"):
            lexer.process_word(word, env)
    else:
        assert lexer.process_word(word, env) == expected


# --- pattern helpers (TestConvertShellPatternToRegex, TestReversePattern) -------------------


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("*", "anything at all"),
        ("?", "x"),
        ("\\*", "*"),
        ("(()[]{\\}^$.\\*\\?|\\\\", "(()[]{}^$.*?|\\"),
    ],
)
def test_pattern_matches_literally(pattern: str, text: str) -> None:
    regex = _compile_pattern(pattern, greedy=True, anchored=True)
    match = regex.match(text)
    assert match is not None and match.end() == len(text)


@pytest.mark.parametrize("pattern", ["\\", "\\x", "\\\\\\"])
def test_pattern_invalid_escape(pattern: str) -> None:
    with pytest.raises(_LexError, match="invalid escape"):
        _compile_pattern(pattern, greedy=True, anchored=True)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("a\\*c", "c\\*a"),
        ("\\\\\\ab", "b\\a\\\\"),
        ("ab\\", "\\ba"),
        ("👽\\🚀🖖", "🖖\\🚀👽"),
        ("\\\\b", "b\\\\"),
    ],
)
def test_reverse_pattern(pattern: str, expected: str) -> None:
    assert _reverse_pattern(pattern) == expected


def test_suffix_removal_with_non_ascii() -> None:
    env = {"V": "🖖🚀👽.tar.gz"}
    assert Lexer().process_word("${V%.*}", env) == "🖖🚀👽.tar"
    assert Lexer().process_word("${V%%.*}", env) == "🖖🚀👽"
    assert Lexer().process_word("${V#?}", env) == "🚀👽.tar.gz"


# --- replacement semantics of Go's regexp ---------------------------------------------------


@pytest.mark.parametrize(
    ("word", "env", "expected"),
    [
        # An empty match right after a match is not replaced again (Go's ReplaceAll).
        ("${FOO//*/x}", {"FOO": "ab"}, "x"),
        ("${FOO//?/-}", {"FOO": "abc"}, "---"),
        # ReplaceAllString expands $0 (the match) and drops references to other groups...
        ("${FOO//?/$R}", {"FOO": "ab", "R": "<$0>"}, "<a><b>"),
        ("${FOO//?/$R}", {"FOO": "ab", "R": "${0}$1$$"}, "a$b$"),
        # ...but a single replacement is inserted as is.
        ("${FOO/?/$R}", {"FOO": "ab", "R": "<$0>"}, "<$0>b"),
        ("${FOO/b*/}", {"FOO": "abc"}, "a"),
        ("${FOO/x/y}", {"FOO": "abc"}, "abc"),
    ],
)
def test_substitution(word: str, env: dict[str, str], expected: str) -> None:
    assert Lexer().process_word(word, env) == expected


# --- escape token ----------------------------------------------------------------------------

ESCAPE_ENV = {"PWD": "/home", "FOO": "*x", "BT": "`abc"}


@pytest.mark.parametrize(
    ("escape", "word", "expected"),
    [
        ("`", "he`$PWD", "he$PWD"),
        ("`", "he\\$PWD", "he\\/home"),
        ("`", '"a`"b"', 'a"b'),
        ("`", '"a\\b"', "a\\b"),
        ("`", '"`$PWD"', "$PWD"),
        ("`", '"a``b"', "a`b"),
        ("`", '"a`b"', "a`b"),
        ("`", "hello`", "hello"),
        ("`", "a``b", "a`b"),
        ("`", "${X:-`}}", "}"),
        ("\\", "${X:-\\}}", "}"),
        ("\\", "he`$PWD", "he`/home"),
        # Glob escapes are always backslashes, whatever the escape token.
        ("`", "${FOO#\\*}", "x"),
        ("`", "${BT#`*}", "abc"),
    ],
)
def test_escape_token(escape: str, word: str, expected: str) -> None:
    assert Lexer(escape).process_word(word, ESCAPE_ENV) == expected


def test_escape_token_in_words() -> None:
    assert Lexer("`").process_words("a` b c", {}) == ["a b", "c"]
    assert Lexer("\\").process_words("a\\ b c", {}) == ["a b", "c"]


def test_escape_must_be_one_character() -> None:
    with pytest.raises(UsageError):
        Lexer("")
    with pytest.raises(UsageError):
        Lexer("ab")


# --- options used by the Dockerfile frontend -------------------------------------------------


def test_raw_quotes_and_skip_unset_env_keep_text_as_written() -> None:
    lexer = Lexer(raw_quotes=True, skip_unset_env=True)
    words = lexer.process_words("'a b' \"$X\" ${Y:-z} $Z ${W} ${V/a/b}", {})
    assert words == ["'a b'", '"$X"', "${Y:-z}", "$Z", "${W}", "${V/a/b}"]


def test_skip_unset_env_still_expands_set_variables() -> None:
    lexer = Lexer(skip_unset_env=True)
    assert lexer.process_word("$A-${A:+x}-$B", {"A": "1"}) == "1-x-$B"


def test_raw_escapes_keep_the_escape_character() -> None:
    lexer = Lexer(raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    assert lexer.process_words("a\\ b c\\", {}) == ["a\\ b", "c\\"]
    # Nested ${...:-word} is scanned without raw escapes, as in BuildKit.
    assert lexer.process_word("${X:-\\$}", {"X": ""}) == "$"


def test_skip_process_quotes_treats_quotes_as_text() -> None:
    lexer = Lexer(skip_process_quotes=True)
    assert lexer.process_word("'$X' \"$X\"", {"X": "1"}) == "'1' \"1\""
    assert lexer.process_word("it's", {}) == "it's"


def test_options_are_replaceable() -> None:
    lexer = Lexer()
    raw = replace(lexer, raw_quotes=True)
    assert raw.process_word("'a'", {}) == "'a'"
    assert lexer.process_word("'a'", {}) == "a"


def test_heredoc_marker_stays_one_field() -> None:
    assert Lexer().process_words("cat << EOF", {}) == ["cat", "<< EOF"]
    assert Lexer().process_words("a<b", {}) == ["a<b"]


def test_words_from_variable_values_are_split() -> None:
    env = {"V": " a\u00a0b\tc "}
    assert Lexer().process_words("$V", env) == ["a", "b", "c"]
    assert Lexer().process_words('"$V"', env) == [" a\u00a0b\tc "]
    # U+001C is whitespace to Python but not to Go, so it does not split.
    assert Lexer().process_words("a\x1cb", {}) == ["a\x1cb"]


def test_words_drop_prefix_before_modifier_like_buildkit() -> None:
    # BuildKit shares one field buffer between nested scans and resets it when a
    # ${VAR<modifier>...} starts, dropping the part of the field before it.
    assert Lexer().process_words("a${X:-b}c d", {}) == ["bc", "d"]
    assert Lexer().process_word("a${X:-b}c d", {}) == "abc d"
    assert Lexer().process_words("a${X}c", {"X": "b"}) == ["abc"]


def test_leading_byte_order_mark_is_dropped() -> None:
    assert Lexer().process_word("\ufeff$X", {"X": "1"}) == "1"
    assert Lexer().process_word("a\ufeff", {}) == "a\ufeff"


def test_names_are_case_sensitive() -> None:
    assert Lexer().process_word("$pwd|$PWD", {"PWD": "/home"}) == "|/home"


# --- error messages --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "env", "message"),
    [
        ("${X:?}", {}, 'failed to process "${X:?}": X: is not allowed to be unset'),
        ("${X:?}", {"X": ""}, 'failed to process "${X:?}": X: is not allowed to be empty'),
        ("${X?oops}", {}, 'failed to process "${X?oops}": X: oops'),
        (
            "'abc",
            {},
            'failed to process "\'abc": '
            "unexpected end of statement while looking for matching single-quote",
        ),
        (
            '"abc',
            {},
            'failed to process "\\"abc": '
            "unexpected end of statement while looking for matching double-quote",
        ),
        ("${}", {}, 'failed to process "${}": syntax error: bad substitution'),
        ("${", {}, "failed to process \"${\": syntax error: missing '}'"),
        ("${X:-abc", {}, "failed to process \"${X:-abc\": syntax error: missing '}'"),
        ("${X/abc", {}, "failed to process \"${X/abc\": syntax error: missing '/' in ${}"),
        ("${X/a/b", {}, "failed to process \"${X/a/b\": syntax error: missing '}'"),
        (
            "${X:#a}",
            {},
            'failed to process "${X:#a}": unsupported modifier (:#) in substitution',
        ),
        (
            "${X:=a}",
            {},
            'failed to process "${X:=a}": unsupported modifier (:=) in substitution',
        ),
        (
            "${X#\\a}",
            {"X": "a"},
            'failed to process "${X#\\\\a}": invalid pattern (\\a) in substitution: '
            "invalid escape '\\a'",
        ),
        ("\t${}", {}, 'failed to process "\\t${}": syntax error: bad substitution'),
    ],
)
def test_error_messages(word: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        Lexer().process_word(word, env)
    assert info.value.message == message
    assert info.value.line is None
    assert isinstance(info.value, NbbuildError)


# --- properties ------------------------------------------------------------------------------


@given(data=st.data(), escape=st.sampled_from(["\\", "`"]))
def test_plain_words_are_unchanged(data: st.DataObject, escape: str) -> None:
    # Only $, quotes and the active escape token are special ("<" is too, but a heredoc
    # marker expands to itself); a leading byte order mark is dropped, as Go's scanner does.
    word = data.draw(
        st.text(alphabet=st.characters(exclude_characters="$'\"\ufeff" + escape, codec="utf-8"))
    )
    lexer = Lexer(escape)
    assert lexer.process_word(word, {"A": "1"}) == word
    # A leading "<" forces the full scanner rather than the no-special-character shortcut.
    assert lexer.process_word("<" + word, {"A": "1"}) == "<" + word
    assert lexer.process_word_with_matches(word, {}) == ExpansionResult(
        word, frozenset(), frozenset()
    )


# Go's unicode.IsSpace: these Latin-1 characters plus the Unicode White_Space property.
GO_WHITESPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)


@given(
    word=st.text(
        alphabet=st.one_of(
            st.sampled_from(GO_WHITESPACE + "\x1c"),
            st.characters(exclude_characters="$'\"\\<\ufeff", codec="utf-8"),
        )
    )
)
def test_plain_text_splits_on_go_whitespace(word: str) -> None:
    expected = [field for field in re.split("[" + re.escape(GO_WHITESPACE) + "]", word) if field]
    assert Lexer().process_words(word, {}) == expected
    # Whitespace coming from a variable splits the same way.
    assert Lexer().process_words("$V", {"V": word}) == expected


@given(word=st.text(alphabet=st.characters(exclude_characters="'", codec="utf-8")))
def test_single_quoted_text_is_literal(word: str) -> None:
    assert Lexer().process_word(f"'{word}'", {"A": "1"}) == word
