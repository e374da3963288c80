"""nbbuild's one error tree.

Every error the engine raises on purpose is an :class:`NbbuildError`::

    NbbuildError
     ├── DockerfileError        a Dockerfile that does not parse or does not make sense
     ├── ContextError           the build context (or a named context) cannot be read
     ├── SourceError            a remote source (http, git, image) cannot be resolved
     ├── UsageError             a bad option or argument from the caller (CLI, API, magic)
     ├── StoreError             the persistent store (meta.db, blobs, snapshots)
     ├── BuildError             a build that could not finish
     │    ├── StepFailed        a RUN exited non-zero (step, line, exit code, last log lines)
     │    ├── BuildCanceled     the build was canceled (Ctrl-C, SIGTERM, API)
     │    └── EntitlementError  --network=host / --security=insecure without --allow
     └── InternalError          a bug in nbbuild: "this should never happen, please file a bug"

User-facing errors carry enough to act on: a ``DockerfileError`` names the file, the line and
the instruction, says what is wrong in BuildKit's own words first, and adds a did-you-mean when
one helps.
"""

from __future__ import annotations

__all__ = [
    "BuildCanceled",
    "BuildError",
    "ContextError",
    "DockerfileError",
    "EntitlementError",
    "InternalError",
    "NbbuildError",
    "SourceError",
    "StepFailed",
    "StoreError",
    "UsageError",
]


class NbbuildError(Exception):
    """Root of every error nbbuild raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross a process boundary (a rootless build runs in a helper process): keep
        # the class, the message and every attribute, whatever the subclass's __init__ takes.
        return (_restore, (type(self), self.args, dict(self.__dict__)))

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


class BuildError(NbbuildError):
    """A build that could not finish."""


class StepFailed(BuildError):
    """A step failed: names the step, its line, the exit code and the last log lines.

    Args:
        step: the step's progress name (``[builder 4/6] RUN make``).
        line: its Dockerfile line.
        message: what failed, in BuildKit's words
            (``process "/bin/sh -c make" did not complete successfully: exit code: 2``).
        exit_code: the process's exit code, when a process ran.
        logs: the last lines the step printed.
        key: the step's cache key.
    """

    def __init__(
        self,
        step: str,
        message: str,
        *,
        line: int | None = None,
        exit_code: int | None = None,
        logs: tuple[str, ...] = (),
        key: str | None = None,
        filename: str = "Dockerfile",
    ) -> None:
        self.step = step
        self.line = line
        self.exit_code = exit_code
        self.logs = logs
        self.key = key
        self.message = message
        self.filename = filename
        where = f" ({filename}:{line})" if line is not None else ""
        text = f"{step}{where}: {message}"
        if logs:
            text += "\n" + "\n".join(f"  | {entry}" for entry in logs)
        super().__init__(text)


class BuildCanceled(BuildError):
    """The build was canceled; the store is left consistent."""


class EntitlementError(BuildError):
    """A step needs an entitlement (``network.host``, ``security.insecure``) not granted."""


class InternalError(NbbuildError):
    """A bug in nbbuild. This should never happen: please file a bug with the message."""


def _restore(cls: type[NbbuildError], args: tuple[object, ...], state: dict[str, object]) -> NbbuildError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error
