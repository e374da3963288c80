"""Running an engine call inside a user namespace on behalf of an unprivileged process."""

from __future__ import annotations

from typing import Any

from engine.userns.errors import UsernsUnavailable

__all__ = ["NO_USERNS_HINT", "forward"]

NO_USERNS_HINT = (
    "without root, nbbuild runs build steps as root of a user namespace, and this host does "
    "not allow one; `nbbuild plan`, what-if and explain work without it, and `nbbuild doctor` "
    "says why and how to fix it"
)

# What failed, by target, for the message (a build unless said here).
_ACTIONS = {"engine.run:run_image_at": "cannot run the image"}


def forward(target: str, *args: Any, **kwargs: Any) -> Any:
    """``target(*args, **kwargs)`` (``"module:function"``) run by a helper inside a user
    namespace (see :mod:`engine.userns.helper`); ``reporter``, ``cancel`` and ``capture`` are
    relayed.

    Raises:
        UsernsUnavailable: this process may not create a user namespace (why, and what still
            works without one).
    """
    from engine.userns.helper import call

    try:
        return call(target, *args, **kwargs)
    except UsernsUnavailable as exc:
        from engine.userns.degraded import hint

        action = _ACTIONS.get(target, "cannot build")
        raise UsernsUnavailable(f"{action}: {exc}; {NO_USERNS_HINT}{hint()}") from None
