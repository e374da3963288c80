"""Helpers for whole-build tests (crash, concurrency, cancellation): the ``nbbuild`` CLI as a
subprocess in its own process group, output trees to compare, and what a build must not leave
behind - processes, mounts, runtime state, files in the store.

Load it with :func:`load` (tests run with ``--import-mode=importlib``, so sibling modules are not
importable by name). Everything here is real: containers run with crun (runc when rootless),
layers are overlayfs mounts in private namespaces, the store is SQLite.

As root or as a normal user whose builds run rootless (see :func:`base`'s ``mapping``): the
CLI enters a user namespace itself; what this process must do to snapshot files it does
through ``base().inside``, and the executor's state is where the builds put it
(:func:`state_dir`).
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
CLI_TIMEOUT = 180.0


def _load(name: str, path: Path) -> ModuleType:
    """The module at ``path``, imported once under ``name`` (tests run with
    ``--import-mode=importlib``: siblings are not importable by name)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load() -> ModuleType:
    """This module, imported once under a private name."""
    return _load("nbbuild_tests_whole_build", Path(__file__))


def base() -> ModuleType:
    """tests/buildkit_base.py (root or rootless, :func:`inside`), under its shared name."""
    return _load("nbbuild_tests_buildkit_base", REPO / "tests" / "buildkit_base.py")


def state_dir() -> Path:
    """The OCI executor's state dir (bundles, runtime state) of this user's builds:
    /run/nbbuild as root, else $XDG_RUNTIME_DIR/nbbuild or ~/.cache/nbbuild-run."""
    from engine.executor.oci import default_state_dir

    return default_state_dir()


# -- setup ----------------------------------------------------------------------------------


def require_host() -> None:
    """Root or working user namespaces, crun, runc and busybox-static: what real builds need
    (fail, never skip)."""
    base().mapping()
    for tool in ("crun", "runc", "busybox", "unshare", "setpriv"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            pytest.fail(f"{tool} is missing: make setup installs crun and busybox-static")


def busybox_tar(directory: Path) -> Path:
    """A busybox rootfs tar made by scripts/busybox-rootfs.sh (numeric owners: root's, so it
    runs where the builds run)."""
    require_host()
    made: Path = base().inside(_busybox_tar, directory)
    return made


def _busybox_tar(directory: Path) -> Path:
    rootfs, tar = directory / "rootfs", directory / "busybox.tar"
    proc = subprocess.run(
        ["bash", str(BUSYBOX_SCRIPT), str(rootfs), str(tar)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(rootfs)
    return tar


def new_store(root: Path, tar: Path) -> Path:
    """A fresh store at ``root`` with ``busybox:latest`` imported (where builds run)."""
    made: Path = base().inside(_new_store, root, tar)
    return made


def _new_store(root: Path, tar: Path) -> Path:
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
    content (sha256 of a file, target of a link). Hard links show as equal inode groups.

    Read where the builds run (``base().inside``): rootless, everything is readable there and
    owners are container IDs (a rootless local output is all the user's: container root)."""
    found: dict[str, Entry] = base().inside(_tree, root)
    return found


def _tree(root: Path) -> dict[str, Entry]:
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


def engine_of(root: Path) -> int:
    """The pid of the engine process running a container of a build into ``root`` (the
    command itself, or the child of a warm nbbuild server that runs it): container ids carry
    their engine's pid (engine/executor/oci.py). Call while a step runs."""
    import re

    owners = {
        int(m.group(1))
        for line in store_processes(root)
        for m in re.finditer(r"\bnbbuild-(\d+)-\d+-[0-9a-f]+", line)
    }
    assert len(owners) == 1, owners
    return owners.pop()


def host_mounts(root: Path) -> list[str]:
    """Mounts of this (the host's) mount namespace under the store or the executor's state."""
    state = state_dir()
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [
            line.strip()
            for line in f
            if str(root) in line or f" {state}/" in line or f" {state} " in line
        ]


def runtime_entries(owner: int) -> list[Path]:
    """Bundles and runtime state of containers started by the engine process ``owner``."""
    prefix = f"nbbuild-{owner}-"
    state = state_dir()
    found: list[Path] = []
    for parent in (state / "bundles", *state.glob("state-*")):
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


# -- rootless: what the user could not delete -----------------------------------------------


def check_unmapped(proc: subprocess.CompletedProcess[str]) -> None:
    """The build failed with the clear error a single mapping gives a step that needs another
    user or group ID (see ``base().check_unmapped_message``)."""
    assert proc.returncode != 0, proc.stdout
    base().check_unmapped_message(proc.stderr)


def unswept_problems(root: Path) -> set[str]:
    """The kinds of problem ``check`` finds in the store before any sweep (the constructor
    does not sweep); run where builds run, as it reads snapshot files (``base().inside``)."""
    from engine.store.check import check
    from engine.store.metadb import open_meta_db
    from engine.store.store import Store

    unswept = Store(root, open_meta_db(root))
    try:
        return {p.kind for p in check(unswept).problems}
    finally:
        unswept.close()


def check_store(root: Path) -> Any:
    """``engine.store.check.check`` of the opened store (the open sweeps first): a
    CheckReport. It reads snapshot files: call it through ``base().inside``."""
    from engine.store.check import check
    from engine.store.store import Store

    with Store.open(root) as store:
        return check(store)


def foreign_files(*dirs: Path, skip: tuple[Path, ...] = ()) -> list[str]:
    """What under ``dirs`` (not following symlinks; ``skip`` not entered) belongs to another
    user or group than this process's, or cannot be listed: left by a rootless build, such
    files are its subordinate IDs', which the user can neither change nor delete outside a
    user namespace."""
    me = (os.getuid(), os.getgid())
    skipped = {str(p) for p in skip}
    found: list[str] = []

    def unreadable(exc: OSError) -> None:
        found.append(f"{exc.filename}: {exc.strerror}")

    for top in dirs:
        if not top.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped]
            for name in [*dirnames, *filenames]:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if (st.st_uid, st.st_gid) != me:
                    found.append(f"{path} ({st.st_uid}:{st.st_gid})")
    return found


def subordinate_in(directory: Path, since: float) -> list[str]:
    """Entries right in ``directory`` (/tmp: other users' files are there too) that belong to
    this user's subordinate IDs and changed after ``since`` (a time.time())."""
    from engine.userns.idmap import current_mapping

    ids = current_mapping()
    outside_uids = [r for r in ids.uids if r.inside != 0]
    outside_gids = [r for r in ids.gids if r.inside != 0]
    found = []
    for name in _listdir(directory):
        try:
            st = os.lstat(directory / name)
        except FileNotFoundError:
            continue
        if st.st_ctime < since:
            continue
        if any(r.outside <= st.st_uid < r.outside + r.count for r in outside_uids) or any(
            r.outside <= st.st_gid < r.outside + r.count for r in outside_gids
        ):
            found.append(f"{directory / name} ({st.st_uid}:{st.st_gid})")
    return found


def remove_store(root: Path) -> None:
    """``nbbuild cache prune --all``, then the store's directory removed where builds run (a
    rootless user's engine, in its user namespace): all a build leaves must be removable."""
    proc = cli("cache", "prune", "--all", "--force", root=root)
    assert proc.returncode == 0, proc.stderr
    base().inside(shutil.rmtree, root)
    assert not root.exists()
