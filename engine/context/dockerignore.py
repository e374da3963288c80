"""`.dockerignore` rules, with the semantics of moby/patternmatcher and ``ignorefile.ReadAll``.

The same matcher also serves ``COPY --exclude`` / include patterns in the content checksum, so
the pattern language lives here once:

* each line is trimmed and ``filepath.Clean``-ed; a leading ``/`` is dropped; ``#`` in column 1
  starts a comment; ``!`` re-includes and the last matching line wins;
* a pattern is Go ``filepath.Match`` syntax (``*``, ``?``, ``[a-z]``, ``[^a]``, ``\\`` escapes)
  plus ``**`` which crosses ``/``;
* a pattern that matches a parent directory matches everything below it
  (``MatchesOrParentMatches``), so ``docs`` excludes ``docs/a/b`` while a later
  ``!docs/README.md`` still re-includes that one file.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from engine.errors import ContextError

__all__ = [
    "IgnoreRules",
    "Pattern",
    "PatternError",
    "PatternMatcher",
    "go_clean",
    "ignore_rules",
    "load_ignore_rules",
    "read_dockerfile_ignore",
    "read_ignore_lines",
]

# Regexp metacharacters that mean nothing in filepath.Match and must be literal.
_ESCAPE = frozenset(".+()|{}$")


class PatternError(ValueError):
    """A pattern that Go's ``filepath.Match`` (or the compiled regexp) would reject."""


def go_clean(path: str) -> str:
    """Return Go's ``path.Clean(path)``: the shortest equivalent slash path.

    Unlike :func:`posixpath.normpath`, a leading ``//`` collapses to ``/`` and ``..`` at the
    root is dropped, exactly as Go does it.
    """
    if path == "":
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    body = "/".join(out)
    if rooted:
        return "/" + body
    return body or "."


def _go_dir(path: str) -> str:
    """Go's ``filepath.Dir``: everything before the last slash, cleaned."""
    idx = path.rfind("/")
    return go_clean(path[: idx + 1])


def validate_go_pattern(pattern: str) -> None:
    """Raise :class:`PatternError` if Go's ``filepath.Match`` would return ``ErrBadPattern``.

    Go validates every chunk of the pattern (even after a mismatch), so the syntax check is a
    plain left-to-right scan: ``\\`` needs a following character, and a ``[`` class needs at
    least one range, well-formed ``lo-hi`` pairs and a closing ``]``.
    """
    i, n = 0, len(pattern)

    def get_esc(j: int) -> int:
        # One class character (possibly escaped) starting at j; returns the index after it.
        if j >= n or pattern[j] in "-]":
            raise PatternError(f"syntax error in pattern: {pattern!r}")
        if pattern[j] == "\\":
            j += 1
            if j >= n:
                raise PatternError(f"syntax error in pattern: {pattern!r}")
        j += 1
        if j >= n:  # a class must be closed
            raise PatternError(f"syntax error in pattern: {pattern!r}")
        return j

    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise PatternError(f"syntax error in pattern: {pattern!r}")
            i += 2
        elif ch == "[":
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            nrange = 0
            while True:
                if i < n and pattern[i] == "]" and nrange > 0:
                    i += 1
                    break
                i = get_esc(i)
                if pattern[i] == "-":
                    i = get_esc(i + 1)
                nrange += 1
        else:
            i += 1


class _MatchType(Enum):
    EXACT = 1
    PREFIX = 2
    SUFFIX = 3
    REGEXP = 4


@dataclass(frozen=True, slots=True)
class Pattern:
    """One compiled pattern line.

    Attributes:
        text: the cleaned pattern without its ``!``.
        exclusion: True for a ``!`` (re-include) line.
        line: 1-based line in the source file, 0 when not from a file.
    """

    text: str
    exclusion: bool
    line: int = 0
    _kind: _MatchType = field(default=_MatchType.EXACT, repr=False, compare=False)
    _regexp: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def compile(cls, text: str, exclusion: bool, line: int = 0) -> Pattern:
        """Compile a cleaned pattern the way patternmatcher's ``Pattern.compile`` does.

        Raises:
            PatternError: the pattern is not valid ``filepath.Match`` syntax, or its regexp
                translation does not compile (e.g. a reversed range ``[z-a]``).
        """
        validate_go_pattern(text)
        regex = "^"
        kind = _MatchType.EXACT
        i, n = 0, len(text)
        first = True
        while i < n:
            ch = text[i]
            i += 1
            if ch == "*":
                if i < n and text[i] == "*":
                    i += 1
                    if i < n and text[i] == "/":  # "**/" behaves as "**"
                        i += 1
                    if i >= n:
                        if kind is _MatchType.EXACT:
                            kind = _MatchType.PREFIX
                        else:
                            regex += ".*"
                            kind = _MatchType.REGEXP
                    else:
                        regex += "(.*/)?"
                        kind = _MatchType.REGEXP
                    if first:
                        kind = _MatchType.SUFFIX
                else:
                    regex += "[^/]*"
                    kind = _MatchType.REGEXP
            elif ch == "?":
                regex += "[^/]"
                kind = _MatchType.REGEXP
            elif ch in _ESCAPE:
                regex += "\\" + ch
            elif ch == "\\":
                if i < n:
                    regex += "\\" + text[i]
                    i += 1
                    kind = _MatchType.REGEXP
                else:
                    regex += "\\\\"
            elif ch in "[]":
                regex += ch
                kind = _MatchType.REGEXP
            else:
                regex += ch
            first = False
        compiled: re.Pattern[str] | None = None
        if kind is _MatchType.REGEXP:
            # \Z, not $: Go's $ never matches before a trailing newline, Python's does.
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    compiled = re.compile(regex + r"\Z")
            except re.error as exc:
                raise PatternError(f"syntax error in pattern: {text!r} ({exc})") from None
        return cls(text, exclusion, line, kind, compiled)

    def match(self, path: str) -> bool:
        """Whether ``path`` (slash separated, cleaned) matches this pattern by itself."""
        kind = self._kind
        if kind is _MatchType.EXACT:
            return path == self.text
        if kind is _MatchType.PREFIX:
            return path.startswith(self.text[:-2])
        if kind is _MatchType.SUFFIX:
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            # "**/foo" also matches "foo" itself.
            return suffix.startswith("/") and path == suffix[1:]
        assert self._regexp is not None
        return self._regexp.match(path) is not None


@dataclass(frozen=True, slots=True)
class PatternMatcher:
    """An ordered pattern list: patternmatcher's ``New`` + ``MatchesOrParentMatches``."""

    patterns: tuple[Pattern, ...]

    @classmethod
    def from_patterns(cls, patterns: Iterable[str]) -> PatternMatcher:
        """Build a matcher from raw pattern strings (trimmed and cleaned here).

        Raises:
            PatternError: an invalid pattern, or a lone ``!``.
        """
        return cls(tuple(_compile_lines((p, 0) for p in patterns)))

    @property
    def has_exclusions(self) -> bool:
        """True if any ``!`` pattern exists (a directory match may then be partially undone)."""
        return any(p.exclusion for p in self.patterns)

    def matches(self, path: str) -> bool:
        """``MatchesOrParentMatches``: does ``path`` or one of its parents match, last line wins."""
        return self.matches_raw(go_clean(path))

    def matches_raw(self, path: str) -> bool:
        """Like :meth:`matches` but without cleaning ``path`` first.

        The content checksum matches include/exclude patterns against raw relative paths, where
        the selected directory itself is the empty string, as BuildKit does.
        """
        parent = _go_dir(path)
        parent_dirs = parent.split("/")
        matched = False
        for pat in self.patterns:
            # An inclusion cannot change an already-matched path, nor an exclusion an unmatched one.
            if pat.exclusion != matched:
                continue
            hit = pat.match(path)
            if not hit and parent != ".":
                for i in range(1, len(parent_dirs) + 1):
                    if pat.match("/".join(parent_dirs[:i])):
                        hit = True
                        break
            if hit:
                matched = not pat.exclusion
        return matched


def _compile_lines(lines: Iterable[tuple[str, int]]) -> list[Pattern]:
    out: list[Pattern] = []
    for raw, line in lines:
        text = raw.strip()
        if not text:
            continue
        text = go_clean(text)
        exclusion = False
        if text[0] == "!":
            if len(text) == 1:
                raise PatternError('illegal exclusion pattern: "!"')
            exclusion = True
            text = text[1:]
        out.append(Pattern.compile(text, exclusion, line))
    return out


def read_ignore_lines(text: str) -> list[tuple[str, int]]:
    """``ignorefile.ReadAll``: the pattern lines of an ignore file with their 1-based line numbers.

    Strips a UTF-8 BOM, skips ``#`` comments (column 1 only) and blank lines, trims, cleans and
    drops a leading ``/``, keeping a ``!`` prefix in front.
    """
    text = text.removeprefix("\ufeff")
    out: list[tuple[str, int]] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        line = raw.removesuffix("\r")  # bufio.ScanLines drops one trailing CR
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern[0] == "!"
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern[0] == "/":
                pattern = pattern[1:]
        if invert:
            pattern = "!" + pattern
        out.append((pattern, number))
    return out


@dataclass(frozen=True, slots=True)
class IgnoreRules:
    """The parsed ``.dockerignore`` of a build context.

    Attributes:
        matcher: the compiled pattern list.
        source: where the rules came from (a file path, or a label), for messages.
    """

    matcher: PatternMatcher
    source: str = ""

    @classmethod
    def from_text(cls, text: str, source: str = ".dockerignore") -> IgnoreRules:
        """Parse ignore-file text.

        Raises:
            ContextError: a pattern is invalid; the message names ``source`` and the line.
        """
        lines = read_ignore_lines(text)
        try:
            patterns = _compile_lines(lines)
        except PatternError as exc:
            line = _failing_line(lines)
            raise ContextError(
                f"failed to parse {source}:{line}: {exc}" if line else f"failed to parse {source}: {exc}"
            ) from None
        return cls(PatternMatcher(tuple(patterns)), source)

    @classmethod
    def from_patterns(cls, patterns: Sequence[str], source: str = "") -> IgnoreRules:
        """Rules from a list of pattern strings (``COPY --exclude`` style, no comment syntax).

        Raises:
            ContextError: a pattern is invalid.
        """
        try:
            matcher = PatternMatcher.from_patterns(patterns)
        except PatternError as exc:
            raise ContextError(f"invalid {source or 'exclude patterns'}: {exc}") from None
        return cls(matcher, source)

    @property
    def patterns(self) -> tuple[str, ...]:
        """The cleaned patterns, ``!`` included, in file order (what BuildKit sends as excludes)."""
        return tuple(("!" if p.exclusion else "") + p.text for p in self.matcher.patterns)

    @property
    def has_exclusions(self) -> bool:
        """True if some ``!`` line may re-include a path below an excluded directory."""
        return self.matcher.has_exclusions

    def excluded(self, relpath: str, is_dir: bool = False) -> bool:
        """Whether ``relpath`` (relative to the context root) is left out of the context.

        ``is_dir`` does not change the answer (patterns are cleaned, so ``dir/`` is ``dir``,
        exactly as in Docker); it is accepted so walkers can pass what they know. The context
        root itself is never excluded.
        """
        del is_dir
        if not self.matcher.patterns:
            return False  # no .dockerignore (the usual case): nothing to match per entry
        path = go_clean(relpath.lstrip("/")) if relpath else "."
        if path in (".", ""):
            return False
        return self.matcher.matches(path)


def _failing_line(lines: Sequence[tuple[str, int]]) -> int:
    for text, number in lines:
        try:
            _compile_lines([(text, number)])
        except PatternError:
            return number
    return 0


def load_ignore_rules(
    context_dir: Path, dockerfile_path: Path | None = None, extra: Sequence[str] = ()
) -> IgnoreRules:
    """Load the ignore rules for a build.

    ``<Dockerfile-name>.dockerignore`` beside the Dockerfile wins over ``<context>/.dockerignore``;
    with neither, nothing is ignored. ``extra`` patterns (the notebook's own files) come
    *before* the file's, so a ``!`` line in the file can still bring them back.

    Raises:
        ContextError: the ignore file cannot be read or has an invalid pattern.
    """
    return ignore_rules(context_dir, read_dockerfile_ignore(context_dir, dockerfile_path), extra)


def read_dockerfile_ignore(
    context_dir: Path, dockerfile_path: Path | None
) -> tuple[Path, bytes] | None:
    """``<Dockerfile-name>.dockerignore`` beside the Dockerfile and its bytes, None when absent.

    Read apart from :func:`ignore_rules` so that a caller can key what it remembers by the
    very bytes the rules came from (the file may lie outside the context).

    Raises:
        ContextError: the file exists but cannot be read.
    """
    if dockerfile_path is None:
        return None
    df = dockerfile_path if dockerfile_path.is_absolute() else context_dir / dockerfile_path
    candidate = df.with_name(df.name + ".dockerignore")
    data = _read_optional(candidate)
    return None if data is None else (candidate, data)


def ignore_rules(
    context_dir: Path, own: tuple[Path, bytes] | None, extra: Sequence[str] = ()
) -> IgnoreRules:
    """The rules from the Dockerfile's own ignore file (``own``, as
    :func:`read_dockerfile_ignore` returns it) or else ``<context>/.dockerignore``, with
    ``extra`` first (see :func:`load_ignore_rules`).

    Raises:
        ContextError: the ignore file cannot be read or has an invalid pattern.
    """
    if own is None:
        candidate = context_dir / ".dockerignore"
        data = _read_optional(candidate)
        own = None if data is None else (candidate, data)
    if own is None:
        rules = IgnoreRules(PatternMatcher(()), source="")
    else:
        # Paths are bytes on Linux: keep undecodable bytes round-trippable like os.fsdecode.
        rules = IgnoreRules.from_text(own[1].decode("utf-8", "surrogateescape"), source=str(own[0]))
    if not extra:
        return rules
    return IgnoreRules.from_patterns(
        [*extra, *rules.patterns], source=rules.source or "extra excludes"
    )


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ContextError(f"failed to read {path}: {exc.strerror or exc}") from None
