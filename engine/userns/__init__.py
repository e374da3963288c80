"""Rootless builds: user namespaces with the user's subordinate ID range.

An unprivileged user's build runs as root of a user namespace (container root is the user;
container IDs 1.. are the user's subordinate range), in a private mount namespace where
overlayfs mounts with ``userxattr``. Snapshot files then belong to IDs the user cannot touch
from outside, so everything that reads or writes them runs inside: the CLI enters a namespace
in-process before it opens the store; a threaded process (a notebook kernel) forwards each
build to a long-lived helper process that lives inside one (:mod:`engine.userns.helper`).
"""

from engine.userns.errors import IdMappingError, UsernsUnavailable
from engine.userns.idmap import IdMapping, IdRange, current_mapping
from engine.userns.namespace import Mode, current, enter, mode, userns_error

__all__ = [
    "IdMapping",
    "IdMappingError",
    "IdRange",
    "Mode",
    "UsernsUnavailable",
    "current",
    "current_mapping",
    "enter",
    "mode",
    "userns_error",
]
