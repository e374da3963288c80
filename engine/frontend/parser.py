"""Dockerfile parser, faithful to BuildKit's (``frontend/dockerfile/parser``).

CONTRACT (the rest of the engine relies on these types; the implementation fills ``parse``).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import DockerfileError

__all__ = ["Directives", "Dockerfile", "Heredoc", "Node", "parse"]


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


def parse(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile ``text``.

    Raises:
        DockerfileError: with file and line, in BuildKit's wording.
    """
    raise DockerfileError("parser not implemented yet", filename=filename)
