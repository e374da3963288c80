"""nbbuild's one error tree.

Every error the engine raises on purpose is an :class:`NbbuildError`::

    NbbuildError
     ├── DockerfileError        a Dockerfile that does not parse or does not make sense
     ├── ContextError           the build context (or a named context) cannot be read
     ├── SourceError            a remote source (http, git, image) cannot be resolved
     ├── UsageError             a bad option or argument from the caller (CLI, API, magic)
     ├── StoreError             the persistent store (meta.db, blobs, snapshots)
     └── InternalError          a bug in nbbuild: "this should never happen, please file a bug"

User-facing errors carry enough to act on: a ``DockerfileError`` names the file, the line and
the instruction, says what is wrong in BuildKit's own words first, and adds a did-you-mean when
one helps.
"""

from __future__ import annotations

__all__ = [
    "ContextError",
    "DockerfileError",
    "InternalError",
    "NbbuildError",
    "SourceError",
    "StoreError",
    "UsageError",
]


class NbbuildError(Exception):
    """Root of every error nbbuild raises on purpose."""

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing a Python traceback: users see the message,
        # which already says where and what.
        return [f"{type(self).__name__}: {self}"]


class DockerfileError(NbbuildError):
    """A Dockerfile that does not parse, or an instruction that is not valid.

    Args:
        message: what is wrong, in BuildKit's wording where BuildKit has one
            (``unknown instruction: RUNN``).
        filename: the Dockerfile's name as the user knows it.
        line: 1-based line of the instruction (its first line), or None when the error is
            about the whole file.
        instruction: the instruction's original text (first line), if any.
        suggestion: an optional did-you-mean, shown after the message.
    """

    def __init__(
        self,
        message: str,
        *,
        filename: str = "Dockerfile",
        line: int | None = None,
        instruction: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        self.message = message
        self.filename = filename
        self.line = line
        self.instruction = instruction
        self.suggestion = suggestion
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.filename if self.line is None else f"{self.filename}:{self.line}"
        text = f"{where}: {self.message}"
        if self.suggestion:
            text += f" (did you mean {self.suggestion}?)"
        if self.instruction:
            text += f"\n  {self.line if self.line is not None else ''} | {self.instruction}"
        return text

    def with_location(
        self, *, filename: str | None = None, line: int | None = None, instruction: str | None = None
    ) -> DockerfileError:
        """Return a copy with the location filled in where it was missing."""
        return DockerfileError(
            self.message,
            filename=filename if filename is not None else self.filename,
            line=self.line if self.line is not None else line,
            instruction=self.instruction if self.instruction is not None else instruction,
            suggestion=self.suggestion,
        )


class ContextError(NbbuildError):
    """The build context, a named context or a .dockerignore cannot be used."""


class SourceError(NbbuildError):
    """A remote source (HTTP URL, git repository, image reference) cannot be resolved."""


class UsageError(NbbuildError):
    """A bad option or argument from the caller."""


class StoreError(NbbuildError):
    """The persistent store is unusable (unreadable, wrong schema, corrupt)."""


class InternalError(NbbuildError):
    """A bug in nbbuild. This should never happen: please file a bug with the message."""
