"""Resolving ``USER`` against the rootfs's /etc/passwd and /etc/group.

Semantics follow moby/sys/user ``GetExecUser`` as BuildKit uses it (``executor/oci/user.go``):
``uid:gid`` both numeric takes a fast path without reading any file; otherwise the user is
looked up by name or uid, numeric ids absent from the files are used as they are, names absent
from them are errors. Supplementary groups come from /etc/group membership only when no group
is given. The files are read through a :class:`~engine.snapshot.layers.LayerView`, so symlinks
in the rootfs never lead outside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.executor.errors import UserLookupError
from engine.snapshot.layers import LayerView

__all__ = ["ResolvedUser", "resolve_user"]

_MAX_ID = 2**32 - 1


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str


def _parse_id(text: str) -> int | None:
    if text == "root":
        return 0
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= _MAX_ID else None


def _rows(data: bytes | None, fields: int) -> list[list[str]]:
    if data is None:
        return []
    rows: list[list[str]] = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        parts += [""] * (fields - len(parts))
        rows.append(parts)
    return rows


def resolve_user(view: LayerView, user: str) -> ResolvedUser:
    """Resolve ``user`` (``""``, ``name``, ``uid``, ``name:group``, ``uid:gid``) in ``view``."""
    is_default = user == ""
    spec = user or "0"
    name, _, group = spec.partition(":")
    has_group = ":" in spec

    if has_group:
        uid_fast, gid_fast = _parse_id(name), _parse_id(group)
        if uid_fast is not None and gid_fast is not None:
            home = _home_for_uid(view, uid_fast)
            return ResolvedUser(uid_fast, gid_fast, (gid_fast,), home)

    passwd = _rows(view.read_file("/etc/passwd"), 7)
    uid, gid, home = 0, 0, "/"
    numeric = _parse_id(name)
    entry = next(
        (r for r in passwd if r[0] == name or (numeric is not None and _parse_id(r[2]) == numeric)),
        None,
    )
    if entry is not None:
        parsed_uid, parsed_gid = _parse_id(entry[2]), _parse_id(entry[3])
        if parsed_uid is None or parsed_gid is None:
            raise UserLookupError(f"bad /etc/passwd entry for user {name}")
        uid, gid, home = parsed_uid, parsed_gid, entry[5] or "/"
        username = entry[0]
    elif numeric is not None:
        uid, username = numeric, ""
    elif is_default:
        return ResolvedUser(0, 0, (0,), "/")
    else:
        raise UserLookupError(f"unable to find user {name}: no matching entries in passwd file")

    groups = _rows(view.read_file("/etc/group"), 4)
    extra: list[int] = []
    if has_group:
        gnum = _parse_id(group)
        grow = next(
            (r for r in groups if r[0] == group or (gnum is not None and _parse_id(r[2]) == gnum)),
            None,
        )
        if grow is not None and _parse_id(grow[2]) is not None:
            gid = _parse_id(grow[2]) or 0
        elif gnum is not None:
            gid = gnum
        else:
            raise UserLookupError(
                f"unable to find group {group}: no matching entries in group file"
            )
    elif username:
        for r in groups:
            members = [m.strip() for m in r[3].split(",") if m.strip()]
            member_gid = _parse_id(r[2])
            if username in members and member_gid is not None and member_gid not in extra:
                extra.append(member_gid)
    # like containerd: the primary gid is always among the additional gids
    gids = tuple(dict.fromkeys([gid, *extra]))
    return ResolvedUser(uid, gid, gids, home)


def _home_for_uid(view: LayerView, uid: int) -> str:
    for r in _rows(view.read_file("/etc/passwd"), 7):
        if _parse_id(r[2]) == uid:
            return r[5] or "/"
    return "/"
