"""Dockerfile parser, faithful to BuildKit's (``frontend/dockerfile/parser``).

The parser turns Dockerfile text into a flat list of :class:`Node` s, one per instruction, the way
BuildKit's ``parser.Parse`` does: physical lines are joined on the escape token, comments and
parser directives are dropped, each instruction's arguments are split by the per-instruction rule
BuildKit uses (JSON array, whitespace list, ``name=value`` pairs, ...), and heredoc bodies are
attached to ``RUN``/``COPY``/``ADD``. It does not judge instructions: an unknown instruction is
returned as a node and rejected later by the instruction layer, exactly as BuildKit splits it.

:func:`dump` renders a node in the s-expression format of BuildKit's ``testfiles/*/result``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from engine.errors import DockerfileError

__all__ = ["Directives", "Dockerfile", "Heredoc", "Node", "dump", "dump_file", "parse"]


@dataclass(frozen=True, slots=True)
class Heredoc:
    """One heredoc attached to an instruction (``RUN <<EOF``, ``COPY <<a.txt /dst``)."""

    name: str  # the delimiter word, quotes removed
    content: str  # the body, with the closing delimiter line removed; tabs stripped for <<-
    expand: bool  # False when the delimiter was quoted: no variable expansion in the body
    chomp: bool  # True for <<- (leading tabs were stripped)


@dataclass(frozen=True, slots=True)
class Node:
    """One instruction, as BuildKit's parser gives it.

    ``args`` are the per-instruction parsed strings exactly as BuildKit's test ``result`` files
    show them (``(env "GOPATH" "/go" "")`` → args ``("GOPATH", "/go", "")``).
    """

    instruction: str  # lower-case instruction name, e.g. "run"
    original: str  # the instruction's text as written, continuation lines joined
    flags: tuple[str, ...]  # leading --flags, e.g. ("--from=builder",)
    args: tuple[str, ...]
    json_form: bool  # True when the arguments were a JSON array
    heredocs: tuple[Heredoc, ...]
    start_line: int  # 1-based first line of the instruction
    end_line: int  # 1-based last line (heredoc bodies and continuations included)
    sub: Node | None = None  # the inner instruction of ONBUILD


@dataclass(frozen=True, slots=True)
class Directives:
    """Parser directives found before the first instruction or comment."""

    syntax: str | None = None
    escape: str = "\\"
    check: str | None = None


@dataclass(frozen=True, slots=True)
class Dockerfile:
    """A parsed Dockerfile."""

    filename: str
    nodes: tuple[Node, ...]
    directives: Directives
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# Go's character classes. BuildKit is written in Go; its notion of "space" differs from
# Python's str.isspace() (e.g. Python counts \x1c-\x1f), so the exact sets are spelled out.

# unicode.IsSpace: the Unicode White_Space property.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_GO_SPACE_SET = frozenset(_GO_SPACE)
# reWhitespace in parser.go: `[\t\v\f\r ]+` (deliberately without \n).
_RE_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
# Go RE2's \s is [\t\n\f\r ]; Python's \s would also match \v and Unicode spaces.
_RE_HEREDOC = re.compile(r"^([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")
_RE_DIRECTIVE = re.compile(r"^([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_VALID_DIRECTIVES = frozenset({"syntax", "escape", "check"})
# bufio.Scanner's default limit: a line (with its newline) must fit in 64 KiB.
_MAX_SCAN_TOKEN = 64 * 1024

_HEREDOC_INSTRUCTIONS = frozenset({"add", "copy", "run"})


def _go_trim_space(s: str) -> str:
    return s.strip(_GO_SPACE)


def _is_ascii_space(ch: str) -> bool:
    # BuildKit's flag and HEALTHCHECK scanners test unicode.IsSpace on single bytes; for ASCII
    # that is this set. (For non-ASCII they mis-handle UTF-8; we treat such chars as non-space.)
    return ch in "\t\n\v\f\r "


def go_quote(s: str) -> str:
    """Quote ``s`` like Go's ``strconv.Quote`` (used by BuildKit's ``Node.Dump``).

    Args:
        s: the string to quote.

    Returns:
        The double-quoted string with Go escapes.
    """
    out = ['"']
    for ch in s:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch.isprintable():
            # Go's unicode.IsPrint and Python's isprintable agree: letters, marks, numbers,
            # punctuation, symbols and the ASCII space.
            out.append(ch)
        else:
            out.append(_go_escape_char(ch))
    out.append('"')
    return "".join(out)


_GO_SHORT_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def _go_escape_char(ch: str) -> str:
    short = _GO_SHORT_ESCAPES.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that was not valid UTF-8 (surrogateescape): Go prints the raw byte.
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


# --------------------------------------------------------------------------------------------
# Rendering in BuildKit's test `result` format.


def dump(node: Node) -> str:
    """Render ``node`` as BuildKit's ``Node.Dump`` does for one instruction.

    Args:
        node: a parsed instruction.

    Returns:
        e.g. ``copy ["--from=a"] "/x" "/y"`` or ``onbuild (run "echo")``.
    """
    parts = [node.instruction]
    if node.flags:
        parts.append(" [" + " ".join(go_quote(f) for f in node.flags) + "]")
    if node.sub is not None:
        parts.append(" (" + dump(node.sub) + ")")
    for arg in node.args:
        parts.append(" " + go_quote(arg))
    return _go_trim_space("".join(parts))


def dump_file(dockerfile: Dockerfile) -> str:
    """Render a whole file like BuildKit's ``result.AST.Dump()`` (one ``(...)`` per line).

    Args:
        dockerfile: a parsed Dockerfile.

    Returns:
        The s-expressions, newline-separated, without a trailing newline.
    """
    return _go_trim_space("".join(f"({dump(n)})\n" for n in dockerfile.nodes))


# --------------------------------------------------------------------------------------------
# Errors raised inside the line parsers; parse() adds the location.


class _ParseError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------------------------
# Parsed arguments: what BuildKit keeps in the Node.Next chain.


@dataclass(frozen=True, slots=True)
class _Parsed:
    args: tuple[str, ...] = ()
    json_form: bool = False
    sub: Node | None = None


_LineParser = Callable[[str, str], _Parsed]


def _parse_ignore(rest: str, escape: str) -> _Parsed:
    # BuildKit keeps an empty value node for instructions it does not know.
    return _Parsed(args=("",))


def _parse_words(rest: str, escape: str) -> list[str]:
    """Split on whitespace, keeping quotes and escapes in the words (BuildKit's parseWords)."""
    words: list[str] = []
    in_spaces, in_word, in_quote = 0, 1, 2
    phase = in_spaces
    quote = ""
    blank_ok = False
    buf: list[str] = []
    n = len(rest)
    pos = 0
    while True:
        if pos == n:
            if phase != in_spaces and (blank_ok or buf):
                words.append("".join(buf))
            break
        ch = rest[pos]
        if phase == in_spaces:
            if ch in _GO_SPACE_SET:
                pos += 1
                continue
            phase = in_word
        if phase == in_word:
            if ch in _GO_SPACE_SET:
                phase = in_spaces
                if blank_ok or buf:
                    words.append("".join(buf))
                buf = []
                blank_ok = False
                pos += 1
                continue
            if ch in "'\"":
                quote = ch
                blank_ok = True
                phase = in_quote
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue  # an escape token at the very end is dropped
                # Unquoted: keep the escape and the escaped char, even a quote.
                buf.append(ch)
                pos += 1
                ch = rest[pos]
            buf.append(ch)
            pos += 1
            continue
        # in_quote
        if ch == quote:
            phase = in_word
        if ch == escape and quote != "'":
            if pos + 1 == n:
                phase = in_word
                pos += 1
                continue
            pos += 1
            buf.append(ch)
            ch = rest[pos]
        buf.append(ch)
        pos += 1
    return words


def _parse_name_val(rest: str, key: str, escape: str) -> _Parsed:
    words = _parse_words(rest, escape)
    if not words:
        return _Parsed()
    # Legacy `ENV name value`: decided by whether the first word holds an "=".
    if "=" not in words[0]:
        parts = _RE_WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _ParseError(f"{key} must have two arguments")
        return _Parsed(args=(parts[0], parts[1], ""))
    args: list[str] = []
    for word in words:
        if "=" not in word:
            raise _ParseError(
                f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value"
            )
        name, _, value = word.partition("=")
        args.extend((name, value, "="))
    return _Parsed(args=tuple(args))


def _parse_env(rest: str, escape: str) -> _Parsed:
    return _parse_name_val(rest, "ENV", escape)


def _parse_label(rest: str, escape: str) -> _Parsed:
    return _parse_name_val(rest, "LABEL", escape)


def _parse_name_or_name_val(rest: str, escape: str) -> _Parsed:
    return _Parsed(args=tuple(_parse_words(rest, escape)))


def _parse_strings_whitespace_delimited(rest: str, escape: str) -> _Parsed:
    if rest == "":
        return _Parsed()
    return _Parsed(args=tuple(_RE_WHITESPACE.split(rest)))


def _parse_string(rest: str, escape: str) -> _Parsed:
    if rest == "":
        return _Parsed()
    return _Parsed(args=(rest,))


class _NotJSON(Exception):
    """The text is not a JSON array: callers fall back to the shell form."""


def _reject_constant(name: str) -> object:
    # Go's encoding/json has no NaN/Infinity: such text is not JSON, so it is shell form.
    raise _NotJSON(name)


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        # Go cannot unmarshal it into float64 and reports an error: not JSON for BuildKit.
        raise _NotJSON(text)
    return value


def _parse_json(rest: str) -> _Parsed:
    rest = rest.lstrip(_GO_SPACE)
    if not rest.startswith("["):
        raise _NotJSON(rest)
    try:
        value = json.loads(rest, parse_constant=_reject_constant, parse_float=_parse_float)
    except (ValueError, RecursionError) as exc:
        raise _NotJSON(rest) from exc
    if not isinstance(value, list):
        raise _NotJSON(rest)
    if not all(isinstance(item, str) for item in value):
        raise _ParseError("when using JSON array syntax, arrays must be comprised of strings only")
    return _Parsed(args=tuple(value), json_form=True)


def _parse_maybe_json(rest: str, escape: str) -> _Parsed:
    if rest == "":
        return _Parsed()
    try:
        return _parse_json(rest)
    except _NotJSON:
        return _Parsed(args=(rest,))


def _parse_maybe_json_to_list(rest: str, escape: str) -> _Parsed:
    try:
        return _parse_json(rest)
    except _NotJSON:
        return _parse_strings_whitespace_delimited(rest, escape)


def _parse_health_config(rest: str, escape: str) -> _Parsed:
    sep = 0
    n = len(rest)
    while sep < n and not _is_ascii_space(rest[sep]):
        sep += 1
    nxt = sep
    while nxt < n and _is_ascii_space(rest[nxt]):
        nxt += 1
    if sep == 0:
        return _Parsed()
    cmd = _parse_maybe_json(rest[nxt:], escape)
    return _Parsed(args=(rest[:sep], *cmd.args), json_form=cmd.json_form)


def _parse_sub_command(rest: str, escape: str) -> _Parsed:
    if rest == "":
        return _Parsed()
    return _Parsed(sub=_node_from_line(rest, escape, 0, 0))


_DISPATCH: dict[str, _LineParser] = {
    "add": _parse_maybe_json_to_list,
    "arg": _parse_name_or_name_val,
    "cmd": _parse_maybe_json,
    "copy": _parse_maybe_json_to_list,
    "entrypoint": _parse_maybe_json,
    "env": _parse_env,
    "expose": _parse_strings_whitespace_delimited,
    "from": _parse_strings_whitespace_delimited,
    "healthcheck": _parse_health_config,
    "label": _parse_label,
    "maintainer": _parse_string,
    "onbuild": _parse_sub_command,
    "run": _parse_maybe_json,
    "shell": _parse_maybe_json,
    "stopsignal": _parse_string,
    "user": _parse_string,
    "volume": _parse_maybe_json_to_list,
    "workdir": _parse_string,
}


def _extract_builder_flags(line: str, escape: str) -> tuple[str, list[str]]:
    """Take the leading ``--flag`` words off ``line`` (BuildKit's extractBuilderFlags).

    Unlike argument words, quotes and escapes are removed from flag words.
    """
    words: list[str] = []
    in_spaces, in_word, in_quote = 0, 1, 2
    phase = in_spaces
    buf: list[str] = []
    quote = ""
    blank_ok = False
    n = len(line)
    pos = 0
    while pos <= n:
        ch = line[pos] if pos < n else ""
        if phase == in_spaces:
            if pos == n:
                break
            if _is_ascii_space(ch):
                pos += 1
                continue
            if ch != "-" or pos + 1 == n or line[pos + 1] != "-":
                return line[pos:], words
            phase = in_word
        if pos == n:
            word = "".join(buf)
            if word != "--" and (blank_ok or word):
                words.append(word)
            break
        if phase == in_word:
            if _is_ascii_space(ch):
                word = "".join(buf)
                phase = in_spaces
                if word == "--":
                    return line[pos:], words
                if blank_ok or word:
                    words.append(word)
                buf = []
                blank_ok = False
                pos += 1
                continue
            if ch in "'\"":
                quote = ch
                blank_ok = True
                phase = in_quote
                pos += 1
                continue
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue
                pos += 1
                ch = line[pos]
            buf.append(ch)
            pos += 1
            continue
        # in_quote
        if ch == quote:
            phase = in_word
            pos += 1
            continue
        if ch == escape:
            if pos + 1 == n:
                phase = in_word
                pos += 1
                continue
            pos += 1
            ch = line[pos]
        buf.append(ch)
        pos += 1
    return "", words


def _split_command(line: str, escape: str) -> tuple[str, list[str], str]:
    cmdline = _RE_WHITESPACE.split(_go_trim_space(line), maxsplit=1)
    args = ""
    flags: list[str] = []
    if len(cmdline) == 2:
        args, flags = _extract_builder_flags(cmdline[1], escape)
    return cmdline[0], flags, _go_trim_space(args)


def _node_from_line(line: str, escape: str, start: int, end: int) -> Node:
    cmd, flags, args = _split_command(line, escape)
    fn = _DISPATCH.get(cmd.lower(), _parse_ignore)
    parsed = fn(args, escape)
    return Node(
        instruction=cmd.lower(),
        original=line,
        flags=tuple(flags),
        args=parsed.args,
        json_form=parsed.json_form,
        heredocs=(),
        start_line=start,
        end_line=end,
        sub=parsed.sub,
    )


def _can_contain_heredoc(node: Node) -> bool:
    target = node.sub if node.instruction == "onbuild" and node.sub is not None else node
    return target.instruction in _HEREDOC_INSTRUCTIONS and not target.json_form


# --------------------------------------------------------------------------------------------
# Heredoc words. BuildKit finds heredocs by running its shell lexer over the line with empty
# variables left unexpanded; this is the subset of that lexer the detection depends on.


class _LexError(Exception):
    pass


class _WordLexer:
    """BuildKit's ``shell.Lex`` word splitting, escape ``\\``, no variables set."""

    def __init__(self, raw_quotes: bool, raw_escapes: bool) -> None:
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.src = ""
        self.pos = 0
        # Go's shellWord shares one word buffer across nested processStopOn calls (a nested
        # ${...} resets it); sharing it here keeps the same word boundaries.
        self.wbuf: list[str] = []

    def process_words(self, src: str) -> list[str]:
        self.src = src
        self.pos = 0
        self.wbuf = []
        try:
            _, words = self._stop_on(None, self.raw_escapes)
        except _LexError as exc:
            raise _LexError(f"failed to process {go_quote(src)}: {exc}") from None
        return words

    def _peek(self) -> str | None:
        return self.src[self.pos] if self.pos < len(self.src) else None

    def _next(self) -> str | None:
        if self.pos < len(self.src):
            ch = self.src[self.pos]
            self.pos += 1
            return ch
        return None

    def _stop_on(self, stop: str | None, raw_escapes: bool) -> tuple[str, list[str]]:
        result: list[str] = []
        wbuf = self.wbuf
        wbuf.clear()
        words: list[str] = []
        in_word = False

        def add_char(ch: str) -> None:
            nonlocal in_word
            if ch in _GO_SPACE_SET:
                if in_word and wbuf:
                    words.append("".join(wbuf))
                    wbuf.clear()
                    in_word = False
            else:
                wbuf.append(ch)
                in_word = True

        def get_words() -> list[str]:
            nonlocal in_word
            if wbuf:
                words.append("".join(wbuf))
                wbuf.clear()
                in_word = False
            return words

        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            while (ch := self._peek()) is not None:
                if stop is not None and ch == stop:
                    self._next()
                    return "".join(result), get_words()
                if ch in "$<'\"":
                    if ch == "$":
                        tmp = self._dollar()
                        result.append(tmp)
                        for c in tmp:
                            add_char(c)
                        continue
                    if ch == "<":
                        tmp = self._possible_heredoc()
                    elif ch == "'":
                        tmp = self._single_quote()
                    else:
                        tmp = self._double_quote()
                    result.append(tmp)
                    wbuf.append(tmp)
                    in_word = True
                    continue
                self._next()
                if ch == "\\":
                    if self.raw_escapes:
                        wbuf.append(ch)
                        in_word = True
                        result.append(ch)
                    nxt = self._next()
                    if nxt is None:
                        break
                    wbuf.append(nxt)
                    in_word = True
                    result.append(nxt)
                    continue
                add_char(ch)
                result.append(ch)
        finally:
            self.raw_escapes = saved
        if stop is not None:
            raise _LexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), get_words()

    def _single_quote(self) -> str:
        out: list[str] = []
        ch = self._next()
        if self.raw_quotes and ch is not None:
            out.append(ch)
        while True:
            ch = self._next()
            if ch is None:
                raise _LexError(
                    "unexpected end of statement while looking for matching single-quote"
                )
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def _double_quote(self) -> str:
        out: list[str] = []
        ch = self._next()
        if self.raw_quotes and ch is not None:
            out.append(ch)
        while True:
            peek = self._peek()
            if peek is None:
                raise _LexError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if peek == '"':
                self._next()
                if self.raw_quotes:
                    out.append(peek)
                return "".join(out)
            if peek == "$":
                out.append(self._dollar())
                continue
            c = self._next()
            assert c is not None
            if c == "\\":
                if self.raw_escapes:
                    out.append(c)
                after = self._peek()
                if after is None:
                    continue
                if after in '"$\\':
                    c = self._next()
                    assert c is not None
            out.append(c)

    def _name(self) -> str:
        name: list[str] = []
        while (ch := self._peek()) is not None:
            if not name and ch.isdecimal():
                while (d := self._peek()) is not None and d.isdecimal():
                    name.append(d)
                    self._next()
                return "".join(name)
            if not name and ch in "@*#?-$!0":
                self._next()
                return ch
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            self._next()
            name.append(ch)
        return "".join(name)

    def _dollar(self) -> str:
        self._next()
        if self._peek() != "{":
            name = self._name()
            # No variable is ever set here, and unset ones are kept as written.
            return "$" + name
        self._next()
        peek = self._peek()
        if peek is None:
            raise _LexError("syntax error: missing '}'")
        if peek in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self._name()
        ch = self._next()
        chs = "\ufffd" if ch is None else ch
        if ch == "}":
            return "${" + name + "}"
        if ch == ":" or (ch is not None and ch in "+-?#%"):
            null_is_unset = ch == ":"
            if null_is_unset:
                ch = self._next()
                chs += "\ufffd" if ch is None else ch
            raw = ch is not None and ch in "#%"
            if null_is_unset and raw:
                raise _LexError(f"unsupported modifier ({chs}) in substitution")
            try:
                word, _ = self._stop_on("}", raw)
            except _LexError:
                if self._peek() is None:
                    raise _LexError("syntax error: missing '}'") from None
                raise
            return "${" + name + chs + word + "}"
        if ch == "/":
            if self._peek() == "/":
                self._next()
            try:
                pattern, _ = self._stop_on("/", True)
            except _LexError:
                if self._peek() is None:
                    raise _LexError("syntax error: missing '/' in ${}") from None
                raise
            try:
                replacement, _ = self._stop_on("}", True)
            except _LexError:
                if self._peek() is None:
                    raise _LexError("syntax error: missing '}'") from None
                raise
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        raise _LexError(f"unsupported modifier ({chs}) in substitution")

    def _possible_heredoc(self) -> str:
        self._next()
        if self._peek() != "<":
            return "<"
        self._next()
        space: list[str] = []
        while (ch := self._peek()) is not None and ch in "\t\r ":
            space.append(ch)
            self._next()
        return "<<" + "".join(space)


def _heredoc_from_word(word: str) -> Heredoc | None:
    """Return the heredoc a shell word such as ``<<-'EOF'`` introduces, or None."""
    match = _RE_HEREDOC.match(word)
    if match is None:
        return None
    chomp = match.group(2) == "-"
    rest = match.group(3)
    if rest == "":
        return None
    try:
        words = _WordLexer(raw_quotes=False, raw_escapes=False).process_words(rest)
    except _LexError as exc:
        raise _ParseError(str(exc)) from None
    if len(words) != 1:
        return None
    try:
        words_raw = _WordLexer(raw_quotes=True, raw_escapes=False).process_words(rest)
    except _LexError as exc:
        raise _ParseError(str(exc)) from None
    if len(words_raw) != len(words):
        raise _ParseError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    name = words[0]
    raw = words_raw[0]
    # Quotes that disappear when quotes are processed mean part of the word was quoted:
    # then the body is not expanded, as in a shell.
    expand = name.count("'") + name.count('"') == raw.count("'") + raw.count('"')
    return Heredoc(name=name, content="", expand=expand, chomp=chomp)


def _heredocs_from_line(line: str) -> list[Heredoc]:
    try:
        words = _WordLexer(raw_quotes=True, raw_escapes=True).process_words(line)
    except _LexError:
        # BuildKit ignores lexing errors here: such a line simply has no heredocs.
        words = []
    docs: list[Heredoc] = []
    for word in words:
        doc = _heredoc_from_word(word)
        if doc is not None:
            docs.append(doc)
    return docs


_RE_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)


def _chomp(content: str) -> str:
    # (?m)^ matches after "\n" only, in Go as in Python.
    return _RE_LEADING_TABS.sub("", content)


# --------------------------------------------------------------------------------------------
# Line scanning.


def _trim_newline(line: str) -> str:
    return line.rstrip("\r\n")


def _is_comment(line: str) -> bool:
    return line.lstrip(_GO_SPACE).startswith("#")


def _trim_continuation(line: str, escape: str) -> tuple[str, bool]:
    """Strip a trailing escape token; return the line and whether the instruction ends here.

    Same as BuildKit's regex ``([^E])E[ \\t]*$|^E[ \\t]*$``: an escape token followed only by
    blanks continues the line, unless it is itself escaped.
    """
    stripped = line.rstrip(" \t")
    if not stripped.endswith(escape):
        return line, True
    if len(stripped) == 1:
        return "", False
    if stripped[-2] == escape:
        return line, True
    return stripped[:-1], False


class _Scanner:
    """Physical lines with their newline, like Go's bufio.Scanner with BuildKit's scanLines."""

    def __init__(self, text: str) -> None:
        lines = text.split("\n")
        self.lines = [line + "\n" for line in lines[:-1]]
        if lines[-1]:
            self.lines.append(lines[-1])
        self.index = 0
        self.too_long = False

    def scan(self) -> str | None:
        if self.too_long or self.index >= len(self.lines):
            return None
        line = self.lines[self.index]
        # Over 64 KiB (incl. newline) Go's scanner stops with ErrTooLong; cheap length test
        # first so that ordinary lines are never encoded.
        if len(line) * 4 > _MAX_SCAN_TOKEN and len(line.encode("utf-8", "surrogateescape")) > (
            _MAX_SCAN_TOKEN if line.endswith("\n") else _MAX_SCAN_TOKEN - 1
        ):
            self.too_long = True
            return None
        self.index += 1
        return line


class _DirectiveParser:
    """BuildKit's DirectiveParser: ``# key=value`` lines before anything else."""

    def __init__(self, comment: str = "#") -> None:
        self.comment = comment
        self.seen: dict[str, str] = {}
        self.done = False

    def parse_line(self, line: str) -> tuple[str, str] | None:
        if self.done:
            return None
        if not line.startswith(self.comment):
            self.done = True
            return None
        match = _RE_DIRECTIVE.match(line[len(self.comment) :].lstrip(_GO_SPACE))
        if match is None:
            self.done = True
            return None
        key = match.group(1).lower()
        if key not in _VALID_DIRECTIVES:
            self.done = True
            return None
        if key in self.seen:
            raise _ParseError(f"only one {key} parser directive can be used")
        self.seen[key] = match.group(2)
        return key, match.group(2)


def _detect_directive(text: str, key: str, comments: tuple[str, ...]) -> str | None:
    """The value of directive ``key`` as BuildKit's DetectSyntax/ParseDirective find it.

    Unlike the main parse loop, this skips a ``#!`` shebang line and (for ``syntax``) also
    accepts ``//`` comments.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    first, sep, rest = text.partition("\n")
    if first.startswith("#!"):
        text = rest if sep else ""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    for comment in comments:
        parser = _DirectiveParser(comment)
        found: str | None = None
        for line in lines:
            if parser.done:
                break
            try:
                directive = parser.parse_line(line)
            except _ParseError:
                break
            if directive is not None and directive[0] == key and found is None:
                found = directive[1]
        if found is not None:
            return found
    return None


def parse(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile ``text`` the way BuildKit's ``parser.Parse`` does.

    Args:
        text: the Dockerfile's content.
        filename: the name used in error messages.

    Returns:
        The instructions, the parser directives and BuildKit's warnings (empty continuation
        lines).

    Raises:
        DockerfileError: with file and line, in BuildKit's wording (``file with no
            instructions``, ``unterminated heredoc``, ``ENV must have two arguments``, ...).
    """
    escape = "\\"
    directive_parser = _DirectiveParser()
    scanner = _Scanner(text)
    nodes: list[Node] = []
    warnings: list[str] = []
    current_line = 0

    def fail(message: str, line: int | None, instruction: str | None = None) -> DockerfileError:
        first = None if instruction is None else instruction.split("\n", 1)[0]
        return DockerfileError(message, filename=filename, line=line, instruction=first)

    def process_line(raw: str, strip_left: bool) -> str:
        nonlocal escape
        token = _trim_newline(raw)
        if strip_left:
            token = token.lstrip(_GO_SPACE)
        try:
            directive = directive_parser.parse_line(token)
        except _ParseError as exc:
            raise fail(exc.message, current_line + 1, token) from None
        if directive is not None and directive[0] == "escape":
            if directive[1] not in ("`", "\\"):
                raise fail(
                    f"invalid escape token '{directive[1]}' does not match ` or \\",
                    current_line + 1,
                    token,
                )
            escape = directive[1]
        return "" if _is_comment(token) else token

    while (raw := scanner.scan()) is not None:
        if current_line == 0 and raw.startswith("\ufeff"):
            raw = raw[1:]
        line_text = process_line(raw, strip_left=True)
        current_line += 1
        start_line = current_line
        line_text, end_of_line = _trim_continuation(line_text, escape)
        if end_of_line and line_text == "":
            continue
        parts = [line_text]
        has_empty_continuation = False
        while not end_of_line and (raw := scanner.scan()) is not None:
            line_text = process_line(raw, strip_left=False)
            current_line += 1
            if _is_comment(raw):
                continue
            if _trim_newline(line_text).lstrip(_GO_SPACE) == "":
                has_empty_continuation = True
                continue
            line_text, end_of_line = _trim_continuation(line_text, escape)
            parts.append(line_text)
        line = "".join(parts)

        if has_empty_continuation:
            warnings.append("Empty continuation line found in: " + line)

        try:
            node = _node_from_line(line, escape, start_line, current_line)
        except _ParseError as exc:
            raise fail(exc.message, start_line, line) from None

        heredocs: list[Heredoc] = []
        if _can_contain_heredoc(node) and "<<" in line:
            try:
                found = _heredocs_from_line(line)
            except _ParseError as exc:
                raise fail(exc.message, start_line, line) from None
            for doc in found:
                body: list[str] = []
                terminated = False
                while (raw := scanner.scan()) is not None:
                    current_line += 1
                    candidate = _trim_newline(raw)
                    if doc.chomp:
                        candidate = candidate.lstrip("\t")
                    if candidate == doc.name:
                        terminated = True
                        break
                    body.append(raw)
                if not terminated:
                    raise fail("unterminated heredoc", start_line, line)
                content = "".join(body)
                # BuildKit strips <<- tabs when the instruction is dispatched; our contract
                # hands out the stripped body directly.
                if doc.chomp:
                    content = _chomp(content)
                heredocs.append(
                    Heredoc(name=doc.name, content=content, expand=doc.expand, chomp=doc.chomp)
                )
        if heredocs or current_line != node.end_line or node.sub is not None:
            sub = node.sub
            if sub is not None:
                # The inner instruction of ONBUILD spans the same lines as ONBUILD itself.
                sub = replace(sub, start_line=start_line, end_line=current_line)
            node = replace(node, heredocs=tuple(heredocs), end_line=current_line, sub=sub)
        nodes.append(node)

    if not nodes:
        raise fail("file with no instructions", current_line or None)
    if scanner.too_long:
        raise fail(
            f"dockerfile line greater than max allowed size of {_MAX_SCAN_TOKEN - 1}",
            current_line + 1,
        )

    directives = Directives(
        syntax=_detect_directive(text, "syntax", ("#", "//")),
        escape=escape,
        check=_detect_directive(text, "check", ("#",)),
    )
    return Dockerfile(
        filename=filename,
        nodes=tuple(nodes),
        directives=directives,
        warnings=tuple(warnings),
    )
