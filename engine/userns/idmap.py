"""Which IDs a rootless build can use: the user's own ID and its subordinate range.

A user namespace maps container IDs to host IDs. Unprivileged, a process may map only its own
ID (one ID: container root is the user); with ``newuidmap``/``newgidmap`` (Debian's ``uidmap``,
setuid root) it may also map the ranges ``/etc/subuid`` and ``/etc/subgid`` grant it, as rootless
BuildKit, Podman and Docker do::

    container 0         -> host <uid>           (the user: files it creates are the user's)
    container 1..count  -> host <start>..<start+count-1>   (the subordinate range)

With only one ID, ``chown``, ``USER app``, ``COPY --chown`` and archives with several owners
cannot be represented; the engine says so (:class:`~engine.userns.errors.IdMappingError`)
instead of failing with EINVAL.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IdMapping", "IdRange", "current_mapping", "subordinate_ranges"]

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")


@dataclass(frozen=True, slots=True)
class IdRange:
    """``count`` IDs from ``inside`` (container) map to ``outside`` (host), as in uid_map."""

    inside: int
    outside: int
    count: int

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.count}"


@dataclass(frozen=True, slots=True)
class IdMapping:
    """The uid and gid maps of one user namespace."""

    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]

    @property
    def single(self) -> bool:
        """Only one ID is mapped (no subordinate range): container root alone."""
        return sum(r.count for r in self.uids) <= 1 or sum(r.count for r in self.gids) <= 1

    def maps_uid(self, uid: int) -> bool:
        return any(r.inside <= uid < r.inside + r.count for r in self.uids)

    def maps_gid(self, gid: int) -> bool:
        return any(r.inside <= gid < r.inside + r.count for r in self.gids)

    def describe(self) -> str:
        """``0→1001, 1-65536→100000-165535`` (uids; gids when they differ)."""

        def text(ranges: tuple[IdRange, ...]) -> str:
            parts = []
            for r in ranges:
                if r.count == 1:
                    parts.append(f"{r.inside}→{r.outside}")
                else:
                    parts.append(
                        f"{r.inside}-{r.inside + r.count - 1}→{r.outside}-{r.outside + r.count - 1}"
                    )
            return ", ".join(parts)

        uids, gids = text(self.uids), text(self.gids)
        return uids if uids == gids else f"uids {uids}; gids {gids}"

    def encode(self) -> str:
        """For ``NBBUILD_USERNS`` (children of the namespace read it back with :meth:`decode`)."""
        return (
            ";".join(r.line().replace(" ", ",") for r in self.uids)
            + "/"
            + ";".join(r.line().replace(" ", ",") for r in self.gids)
        )

    @classmethod
    def decode(cls, text: str) -> IdMapping:
        def ranges(part: str) -> tuple[IdRange, ...]:
            out = []
            for item in filter(None, part.split(";")):
                a, b, c = (int(x) for x in item.split(","))
                out.append(IdRange(a, b, c))
            return tuple(out)

        uids, _, gids = text.partition("/")
        return cls(ranges(uids), ranges(gids))


def _parse(path: Path, user: str, uid: int) -> list[tuple[int, int]]:
    """The ``start:count`` ranges of ``path`` granted to ``user`` (by name or number)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 3 or fields[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if count > 0:
            found.append((start, count))
    return found


def subordinate_ranges(
    uid: int | None = None, *, subuid: Path = SUBUID, subgid: Path = SUBGID
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The subordinate uid and gid ranges granted to ``uid`` (default: the real uid)."""
    uid = os.getuid() if uid is None else uid
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return _parse(subuid, name, uid), _parse(subgid, name, uid)


def have_newidmap() -> bool:
    """Both setuid helpers of Debian's ``uidmap`` are installed."""
    return shutil.which("newuidmap") is not None and shutil.which("newgidmap") is not None


def current_mapping(*, subuid: Path = SUBUID, subgid: Path = SUBGID) -> IdMapping:
    """The mapping a rootless build of this user gets: its own ID as root, plus its first
    subordinate range from 1 when ``newuidmap``/``newgidmap`` exist and both ranges are set."""
    uid, gid = os.getuid(), os.getgid()
    uids = [IdRange(0, uid, 1)]
    gids = [IdRange(0, gid, 1)]
    sub_u, sub_g = subordinate_ranges(uid, subuid=subuid, subgid=subgid)
    if sub_u and sub_g and have_newidmap():
        uids.append(IdRange(1, sub_u[0][0], sub_u[0][1]))
        gids.append(IdRange(1, sub_g[0][0], sub_g[0][1]))
    return IdMapping(tuple(uids), tuple(gids))
