"""Finding sandbox runtimes on this machine: crun, runc (OCI) and bubblewrap.

Only what is needed to choose one and to say why none fits: the binary, its version, and the
host facts that change how it must be driven (root, cgroup layout).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.executor.errors import CapabilityError

__all__ = [
    "CgroupLayout",
    "Runtime",
    "RuntimeName",
    "cgroup_layout",
    "default_preference",
    "detect_runtimes",
    "find_runtime",
]

RuntimeName = Literal["crun", "runc", "bwrap"]
CgroupLayout = Literal["v1", "hybrid", "v2", "none"]

_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Runtime:
    """A runtime binary found on this machine.

    Attributes:
        name: ``crun``, ``runc`` or ``bwrap``.
        path: absolute path of the binary.
        version: the version it reports (``1.8.1``), ``""`` when it would not say, None when
            it was not asked (:func:`find_runtime` does not start the binary to ask).
    """

    name: RuntimeName
    path: Path
    version: str | None = None

    @property
    def is_oci(self) -> bool:
        return self.name in ("crun", "runc")

    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.version.split(".")) if self.version else ()


def _version_of(path: str) -> str:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    first = out.splitlines()[0] if out else ""
    match = _VERSION.search(first)
    return match.group(1) if match else ""


def detect_runtimes() -> list[Runtime]:
    """Every supported runtime on PATH (plus /usr/sbin, where Debian puts runc), in preference
    order: crun (fastest start), runc, bwrap."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    found: list[Runtime] = []
    name: RuntimeName
    for name in ("crun", "runc", "bwrap"):
        path = shutil.which(name, path=search)
        if path is not None:
            found.append(Runtime(name, Path(path), _version_of(path)))
    return found


def find_runtime(preferred: tuple[RuntimeName, ...] | None = None) -> Runtime:
    """The first runtime of ``preferred`` present here; by default crun then runc, as real root
    and in a user namespace: crun starts a container in a third of runc's time (on a cgroup v1
    hybrid host the OCI executor hides the v2 hierarchy from it, see engine.executor.oci).

    Raises:
        CapabilityError: none of them is installed.
    """
    # Nothing is started to ask a version (a process start per build): detect_runtimes does.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    if preferred is None:
        preferred = default_preference()
    for name in preferred:
        path = shutil.which(name, path=search)
        if path is not None:
            return Runtime(name, Path(path))
    raise CapabilityError(
        f"no container runtime found (looked for {', '.join(preferred)}); "
        "on Debian/Ubuntu: apt-get install crun"
    )


def default_preference() -> tuple[RuntimeName, ...]:
    """The OCI runtimes to try, best first (see :func:`find_runtime`): the same in every mode."""
    return ("crun", "runc")


def cgroup_layout(mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupLayout:
    """How cgroups are mounted: pure v2, pure v1, or v1 with a v2 ``unified`` hierarchy.

    crun 1.8 refuses the hybrid layout when the unified hierarchy has controllers ("cgroups in
    hybrid mode not supported, drop all controllers from cgroupv2"), even with
    ``--cgroup-manager=disabled``; the OCI executor hides it inside its private namespace.
    """
    types: dict[str, str] = {}
    with open(mountinfo, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            # mount point is field 5; the fs type follows the " - " separator
            types[fields[4]] = fields[fields.index("-") + 1]
    if types.get("/sys/fs/cgroup") == "cgroup2":
        return "v2"
    if types.get("/sys/fs/cgroup/unified") == "cgroup2":
        return "hybrid"
    if "cgroup" in types.values():
        return "v1"
    return "none"
