"""What this host can do for a build, and what to change where it cannot (``nbbuild doctor``).

:func:`probe` looks at the things a build depends on and returns one :class:`Finding` per
topic, each saying what was found, what that means for builds, and how to fix it when it
needs fixing:

- **user**: root or not (RUN steps need root until rootless execution arrives);
- **user namespaces**: whether this process may create one, and if not, why (the sysctls
  ``user.max_user_namespaces``, Debian's ``kernel.unprivileged_userns_clone``, Ubuntu's
  ``kernel.apparmor_restrict_unprivileged_userns``, a seccomp filter, the kernel's errno);
- **overlayfs**: whether an overlay can be mounted over directories on the store's filesystem
  (tried for real, in a private mount namespace that vanishes with the probe);
- **runtimes**: crun, runc and bwrap with their versions, and which one RUN uses;
- **sandbox**: whether the OCI executor can start here at all (root, util-linux tools);
- **cgroups**: the layout (v2, v1, hybrid) and what nbbuild does about it;
- **graphviz**: ``dot`` for SVG graphs (without it graphs are drawn as text and HTML);
- **store**: where the store is and why there, its size, filesystem and free space.

Every probe is cheap (well under a second in all) and changes nothing: trial mounts and
namespaces live in short-lived child processes, trial directories are removed. ``/proc`` is a
parameter so tests can show what a locked-down host looks like.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

__all__ = ["Finding", "Report", "Status", "mount_of", "probe", "probe_user_namespaces"]

Status: TypeAlias = Literal["ok", "info", "warn", "fail"]

_GB = 1_000_000_000
_LOW_FREE = 2 * _GB
# Filesystems whose directories overlayfs cannot use as upper dirs, or that lose the cache.
_BAD_UPPER = frozenset({"overlay", "nfs", "nfs4", "cifs", "smb3", "fuse", "9p", "vboxsf"})

# unshare(CLONE_NEWUSER) in a child interpreter: the parent (a kernel with threads) must not
# change its own namespaces, and os.unshare only exists from Python 3.12.
_USERNS_SCRIPT = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:
    print(ctypes.get_errno())
    sys.exit(1)
print(0)
"""
_OVERLAY_SCRIPT = 'mount -t overlay overlay -o "$1" "$2" && touch "$2/probe"'


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


def _run(argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


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


# -- probes -----------------------------------------------------------------------------------


def _user(euid: int) -> Finding:
    if euid == 0:
        return Finding("user", "ok", "root (uid 0)", "RUN steps can run in containers")
    return Finding(
        "user",
        "fail",
        f"not root (uid {euid})",
        "RUN steps need root until rootless execution arrives; plan, keys, explain, what-if "
        "and COPY-only builds work",
        "run the kernel (or nbbuild) as root, e.g. in a VM or a container where you are root",
    )


def probe_user_namespaces(proc: Path = Path("/proc"), *, euid: int | None = None) -> Finding:
    """Whether this process may create a user namespace, and if not, why not."""
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
                    "profile with 'userns,' for the kernel's Python",
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
    if _status_field(proc, "NoNewPrivs") == "1" and euid != 0:
        reasons.append(
            (
                "no_new_privs is set (setuid helpers such as newuidmap cannot map ID ranges)",
                "run without no_new_privs (Kubernetes: allowPrivilegeEscalation: true)",
            )
        )
    works, err = _try_userns(proc)
    meaning = (
        "not needed while RUN steps run as root; rootless builds (arriving later) will use them"
        if euid == 0
        else "rootless builds (arriving later) need them"
    )
    if works:
        return Finding("user namespaces", "ok", "available", meaning)
    if err is not None and not reasons:
        if err == errno.EPERM:
            reasons.append(
                (
                    "the kernel refused (EPERM): typical in a container without CAP_SYS_ADMIN",
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
            reasons.append((f"unshare failed: {os.strerror(err)}", ""))
    if not reasons:
        reasons.append(("the trial unshare could not be run", ""))
    why = "; ".join(r for r, _ in reasons)
    fix = "; ".join(f for _, f in reasons if f)
    return Finding("user namespaces", "warn", f"unavailable: {why}", meaning, fix)


def _try_userns(proc: Path) -> tuple[bool, int | None]:
    if proc != Path("/proc"):
        # A fake /proc describes another host: only its files count, not this one's kernel.
        return _read(proc / "sys" / "user" / "max_user_namespaces") not in ("0", None), None
    done = _run([sys.executable, "-c", _USERNS_SCRIPT])
    if done is None:
        return False, None
    try:
        code = int(done.stdout.strip() or "-1")
    except ValueError:
        return False, None
    return code == 0, (code if code > 0 else None)


def _overlay(root: Path, proc: Path, euid: int) -> Finding:
    filesystems = _read(proc / "filesystems") or ""
    if "overlay" not in filesystems.split():
        return Finding(
            "overlayfs",
            "fail",
            "not in /proc/filesystems",
            "RUN steps mount the image layers with overlayfs",
            "modprobe overlay (or use a kernel with CONFIG_OVERLAY_FS)",
        )
    unshare = shutil.which("unshare")
    if unshare is None or proc != Path("/proc"):
        return Finding("overlayfs", "ok", "supported by the kernel", "layers can be stacked")
    base = _existing(root)
    argv = [unshare, "--mount", "--propagation", "private"]
    extra = ""
    if euid != 0:
        argv = [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private"]
        extra = ",userxattr"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".nbbuild-doctor-", dir=base))
    except OSError as exc:
        return Finding(
            "overlayfs",
            "warn",
            f"could not try it: {base} is not writable ({exc.strerror})",
            "the store's directory must be writable",
            "set NBBUILD_ROOT to a writable directory",
        )
    try:
        dirs = {n: tmp / n for n in ("lower", "upper", "work", "merged")}
        for d in dirs.values():
            d.mkdir()
        options = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}{extra}"
        done = _run([*argv, "sh", "-c", _OVERLAY_SCRIPT, "sh", options, str(dirs["merged"])])
        ok = done is not None and done.returncode == 0 and (dirs["upper"] / "probe").exists()
        detail = "" if done is None else (done.stderr.strip().splitlines() or [""])[-1]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    where = mount_of(base, proc)
    fs = f" on {where[1]}" if where else ""
    if ok:
        return Finding(
            "overlayfs",
            "ok",
            f"mounts over {base}{fs}" + (" (rootless, userxattr)" if extra else ""),
            "RUN steps stack image layers without copying them",
        )
    return Finding(
        "overlayfs",
        "fail" if euid == 0 else "warn",
        f"cannot mount over {base}{fs}" + (f" ({detail})" if detail else ""),
        "RUN steps cannot stack the layers of the store's filesystem"
        if euid == 0
        else "rootless builds (arriving later) need rootless overlayfs (Linux 5.11+)",
        "set NBBUILD_ROOT to a directory on ext4, xfs (ftype=1), btrfs or tmpfs",
    )


def _runtimes() -> Finding:
    from engine.executor.runtime import detect_runtimes

    found = detect_runtimes()
    if not found:
        return Finding(
            "runtimes",
            "fail",
            "none of crun, runc, bwrap",
            "RUN steps need an OCI runtime",
            "apt-get install crun (or runc)",
        )
    listed = ", ".join(f"{r.name} {r.version or '(version unknown)'}" for r in found)
    oci = [r for r in found if r.is_oci]
    if not oci:
        return Finding(
            "runtimes",
            "fail",
            listed,
            "bwrap is not used yet: RUN steps need crun or runc",
            "apt-get install crun (or runc)",
        )
    return Finding("runtimes", "ok", listed, f"RUN steps use {oci[0].name} ({oci[0].path})")


def _sandbox() -> Finding:
    from engine.errors import NbbuildError
    from engine.executor.oci import OciExecutor

    try:
        executor = OciExecutor()
    except NbbuildError as exc:
        return Finding(
            "sandbox",
            "fail",
            f"unavailable: {exc}",
            "RUN steps are refused with a clear error; everything else works",
            "see the user and runtimes lines",
        )
    return Finding(
        "sandbox",
        "ok",
        f"{executor.runtime.name} in a private mount and PID namespace",
        "RUN steps run isolated, and no container outlives a killed build",
    )


def _cgroups(proc: Path) -> Finding:
    from engine.executor.runtime import cgroup_layout

    try:
        layout = cgroup_layout(proc / "self" / "mountinfo")
    except (OSError, ValueError, IndexError):
        layout = "none"
    if layout == "v2":
        return Finding("cgroups", "ok", "v2 (unified)", "nothing to adapt")
    if layout == "hybrid":
        return Finding(
            "cgroups",
            "info",
            "v1 with a v2 'unified' hierarchy (hybrid)",
            "crun 1.8 refuses this layout; nbbuild hides the unified hierarchy inside each "
            "step's private namespace",
        )
    if layout == "v1":
        return Finding("cgroups", "ok", "v1", "steps run without cgroup limits")
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


def _store(root: Path, source: str, proc: Path) -> Finding:
    where = mount_of(root, proc)
    fs = where[1] if where else "unknown filesystem"
    try:
        st = os.statvfs(_existing(root))
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = -1
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
    if fs in _BAD_UPPER or fs.startswith("fuse"):
        return Finding(
            "store",
            "warn",
            found,
            f"overlayfs cannot use directories on {fs} as layers",
            "set NBBUILD_ROOT to a directory on ext4, xfs, btrfs or tmpfs",
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
    euid: int | None = None,
) -> Report:
    """Look at this host (see the module doc).

    Args:
        root: the store directory builds use.
        root_source: why that directory (``NBBUILD_ROOT``, ``the DockerfileMagics.store_root
            setting``, ``the default``), shown in the store line.
        proc: the ``/proc`` to read (tests pass a fake one; trial mounts and namespaces are
            then skipped).
        euid: the effective uid to judge by (default: this process's).
    """
    euid = os.geteuid() if euid is None else euid
    findings: list[Finding] = [
        _user(euid),
        probe_user_namespaces(proc, euid=euid),
        _overlay(root, proc, euid),
        _runtimes(),
        _sandbox() if proc == Path("/proc") and euid == os.geteuid() else _fake_sandbox(euid),
        _cgroups(proc),
        _dot(),
        _store(root, root_source, proc),
    ]
    return Report(tuple(findings))


def _fake_sandbox(euid: int) -> Finding:
    if euid != 0:
        return Finding(
            "sandbox",
            "fail",
            "unavailable: the OCI executor needs root",
            "RUN steps are refused with a clear error; everything else works",
            "see the user and runtimes lines",
        )
    return Finding("sandbox", "ok", "not tried (another host described)", "assumed to work")
