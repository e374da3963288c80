"""OCI runtime bundles: ``config.json`` plus the generated ``/etc/hosts`` and ``/etc/resolv.conf``.

The spec mirrors what BuildKit's runc executor generates (``executor/oci/spec.go`` on top of
containerd's defaults): pid, ipc, uts and mount namespaces, a network namespace only for
``--network=none``; ``/proc``, a tmpfs ``/dev`` populated by the runtime with the OCI default
devices (null, zero, full, random, urandom, tty), ``/dev/pts``, ``/dev/shm``, ``/dev/mqueue``,
read-only ``/sys``; containerd's masked and read-only paths; containerd's default capability
set. ``/etc/hosts`` and ``/etc/resolv.conf`` are bind-mounted read-only from files in the
bundle dir, so they never land in the step's diff.

Not (yet) like BuildKit: no seccomp profile, no AppArmor, no cgroup (resource limits) and no
``/sys/fs/cgroup`` mount - cgroup writes are what breaks on this machine's v1 hybrid layout and
a killed build could leave cgroups behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.executor.process import DEFAULT_PATH, ProcessSpec
from engine.executor.user import ResolvedUser
from engine.userns.idmap import IdMapping

__all__ = [
    "DEFAULT_CAPABILITIES",
    "build_env",
    "generate_config",
    "hosts_file",
    "resolv_conf",
    "write_bundle",
]

# containerd's oci.defaultUnixCaps, which BuildKit uses for RUN
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
_READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
# BuildKit's fallback when the host has no usable nameserver (resolvconf's legacy transform)
_FALLBACK_NAMESERVERS = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"

HOSTS_NAME = "hosts"
RESOLV_NAME = "resolv.conf"


def hosts_file(hostname: str) -> str:
    """``/etc/hosts`` as BuildKit writes it (``executor/oci/hosts.go``)."""
    return f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def resolv_conf(host_resolv: Path = Path("/etc/resolv.conf")) -> str:
    """``/etc/resolv.conf`` for the container: the host's, or public resolvers if it has none.

    With the ``default`` network being the host's namespace here, the host's resolvers (even a
    local 127.0.0.53) are reachable, so its file is used as is. For ``none`` it does not matter.
    """
    try:
        text = host_resolv.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    if not any(line.split()[:1] == ["nameserver"] for line in text.splitlines()):
        text = (text.rstrip("\n") + "\n" if text.strip() else "") + _FALLBACK_NAMESERVERS
    return text


def build_env(spec: ProcessSpec, user: ResolvedUser) -> list[str]:
    """The process environment: ``spec.env`` plus default ``PATH`` and ``HOME`` when absent."""
    env = list(spec.env)
    keys = {e.partition("=")[0] for e in env}
    if "PATH" not in keys:
        env.insert(0, f"PATH={DEFAULT_PATH}")
    if "HOME" not in keys:
        env.append(f"HOME={user.home or '/'}")
    return env


# Every capability the kernel knows (Linux 5.9+: CAP_CHECKPOINT_RESTORE is 40), for
# RUN --security=insecure, which BuildKit runs like `docker run --privileged`.
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip


def _grantable(names: tuple[str, ...]) -> tuple[str, ...]:
    """The capabilities of ``names`` that this process may hand out (its own bounding set):
    asking the runtime for more fails with EPERM, e.g. inside a container that dropped some."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            line = next(ln for ln in status if ln.startswith("CapBnd:"))
        bounding = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return names
    return tuple(n for i, n in enumerate(names) if bounding >> i & 1)


def generate_config(
    spec: ProcessSpec,
    user: ResolvedUser,
    rootfs: Path,
    bundle: Path,
    *,
    mapping: IdMapping | None = None,
) -> dict[str, Any]:
    """The OCI ``config.json`` content for ``spec`` running over ``rootfs``; ``mapping`` is
    the user namespace the runtime runs in (a rootless build), None as real root."""
    # A non-root user gets no effective capabilities, as Docker and BuildKit users expect
    # (`USER nobody` cannot chown or read root's files).
    caps = list(_grantable(ALL_CAPABILITIES) if spec.privileged else DEFAULT_CAPABILITIES)
    running_caps = caps if user.uid == 0 else []
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
    ]
    if spec.network == "none":
        namespaces.append({"type": "network"})
    mounts: list[dict[str, Any]] = [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev"] + ([] if spec.privileged else ["ro"]),
        },
        {
            "destination": "/etc/hosts",
            "type": "bind",
            "source": str(bundle / HOSTS_NAME),
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
        },
        {
            "destination": "/etc/resolv.conf",
            "type": "bind",
            "source": str(bundle / RESOLV_NAME),
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
        },
    ]
    if mapping is not None:
        _rootless_mounts(mounts, spec, mapping)
    for m in spec.mounts:
        mounts.append(
            {
                "destination": m.destination,
                "type": "bind",
                "source": str(m.source),
                "options": ["rbind", "ro" if m.readonly else "rw"],
            }
        )
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {
                "uid": user.uid,
                "gid": user.gid,
                "additionalGids": list(user.additional_gids),
            },
            "args": list(spec.args),
            "env": build_env(spec, user),
            "cwd": spec.cwd,
            "capabilities": {
                "bounding": caps,
                "effective": running_caps,
                "permitted": running_caps,
            },
            "noNewPrivileges": False,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            # privileged (--security=insecure): nothing masked, nothing read-only
            "maskedPaths": [] if spec.privileged else list(_MASKED_PATHS),
            "readonlyPaths": [] if spec.privileged else list(_READONLY_PATHS),
            "rootfsPropagation": "private",
        },
    }


def _rootless_mounts(mounts: list[dict[str, Any]], spec: ProcessSpec, mapping: IdMapping) -> None:
    """What changes in a user namespace (as in runc's ``spec --rootless``): sysfs may only be
    mounted in a network namespace the user namespace owns, so with the host's network it is
    bind-mounted read-only instead; devpts's ``gid=5`` needs gid 5 mapped."""
    for m in mounts:
        if m["type"] == "sysfs" and spec.network != "none":
            m.update(type="bind", source="/sys", options=["rbind", "nosuid", "noexec", "nodev", "ro"])
        elif m["type"] == "devpts" and not mapping.maps_gid(5):
            m["options"] = [o for o in m["options"] if o != "gid=5"]


def write_bundle(
    bundle: Path,
    spec: ProcessSpec,
    user: ResolvedUser,
    rootfs: Path,
    *,
    mapping: IdMapping | None = None,
) -> Path:
    """Write ``config.json``, ``hosts`` and ``resolv.conf`` into ``bundle``; return config.json."""
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / HOSTS_NAME).write_text(hosts_file(spec.hostname), encoding="utf-8")
    (bundle / RESOLV_NAME).write_text(resolv_conf(), encoding="utf-8")
    for name in (HOSTS_NAME, RESOLV_NAME):
        os.chmod(bundle / name, 0o644)
    config = bundle / "config.json"
    config.write_text(
        json.dumps(generate_config(spec, user, rootfs, bundle, mapping=mapping), indent=1),
        encoding="utf-8",
    )
    return config
