"""Word expansion, faithful to BuildKit's shell lexer (``frontend/dockerfile/shell/lex.go``).

A :class:`Lexer` expands ``$VAR`` / ``${VAR...}`` references, removes quotes and escapes, and can
split the result into fields the way BuildKit does for ``EXPOSE``-like instructions. It is a
single left-to-right scanner that takes runs of ordinary characters in one step (a character-class
search, no backtracking); words without ``$``, quotes, ``<`` or the escape token are returned
as they are. Glob patterns (``#``, ``%``, ``/`` modifiers) become regular expressions, compiled
once per distinct pattern.

Deliberate fidelity notes (each mirrors BuildKit at HEAD, so the same Dockerfile gives the same
result in both):

* A byte order mark at the very start of a word is dropped (Go's ``text/scanner`` does that).
* ``${VAR:?}``-style failures, unterminated quotes and bad substitutions are errors whose text is
  BuildKit's, wrapped as ``failed to process "<word>": <reason>``.
* In :meth:`Lexer.process_words` the field being built when a ``${VAR<modifier>...}`` starts is
  discarded (BuildKit shares one buffer between nested scans and resets it), so
  ``a${X:-b}`` splits to ``["b"]`` while :meth:`Lexer.process_word` gives ``"ab"``.
* ``${VAR//pattern/replacement}`` expands ``$0``/``${0}`` in the replacement to the match and
  other ``$name`` references to nothing (Go's ``Regexp.ReplaceAllString`` template rules);
  ``${VAR/pattern/replacement}`` inserts the replacement literally.

Errors are :class:`engine.errors.DockerfileError` without a location; the caller adds it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from engine.errors import DockerfileError, UsageError

__all__ = ["ExpansionResult", "Lexer"]

# Go's unicode.IsSpace: Latin-1 spaces plus the Unicode White_Space property. Python's
# str.isspace also accepts U+001C..U+001F, which Go does not treat as space.
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
# POSIX special parameters that BuildKit accepts as one-character names ($@, $#, ...).
_SPECIAL_PARAMS = frozenset("@*#?-$!0")
# Whitespace allowed between ``<<`` and a heredoc word (BuildKit's isWhitespace).
_GO_SPACE_RE = re.compile("[" + re.escape("".join(sorted(_GO_SPACE))) + "]")
_HEREDOC_SPACE = frozenset("\t\r ")
_BOM = "\ufeff"
# What text/scanner yields for EOF when turned into a string (string(rune(-1)) in Go).
_EOF_TEXT = "\ufffd"


@dataclass(frozen=True, slots=True)
class ExpansionResult:
    """The outcome of expanding one word.

    Attributes:
        result: the expanded word.
        matched: names of variables that were referenced and set (even if empty).
        unmatched: names of variables that were referenced but not set.
    """

    result: str
    matched: frozenset[str]
    unmatched: frozenset[str]


@dataclass(frozen=True, slots=True)
class Lexer:
    """BuildKit's word expander.

    Attributes:
        escape: the escape character, ``\\`` by default or a backtick (``# escape=`` directive).
        raw_quotes: keep quote characters in the output (BuildKit ``RawQuotes``).
        raw_escapes: keep escape characters in the output (BuildKit ``RawEscapes``).
        skip_unset_env: leave references to unset variables as written (``SkipUnsetEnv``).
        skip_process_quotes: treat quotes as ordinary characters (``SkipProcessQuotes``).
    """

    escape: str = "\\"
    raw_quotes: bool = False
    raw_escapes: bool = False
    skip_unset_env: bool = False
    skip_process_quotes: bool = False

    def __post_init__(self) -> None:
        if len(self.escape) != 1:
            raise UsageError(f"escape token must be a single character, got {self.escape!r}")

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        """Expand variables in ``word`` and remove quotes and escapes.

        Args:
            word: the word as written in the Dockerfile.
            env: variables in scope (case-sensitive names, as on Unix).

        Returns:
            The expanded word; spaces between fields are kept.

        Raises:
            DockerfileError: unterminated quote, bad substitution or a ``${VAR?}`` failure.
        """
        if self._is_plain(word):
            return word
        return _Scanner(self, word, env).run()[0]

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """Expand ``word`` like :meth:`process_word`, then split it into fields.

        Splitting happens on unquoted, unescaped whitespace, including whitespace that came
        from a variable's value.

        Args:
            word: the text to expand (may contain several fields).
            env: variables in scope.

        Returns:
            The fields, without empty ones.

        Raises:
            DockerfileError: as :meth:`process_word`.
        """
        return _Scanner(self, word, env).run()[1]

    def process_word_with_matches(self, word: str, env: Mapping[str, str]) -> ExpansionResult:
        """Expand ``word`` and report which variables it used.

        Args:
            word: the word as written in the Dockerfile.
            env: variables in scope.

        Returns:
            The expanded word with the names that were found and not found in ``env``.

        Raises:
            DockerfileError: as :meth:`process_word`.
        """
        if self._is_plain(word):
            return ExpansionResult(word, frozenset(), frozenset())
        scanner = _Scanner(self, word, env)
        result = scanner.run()[0]
        return ExpansionResult(result, frozenset(scanner.matched), frozenset(scanner.unmatched))

    def _is_plain(self, word: str) -> bool:
        # The common case (no $, quote, escape or <): nothing to do, skip the scanner.
        return _plain_pattern(self.escape).search(word) is None and not word.startswith(_BOM)


@lru_cache(maxsize=8)
def _plain_pattern(escape: str) -> re.Pattern[str]:
    return re.compile("[" + re.escape("$'\"<" + escape) + "]")


@lru_cache(maxsize=32)
def _special_pattern(escape: str, quotes: bool, stop: str | None) -> re.Pattern[str]:
    """Characters that end a run of ordinary text in a scan."""
    special = "$<" + escape + ("'\"" if quotes else "") + (stop or "")
    return re.compile("[" + re.escape(special) + "]")


class _Words:
    """Field splitter state for one scan level (BuildKit's wordsStruct)."""

    __slots__ = ("buf", "in_word", "words")

    def __init__(self, buf: list[str]) -> None:
        self.buf = buf
        self.words: list[str] = []
        self.in_word = False

    def add_raw(self, text: str) -> None:
        self.buf.append(text)
        self.in_word = True

    def add_string(self, text: str) -> None:
        # BuildKit adds expanded text one character at a time: a whitespace character ends the
        # current field if it has text, anything else is field text. Same rule, a run at a time.
        if _GO_SPACE_RE.search(text) is None:
            if text:
                self.add_raw(text)
            return
        for index, part in enumerate(_GO_SPACE_RE.split(text)):
            if index and self.in_word and _has_text(self.buf):
                self.words.append("".join(self.buf))
                self.buf.clear()
                self.in_word = False
            if part:
                self.add_raw(part)

    def get_words(self) -> list[str]:
        if _has_text(self.buf):
            self.words.append("".join(self.buf))
            self.buf.clear()
            self.in_word = False
        return self.words


def _has_text(buf: list[str]) -> bool:
    return any(buf)


class _Scanner:
    """One expansion of one word: position, options and the variables seen."""

    __slots__ = (
        "env",
        "escape",
        "lexer",
        "matched",
        "pos",
        "raw_escapes",
        "src",
        "unmatched",
        "word",
        "words_buffer",
    )

    def __init__(self, lexer: Lexer, word: str, env: Mapping[str, str]) -> None:
        self.lexer = lexer
        self.escape = lexer.escape
        self.word = word
        # Go's text/scanner silently drops a byte order mark at the start of its input.
        self.src = word[1:] if word.startswith(_BOM) else word
        self.pos = 0
        self.env = env
        self.raw_escapes = lexer.raw_escapes
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()
        # Shared by every nesting level, as in BuildKit (see the module docstring).
        self.words_buffer: list[str] = []

    # -- character access -------------------------------------------------------------------

    def peek(self) -> str:
        """The next character, or "" at the end."""
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def next(self) -> str:
        """Consume and return the next character, or "" at the end."""
        if self.pos < len(self.src):
            ch = self.src[self.pos]
            self.pos += 1
            return ch
        return ""

    # -- scanning ---------------------------------------------------------------------------

    def run(self) -> tuple[str, list[str]]:
        try:
            return self.stop_on(None, self.raw_escapes)
        except _LexError as err:
            raise DockerfileError(
                f"failed to process {_go_quote(self.word)}: {err.message}"
            ) from None

    def stop_on(self, stop: str | None, raw_escapes: bool) -> tuple[str, list[str]]:
        """Scan until ``stop`` (consumed) or the end; return the text and its fields."""
        result: list[str] = []
        buf = self.words_buffer
        buf.clear()
        words = _Words(buf)
        quotes = not self.lexer.skip_process_quotes
        escape = self.escape
        ordinary_end = _special_pattern(escape, quotes, stop)
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            while self.pos < len(self.src):
                ch = self.src[self.pos]
                if stop is not None and ch == stop:
                    self.pos += 1
                    return "".join(result), words.get_words()
                if ch == "$":
                    text = self.dollar()
                    result.append(text)
                    words.add_string(text)
                elif ch == "<":
                    text = self.possible_heredoc()
                    result.append(text)
                    words.add_raw(text)
                elif quotes and ch == "'":
                    text = self.single_quote()
                    result.append(text)
                    words.add_raw(text)
                elif quotes and ch == '"':
                    text = self.double_quote()
                    result.append(text)
                    words.add_raw(text)
                elif ch == escape:
                    self.pos += 1
                    if raw_escapes:
                        words.add_raw(ch)
                        result.append(ch)
                    ch = self.next()
                    if ch == "":
                        # An escape at the very end escapes nothing and is dropped.
                        break
                    words.add_raw(ch)
                    result.append(ch)
                else:
                    # A run of ordinary characters, taken in one step.
                    found = ordinary_end.search(self.src, self.pos)
                    end = len(self.src) if found is None else found.start()
                    run = self.src[self.pos : end]
                    self.pos = end
                    result.append(run)
                    words.add_string(run)
            if stop is not None:
                raise _LexError(f"unexpected end of statement while looking for matching {stop}")
            return "".join(result), words.get_words()
        finally:
            self.raw_escapes = saved

    def single_quote(self) -> str:
        # Everything up to the next ' is literal; a ' cannot be escaped inside.
        raw = self.lexer.raw_quotes
        start = self.pos + 1
        end = self.src.find("'", start)
        if end < 0:
            self.pos = len(self.src)
            raise _LexError("unexpected end of statement while looking for matching single-quote")
        self.pos = end + 1
        body = self.src[start:end]
        return f"'{body}'" if raw else body

    def double_quote(self) -> str:
        # Literal except $ (expanded) and the escape token before ", $ or itself.
        raw = self.lexer.raw_quotes
        escape = self.escape
        result: list[str] = []
        self.pos += 1
        if raw:
            result.append('"')
        while True:
            ch = self.peek()
            if ch == "":
                raise _LexError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if ch == '"':
                self.pos += 1
                if raw:
                    result.append(ch)
                return "".join(result)
            if ch == "$":
                result.append(self.dollar())
                continue
            self.pos += 1
            if ch == escape:
                if self.raw_escapes:
                    result.append(ch)
                following = self.peek()
                if following == "":
                    # Left for the loop to report the missing closing quote.
                    continue
                if following in ('"', "$", escape):
                    ch = self.next()
            result.append(ch)

    def dollar(self) -> str:
        self.pos += 1
        if self.peek() != "{":
            name = self.name()
            if name == "":
                return "$"
            value, found = self.get_env(name)
            if not found and self.lexer.skip_unset_env:
                return "$" + name
            return value

        self.pos += 1
        first = self.peek()
        if first == "":
            raise _LexError("syntax error: missing '}'")
        if first in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        modifier = ch or _EOF_TEXT
        null_is_unset = False

        if ch == "}":
            value, found = self.get_env(name)
            if not found and self.lexer.skip_unset_env:
                return "${" + name + "}"
            return value
        if ch == "/":
            return self.substitute(name)
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            modifier += ch or _EOF_TEXT
        elif ch not in ("+", "-", "?", "#", "%"):
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")

        # Patterns keep their escapes so the glob conversion can see \* and \?.
        pattern_like = ch in ("#", "%")
        if null_is_unset and pattern_like:
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")
        word = self.stop_on_brace("}", pattern_like, "syntax error: missing '}'")

        value, found = self.get_env(name)
        if self.lexer.skip_unset_env and not found:
            return "${" + name + modifier + word + "}"
        empty = not found or (null_is_unset and value == "")
        if ch == "-":
            return word if empty else value
        if ch == "+":
            return "" if empty else word
        if ch == "?":
            if not found:
                raise _LexError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _LexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("#", "%"):
            # #/% remove the shortest match, ##/%% the longest.
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _LexError(f"unsupported modifier ({modifier}) in substitution")

    def substitute(self, name: str) -> str:
        """``${name/pattern/replacement}`` and ``${name//pattern/replacement}``."""
        replace_all = self.peek() == "/"
        if replace_all:
            self.pos += 1
        pattern = self.stop_on_brace("/", True, "syntax error: missing '/' in ${}")
        replacement = self.stop_on_brace("}", True, "syntax error: missing '}'")

        value, found = self.get_env(name)
        if self.lexer.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = _compile_pattern(pattern, greedy=True, anchored=False)
        if replace_all:
            return _replace_all(regex, value, replacement)
        match = regex.search(value)
        if match is None:
            return value
        return value[: match.start()] + replacement + value[match.end() :]

    def stop_on_brace(self, stop: str, raw_escapes: bool, at_end: str) -> str:
        try:
            return self.stop_on(stop, raw_escapes)[0]
        except _LexError:
            if self.peek() == "":
                raise _LexError(at_end) from None
            raise

    def name(self) -> str:
        # A name is letters, digits and _; a leading digit run or one special parameter
        # character is a complete name on its own ($1x is $1 then "x").
        src = self.src
        start = self.pos
        end = len(src)
        if start < end:
            ch = src[start]
            if ch.isdecimal():
                stop = start + 1
                while stop < end and src[stop].isdecimal():
                    stop += 1
                self.pos = stop
                return src[start:stop]
            if ch in _SPECIAL_PARAMS:
                self.pos += 1
                return ch
        stop = start
        while stop < end:
            ch = src[stop]
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            stop += 1
        self.pos = stop
        return src[start:stop]

    def possible_heredoc(self) -> str:
        self.pos += 1
        if self.peek() != "<":
            return "<"
        self.pos += 1
        start = self.pos
        while self.peek() in _HEREDOC_SPACE:
            self.pos += 1
        return "<<" + self.src[start : self.pos]

    def get_env(self, name: str) -> tuple[str, bool]:
        value = self.env.get(name)
        if value is None:
            self.unmatched.add(name)
            return "", False
        self.matched.add(name)
        return value, True


class _LexError(Exception):
    """Internal: a scan failure, turned into a DockerfileError at the top level."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- glob patterns ---------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _compile_pattern(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """Turn a shell glob (``*``, ``?``, ``\\`` escapes; no brackets) into a regex.

    ``\\}`` and ``\\/`` are the escaped delimiters of ``${}`` and stand for ``}`` and ``/``;
    ``\\*``, ``\\?`` and ``\\\\`` are literal; any other escape is an error, as in BuildKit.
    """
    star = ".*" if greedy else ".*?"
    out: list[str] = []
    # Go's text/scanner drops a leading byte order mark here too.
    chars = pattern[1:] if pattern.startswith(_BOM) else pattern
    i = 0
    n = len(chars)
    while i < n:
        ch = chars[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            following = chars[i] if i < n else ""
            if following in ("}", "/"):
                continue
            i += 1
            if following not in ("*", "?", "\\"):
                raise _LexError(
                    f"invalid pattern ({pattern}) in substitution: "
                    f"invalid escape '\\{following or _EOF_TEXT}'"
                )
            out.append(re.escape(following))
        else:
            out.append(re.escape(ch))
    return re.compile(("^" if anchored else "") + "".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _compile_pattern(pattern, greedy=greedy, anchored=True).match(value)
    return value if match is None else value[match.end() :]


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex cannot find the shortest rightmost match, so reverse both the value and the
    # pattern (keeping escape pairs together) and trim a prefix instead.
    trimmed = _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)
    return trimmed[::-1]


def _reverse_pattern(pattern: str) -> str:
    """Reverse a glob pattern, keeping each ``\\x`` escape pair in order."""
    tokens: list[str] = []
    i = 0
    last = len(pattern) - 1
    while i <= last:
        if pattern[i] == "\\" and i != last:
            tokens.append(pattern[i : i + 2])
            i += 2
        else:
            tokens.append(pattern[i])
            i += 1
    return "".join(reversed(tokens))


def _replace_all(regex: re.Pattern[str], value: str, template: str) -> str:
    """Go's ``Regexp.ReplaceAllString``: empty matches right after a match are skipped."""
    out: list[str] = []
    last_end = 0
    search = 0
    end = len(value)
    while search <= end:
        match = regex.search(value, search)
        if match is None:
            break
        start, stop = match.span()
        out.append(value[last_end:start])
        if stop > last_end or start == 0:
            out.append(_expand_template(template, match.group(0)))
        last_end = stop
        # Always advance by at least one character.
        search = search + 1 if search + 1 > stop else stop
    out.append(value[last_end:])
    return "".join(out)


def _expand_template(template: str, whole: str) -> str:
    """Go's ``Regexp.Expand`` for a pattern whose only group is the whole match."""
    if "$" not in template:
        return template
    out: list[str] = []
    rest = template
    while True:
        before, dollar, after = rest.partition("$")
        if not dollar:
            break
        out.append(before)
        rest = after
        if rest.startswith("$"):
            out.append("$")
            rest = rest[1:]
            continue
        brace = rest.startswith("{")
        i = 1 if brace else 0
        while i < len(rest) and _is_template_name_char(rest[i]):
            i += 1
        name = rest[1 if brace else 0 : i]
        if not name or (brace and not rest.startswith("}", i)):
            # Malformed reference: Go keeps the $ as text.
            out.append("$")
            continue
        rest = rest[i + 1 :] if brace else rest[i:]
        if name == "0":
            out.append(whole)
        # Any other number or name refers to a group that does not exist: nothing.
    out.append(rest)
    return "".join(out)


def _is_template_name_char(ch: str) -> bool:
    return ch == "_" or ch.isalpha() or ch.isdecimal()


def _go_quote(text: str) -> str:
    """Quote like Go's ``%q`` (strconv.Quote) so messages read as BuildKit's do."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in _GO_CHAR_ESCAPES:
            out.append(_GO_CHAR_ESCAPES[ch])
        else:
            code = ord(ch)
            if code < 0x20 or code == 0x7F:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_CHAR_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}
