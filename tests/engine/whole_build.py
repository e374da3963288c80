"""Helpers for whole-build tests (crash, concurrency, cancellation): the ``nbbuild`` CLI as a
subprocess in its own process group, output trees to compare, and what a build must not leave
behind - processes, mounts, runtime state, files in the store.

Load it with :func:`load` (tests run with ``--import-mode=importlib``, so sibling modules are not
importable by name). Everything here is real: containers run with crun, layers are overlayfs
mounts in private namespaces, the store is SQLite.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUSYBOX_SCRIPT = REPO / "scripts" / "busybox-rootfs.sh"
STATE_DIR = Path("/run/nbbuild")  # the OCI executor's default state dir (bundles, runtime state)
CLI_TIMEOUT = 180.0


def load() -> ModuleType:
    """This module, imported once under a private name."""
    name = "nbbuild_tests_whole_build"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# -- setup ----------------------------------------------------------------------------------


def require_host() -> None:
    """Root, crun and busybox-static: what real builds need (fail, never skip)."""
    if os.geteuid() != 0:
        pytest.fail("whole-build tests run containers and need root")
    for tool in ("crun", "busybox", "unshare", "setpriv"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            pytest.fail(f"{tool} is missing: make setup installs crun and busybox-static")


def busybox_tar(directory: Path) -> Path:
    """A busybox rootfs tar made by scripts/busybox-rootfs.sh (numeric owners)."""
    require_host()
    rootfs, tar = directory / "rootfs", directory / "busybox.tar"
    proc = subprocess.run(
        ["bash", str(BUSYBOX_SCRIPT), str(rootfs), str(tar)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(rootfs)
    return tar


def new_store(root: Path, tar: Path) -> Path:
    """A fresh store at ``root`` with ``busybox:latest`` imported."""
    from engine.images.archive import import_rootfs
    from engine.images.store import ImageStore
    from engine.store.store import Store

    with Store.open(root) as store:
        import_rootfs(ImageStore(store), tar, "busybox:latest")
    return root


def write_files(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


# -- the CLI --------------------------------------------------------------------------------


def _env(root: Path) -> dict[str, str]:
    env = {**os.environ, "NBBUILD_ROOT": str(root)}
    env.pop("BUILDKIT_PROGRESS", None)
    return env


def cli(*args: str | Path, root: Path, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``nbbuild ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "nbbuild", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(root),
        timeout=timeout,
        cwd=REPO,
    )


class Cli:
    """``nbbuild ARGS`` started in a new session: its own process group, as a terminal's job.

    Output goes to files (a pipe nobody reads could block the build).
    """

    def __init__(self, *args: str | Path, root: Path, logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.stdout_path = logs / "stdout"
        self.stderr_path = logs / "stderr"
        self._out: IO[bytes] = open(self.stdout_path, "wb")  # noqa: SIM115
        self._err: IO[bytes] = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nbbuild", *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            env=_env(root),
            cwd=REPO,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def signal_group(self, sig: int) -> None:
        """Signal the whole process group (a terminal's Ctrl-C, or kill -KILL -PGID)."""
        with contextlib.suppress(ProcessLookupError):  # all of it has exited already
            os.killpg(self.pid, sig)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = CLI_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            if self.proc.returncode is not None:
                self._out.close()
                self._err.close()

    def kill(self) -> None:
        """SIGKILL the process group and reap the CLI (cleanup of a failed test)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()
        self._out.close()
        self._err.close()

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def check_clean(root: Path) -> str:
    """``nbbuild cache check`` must exit 0 and report no problems; returns its output."""
    proc = cli("cache", "check", root=root)
    assert proc.returncode == 0 and "no problems" in proc.stdout, (proc.stdout, proc.stderr)
    return proc.stdout


# -- outputs --------------------------------------------------------------------------------

Entry = tuple[Any, ...]


def tree(root: Path) -> dict[str, Entry]:
    """Every path under ``root`` (not following symlinks): kind, mode bits, owner, group and
    content (sha256 of a file, target of a link). Hard links show as equal inode groups."""
    out: dict[str, Entry] = {}
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", mode, st.st_uid, st.st_gid, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, st.st_uid, st.st_gid)
            elif stat.S_ISREG(st.st_mode):
                first = inodes.setdefault((st.st_dev, st.st_ino), rel)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("file", mode, st.st_uid, st.st_gid, digest, first)
            else:
                out[rel] = ("other", st.st_mode, st.st_uid, st.st_gid, st.st_rdev)
    return out


def diff_trees(got: dict[str, Entry], want: dict[str, Entry]) -> list[str]:
    """Readable differences (empty when equal)."""
    lines = [f"missing {p}" for p in sorted(want.keys() - got.keys())]
    lines += [f"extra {p}" for p in sorted(got.keys() - want.keys())]
    lines += [
        f"differs {p}: {got[p]} != {want[p]}" for p in sorted(got.keys() & want.keys()) if got[p] != want[p]
    ]
    return lines


# -- what must not be left behind -----------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def store_processes(root: Path, owner: int | None = None) -> list[str]:
    """Processes anywhere on the host that belong to builds into ``root``: their command line
    names the store (unshare's overlay options) or a container of ``owner`` (container ids
    carry their engine's pid), or a mount in their namespace does (the runtime, the container's
    processes: their overlay's lower and upper dirs are under the store)."""
    needle = str(root).encode()
    ids = f"nbbuild-{owner}-".encode() if owner is not None else None
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        raw = _read(f"/proc/{name}/stat")
        if not raw or raw[raw.rfind(b")") + 2 :][:1] in (b"Z", b"X"):
            continue  # gone, or a zombie: it runs nothing and holds no mounts
        cmdline = _read(f"/proc/{name}/cmdline")
        if needle in cmdline or (ids is not None and ids in cmdline) or needle in _read(
            f"/proc/{name}/mountinfo"
        ):
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{name}: {argv[:300]}")
    return found


def container_process(root: Path, *argv: str) -> int | None:
    """The pid of a process whose command line contains ``argv`` (as consecutive arguments)
    and that runs in a container of a build into ``root``."""
    wanted = b"\0" + b"\0".join(a.encode() for a in argv) + b"\0"
    needle = str(root).encode()
    for name in os.listdir("/proc"):
        if (
            name.isdigit()
            and wanted in b"\0" + _read(f"/proc/{name}/cmdline")
            and needle in _read(f"/proc/{name}/mountinfo")
        ):
            return int(name)
    return None


def wait_for_container(root: Path, argv: tuple[str, ...], alive: Callable[[], bool]) -> tuple[int, int]:
    """(pid, start ticks) of the process running ``argv`` in a container of a build into
    ``root``, once it runs; fails if ``alive()`` turns false (the build ended) first."""
    from engine.store.leases import process_start_ticks

    found: list[tuple[int, int]] = []

    def running() -> bool:
        pid = container_process(root, *argv)
        ticks = process_start_ticks(pid) if pid is not None else None
        if pid is not None and ticks is not None:
            found.append((pid, ticks))
            return True
        if not alive():
            raise AssertionError(f"the build ended before {' '.join(argv)} ran")
        return False

    assert wait_for(running, timeout=60.0), f"{' '.join(argv)} never started"
    return found[-1]


def host_mounts(root: Path) -> list[str]:
    """Mounts of this (the host's) mount namespace under the store or the executor's state."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [
            line.strip()
            for line in f
            if str(root) in line or f" {STATE_DIR}/" in line or f" {STATE_DIR} " in line
        ]


def runtime_entries(owner: int) -> list[Path]:
    """Bundles and runtime state of containers started by the engine process ``owner``."""
    prefix = f"nbbuild-{owner}-"
    found: list[Path] = []
    for parent in (STATE_DIR / "bundles", *STATE_DIR.glob("state-*")):
        with contextlib.suppress(FileNotFoundError):
            found += [parent / n for n in os.listdir(parent) if n.startswith(prefix)]
    return found


def store_leftovers(root: Path) -> list[str]:
    """What a finished (or swept) store must not contain: unpublished diffs, partial blobs,
    work dirs of builds."""
    out = [f"snapshots/tmp/{n}" for n in _listdir(root / "snapshots" / "tmp")]
    out += [f"blobs/ingest/{n}" for n in _listdir(root / "blobs" / "ingest")]
    out += [n for n in _listdir(root) if n.startswith(("build-", "tmp"))]
    return out


def live_leases(root: Path) -> int:
    """Lease rows in meta.db, read without opening the store (which would sweep)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{root / 'meta.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0])
    finally:
        conn.close()


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
