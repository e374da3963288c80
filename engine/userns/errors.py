"""Errors of rootless execution (user namespaces)."""

from __future__ import annotations

from engine.executor.errors import CapabilityError

__all__ = ["DegradedUnsupported", "IdMappingError", "UsernsUnavailable"]

SETUP_HINT = (
    "rootless builds need a subordinate ID range: install Debian's uidmap "
    "(apt-get install uidmap) and give your user a range, e.g. "
    "`sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER`; "
    "`nbbuild doctor` shows what this host has"
)


class UsernsUnavailable(CapabilityError):
    """This process may not create a user namespace (and is not root): no step can run."""


class IdMappingError(CapabilityError):
    """A step needs a user or group ID that the build's user namespace does not map (only the
    user's own ID is mapped when there is no subordinate range)."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what}, but this rootless build maps only your own ID: {SETUP_HINT}")


class DegradedUnsupported(CapabilityError):
    """A step asks for what the degraded PRoot worker cannot give (no user namespace, so no
    network namespace for ``--network=none`` and no privileges for ``--security=insecure``)."""
