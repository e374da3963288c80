"""What this host can do for a build, and what to change where it cannot (``nbbuild doctor``).

:func:`probe` looks at the things a build depends on and returns one :class:`Finding` per
topic, each saying what was found, what that means for builds, and how to fix it when it
needs fixing:

- **user**: root, root of a user namespace, or a normal user (whose builds run rootless: as
  root of a user namespace mapped to the user's own ID and subordinate range);
- **user namespaces**: whether this process may create one, and if not, why (the sysctls
  ``user.max_user_namespaces``, Debian's ``kernel.unprivileged_userns_clone``, Ubuntu's
  ``kernel.apparmor_restrict_unprivileged_userns``, a seccomp filter, the kernel's errno);
- **ID mapping**: which IDs a rootless build maps (``/etc/subuid``/``/etc/subgid`` ranges of
  the user, by name or uid; ``newuidmap``/``newgidmap`` present and setuid; no_new_privs),
  tried for real the way a build enters its namespace;
- **overlayfs**: whether an overlay can be mounted over directories on the store's filesystem
  (tried for real, in a private mount namespace that vanishes with the probe; for a normal
  user in a user namespace, with ``userxattr``, as rootless builds mount it); where it cannot,
  RUN steps run over copies of the layers (:mod:`engine.snapshot.snapshotter`): a warning;
- **runtimes**: crun, runc and bwrap with their versions, and which one RUN uses;
- **sandbox**: which executor and runtime a build uses here (root: crun or runc; rootless:
  runc in a user namespace; where user namespaces are refused and ``proot`` is installed, the
  degraded PRoot worker, :mod:`engine.userns.degraded`, tried for real), or why RUN steps are
  refused;
- **cgroups**: the layout (v2, v1, hybrid) and what nbbuild does about it;
- **graphviz**: ``dot`` for SVG graphs (without it graphs are drawn as text and HTML);
- **store**: where the store is and why there, its size, filesystem (network filesystems
  break SQLite's WAL and overlay upper dirs), free space and permissions.

Every probe is cheap (well under a second in all) and changes nothing: trial mounts and
namespaces live in short-lived child processes, trial directories are removed. ``/proc`` and
``/etc`` are parameters so tests can show what another host looks like (trials are then
skipped).
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    from engine.executor.runtime import Runtime

__all__ = ["Finding", "Report", "Status", "mount_of", "probe", "probe_user_namespaces"]

Status: TypeAlias = Literal["ok", "info", "warn", "fail"]
_Mode: TypeAlias = Literal["root", "inside", "outside"]

_GB = 1_000_000_000
_LOW_FREE = 2 * _GB
# Network filesystems: SQLite's WAL needs shared memory they do not provide, and overlayfs
# refuses their directories as upper dirs.
_NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "vboxsf", "ceph", "afs", "lustre"}
)
# Other filesystems whose directories overlayfs cannot use as upper dirs.
_BAD_UPPER = frozenset({"overlay", "fuse", "aufs", "ecryptfs"})
_ROOTLESS_OVERLAY_KERNEL = (5, 11)
_SUBID_COUNT = 65536
_SUBID_FIRST = 100000
# The overlay options the engine mounts with (engine.snapshot.overlay), as root and rootless.
_ROOT_OPTIONS = "index=off,redirect_dir=off,metacopy=off"
_ROOTLESS_OPTIONS = "index=off,redirect_dir=nofollow,metacopy=off,userxattr"

# In a child interpreter (the parent, which may have threads, must not change its own
# namespaces; os.unshare only exists from Python 3.12): a user and mount namespace mapping
# this user alone, made private as a build's is. Prints the errno and the stage that failed.
_USERNS_SCRIPT = """\
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.geteuid(), os.getegid()
def fail(stage):
    print(ctypes.get_errno(), stage)
    raise SystemExit(1)
if libc.unshare(0x10000000 | 0x00020000) != 0:
    fail("unshare")
try:
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")
except OSError as exc:
    print(exc.errno, "uid_map")
    raise SystemExit(1)
if libc.mount(b"none", b"/", None, 0x4000 | (1 << 18), None) != 0:
    fail("mount")
print(0, "ok")
"""
# The mapping a rootless build gets, entered the way builds enter it; prints the uid_map.
_IDMAP_SCRIPT = """\
from engine.userns.idmap import current_mapping
from engine.userns.namespace import enter
enter(current_mapping())
with open("/proc/self/uid_map") as f:
    print(f.read())
"""
# What RUN steps do where overlayfs is refused (engine.snapshot.snapshotter chooses it).
_COPY_SNAPSHOTTER = (
    "run over a copy of the image layers instead (the copy snapshotter, chosen automatically: "
    "slower, and more space while a step runs)"
)
_OVERLAY_SCRIPT = 'mount -t overlay overlay -o "$1" "$2" && touch "$2/probe" && umount "$2"'


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the doctor looked at.

    Attributes:
        topic: what was looked at (``user``, ``overlayfs``, ``store``, …).
        status: ``ok``; ``info`` (worth knowing, nothing to do); ``warn`` (works, with a
            limit); ``fail`` (builds cannot do something until it is fixed).
        found: what was found, briefly (``root (uid 0)``, ``crun 1.8.1``).
        meaning: what that means for builds.
        fix: how to change it; empty when there is nothing to fix.
    """

    topic: str
    status: Status
    found: str
    meaning: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        """A JSON-ready dict."""
        return {
            "topic": self.topic,
            "status": self.status,
            "found": self.found,
            "meaning": self.meaning,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class Report:
    """Everything :func:`probe` found, in a fixed order of topics."""

    findings: tuple[Finding, ...]

    def __getitem__(self, topic: str) -> Finding:
        for finding in self.findings:
            if finding.topic == topic:
                return finding
        raise KeyError(topic)

    @property
    def can_run(self) -> bool:
        """RUN steps can execute here (the sandbox can start)."""
        return self["sandbox"].status != "fail"

    @property
    def failed(self) -> bool:
        """Some finding is ``fail`` (``nbbuild doctor`` then exits with 1)."""
        return any(f.status == "fail" for f in self.findings)

    @property
    def problems(self) -> tuple[Finding, ...]:
        """The findings that are ``warn`` or ``fail``."""
        return tuple(f for f in self.findings if f.status in ("warn", "fail"))

    def text(self) -> str:
        """One line per finding (``[ok] topic  found: meaning``), a ``fix:`` line under it
        where there is something to do, and a last line with the verdict."""
        width = max(len(f.topic) for f in self.findings)
        lines = []
        for f in self.findings:
            lines.append(
                f"[{f.status}]".ljust(7) + f"{f.topic.ljust(width)}  {f.found}: {f.meaning}"
            )
            if f.fix:
                lines.append(" " * (9 + width) + f"fix: {f.fix}")
        lines.append(self.verdict())
        return "\n".join(lines) + "\n"

    def verdict(self) -> str:
        """One sentence: can this host build, and what is limited."""
        if not self.can_run:
            return (
                "RUN steps cannot execute here; plan, cache keys, explain and what-if still work."
            )
        problems = self.problems
        if not problems:
            return "This host can build: every check passed."
        if self["sandbox"].found.startswith("degraded"):
            return (
                "This host can build, degraded: RUN steps run under PRoot (a filesystem view, "
                f"not a security boundary); {len(problems)} limit(s) above."
            )
        return f"This host can build; {len(problems)} limit(s) above."

    def to_json(self) -> list[dict[str, str]]:
        """The findings as JSON-ready dicts."""
        return [f.to_json() for f in self.findings]


# -- helpers ----------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _status_field(proc: Path, name: str) -> str | None:
    text = _read(proc / "self" / "status")
    if text is None:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


def _run(
    argv: list[str], timeout: float = 10.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: Path, proc: Path = Path("/proc")) -> tuple[str, str] | None:
    """(mount point, filesystem type) of the mount that holds ``path`` (which need not exist:
    its nearest existing ancestor is used). None when ``/proc/self/mountinfo`` is unreadable."""
    text = _read(proc / "self" / "mountinfo")
    if text is None:
        return None
    target = os.path.realpath(_existing(path))
    best: tuple[str, str] | None = None
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        point = _unescape(fields[4])
        fstype = fields[fields.index("-") + 1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        # Later lines are mounted over earlier ones at the same point: >= keeps the last.
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype)
    return best


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{n}B"  # pragma: no cover


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _kernel(proc: Path) -> tuple[str, tuple[int, ...]]:
    """The kernel release and its leading numbers (``6.1.0-18-amd64`` → (6, 1, 0))."""
    release = _read(proc / "sys" / "kernel" / "osrelease") or ""
    numbers: list[int] = []
    for part in release.split("-")[0].split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return release, tuple(numbers)


def _mode(proc: Path, euid: int, real: bool) -> _Mode:
    """Where the process stands (see :func:`engine.userns.namespace.mode`), for the host
    described by ``proc`` and ``euid``."""
    if real:
        from engine.userns.namespace import mode

        return mode()
    if euid != 0:
        return "outside"
    uid_map = _read(proc / "self" / "uid_map")
    if uid_map is None or uid_map.split() == ["0", "0", "4294967295"]:
        return "root"
    return "inside"


def _remove_tree(path: Path) -> None:
    """``rm -rf`` for trial directories, including the mode-000 ``work/work`` that overlayfs
    leaves behind (owned by this user when it was mounted in a user namespace)."""

    def retry(func: object, name: str, exc: object) -> None:
        try:
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
                shutil.rmtree(name, ignore_errors=True)
            else:
                os.unlink(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


# -- probes -----------------------------------------------------------------------------------


def _user(euid: int, mode: _Mode, proc: Path) -> Finding:
    if mode == "root":
        return Finding(
            "user", "ok", "root (uid 0)", "RUN steps run in containers as real root, with every ID"
        )
    if mode == "inside":
        uid_map = " ".join((_read(proc / "self" / "uid_map") or "").split()[:3])
        return Finding(
            "user",
            "info",
            f"root of a user namespace (uid_map {uid_map})"
            if uid_map
            else "root of a user namespace",
            "builds run rootless here: only the IDs this namespace maps exist in steps "
            "(see the ID mapping line)",
        )
    name = _user_name(euid)
    return Finding(
        "user",
        "info",
        f"not root (uid {euid}{'' if name == str(euid) else ', ' + name})",
        "builds run rootless: each runs as root of a user namespace mapped to your uid (and "
        "your subordinate IDs, see the next lines); files in the store belong to those IDs",
    )


def probe_user_namespaces(proc: Path = Path("/proc"), *, euid: int | None = None) -> Finding:
    """Whether this process may create a user namespace, and if not, why not."""
    real = proc == Path("/proc") and (euid is None or euid == os.geteuid())
    euid = os.geteuid() if euid is None else euid
    reasons: list[tuple[str, str]] = []  # (why, fix)
    limit = _read(proc / "sys" / "user" / "max_user_namespaces")
    if limit == "0":
        reasons.append(
            ("user.max_user_namespaces is 0", "sysctl -w user.max_user_namespaces=15000")
        )
    if euid != 0:
        if _read(proc / "sys" / "kernel" / "unprivileged_userns_clone") == "0":
            reasons.append(
                (
                    "kernel.unprivileged_userns_clone is 0 (Debian's switch for non-root users)",
                    "sysctl -w kernel.unprivileged_userns_clone=1",
                )
            )
        if _read(proc / "sys" / "kernel" / "apparmor_restrict_unprivileged_userns") == "1":
            reasons.append(
                (
                    "AppArmor restricts unprivileged user namespaces "
                    "(kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10+)",
                    "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor "
                    "profile with 'userns,' for the Python that runs nbbuild",
                )
            )
    if _status_field(proc, "Seccomp") == "2":
        reasons.append(
            (
                "a seccomp filter is active (a container's default profile blocks unshare)",
                "start the container with --security-opt seccomp=unconfined "
                "(Kubernetes: seccompProfile Unconfined)",
            )
        )
    if real:
        works, err, stage = _try_userns()
    else:
        # Another host described: its files decide, not this machine's kernel.
        works, err, stage = (not reasons and limit is not None), None, ""
    if euid == 0:
        meaning = "not needed: RUN steps run as root (rootless builds use them)"
        status: Status = "info"
    else:
        meaning = (
            "builds run as root of a user namespace (rootless)"
            if works
            else "builds are refused with a clear error; plan, cache keys, explain and what-if "
            "still work"
        )
        status = "fail"
    if works:
        return Finding("user namespaces", "ok", "available", meaning)
    if err is not None and not reasons:
        if err in (errno.EPERM, errno.EACCES):
            where = {"unshare": "", "uid_map": " writing uid_map", "mount": " mounting"}.get(stage)
            reasons.append(
                (
                    f"the kernel refused{where or ''} ({errno.errorcode.get(err, err)}): "
                    "typical of a container's seccomp or AppArmor profile, or of a LSM policy",
                    "run the container with --security-opt seccomp=unconfined "
                    "--security-opt apparmor=unconfined, or on a VM",
                )
            )
        elif err == errno.ENOSPC:
            reasons.append(
                ("the limit of user namespaces is reached", "raise user.max_user_namespaces")
            )
        elif err == errno.EINVAL:
            reasons.append(
                ("the kernel has no user namespaces (CONFIG_USER_NS)", "use another kernel")
            )
        else:
            reasons.append((f"{stage or 'unshare'} failed: {os.strerror(err)}", ""))
    if not reasons:
        reasons.append(("the trial unshare could not be run", ""))
    why = "; ".join(r for r, _ in reasons)
    fix = "; ".join(f for _, f in reasons if f)
    return Finding("user namespaces", status, f"unavailable: {why}", meaning, fix)


def _try_userns() -> tuple[bool, int | None, str]:
    """(works, errno, stage) of a trial namespace in a child interpreter."""
    done = _run([sys.executable, "-S", "-c", _USERNS_SCRIPT])
    if done is None:
        return False, None, ""
    words = done.stdout.split()
    try:
        code = int(words[0])
    except (IndexError, ValueError):
        return False, None, ""
    return code == 0 and done.returncode == 0, (code if code > 0 else None), words[-1]


def _helper_usable(path: str) -> bool:
    """``newuidmap``/``newgidmap`` can raise privileges: setuid root, or file capabilities
    (Fedora installs them with ``cap_setuid``/``cap_setgid`` instead of the setuid bit)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_mode & stat.S_ISUID and st.st_uid == 0:
        return True
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def _free_range(etc: Path) -> tuple[int, int]:
    """A subordinate range of 65536 IDs no user of ``etc``'s subuid/subgid has yet."""
    start = _SUBID_FIRST
    for name in ("subuid", "subgid"):
        for line in (_read(etc / name) or "").splitlines():
            fields = line.strip().split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                start = max(start, int(fields[1]) + int(fields[2]))
    return start, start + _SUBID_COUNT - 1


def _id_mapping(
    mode: _Mode, euid: int, proc: Path, etc: Path, userns_ok: bool, real: bool
) -> Finding:
    single_meaning = (
        "single-ID mapping: container root is you and no other ID exists, so builds run but "
        "steps that need another user or group (chown, USER app, COPY --chown, archives with "
        "several owners) fail with a clear error"
    )
    if mode == "root":
        return Finding(
            "ID mapping", "ok", "not needed (root)", "steps can run as any user and group"
        )
    if mode == "inside":
        from engine.userns.idmap import IdMapping, IdRange

        def ranges(name: str) -> tuple[IdRange, ...]:
            out = []
            for line in (_read(proc / "self" / name) or "").splitlines():
                fields = line.split()
                if len(fields) == 3 and all(f.isdigit() for f in fields):
                    out.append(IdRange(int(fields[0]), int(fields[1]), int(fields[2])))
            return tuple(out)

        mapping = IdMapping(ranges("uid_map"), ranges("gid_map"))
        if mapping.single:
            return Finding(
                "ID mapping",
                "warn",
                f"this namespace maps {mapping.describe() or 'nothing'}",
                single_meaning,
                "map a range of IDs into this container (e.g. rootless Podman or Docker with "
                "a subordinate range for its user)",
            )
        return Finding(
            "ID mapping",
            "ok",
            f"this namespace maps {mapping.describe()}",
            "steps can use the mapped users and groups",
        )
    from engine.userns.idmap import subordinate_ranges

    name = _user_name(euid)
    sub_u, sub_g = subordinate_ranges(euid, subuid=etc / "subuid", subgid=etc / "subgid")
    helpers = {tool: shutil.which(tool) for tool in ("newuidmap", "newgidmap")}
    missing_helpers = [tool for tool, path in helpers.items() if path is None]
    not_setuid = [
        str(path) for path in helpers.values() if path is not None and not _helper_usable(path)
    ]
    nnp = _status_field(proc, "NoNewPrivs") == "1"
    ranges_text = (
        f"subuid {', '.join(f'{s}-{s + c - 1}' for s, c in sub_u) or 'none'}, "
        f"subgid {', '.join(f'{s}-{s + c - 1}' for s, c in sub_g) or 'none'} for {name}"
    )
    if missing_helpers or not (sub_u and sub_g):
        fixes = []
        if missing_helpers:
            fixes.append("apt-get install uidmap (newuidmap and newgidmap)")
        if not (sub_u and sub_g):
            first, last = _free_range(etc)
            flags = []
            if not sub_u:
                flags.append(f"--add-subuids {first}-{last}")
            if not sub_g:
                flags.append(f"--add-subgids {first}-{last}")
            if name != str(euid):
                fixes.append(f"sudo usermod {' '.join(flags)} {name}")
            else:  # no passwd entry: usermod needs a login name; the files accept a uid
                files = " ".join(
                    f"/etc/{f}" for f, has in (("subuid", sub_u), ("subgid", sub_g)) if not has
                )
                fixes.append(f"echo {euid}:{first}:{_SUBID_COUNT} | sudo tee -a {files}")
        found = f"only uid {euid} ({ranges_text}"
        found += f"; {' and '.join(missing_helpers)} not found)" if missing_helpers else ")"
        return Finding("ID mapping", "warn", found, single_meaning, "; ".join(fixes))
    start_u, count_u = sub_u[0]
    start_g, count_g = sub_g[0]
    full = (
        f"0→{euid}, 1-{count_u}→{start_u}-{start_u + count_u - 1}"
        if (start_u, count_u) == (start_g, count_g)
        else f"uids 0→{euid}, 1-{count_u}→{start_u}-{start_u + count_u - 1}; gids 1-{count_g}"
        f"→{start_g}-{start_g + count_g - 1}"
    )
    refused = "builds cannot enter their user namespace, so RUN steps are refused"
    if not_setuid:
        return Finding(
            "ID mapping",
            "fail",
            f"{ranges_text}, but {' and '.join(not_setuid)} not setuid root",
            f"newuidmap cannot map the range: {refused}",
            f"chmod u+s {' '.join(not_setuid)} (as root; Debian's uidmap package installs "
            "them setuid), or remove the user's ranges to build with one ID",
        )
    if nnp:
        return Finding(
            "ID mapping",
            "fail",
            f"{ranges_text}, but no_new_privs is set",
            f"the setuid newuidmap cannot gain privileges: {refused}",
            "run without no_new_privs (Docker: no --security-opt no-new-privileges; "
            "Kubernetes: allowPrivilegeEscalation: true), or remove the user's ranges from "
            "/etc/subuid and /etc/subgid to build with one ID",
        )
    ids = f"IDs 0-{count_u}" if count_u == count_g else f"uids 0-{count_u} and gids 0-{count_g}"
    meaning = f"steps can use {ids}: chown, USER app and COPY --chown work"
    if not real or not userns_ok:
        tried = "" if not real else " (not tried: no user namespace)"
        return Finding("ID mapping", "ok", f"{full} ({ranges_text}){tried}", meaning)
    error = _try_idmap()
    if error:
        return Finding(
            "ID mapping",
            "fail",
            f"{full} ({ranges_text}) was refused: {error}",
            refused,
            f"check the lines for {name} in /etc/subuid and /etc/subgid (ranges of 65536 that "
            "overlap no other user's), and that newuidmap/newgidmap come from uidmap",
        )
    return Finding("ID mapping", "ok", f"{full} ({ranges_text})", meaning)


def _try_idmap() -> str:
    """Enter the mapping a build gets in a child interpreter; "" when it worked, else why."""
    import engine

    code_dir = str(Path(engine.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": code_dir + (os.pathsep + path if path else "")}
    done = _run([sys.executable, "-c", _IDMAP_SCRIPT], env=env)
    if done is None:
        return "the trial could not be run"
    if done.returncode != 0:
        return _last_line(done.stderr) or f"exit code {done.returncode}"
    return ""


def _overlay(root: Path, proc: Path, euid: int, mode: _Mode, userns_ok: bool) -> Finding:
    filesystems = _read(proc / "filesystems") or ""
    if "overlay" not in filesystems.split():
        return Finding(
            "overlayfs",
            "warn",
            "not in /proc/filesystems",
            f"RUN steps {_COPY_SNAPSHOTTER}",
            "modprobe overlay (or use a kernel with CONFIG_OVERLAY_FS)",
        )
    rootless = mode != "root"
    release, version = _kernel(proc)
    if rootless and version and version < _ROOTLESS_OVERLAY_KERNEL:
        return Finding(
            "overlayfs",
            "warn",
            f"Linux {release}: overlayfs in a user namespace needs 5.11+",
            f"rootless RUN steps {_COPY_SNAPSHOTTER}",
            "use Linux 5.11 or later (or build as root)",
        )
    if mode == "outside" and not userns_ok:
        return Finding(
            "overlayfs",
            "info",
            "not tried: it needs a user namespace, which this user may not create",
            "see the user namespaces line",
        )
    unshare = shutil.which("unshare")
    if unshare is None or proc != Path("/proc") or (euid == 0) != (os.geteuid() == 0):
        return Finding("overlayfs", "ok", "supported by the kernel", "layers can be stacked")
    base = _existing(root)
    if mode == "outside":
        argv = [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private"]
    else:
        argv = [unshare, "--mount", "--propagation", "private"]
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".nbbuild-doctor-", dir=base))
    except OSError as exc:
        return Finding(
            "overlayfs",
            "fail",
            f"could not try it: {base} is not writable ({exc.strerror})",
            "builds cannot create the store there",
            "set NBBUILD_ROOT (or --root) to a directory you can write",
        )
    try:
        dirs = {n: tmp / n for n in ("lower", "upper", "work", "merged")}
        for d in dirs.values():
            d.mkdir()
        layers = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
        options = f"{layers},{_ROOTLESS_OPTIONS if rootless else _ROOT_OPTIONS}"
        done = _run([*argv, "sh", "-c", _OVERLAY_SCRIPT, "sh", options, str(dirs["merged"])])
        ok = done is not None and done.returncode == 0 and (dirs["upper"] / "probe").exists()
        detail = "" if done is None else _last_line(done.stderr)
    finally:
        _remove_tree(tmp)
    where = mount_of(base, proc)
    fs = f" on {where[1]}" if where else ""
    if ok:
        return Finding(
            "overlayfs",
            "ok",
            f"mounts over {base}{fs}" + (" (rootless, userxattr)" if rootless else ""),
            "RUN steps stack image layers without copying them",
        )
    return Finding(
        "overlayfs",
        "warn",
        f"cannot mount over {base}{fs}" + (f" ({detail})" if detail else ""),
        "RUN steps cannot stack the layers of the store's filesystem"
        + (" (rootless: overlayfs with userxattr in a user namespace)" if rootless else "")
        + f", so they {_COPY_SNAPSHOTTER}",
        "set NBBUILD_ROOT to a directory on ext4, xfs (ftype=1), btrfs or tmpfs",
    )


def _preference(mode: _Mode) -> tuple[str, ...]:
    """The OCI runtimes a build tries, best first: the executor's own rule
    (:func:`engine.executor.runtime.default_preference`), the same in every mode."""
    from engine.executor.runtime import default_preference

    return default_preference()


def _chosen_runtime(mode: _Mode, found: list[Runtime], real: bool) -> Runtime | None:
    """The runtime a build here would use: the executor's own choice on this host."""
    if real:
        from engine.errors import NbbuildError
        from engine.executor.runtime import find_runtime

        try:
            name = find_runtime().name
        except NbbuildError:
            return None
        return next((r for r in found if r.name == name), None)
    for preferred in _preference(mode):
        for r in found:
            if r.name == preferred:
                return r
    return None


def _runtimes(found: list[Runtime], chosen: Runtime | None, mode: _Mode, layout: str) -> Finding:
    if not found:
        return Finding(
            "runtimes",
            "fail",
            "none of crun, runc, bwrap",
            "RUN steps need an OCI runtime",
            "apt-get install runc (or crun)",
        )
    listed = ", ".join(f"{r.name} {r.version or '(version unknown)'}" for r in found)
    notes = []
    for r in found:
        if r.name == "bwrap":
            old = bool(r.version) and r.version_tuple() < (0, 9)
            notes.append(
                f"bwrap {r.version} is not used (bubblewrap < 0.9 lacks overlay options)"
                if old
                else "bwrap is not used"
            )
    if chosen is None:
        return Finding(
            "runtimes",
            "fail",
            listed,
            "RUN steps need crun or runc" + (f"; {notes[0]}" if notes else ""),
            "apt-get install runc (or crun)",
        )
    how = "as root" if mode == "root" else "in a user namespace"
    meaning = f"RUN steps use {chosen.name} ({chosen.path}) {how}"
    return Finding("runtimes", "ok", listed, "; ".join([meaning, *notes]))


def _missing_tools() -> list[str]:
    # What OciExecutor needs besides the runtime (it checks the same).
    return [tool for tool in ("unshare", "setpriv") if shutil.which(tool) is None]


def _degraded_state(mode: _Mode, userns: Finding, real: bool) -> tuple[str, str] | None:
    """Where user namespaces are refused to this (real) process: ``("", proot)`` when the
    degraded PRoot worker runs builds, ``(why not, "")`` when it does not; None elsewhere (a
    described host, root, or a namespace that works)."""
    if not real or mode != "outside" or userns.status == "ok":
        return None
    from engine.userns import degraded

    if degraded.disabled():
        return f"{degraded.ENV}=0 turns it off", ""
    proot = degraded.proot_path()
    if proot is None:
        return "proot is not installed", ""
    return "", proot


def _proot_version(proot: str) -> str:
    done = _run([proot, "-V"])
    for line in (done.stdout + done.stderr if done is not None else "").splitlines():
        words = line.split()
        if words and words[-1][:1].isdigit() and "." in words[-1]:
            return words[-1]
    return ""


def _try_proot(proot: str) -> str:
    """Run ``/bin/true`` under PRoot: "" when that works, else why not (ptrace refused…)."""
    done = _run([proot, "-v", "-1", "-0", "/bin/true"], env={"PATH": "/usr/bin:/bin"})
    if done is None:
        return "proot could not be run"
    if done.returncode != 0:
        return _last_line(done.stderr) or f"proot exited with {done.returncode}"
    return ""


def _degraded_sandbox(state: tuple[str, str]) -> Finding:
    from engine.userns.degraded import ENV, LIMITS

    why_not, proot = state
    refused = "RUN steps are refused with a clear error; plan, cache keys, explain and what-if work"
    if why_not:
        fix = (
            f"unset {ENV} to run builds degraded under PRoot (not a security boundary), or "
            "allow user namespaces (see the user namespaces line)"
            if why_not.startswith(ENV)
            else "see the user namespaces line (or build as root); or install proot "
            "(apt-get install proot) to run builds degraded (not a security boundary)"
        )
        return Finding("sandbox", "fail", f"refused: no user namespace ({why_not})", refused, fix)
    if shutil.which("setpriv") is None:
        return Finding(
            "sandbox",
            "fail",
            "refused: no user namespace, and setpriv (util-linux) not found for the degraded "
            "PRoot worker",
            refused,
            "apt-get install util-linux",
        )
    broken = _try_proot(proot)
    version = _proot_version(proot)
    named = f"proot {version}".strip() + f" ({proot})"
    if broken:
        return Finding(
            "sandbox",
            "fail",
            f"refused: no user namespace, and {named} cannot trace here: {broken}",
            refused,
            "see the user namespaces line; PRoot needs ptrace (a seccomp profile or "
            "kernel.yama.ptrace_scope=3 can refuse it)",
        )
    return Finding(
        "sandbox",
        "warn",
        f"degraded: {named}, no user namespace ({LIMITS})",
        "RUN steps run under PRoot over a copy of their layers: each step gets its own root "
        "filesystem, but that is a view, not a security boundary; steps share the host's "
        "network (RUN --network=none is refused), processes and hostname; owners are squashed "
        "to root (chown is ignored: every file of the store is yours, and reads as root's in "
        "images, exports and keys); builds run in this process, on a store of their own",
        "allow user namespaces (see the user namespaces line) for isolated rootless builds; "
        f"{ENV}=0 refuses RUN steps instead",
    )


def _sandbox(
    mode: _Mode,
    chosen: Runtime | None,
    userns: Finding,
    idmap: Finding,
    real: bool,
    degraded: tuple[str, str] | None = None,
) -> Finding:
    refused = "RUN steps are refused with a clear error; plan, cache keys, explain and what-if work"
    if mode == "outside":
        if degraded is not None:
            return _degraded_sandbox(degraded)
        if userns.status != "ok":
            return Finding(
                "sandbox",
                "fail",
                "refused: no user namespace for rootless builds",
                refused,
                "see the user namespaces line (or build as root)",
            )
        if idmap.status == "fail":
            return Finding(
                "sandbox",
                "fail",
                "refused: the ID mapping cannot be entered",
                refused,
                "see the ID mapping line",
            )
    if chosen is None:
        return Finding(
            "sandbox", "fail", "unavailable: no OCI runtime", refused, "see the runtimes line"
        )
    missing = _missing_tools()
    if missing:
        return Finding(
            "sandbox",
            "fail",
            f"unavailable: {' and '.join(missing)} (util-linux) not found",
            refused,
            "apt-get install util-linux",
        )
    if mode == "outside":
        return Finding(
            "sandbox",
            "ok",
            f"OCI executor: {chosen.name} as root of a user namespace (rootless), in a "
            "private mount and PID namespace",
            "RUN steps run isolated; a notebook's builds run in a helper process inside the "
            "namespace, and no container outlives a killed build",
        )
    if real:
        from engine.errors import NbbuildError
        from engine.executor.oci import OciExecutor

        try:
            executor = OciExecutor()
        except NbbuildError as exc:
            return Finding(
                "sandbox",
                "fail",
                f"unavailable: {exc}",
                refused,
                "see the user and runtimes lines",
            )
        chosen_name = executor.runtime.name
    else:
        chosen_name = chosen.name
    where = "as root" if mode == "root" else "as root of this user namespace (rootless)"
    return Finding(
        "sandbox",
        "ok",
        f"OCI executor: {chosen_name} {where}, in a private mount and PID namespace",
        "RUN steps run isolated, and no container outlives a killed build",
    )


def _layout(proc: Path) -> str:
    from engine.executor.runtime import cgroup_layout

    try:
        return cgroup_layout(proc / "self" / "mountinfo")
    except (OSError, ValueError, IndexError):
        return "none"


def _cgroups(layout: str, mode: _Mode) -> Finding:
    rootless = mode != "root"
    if layout == "v2":
        return Finding(
            "cgroups",
            "ok",
            "v2 (unified)",
            "rootless steps run without cgroup limits" if rootless else "nothing to adapt",
        )
    if layout == "hybrid":
        return Finding(
            "cgroups",
            "info",
            "v1 with a v2 'unified' hierarchy (hybrid)",
            "crun 1.8 refuses this layout; nbbuild hides the unified hierarchy inside each "
            "step's private namespace"
            + ("; rootless steps run without cgroup limits" if rootless else ""),
        )
    if layout == "v1":
        return Finding(
            "cgroups",
            "ok",
            "v1",
            "steps run without cgroup limits" + (" (rootless)" if rootless else ""),
        )
    return Finding(
        "cgroups",
        "info",
        "not mounted",
        "steps run without cgroups (nbbuild does not use them for limits yet)",
    )


def _dot() -> Finding:
    path = shutil.which("dot")
    if path is None:
        return Finding(
            "graphviz",
            "warn",
            "dot not found",
            "build graphs are drawn as text and HTML instead of SVG",
            "apt-get install graphviz (conda: conda install graphviz; Binder: graphviz in "
            "binder/apt.txt)",
        )
    done = _run([path, "-V"])
    version = ""
    if done is not None:
        words = (done.stderr or done.stdout).split()
        if "version" in words and words.index("version") + 1 < len(words):
            version = " " + words[words.index("version") + 1]
    return Finding("graphviz", "ok", f"dot{version} ({path})", "build graphs are drawn as SVG")


def _may_write(path: Path, euid: int, real: bool) -> bool:
    """``euid`` may create entries in the directory ``path``."""
    if real:
        return os.access(path, os.W_OK | os.X_OK)
    if euid == 0:
        return True
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid == euid:
        return st.st_mode & 0o300 == 0o300
    return st.st_mode & 0o003 == 0o003  # the simulated user's groups are unknown


def _store_permissions(root: Path, euid: int, mode: _Mode, real: bool) -> Finding | None:
    """A finding when this user cannot use the store at ``root`` (None: it can)."""
    fix = "set NBBUILD_ROOT (or --root) to a directory of your own, e.g. ~/.cache/nbbuild"
    if not root.exists():
        parent = _existing(root)
        if not parent.is_dir() or not _may_write(parent, euid, real):
            return Finding(
                "store",
                "fail",
                f"{root} does not exist and {parent} is not writable",
                "builds cannot create the store",
                fix,
            )
        return None
    if not root.is_dir():
        return Finding("store", "fail", f"{root} is not a directory", "builds cannot use it", fix)
    owner = root.stat().st_uid
    if mode == "outside" and owner != euid:
        return Finding(
            "store",
            "fail",
            f"{root} belongs to {_user_name(owner)} (uid {owner}), not to you",
            "a store is used by the user who made it (rootless snapshot files belong to that "
            "user's subordinate IDs; a store made by root keeps root's IDs)",
            fix,
        )
    if not _may_write(root, euid, real) or (
        (root / "meta.db").exists() and real and not os.access(root / "meta.db", os.W_OK)
    ):
        return Finding(
            "store",
            "fail",
            f"{root} is not writable",
            "builds cannot record results in the cache",
            f"chmod u+rwx {root} (as its owner), or {fix}",
        )
    return None


def _store(root: Path, source: str, proc: Path, euid: int, mode: _Mode, real: bool) -> Finding:
    where = mount_of(root, proc)
    fs = where[1] if where else "unknown filesystem"
    try:
        st = os.statvfs(_existing(root))
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = -1
    denied = _store_permissions(root, euid, mode, real)
    if denied is not None:
        return denied
    size_text = "not created yet"
    if (root / "meta.db").exists():
        try:
            size_text = _size_text(_store_size(root))
        except Exception as exc:  # a broken store is a finding, not a crash of the doctor
            return Finding(
                "store",
                "fail",
                f"{root} cannot be opened: {exc}",
                "builds cannot use the cache",
                "nbbuild cache check --repair (or %nbbuild cache check --repair)",
            )
    chosen = f" (from {source})" if source else ""
    free_text = f", {_size_text(free)} free" if free >= 0 else ""
    found = f"{root}{chosen}: {size_text}, {fs}{free_text}"
    move = "set NBBUILD_ROOT to a local directory on ext4, xfs, btrfs or tmpfs"
    if fs in _NETWORK_FS:
        return Finding(
            "store",
            "fail",
            found,
            f"{fs} is a network filesystem (an NFS home?): it breaks SQLite's WAL (the "
            "cache index needs shared memory between processes of one host) and overlayfs "
            "cannot use its directories as upper dirs, so RUN steps fail",
            move,
        )
    if fs in _BAD_UPPER or fs.startswith("fuse"):
        return Finding(
            "store",
            "warn",
            found,
            f"overlayfs cannot use directories on {fs} as upper dirs (RUN steps' layers)",
            move,
        )
    if 0 <= free < _LOW_FREE:
        return Finding(
            "store",
            "warn",
            found,
            "little free space: builds may fail when the disk fills",
            "%nbbuild cache prune (or nbbuild cache prune), or free disk space",
        )
    if fs == "tmpfs":
        return Finding("store", "info", found, "the cache lives in memory and is lost at reboot")
    return Finding("store", "ok", found, "the cache persists across kernels and restarts")


def _store_size(root: Path) -> int:
    from engine.store.gc import disk_usage
    from engine.store.store import Store

    with Store.open(root) as store:
        return sum(r.size for r in disk_usage(store))


def probe(
    root: Path,
    *,
    root_source: str = "",
    proc: Path = Path("/proc"),
    etc: Path = Path("/etc"),
    euid: int | None = None,
) -> Report:
    """Look at this host (see the module doc).

    Args:
        root: the store directory builds use.
        root_source: why that directory (``NBBUILD_ROOT``, ``the DockerfileMagics.store_root
            setting``, ``the default``), shown in the store line.
        proc: the ``/proc`` to read (tests pass a fake one; trial mounts and namespaces are
            then skipped).
        etc: where ``subuid`` and ``subgid`` are read (tests pass a fake one; the trial of
            the ID mapping is then skipped).
        euid: the effective uid to judge by (default: this process's; another one describes
            another user, without trials that would run as this one).
    """
    from engine.executor.runtime import detect_runtimes

    euid = os.geteuid() if euid is None else euid
    real = proc == Path("/proc") and euid == os.geteuid()
    mode = _mode(proc, euid, real)
    userns = probe_user_namespaces(proc, euid=euid)
    userns_ok = userns.status == "ok"
    idmap = _id_mapping(mode, euid, proc, etc, userns_ok, real and etc == Path("/etc"))
    found = detect_runtimes()
    chosen = _chosen_runtime(mode, found, real)
    layout = _layout(proc)
    degraded = _degraded_state(mode, userns, real)
    sandbox = _sandbox(mode, chosen, userns, idmap, real, degraded)
    user = _user(euid, mode, proc)
    if sandbox.found.startswith("degraded"):
        # The degraded PRoot worker builds here: say so where the refusal was said.
        user = replace(
            user,
            meaning="builds run degraded under PRoot (see the sandbox line), in this process: "
            "every file of the store is yours",
        )
        userns = replace(
            userns,
            status="warn",
            meaning="builds run degraded under PRoot (see the sandbox line): not isolated as "
            "rootless builds are",
        )
    findings: list[Finding] = [
        user,
        userns,
        idmap,
        _overlay(root, proc, euid, mode, userns_ok),
        _runtimes(found, chosen, mode, layout),
        sandbox,
        _cgroups(layout, mode),
        _dot(),
        _store(root, root_source, proc, euid, mode, real),
    ]
    return Report(tuple(findings))
