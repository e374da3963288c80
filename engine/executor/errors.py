"""Errors of the executor (running a RUN step's process in a sandbox)."""

from __future__ import annotations

from engine.errors import NbbuildError

__all__ = ["CapabilityError", "ExecutorError", "SandboxError", "UserLookupError"]


class ExecutorError(NbbuildError):
    """A step's process could not be run (as opposed to: it ran and exited non-zero)."""


class CapabilityError(ExecutorError):
    """This machine cannot run sandboxed steps: no usable runtime, not root, no overlayfs."""


class SandboxError(ExecutorError):
    """The sandbox failed to start (bad spec, mount refused, runtime error).

    Attributes:
        detail: the runtime's own words (last lines of its stderr), for the user.
    """

    def __init__(self, message: str, *, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"{message}: {detail}" if detail else message)


class UserLookupError(ExecutorError):
    """``USER`` names a user or group that the rootfs's /etc/passwd or /etc/group lacks."""
