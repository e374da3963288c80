"""``--chown`` (and ``WORKDIR`` under ``USER``): names and ids to the owner of what is written.

BuildKit's rules (``llb.WithUser`` on the client, ``readUser`` in the solver):

* ``user[:group]``; ``root`` and decimal numbers are ids and need no lookup;
* a user id alone gives that uid *and* gid; a user name gives the uid and primary gid of its
  ``/etc/passwd`` entry; a group (id or ``/etc/group`` name) then overrides the gid;
* the files are read from the destination (or the input the op names), symlinks resolved inside
  it; a missing file, or a name absent from it, is **not** an error: BuildKit silently keeps 0
  (uid/gid 0 for an unknown user, the user's gid for an unknown group);
* a name lookup with no filesystem to read (a ``scratch`` destination) fails with BuildKit's
  ``invalid user index: -1``; a user file that is not a regular file, or is larger than
  10 MiB, fails too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.fileops.errors import FileOpError
from engine.graph.ops import ChownSpec

__all__ = ["MAX_USER_FILE_BYTES", "Owner", "UserFileReader", "parse_go_int", "resolve_owner"]

# BuildKit's maxUserFileBytes.
MAX_USER_FILE_BYTES = 10 << 20

UserFileReader = Callable[[str], "bytes | None"]
"""Reads ``/etc/passwd`` or ``/etc/group`` of the user database; None when absent."""


@dataclass(frozen=True, slots=True)
class Owner:
    """Numeric owner of written entries.

    Attributes:
        uid: the user id.
        gid: the group id.
        given: how the owner was asked for (``--chown=app:staff``), for errors; not part of
            equality.
    """

    uid: int
    gid: int
    given: str = field(default="", compare=False)

    def needs(self, rel: str) -> str:
        """What giving ``rel`` (a relative image path) this owner needs, for the error a
        user namespace that does not map it gives (``--chown=1000 needs {id} (/app)``)."""
        given = self.given or f"--chown={self.uid}:{self.gid}"
        return f"{given} needs {{id}} (/{rel})"


def parse_go_int(text: str) -> int | None:
    """Go's ``strconv.Atoi``-style decimal (optional sign, ASCII digits), or None."""
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body or not body.isascii() or not body.isdigit():
        return None
    return int(text)


def _parse_id(text: str) -> int | None:
    # llb's parseUID: "root" is 0, otherwise a 32-bit signed decimal; the id then travels as a
    # uint32 (pb.UserOpt_ByID), so -1 arrives as 4294967295.
    if text == "root":
        return 0
    value = parse_go_int(text)
    if value is None or not -(2**31) <= value < 2**31:
        return None
    return value & 0xFFFFFFFF


def _field(parts: list[bytes], index: int) -> int:
    # moby/sys/user: numeric fields with conversion errors ignored (0).
    if index >= len(parts):
        return 0
    value = parse_go_int(parts[index].decode("ascii", "replace"))
    return value if value is not None else 0


def _lookup(data: bytes | None, name: str, field: int, skip_comments: bool) -> list[bytes] | None:
    if data is None:
        return None
    wanted = name.encode("utf-8", "surrogateescape")
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line or (skip_comments and line.startswith(b"#")):
            continue
        parts = line.split(b":")
        if parts[0] == wanted:
            return parts
    return None


def resolve_owner(spec: ChownSpec, read: UserFileReader | None) -> Owner:
    """The uid/gid ``spec`` means, looking names up through ``read``.

    Args:
        spec: the ``--chown`` value (``user`` may still hold ``user:group``).
        read: reader of the user database's files, or None when there is no filesystem to read
            (only ids can be resolved then).

    Raises:
        FileOpError: a name with no user database, or an unreadable user file.
    """
    user, group = spec.user, spec.group
    if not group and ":" in user:
        user, _, group = user.partition(":")
    given = "--chown=" + (f"{user}:{group}" if group else user)
    uid = gid = 0
    by_id = _parse_id(user)
    if by_id is not None:
        uid = gid = by_id
    elif user:  # an empty name marshals as id 0 in llb
        if read is None:
            raise FileOpError("invalid user index: -1")
        entry = _lookup(read("/etc/passwd"), user, 0, skip_comments=False)
        if entry is not None:
            uid, gid = _field(entry, 2), _field(entry, 3)
    if group:
        gid_value = _parse_id(group)
        if gid_value is not None:
            gid = gid_value
        else:
            if read is None:
                raise FileOpError("invalid user index: -1")
            entry = _lookup(read("/etc/group"), group, 0, skip_comments=True)
            if entry is not None:
                gid = _field(entry, 2)
    return Owner(uid, gid, given)
