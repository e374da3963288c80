"""`.dockerignore` semantics, ported from moby/patternmatcher's and ignorefile's table tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.context.dockerignore import (
    IgnoreRules,
    PatternError,
    PatternMatcher,
    go_clean,
    load_ignore_rules,
    read_ignore_lines,
)
from engine.errors import ContextError

# patternmatcher_test.go TestMatches: (pattern, text, pass), run through MatchesOrParentMatches.
MATCHES: list[tuple[str, str, bool]] = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**/", "file/", True),
    ("**", "/", True),
    ("**/", "/", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**", "dir/file/", True),
    ("**/", "dir/file/", True),
    ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        True,
    ),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
]

MULTI: list[tuple[list[str], str, bool]] = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (
        ["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        False,
    ),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    # The single-test functions at the top of patternmatcher_test.go.
    (["*"], "fileutils.go", True),
    (["*.go"], "fileutils.go", True),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    ([], "/any/path/there", False),
    # A directory pattern covers everything below it.
    (["docs"], "docs/a/b/c.md", True),
    (["docs", "!docs/README.md"], "docs/other.md", True),
]

# TestMatch: Go's filepath.Match table; a pattern with err=True is ErrBadPattern.
GO_MATCH: list[tuple[str, str, bool, bool]] = [
    ("abc", "abc", True, False),
    ("*", "abc", True, False),
    ("*c", "abc", True, False),
    ("a*", "a", True, False),
    ("a*", "abc", True, False),
    ("a*", "ab/c", True, False),
    ("a*/b", "abc/b", True, False),
    ("a*/b", "a/c/b", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False, False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True, False),
    ("a*b?c*x", "abxbbxdbxebxczzy", False, False),
    ("ab[c]", "abc", True, False),
    ("ab[b-d]", "abc", True, False),
    ("ab[e-g]", "abc", False, False),
    ("ab[^c]", "abc", False, False),
    ("ab[^b-d]", "abc", False, False),
    ("ab[^e-g]", "abc", True, False),
    ("a\\*b", "a*b", True, False),
    ("a\\*b", "ab", False, False),
    ("a?b", "a☺b", True, False),
    ("a[^a]b", "a☺b", True, False),
    ("a???b", "a☺b", False, False),
    ("a[^a][^a][^a]b", "a☺b", False, False),
    ("[a-ζ]*", "\u03b1", True, False),  # Greek small alpha
    ("*[a-ζ]", "A", False, False),
    ("a?b", "a/b", False, False),
    ("a*b", "a/b", False, False),
    ("[\\]a]", "]", True, False),
    ("[\\-]", "-", True, False),
    ("[x\\-]", "x", True, False),
    ("[x\\-]", "-", True, False),
    ("[x\\-]", "z", False, False),
    ("[\\-x]", "x", True, False),
    ("[\\-x]", "-", True, False),
    ("[\\-x]", "a", False, False),
    ("[]a]", "]", False, True),
    ("[-]", "-", False, True),
    ("[x-]", "x", False, True),
    ("[x-]", "-", False, True),
    ("[x-]", "z", False, True),
    ("[-x]", "x", False, True),
    ("[-x]", "-", False, True),
    ("[-x]", "a", False, True),
    ("\\", "a", False, True),
    ("[a-b-c]", "a", False, True),
    ("[", "a", False, True),
    ("[^", "a", False, True),
    ("[^bc", "a", False, True),
    ("a[", "a", False, True),
    ("a[", "ab", False, True),
    ("*x", "xxx", True, False),
]


@pytest.mark.parametrize(("pattern", "text", "expected"), MATCHES)
def test_patternmatcher_table(pattern: str, text: str, expected: bool) -> None:
    assert PatternMatcher.from_patterns([pattern]).matches(text) is expected


@pytest.mark.parametrize(("patterns", "text", "expected"), MULTI)
def test_patternmatcher_multi(patterns: list[str], text: str, expected: bool) -> None:
    assert PatternMatcher.from_patterns(patterns).matches(text) is expected


@pytest.mark.parametrize(("pattern", "text", "expected", "bad"), GO_MATCH)
def test_go_filepath_match_table(pattern: str, text: str, expected: bool, bad: bool) -> None:
    if bad:
        with pytest.raises(PatternError):
            PatternMatcher.from_patterns([pattern])
    else:
        assert PatternMatcher.from_patterns([pattern]).matches(text) is expected


def test_lone_exclamation_is_an_error() -> None:
    with pytest.raises(PatternError, match="illegal exclusion"):
        PatternMatcher.from_patterns(["!"])


def test_reversed_range_rejected_at_parse_time() -> None:
    # moby/moby#52203: valid for filepath.Match, but the regexp does not compile.
    with pytest.raises(PatternError):
        PatternMatcher.from_patterns(["[Local-Only]/"])


def test_context_root_never_excluded() -> None:
    rules = IgnoreRules.from_text("*\n**\n")
    assert not rules.excluded(".", is_dir=True)
    assert not rules.excluded("", is_dir=True)
    assert rules.excluded("anything", is_dir=False)


def test_read_all_table() -> None:
    # ignorefile_test.go TestReadAll
    content = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! "
    assert [p for p, _ in read_ignore_lines(content)] == [
        "test1",
        "test2",
        "a/file/here",
        "lastfile",
        "!inverted/abs/path",
        "!",
        "!",
    ]


def test_read_all_bom_crlf_and_comment_column() -> None:
    lines = read_ignore_lines("\ufeffa\r\n  # not a comment\n#comment\n./b/../c/\n")
    assert lines == [("a", 1), ("# not a comment", 2), ("c", 4)]


@pytest.mark.parametrize(
    ("path", "clean"),
    [("", "."), ("//a//b/", "/a/b"), ("a/../..", ".."), ("/../x", "/x"), ("./a/./b", "a/b")],
)
def test_go_clean(path: str, clean: str) -> None:
    assert go_clean(path) == clean


def test_from_text_semantics() -> None:
    rules = IgnoreRules.from_text("# c\n/build/\n*.pyc\n!keep.pyc\nnode_modules\n.\n")
    assert rules.excluded("build", is_dir=True)
    assert rules.excluded("build/out/x.o", is_dir=False)
    assert rules.excluded("x.pyc", is_dir=False)
    assert not rules.excluded("keep.pyc", is_dir=False)
    assert not rules.excluded("sub/x.pyc", is_dir=False)  # "*" does not cross "/"
    assert rules.excluded("node_modules/a/b.js", is_dir=False)
    assert not rules.excluded("src/main.py", is_dir=False)


def test_reinclude_below_excluded_dir() -> None:
    rules = IgnoreRules.from_text("docs\n!docs/keep/**\n")
    assert rules.excluded("docs", is_dir=True)
    assert rules.excluded("docs/other.md", is_dir=False)
    assert not rules.excluded("docs/keep/a.md", is_dir=False)
    assert rules.has_exclusions


def test_invalid_pattern_names_file_and_line() -> None:
    with pytest.raises(ContextError, match=r"myfile:3: .*syntax error"):
        IgnoreRules.from_text("ok\n# c\nbad[\n", source="myfile")
    with pytest.raises(ContextError, match=r"myfile:2: .*illegal exclusion"):
        IgnoreRules.from_text("ok\n!\n", source="myfile")


def test_dockerfile_dockerignore_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("a\n")
    (tmp_path / "sub").mkdir()
    df = tmp_path / "sub" / "app.Dockerfile"
    df.write_text("FROM scratch\n")
    (tmp_path / "sub" / "app.Dockerfile.dockerignore").write_text("b\n")

    rules = load_ignore_rules(tmp_path, df)
    assert rules.excluded("b", is_dir=False)
    assert not rules.excluded("a", is_dir=False)
    assert rules.source.endswith("app.Dockerfile.dockerignore")

    # Without the Dockerfile-specific file, the context's .dockerignore applies.
    other = tmp_path / "Dockerfile"
    other.write_text("FROM scratch\n")
    rules = load_ignore_rules(tmp_path, Path("Dockerfile"))
    assert rules.excluded("a", is_dir=False)
    assert not rules.excluded("b", is_dir=False)


def test_no_ignore_file(tmp_path: Path) -> None:
    rules = load_ignore_rules(tmp_path, None)
    assert not rules.excluded("anything", is_dir=False)
    assert rules.patterns == ()


def test_unreadable_ignore_file_is_context_error(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").mkdir()
    with pytest.raises(ContextError, match=r"\.dockerignore"):
        load_ignore_rules(tmp_path, None)


def test_invalid_file_error_names_path(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("fine\n[z-a]\n")
    with pytest.raises(ContextError, match=r"\.dockerignore:2"):
        load_ignore_rules(tmp_path, None)
