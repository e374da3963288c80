"""``RUN --mount`` specifications, parsed like BuildKit's ``instructions/commands_runmount.go``.

A mount spec is one CSV record of ``key=value`` fields (``type=cache,target=/root/.cache``).
Values may hold ``$VAR`` references: BuildKit parses the spec once without expanding (only
to reject a variable in ``from=``) and again at conversion time with the stage's variables.
Here :func:`check_unexpanded` is the first pass and :func:`parse_mount` the second; the
converter supplies the word expander. The defaults BuildKit fills in later, in its LLB
conversion (cache id = target, secret target ``/run/secrets/<id>``, file modes ...), are the
``effective_*`` members of :class:`Mount`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import DockerfileError
from engine.frontend.suggest import did_you_mean

__all__ = [
    "MOUNT_TYPES",
    "SHARING_MODES",
    "Mount",
    "check_unexpanded",
    "clean_path",
    "mount_target",
    "parse_mount",
    "parse_ram_bytes",
    "split_csv",
]

Expander = Callable[[str], str]

MOUNT_TYPES: tuple[str, ...] = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES: tuple[str, ...] = ("shared", "private", "locked")

# Every key BuildKit accepts, for the did-you-mean on an unknown key.
_ALL_KEYS = (
    "type", "from", "source", "target", "readonly", "id", "sharing", "required", "size",
    "mode", "uid", "gid", "src", "dst", "destination", "ro", "rw", "readwrite", "env",
)  # fmt: skip

# Defaults for the file a cache, secret or ssh mount shows (BuildKit: setCacheUIDGID,
# dispatchSecret, dispatchSSH).
_DEFAULT_MODE = {"cache": 0o755, "secret": 0o400, "ssh": 0o600}


@dataclass(frozen=True, slots=True)
class Mount:
    """One ``--mount``, after expansion. Fields are what the user wrote (BuildKit's ``Mount``).

    ``read_only`` is already defaulted (true for bind, secret and ssh; false for cache and
    tmpfs). ``cache_sharing``, ``mode``, ``uid``, ``gid`` and ``env`` are empty/None when not
    given; use the ``effective_*`` members for the values BuildKit then uses.
    """

    type: str = "bind"
    from_: str = ""
    source: str = ""
    target: str = ""
    read_only: bool = True
    size_limit: int = 0
    cache_id: str = ""  # the ``id=`` option, whatever the type
    cache_sharing: str = ""
    required: bool = False
    env: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def effective_sharing(self) -> str:
        """Cache sharing mode; BuildKit's default is ``shared``."""
        return self.cache_sharing or "shared"

    @property
    def effective_cache_id(self) -> str:
        """Cache id: the ``id=`` option, else the cleaned target path."""
        return self.cache_id or clean_path(self.target)

    @property
    def secret_id(self) -> str:
        """Secret id: ``source=``, else ``id=``, else the target's base name."""
        return self.source or self.cache_id or posixpath.basename(self.target)

    @property
    def secret_target(self) -> str | None:
        """Where the secret file is mounted, or None for an ``env=``-only secret."""
        if self.target:
            return self.target
        if self.env is not None:
            return None
        return "/run/secrets/" + posixpath.basename(self.secret_id)

    @property
    def ssh_id(self) -> str:
        """SSH agent id; BuildKit's default is ``default``."""
        return self.cache_id or "default"

    def ssh_target(self, index: int) -> str:
        """Socket path of this ssh mount, the ``index``-th ssh mount of its RUN (from 0)."""
        return self.target or f"/run/buildkit/ssh_agent.{index}"

    @property
    def effective_mode(self) -> int | None:
        """File mode: the option, else 0755 (cache), 0400 (secret), 0600 (ssh), else None."""
        if self.mode is not None:
            return self.mode
        return _DEFAULT_MODE.get(self.type)

    @property
    def effective_uid(self) -> int:
        """Owner uid; 0 when not given."""
        return self.uid if self.uid is not None else 0

    @property
    def effective_gid(self) -> int:
        """Owner gid; 0 when not given."""
        return self.gid if self.gid is not None else 0


def clean_path(path: str) -> str:
    """Lexically clean a slash path like Go's ``path.Clean`` (``""`` → ``"."``)."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def mount_target(mount: Mount, workdir: str) -> str:
    """Absolute target of a bind, cache or tmpfs mount; a relative one is under ``workdir``.

    Raises:
        DockerfileError: ``invalid mount target "/"`` when the mount would cover the root
            (no target given and the working directory is ``/``).
    """
    target = mount.target
    if not clean_path(target).startswith("/"):
        target = clean_path("/" + workdir + "/" + target)
    if target == "/":
        raise DockerfileError(f'invalid mount target "{target}"')
    return target


def split_csv(line: str) -> list[str]:
    """Split one CSV record into fields the way Go's ``encoding/csv`` does (strict quotes).

    Raises:
        DockerfileError: on a stray quote, or an empty record (Go reports ``EOF``).
    """
    if line.endswith("\r\n"):
        line = line[:-2]
    elif line.endswith("\n"):
        line = line[:-1]
    if line == "":
        raise DockerfileError("failed to parse csv mounts: EOF")
    fields: list[str] = []
    pos = 0
    n = len(line)
    while True:
        if pos >= n or line[pos] != '"':
            end = line.find(",", pos)
            field = line[pos:] if end < 0 else line[pos:end]
            quote = field.find('"')
            if quote >= 0:
                raise _csv_error(pos + quote, 'bare " in non-quoted-field')
            fields.append(field)
            if end < 0:
                return fields
            pos = end + 1
            continue
        pos += 1
        value: list[str] = []
        while True:
            close = line.find('"', pos)
            if close < 0:
                raise _csv_error(pos, 'extraneous or missing " in quoted-field')
            value.append(line[pos:close])
            pos = close + 1
            if pos < n and line[pos] == '"':
                value.append('"')
                pos += 1
                continue
            if pos < n and line[pos] == ",":
                fields.append("".join(value))
                pos += 1
                break
            if pos >= n:
                fields.append("".join(value))
                return fields
            raise _csv_error(pos - 1, 'extraneous or missing " in quoted-field')


def _csv_error(pos: int, what: str) -> DockerfileError:
    return DockerfileError(
        f"failed to parse csv mounts: parse error on line 1, column {pos + 1}: {what}"
    )


def check_unexpanded(spec: str) -> None:
    """BuildKit's parse-time pass over a raw mount spec: ``from=`` may not use a variable.

    Raises:
        DockerfileError: ``'from' doesn't support variable expansion, define alias stage
            instead``, or a CSV syntax error.
    """
    for field in split_csv(spec):
        key, has_value, value = field.partition("=")
        if not has_value or key.lower() != "from":
            continue
        idx = value.find("$")
        # A trailing "$" is a literal dollar, not a variable.
        if idx != -1 and idx != len(value) - 1:
            raise DockerfileError(
                "'from' doesn't support variable expansion, define alias stage instead"
            )


_GO_BOOL = {
    "1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
    "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False,
}  # fmt: skip


def _parse_go_bool(key: str, value: str) -> bool:
    # strconv.ParseBool accepts exactly these spellings.
    if value not in _GO_BOOL:
        raise DockerfileError(f"invalid value for {key}: {value}")
    return _GO_BOOL[value]


def _parse_uint32(value: str, base: int) -> int | None:
    # strconv.ParseUint(value, base, 32) with an explicit base: digits only, no sign, no prefix.
    digits = "01234567" if base == 8 else "0123456789"
    if value == "" or any(c not in digits for c in value):
        return None
    number = int(value, base)
    return number if number < 1 << 32 else None


def parse_ram_bytes(value: str) -> int:
    """Parse a size like ``64m``, ``1.5GiB``, ``100`` into bytes (docker/go-units RAMInBytes).

    Multipliers are binary (k = 1024). Raises ValueError when the value is not a size.
    """
    sep = max(value.rfind(c) for c in "0123456789. ")
    if sep == -1:
        raise ValueError(f"invalid size: '{value}'")
    if value[sep] != " ":
        number, suffix = value[: sep + 1], value[sep + 1 :]
    else:
        number, suffix = value[:sep], value[sep + 1 :]
    # Python's float() is laxer than Go's ParseFloat (whitespace, "_", "nan", "inf").
    if not re.fullmatch(r"[0-9]*\.?[0-9]*(?:[eE][+-]?[0-9]+)?", number) or number in ("", "."):
        raise ValueError(f"invalid size: '{value}'")
    size = float(number)
    if size == float("inf"):
        # Go's ParseFloat reports "value out of range" for 1e999.
        raise ValueError(f"invalid size: '{value}'")
    if suffix == "":
        return int(size)
    lowered = suffix.lower()
    multipliers = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
    if len(lowered) > 3:
        raise ValueError(f"invalid suffix: '{lowered}'")
    if lowered[0] == "b":
        if len(lowered) > 1:
            raise ValueError(f"invalid suffix: '{lowered}'")
        return int(size)
    if lowered[0] not in multipliers:
        raise ValueError(f"invalid suffix: '{lowered}'")
    if (len(lowered) == 2 and lowered[1] != "b") or (len(lowered) == 3 and lowered[1:] != "ib"):
        raise ValueError(f"invalid suffix: '{lowered}'")
    return int(size * multipliers[lowered[0]])


def parse_mount(spec: str, expand: Expander) -> Mount:
    """Parse one ``--mount`` value, expanding every option value with ``expand``.

    Args:
        spec: the flag value, e.g. ``type=cache,target=/root/.cache,sharing=locked``.
        expand: the word expander for the RUN's variables (identity when there are none).

    Raises:
        DockerfileError: without a location, in BuildKit's words.
    """
    fields = split_csv(spec)
    kind = "bind"
    from_ = source = target = cache_id = sharing = ""
    read_only = True
    read_only_auto = True
    required = False
    size_limit = 0
    env: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    for field in fields:
        raw_key, has_value, value = field.partition("=")
        key = raw_key.lower()
        if not has_value:
            if key in ("readonly", "ro"):
                read_only, read_only_auto = True, False
            elif key in ("readwrite", "rw"):
                read_only, read_only_auto = False, False
            elif key == "required":
                if kind not in ("secret", "ssh"):
                    raise DockerfileError(f"unexpected key '{key}' for mount type '{kind}'")
                required = True
            else:
                raise DockerfileError(f"invalid field '{field}' must be a key=value pair")
            continue

        value = expand(value)
        if key == "type":
            lowered = value.lower()
            if lowered not in MOUNT_TYPES:
                raise DockerfileError(
                    f'unsupported mount type "{value}"',
                    suggestion=did_you_mean(value, MOUNT_TYPES, case_sensitive=True),
                )
            kind = lowered
        elif key == "from":
            from_ = value
        elif key in ("source", "src"):
            source = value
        elif key in ("target", "dst", "destination"):
            target = value
        elif key in ("readonly", "ro"):
            read_only = _parse_go_bool(key, value)
            read_only_auto = False
        elif key in ("readwrite", "rw"):
            read_only = not _parse_go_bool(key, value)
            read_only_auto = False
        elif key == "required":
            if kind not in ("secret", "ssh"):
                raise DockerfileError(f"unexpected key '{key}' for mount type '{kind}'")
            required = _parse_go_bool(key, value)
        elif key == "size":
            if kind != "tmpfs":
                raise DockerfileError(f"unexpected key '{key}' for mount type '{kind}'")
            try:
                size_limit = parse_ram_bytes(value)
            except ValueError:
                raise DockerfileError(f"invalid value for {key}: {value}") from None
        elif key == "id":
            cache_id = value
        elif key == "sharing":
            lowered = value.lower()
            if lowered not in SHARING_MODES:
                raise DockerfileError(
                    f'unsupported sharing value "{value}"',
                    suggestion=did_you_mean(value, SHARING_MODES, case_sensitive=True),
                )
            sharing = lowered
        elif key in ("mode", "uid", "gid"):
            number = _parse_uint32(value, 8 if key == "mode" else 10)
            if number is None:
                raise DockerfileError(f"invalid value {value} for {key}")
            if key == "mode":
                mode = number
            elif key == "uid":
                uid = number
            else:
                gid = number
        elif key == "env":
            env = value
        else:
            raise DockerfileError(
                f"unexpected key '{key}' in '{field}'",
                suggestion=did_you_mean(key, _ALL_KEYS, case_sensitive=True),
            )

    if kind not in ("secret", "ssh", "cache"):
        for name, given in (("mode", mode), ("uid", uid), ("gid", gid)):
            if given is not None:
                raise DockerfileError(f'{name} not allowed for "{kind}" type mounts')

    if read_only_auto:
        read_only = kind not in ("cache", "tmpfs")

    if kind == "secret":
        if from_:
            raise DockerfileError("secret mount should not have a from")
        if sharing:
            raise DockerfileError("secret mount should not define sharing")
        if not source and not target and not cache_id:
            raise DockerfileError("invalid secret mount. one of source, target required")
        if source and cache_id:
            raise DockerfileError("both source and id can't be set")
    if sharing and kind != "cache":
        raise DockerfileError(f"invalid cache sharing set for {kind} mount")
    if kind == "ssh" and source:
        # BuildKit reports this while converting (dispatchSSH); it is as wrong here.
        raise DockerfileError("ssh does not support source")

    return Mount(
        type=kind,
        from_=from_,
        source=source,
        target=target,
        read_only=read_only,
        size_limit=size_limit,
        cache_id=cache_id,
        cache_sharing=sharing,
        required=required,
        env=env,
        mode=mode,
        uid=uid,
        gid=gid,
    )
