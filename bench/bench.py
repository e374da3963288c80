"""nbbuild and real BuildKit side by side, on the same scenarios, on the same machine, in one run.

    .venv/bin/python bench/bench.py [-n 5] [--only P1,P3] [--json OUT] [--markdown OUT]
    make bench

Scenarios come from ``perf-scenarios.py`` (``depfirst``, ``steps``, ``bigctx``). BuildKit is
Docker's embedded BuildKit driven by ``/usr/bin/docker`` on a *private* daemon this script starts
through ``scripts/buildkit-oracle.sh`` with its own state directory (so other users of the
differential oracle cannot prune its cache mid-run, and the daemon's memory is this run's).
nbbuild uses a fresh store into which the same busybox rootfs tar is imported.

nbbuild is measured as pip installs it for users, not as this checkout's editable install (whose
import hook runs at every interpreter start): a venv of its own, ``/var/tmp/nbbuild-bench-venv``
(made with the base interpreter of the Python running this script), where a copy of the checkout
is installed by ``pip install``. A stamp (sha256 of pyproject.toml and of every ``.py`` file of
engine/ and nbbuild/, path and content) decides: a changed pyproject.toml reinstalls with its
dependencies, changed code only nbbuild (``--no-deps --force-reinstall``). The CLI figures and
P1-py run that venv's ``nbbuild`` and ``python``; the engine API figures run in this process,
from the repository.

The ``nbbuild`` command runs through its warm fork server (``nbbuild/client.py``,
``nbbuild/server.py``), as users get it: each side has a server directory of its own
(``NBBUILD_SERVER_DIR``, 0700), the base image import (the first command) starts the server, and
the bench waits until its socket is there and a command goes through it (client max RSS near the
bare interpreter's: the client did not import the engine). Every CLI run is checked the same way
and the table says how many did not go through the server. ``nbbuild server stop`` ends the
servers at the end. For honesty, ``P1-cli-inproc`` and ``P4-noop-cli-inproc`` (no target) take
the same no-ops with ``NBBUILD_SERVER=0``: the command imports and runs everything itself.

For every figure both builders get one warm-up run, then ``n`` measured runs alternated A/B
(nbbuild, BuildKit, nbbuild, …). Reported: medians, the ratio of the medians (nbbuild/BuildKit)
and the target. Peak memory is measured where the work happens: the nbbuild CLI's max RSS from
``wait4`` (the child's own rusage) of extra ``NBBUILD_SERVER=0`` runs of bigctx (a ``--no-cache``
build and a no-op: through the server the client only passes its descriptors on), and the
server process's ``VmRSS``/``VmHWM`` after the bigctx figures. BuildKit's builds run in dockerd,
so its figure is dockerd's RSS growth and high-water mark (``VmHWM``: since the daemon started,
which this script did) plus the docker client's max RSS. Every measured command is started by a
small launcher (``bench/spawn.py``): a child's max RSS includes the address space it was forked
from, and this process imports the engine and runs builds itself.

Every run's step statuses are checked (a no-op must run nothing, a cold build must run every
RUN), so a figure cannot come from a build that did something else.

Rootless: the same nbbuild figures are taken again as an unprivileged user with a subordinate ID
range (``nbbuild-bench``, made on first use like ``scripts/rootless-tests.sh`` makes its users:
``useradd``, a free range in /etc/subuid and /etc/subgid, a copy of this checkout and a venv of
its own from /usr/bin/python3 with nbbuild installed from that copy, non-editable, by the same
stamp), alternated in the same rounds (nbbuild as root, nbbuild rootless, BuildKit). Its CLI
runs through a server of that user (a directory of its own) whose child enters a user namespace;
its engine API runs in a warm process of that user (``bench/api_worker.py``), where ``build()``
is forwarded to the rootless helper process. BuildKit stays Docker's rootful daemon: both ratios
divide by the same BuildKit runs. ``--no-rootless`` leaves these figures out; when the user
cannot be set up (no ``newuidmap``, no network for its venv) the table says so and the root
figures stand alone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import marshal
import os
import platform
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCKER = "/usr/bin/docker"
SCENARIOS_SCRIPT_CANDIDATES = (
    os.environ.get("NBBUILD_PERF_SCENARIOS", ""),
    str(REPO.parent / "shared" / "tools" / "perf-scenarios.py"),
    "/work/shared/tools/perf-scenarios.py",
)


@dataclass
class Run:
    seconds: float
    maxrss_kb: int = 0
    ran: int = -1  # steps executed (RUN/COPY/... that did not hit), -1 = unknown


@dataclass
class Figure:
    fid: str
    title: str
    target: float | None  # ratio nbbuild/BuildKit to meet (≤), None = informative
    nb: list[Run] = field(default_factory=list)
    bk: list[Run] = field(default_factory=list)
    rl: list[Run] = field(default_factory=list)  # nbbuild rootless (another user)
    note: str = ""

    def median(self, runs: list[Run]) -> float:
        return statistics.median(r.seconds for r in runs) if runs else float("nan")

    def ratio_of(self, runs: list[Run]) -> float:
        bk = self.median(self.bk)
        return self.median(runs) / bk if runs and self.bk and bk else float("nan")

    @property
    def ratio(self) -> float:
        return self.ratio_of(self.nb)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.fid,
            "title": self.title,
            "target": self.target,
            "nbbuild_s": [r.seconds for r in self.nb],
            "nbbuild_rootless_s": [r.seconds for r in self.rl],
            "buildkit_s": [r.seconds for r in self.bk],
            "nbbuild_median_s": self.median(self.nb),
            "nbbuild_rootless_median_s": self.median(self.rl) if self.rl else None,
            "buildkit_median_s": self.median(self.bk) if self.bk else None,
            "ratio": self.ratio if self.bk else None,
            "ratio_rootless": self.ratio_of(self.rl) if self.bk and self.rl else None,
            "nbbuild_maxrss_kb": max((r.maxrss_kb for r in self.nb), default=0),
            "nbbuild_rootless_maxrss_kb": max((r.maxrss_kb for r in self.rl), default=0),
            "note": self.note,
        }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# running things


class Spawner:
    """The small process that starts the measured commands (``bench/spawn.py``): a child's
    max RSS includes what the process that forked it had mapped, and this one has imported the
    engine and runs builds itself."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nbbuild-bench-spawn-"))
        self.output = self.dir / "output"
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(Path(__file__).with_name("spawn.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def run(
        self, argv: list[str], env: dict[str, str], cwd: Path | None, ids: tuple[int, int] | None
    ) -> tuple[float, int, int, str]:
        """(wall seconds, exit code or -signal, max RSS in kB, stdout+stderr)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0], path=env.get("PATH"))
        request = marshal.dumps(
            ([exe or argv[0], *argv[1:]], env, str(cwd) if cwd else None, ids, str(self.output))
        )
        self.proc.stdin.write(len(request).to_bytes(4, "big") + request)
        self.proc.stdin.flush()
        head = self.proc.stdout.read(4)
        if len(head) < 4:
            raise RuntimeError(f"bench/spawn.py exited ({self.proc.wait()})")
        reply = marshal.loads(self.proc.stdout.read(int.from_bytes(head, "big")))
        if reply[0] == "error":
            raise RuntimeError(f"bench/spawn.py: {reply[1]}")
        text = self.output.read_bytes().decode(errors="replace")
        return float(reply[0]), int(reply[1]), int(reply[2]), text

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_spawner: Spawner | None = None


def run_child(
    argv: list[str],
    env: dict[str, str],
    cwd: Path | None = None,
    *,
    as_user: dict[str, Any] | None = None,
) -> tuple[Run, str]:
    """Run ``argv`` (as another user: ``as_user`` = Popen's user/group/extra_groups, the
    groups always empty) from the :class:`Spawner`; its wall time, its own max RSS (wait4) and
    its stderr+stdout."""
    global _spawner
    if _spawner is None:
        _spawner = Spawner()
    ids = (int(as_user["user"]), int(as_user["group"])) if as_user else None
    elapsed, code, maxrss, text = _spawner.run(argv, env, cwd, ids)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}:\n{text[-3000:]}")
    return Run(elapsed, maxrss), text


def close_spawner() -> None:
    global _spawner
    if _spawner is not None:
        _spawner.close()
        _spawner = None


def _ran_from_metadata(meta: Path) -> int:
    """Steps executed, from nbbuild's --metadata-file (-1: unknown)."""
    try:
        steps = json.loads(meta.read_text())["nbbuild.steps"]
    except (OSError, KeyError, ValueError):
        return -1
    return sum(1 for s in steps if s.get("step") is not None and s.get("status") == "executed")


ROOT_VENV = Path("/var/tmp/nbbuild-bench-venv")
STAMP_NAME = ".nbbuild-bench-stamp"
# A command through the server: the client is the bare interpreter plus a few C modules (~10.5 MB
# where `python -c pass` is ~8.5 MB); run in-process, `nbbuild image ls` or a no-op build is
# ~27 MB. A client this far above the interpreter's own RSS imported the engine: it ran in-process.
SERVED_RSS_MARGIN_KB = 8 * 1024
SERVER_WAIT_S = 60.0


def _copy_ignore(directory: str, names: list[str]) -> set[str]:
    """What a copy of the checkout leaves out (a top-level build/ or dist/ would put stale
    files into the wheel; tests have directories named build)."""
    ignored = set(_COPY_IGNORE(directory, names))
    if Path(directory) == REPO:
        ignored |= {"build", "dist"} & set(names)
    return ignored


_COPY_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "__pycache__", "*.egg-info"
)


def code_stamp(src: Path = REPO) -> tuple[str, str]:
    """(sha256 of pyproject.toml, sha256 of pyproject.toml and every ``.py`` file under engine/
    and nbbuild/, path and content): what an installed copy of the checkout must match."""
    pyproject = (src / "pyproject.toml").read_bytes()
    whole = hashlib.sha256()
    for rel, data in [("pyproject.toml", pyproject)] + [
        (path.relative_to(src).as_posix(), path.read_bytes())
        for package in ("engine", "nbbuild")
        for path in sorted((src / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    ]:
        whole.update(f"{rel}\0{len(data)}\0".encode())
        whole.update(data)
    return hashlib.sha256(pyproject).hexdigest(), whole.hexdigest()


def install_nbbuild(
    venv: Path,
    base_python: str,
    copy: Callable[[], Path],
    run: Callable[[list[str]], None],
    who: str,
    source: Path = REPO,
) -> None:
    """Keep ``venv`` (made with ``base_python``) holding a non-editable install of the
    checkout as it is now (``source``: the checkout, or a copy of it just made). ``copy()``
    makes a copy to install from; ``run`` runs a command as the venv's owner. The stamp (base
    interpreter, then :func:`code_stamp`) decides: a new venv or a changed pyproject.toml
    installs with the dependencies, changed code reinstalls nbbuild alone. The stamp written is
    the installed copy's (others may edit the checkout meanwhile)."""
    python, exe, stamp = venv / "bin" / "python", venv / "bin" / "nbbuild", venv / STAMP_NAME
    pyproject, code = code_stamp(source)
    want = [base_python, pyproject, code]
    try:
        had = stamp.read_text().split()
    except OSError:
        had = []
    had += [""] * (3 - len(had))
    if venv.exists() and (had[0] != base_python or not python.exists()):
        log(f"{venv}: made by another interpreter (or broken), making it anew")
        shutil.rmtree(venv)
        had = ["", "", ""]
    if not python.exists():
        log(f"making {venv} with {base_python} ({who}) …")
        run([base_python, "-m", "venv", str(venv)])
    if had == want and exe.exists():
        return
    src = copy()
    pip = [str(python), "-m", "pip", "install", "-q"]
    if had[1] != pyproject or not exe.exists():
        log(f"installing nbbuild and its dependencies into {venv} ({who}) …")
        run([*pip, str(src)])  # a local directory is reinstalled even at the same version
    else:
        log(f"reinstalling nbbuild into {venv} ({who}): its code changed …")
        run([*pip, "--no-deps", "--force-reinstall", str(src)])
    stamp.write_text("\n".join([base_python, *code_stamp(src)]) + "\n")


class NbbuildCli:
    """The ``nbbuild`` command of one side (root or the bench user), installed in a venv, with
    a store and a server directory of its own. Every run through the server is checked: its
    client's max RSS must stay near the bare interpreter's (one that imported the engine ran
    the command itself)."""

    label = "root"
    exe: str
    python: str
    env: dict[str, str]
    meta: Path
    server_dir: Path
    cwd: Path | None = None
    as_user: dict[str, Any] | None = None

    def _init_checks(self) -> None:
        self.python_rss_kb = 0  # the bare interpreter's max RSS (set by wait_for_server)
        self.served = 0
        self.not_served: list[str] = []
        self.server_pids: list[int] = []

    def _run(self, argv: list[str], *, inproc: bool = False) -> tuple[Run, str]:
        env = {**self.env, "NBBUILD_SERVER": "0"} if inproc else self.env
        return run_child(argv, env, self.cwd, as_user=self.as_user)

    def _check_served(self, run: Run, what: str) -> None:
        if not self.python_rss_kb:
            return  # before the server was waited for
        if run.maxrss_kb <= self.python_rss_kb + SERVED_RSS_MARGIN_KB:
            self.served += 1
        else:
            self.not_served.append(f"{what} (client max RSS {run.maxrss_kb / 1024:.0f} MB)")
            log(
                f"  warning: {self.label} `{what}` did not go through the server (client max RSS "
                f"{run.maxrss_kb / 1024:.0f} MB, interpreter {self.python_rss_kb / 1024:.0f} MB)"
            )

    def import_base(self, tar: Path) -> None:
        self._run([self.exe, "image", "import", str(tar), "busybox:latest"])

    def cli(self, context: Path, tag: str, *, no_cache: bool = False, inproc: bool = False) -> Run:
        """``nbbuild build``, through the server unless ``inproc`` (``NBBUILD_SERVER=0``)."""
        argv = [self.exe, "build", "--progress=quiet", "-t", tag, "--metadata-file", str(self.meta)]
        if no_cache:
            argv.append("--no-cache")
        self.meta.unlink(missing_ok=True)
        run, _ = self._run([*argv, str(context)], inproc=inproc)
        run.ran = _ran_from_metadata(self.meta)
        if not inproc:
            self._check_served(run, f"build{' --no-cache' if no_cache else ''} {context.name}")
        return run

    def python_start(self) -> Run:
        run, _ = self._run([self.python, "-c", "pass"])
        return run

    def server_status(self) -> str:
        try:
            return self._run([self.exe, "server", "status"])[1]
        except RuntimeError as exc:
            return str(exc)

    def running_servers(self) -> list[int]:
        return [int(m) for m in re.findall(r"^running: pid (\d+)", self.server_status(), re.M)]

    def wait_for_server(self) -> None:
        """After the first command (which started the server): wait until its socket is there
        and a command goes through it; fail the bench if none comes up."""
        sock = self.server_dir / ("x" * 32 + ".sock")
        if len(str(sock).encode()) > 107:
            raise SystemExit(f"{self.server_dir}: too long a path for a server socket (--work)")
        self.python_rss_kb = min(self.python_start().maxrss_kb for _ in range(3))
        deadline = time.monotonic() + SERVER_WAIT_S
        probe = Run(0.0)
        while time.monotonic() < deadline:
            if any(self.server_dir.glob("*.sock")):
                probe, _ = self._run([self.exe, "image", "ls"])
                if probe.maxrss_kb <= self.python_rss_kb + SERVED_RSS_MARGIN_KB:
                    self.server_pids = self.running_servers()
                    log(f"{self.label}: nbbuild server up (pid {self.server_pids})")
                    return
            time.sleep(0.1)
        refused = [f"{p.name}: {p.read_text().strip()}" for p in self.server_dir.glob("*.refused")]
        raise SystemExit(
            f"no nbbuild server came up for {self.label} within {SERVER_WAIT_S:.0f} s "
            f"(socket dir {self.server_dir}: {sorted(p.name for p in self.server_dir.iterdir())}; "
            f"last probe's client max RSS {probe.maxrss_kb / 1024:.0f} MB, the interpreter's "
            f"{self.python_rss_kb / 1024:.0f} MB{''.join('; refused: ' + r for r in refused)})"
            f"\n`nbbuild server status`:\n{self.server_status()}"
        )

    def server_mem_kb(self) -> dict[str, int]:
        """The server process's VmRSS and VmHWM (the first server `server status` lists)."""
        pids = self.running_servers()
        return proc_mem_kb(pids[0]) | {"pid": pids[0]} if pids else {}

    def stop_servers(self) -> str:
        try:
            return self._run([self.exe, "server", "stop"])[1].strip()
        except (RuntimeError, OSError) as exc:
            return f"`nbbuild server stop` failed: {exc}"


def proc_mem_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return out


class Nbbuild(NbbuildCli):
    """nbbuild as root: the CLI from :data:`ROOT_VENV`, the engine API in this process (from the
    repository)."""

    def __init__(self, work: Path) -> None:
        self._init_checks()
        self.root = work / "nbbuild-store"
        # a socket directory of this run alone (a server of an earlier run with --work exits
        # once its socket is gone)
        self.server_dir = work / "srv"
        shutil.rmtree(self.server_dir, ignore_errors=True)
        self.server_dir.mkdir(mode=0o700)
        self.env = {
            **os.environ,
            "NBBUILD_ROOT": str(self.root),
            # nbbuild's own start-up cache (nbbuild._fastimport) starts empty in every run
            "XDG_CACHE_HOME": str(work / "xdg-cache"),
            "NBBUILD_SERVER_DIR": str(self.server_dir),
        }
        # as a user's shell has it: the bytecode pip compiled at install, nothing redirecting
        # the imports to the checkout
        for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONPATH", "PYTHONHOME"):
            self.env.pop(name, None)
        self.exe = str(ROOT_VENV / "bin" / "nbbuild")
        self.python = str(ROOT_VENV / "bin" / "python")
        self.meta = work / "nbbuild-metadata.json"

    @staticmethod
    def setup(work: Path) -> None:
        """Install the checkout (non-editable) into :data:`ROOT_VENV`."""
        base = getattr(sys, "_base_executable", "") or sys.executable
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # pip compiles the package's bytecode

        def run(argv: list[str]) -> None:
            proc = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")

        with tempfile.TemporaryDirectory(prefix="nbbuild-src-", dir=work) as tmp:

            def copy() -> Path:
                dest = Path(tmp) / "nbbuild"
                shutil.copytree(REPO, dest, ignore=_copy_ignore, symlinks=True)
                return dest

            install_nbbuild(ROOT_VENV, base, copy, run, "root")

    def api(self, context: Path, tag: str, *, no_cache: bool = False) -> Run:
        from engine.build import BuildRequest, build

        request = BuildRequest(
            dockerfile=(context / "Dockerfile").read_text(),
            context=context,
            dockerfile_path=context / "Dockerfile",
            tags=(tag,),
            no_cache=no_cache,
        )
        start = time.perf_counter()
        result = build(request, root=self.root)
        elapsed = time.perf_counter() - start
        ran = sum(1 for s in result.steps if s.step is not None and s.status == "executed")
        return Run(elapsed, 0, ran)


BENCH_USER = "nbbuild-bench"
SUBID_COUNT = 65536


class SetupError(Exception):
    """The rootless figures cannot be taken (why)."""


class BenchUser:
    """The unprivileged user of the rootless figures: made on first use (``useradd``, a
    subordinate ID range of its own), with a copy of this checkout and a venv of Debian's
    python3 (root's venv may point into /root, which the user cannot read), refreshed every
    run: the copy is this working tree, installed into the venv non-editable when the code or
    pyproject.toml changed (:func:`install_nbbuild`)."""

    def __init__(self, name: str = BENCH_USER) -> None:
        self.name = name

    def setup(self) -> None:
        for tool in ("newuidmap", "newgidmap"):
            if shutil.which(tool) is None:
                raise SetupError(f"{tool} is missing (apt-get install uidmap)")
        python = shutil.which("python3", path="/usr/bin:/bin")
        if python is None:
            raise SetupError("/usr/bin/python3 is missing")
        try:
            pw = pwd.getpwnam(self.name)
        except KeyError:
            subprocess.run(
                ["useradd", "--create-home", "--shell", "/bin/bash", self.name],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            pw = pwd.getpwnam(self.name)
        self.uid, self.gid, self.home = pw.pw_uid, pw.pw_gid, Path(pw.pw_dir)
        self._ensure_range()
        # the copy the API worker's script comes from, and the one pip installs
        self.src = self.home / "nbbuild"
        if self.src.exists():
            shutil.rmtree(self.src)
        shutil.copytree(REPO, self.src, ignore=_copy_ignore, symlinks=True)
        self.chown_tree(self.src)
        venv = self.home / "venv-bench"
        self.python = venv / "bin" / "python"
        self.exe = venv / "bin" / "nbbuild"
        install_nbbuild(venv, python, lambda: self.src, self.run, f"as {self.name}", self.src)
        os.chown(venv / STAMP_NAME, self.uid, self.gid)

    def _ensure_range(self) -> None:
        """A subordinate uid and gid range of the user's own (useradd usually made one; else
        one that no other line uses, as scripts/rootless-tests.sh picks it)."""
        files = (Path("/etc/subuid"), Path("/etc/subgid"))
        lines = {f: (f.read_text().splitlines() if f.exists() else []) for f in files}
        end = 100000
        for f in files:
            for line in lines[f]:
                fields = line.split(":")
                if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                    end = max(end, int(fields[1]) + int(fields[2]))
        for f in files:
            if not any(line.split(":")[0] in (self.name, str(self.uid)) for line in lines[f]):
                with open(f, "a") as out:
                    out.write(f"{self.name}:{end}:{SUBID_COUNT}\n")

    @property
    def popen(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            **extra,
        }

    def run(self, argv: list[str]) -> None:
        proc = subprocess.run(
            argv, env=self.env(), cwd=self.home, capture_output=True, text=True, **self.popen
        )
        if proc.returncode != 0:
            raise SetupError(f"{' '.join(argv)} failed as {self.name}: {proc.stderr[-2000:]}")

    def chown_tree(self, top: Path) -> None:
        os.chown(top, self.uid, self.gid)
        for parent, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(parent, name), self.uid, self.gid, follow_symlinks=False)

    def mkdir(self, path: Path) -> Path:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        return path


class RootlessNbbuild(NbbuildCli):
    """nbbuild as the bench user: the CLI (through a server of the user; the command enters a
    user namespace in the server's child) and the engine API in a warm process of the user
    (``build()`` forwarded to the rootless helper)."""

    label = "rootless"

    def __init__(self, user: BenchUser, work: Path) -> None:
        self._init_checks()
        self.user = user
        self.dir = user.mkdir(work / "rootless")
        self.root = self.dir / "store"
        shutil.rmtree(self.dir / "srv", ignore_errors=True)  # as root's
        self.server_dir = user.mkdir(self.dir / "srv")
        self.env = user.env(
            NBBUILD_ROOT=str(self.root),
            XDG_CACHE_HOME=str(user.mkdir(self.dir / "xdg-cache")),
            # what a login session has; bundles and the runtime's state live there
            XDG_RUNTIME_DIR=str(user.mkdir(self.dir / "run")),
            NBBUILD_SERVER_DIR=str(self.server_dir),
        )
        self.exe = str(user.exe)
        self.python = str(user.python)
        self.meta = self.dir / "metadata.json"
        self.cwd = self.dir
        self.as_user = user.popen
        self._worker: subprocess.Popen[str] | None = None

    def api(self, context: Path, tag: str, *, no_cache: bool = False) -> Run:
        if self._worker is None:
            self._worker = subprocess.Popen(
                [str(self.user.python), str(self.user.src / "bench" / "api_worker.py")],
                env=self.env,
                cwd=self.dir,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                **self.user.popen,
            )
        assert self._worker.stdin is not None and self._worker.stdout is not None
        request = {
            "context": str(context),
            "tag": tag,
            "no_cache": no_cache,
            "root": str(self.root),
        }
        self._worker.stdin.write(json.dumps(request) + "\n")
        self._worker.stdin.flush()
        line = self._worker.stdout.readline()
        if not line:
            raise RuntimeError(f"the rootless API worker exited ({self._worker.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"rootless API build failed: {reply['error']}")
        return Run(float(reply["seconds"]), 0, int(reply["ran"]))

    def close(self) -> None:
        if self._worker is not None:
            assert self._worker.stdin is not None
            self._worker.stdin.close()
            try:
                self._worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._worker.kill()
                self._worker.wait()
            self._worker = None


class BuildKit:
    def __init__(self, work: Path, state: Path) -> None:
        self.state = state
        self.env = {
            **os.environ,
            "NBBUILD_ORACLE_STATE": str(state),
            "DOCKER_HOST": f"unix://{state}/docker.sock",
            "DOCKER_BUILDKIT": "1",
        }
        self.started = False

    def start(self) -> None:
        script = str(REPO / "scripts" / "buildkit-oracle.sh")
        self.started = subprocess.run([script, "status"], env=self.env).returncode != 0
        subprocess.run([script, "start"], env=self.env, check=True)

    def prune(self) -> None:
        """Drop BuildKit's build cache (every figure's cache is made by its own warm-up, and
        --no-cache runs of bigctx would leave gigabytes behind)."""
        subprocess.run(
            [DOCKER, "builder", "prune", "-af"], env=self.env, stdout=subprocess.DEVNULL, check=True
        )

    def remove_images(self) -> None:
        """Remove the images the figures tagged (``bench-*``) and what they leave dangling:
        the build cache prune keeps tagged images, ~200 MB per bigctx run."""
        listed = subprocess.run(
            [DOCKER, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
            env=self.env,
            capture_output=True,
            text=True,
        )
        names = [n for n in listed.stdout.split() if n.startswith("bench-")]
        if names:
            subprocess.run([DOCKER, "image", "rm", "-f", *names], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        subprocess.run([DOCKER, "image", "prune", "-f"], env=self.env, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.started:
            subprocess.run([str(REPO / "scripts" / "buildkit-oracle.sh"), "stop"], env=self.env)

    @property
    def tar(self) -> Path:
        return self.state / "busybox-rootfs.tar"

    def cli(self, context: Path, tag: str, *, no_cache: bool = False) -> Run:
        argv = [DOCKER, "build", "--network=none", "--progress=plain", "-t", tag]
        if no_cache:
            argv.append("--no-cache")
        run, text = run_child([*argv, str(context)], self.env)
        run.ran = buildkit_ran(text)
        return run

    def daemon_pid(self) -> int:
        return int((self.state / "dockerd.pid").read_text().strip())

    def daemon_mem_kb(self) -> dict[str, int]:
        """dockerd's (BuildKit is embedded in it) current RSS and high-water mark."""
        try:
            return proc_mem_kb(self.daemon_pid())
        except (OSError, ValueError):
            return {}


_STEP = re.compile(r"^#(\d+) \[[^\]]*\d+/\d+\] (RUN|COPY|ADD|WORKDIR)", re.M)
_DONE = re.compile(r"^#(\d+) (DONE|CACHED)", re.M)


def buildkit_ran(text: str) -> int:
    """Steps (RUN/COPY/ADD/WORKDIR) that BuildKit's plain progress shows DONE, not CACHED."""
    steps = {m.group(1) for m in _STEP.finditer(text)}
    status: dict[str, str] = {}
    for m in _DONE.finditer(text):
        if m.group(1) in steps and status.get(m.group(1)) != "CACHED":
            status[m.group(1)] = m.group(2)
    return sum(1 for s in status.values() if s == "DONE")


# ---------------------------------------------------------------------------------------------
# the figures


def alternate(
    fig: Figure,
    n: int,
    nb: Callable[[], Run],
    bk: Callable[[], Run] | None,
    *,
    rl: Callable[[], Run] | None = None,
    before: Callable[[int], None] | None = None,
    expect_ran: Callable[[int], bool] | None = None,
) -> Figure:
    """Warm-up once each, then ``n`` rounds of nb, rl (rootless, when given), bk
    (``before(i)`` ahead of each round). Between two runs, untimed, ``sync``: a build's data
    still being written back when it returns (BuildKit does not flush; nbbuild flushes what it
    commits) must not slow down, or be flushed by, whichever builder runs next."""

    def settled(run: Callable[[], Run]) -> Run:
        os.sync()
        return run()

    for i in range(-1, n):
        if before:
            before(i)
        a = settled(nb)
        c = settled(rl) if rl else None
        b = settled(bk) if bk else None
        if i >= 0:
            fig.nb.append(a)
            if c:
                fig.rl.append(c)
            if b:
                fig.bk.append(b)
        for who, r in (("nbbuild", a), ("nbbuild rootless", c), ("buildkit", b)):
            if r is not None and expect_ran and (r.ran < 0 or not expect_ran(r.ran)):
                raise RuntimeError(
                    f"{fig.fid} {who}: {'unknown' if r.ran < 0 else r.ran} steps ran, "
                    "not what was expected"
                )
        log(
            f"  {fig.fid} {'warm-up' if i < 0 else f'run {i + 1}'}: nbbuild {a.seconds:.3f}s"
            + (f" ({a.ran} ran)" if a.ran >= 0 else "")
            + (f", rootless {c.seconds:.3f}s ({c.ran} ran)" if c else "")
            + (f", buildkit {b.seconds:.3f}s ({b.ran} ran)" if b else "")
        )
    return fig


def interpreter_start(n: int, nb: Nbbuild, rl: RootlessNbbuild | None) -> Figure:
    fig = Figure("P1-py", "python -c pass (the venv's interpreter start-up)", None)
    for i in range(-1, n):
        a = nb.python_start()
        c = rl.python_start() if rl else None
        if i >= 0:
            fig.nb.append(a)
            if c:
                fig.rl.append(c)
    fig.note = "interpreter start-up alone: the client of every nbbuild CLI figure starts one"
    return fig


def edit_file(path: Path, tag: str) -> Callable[[int], None]:
    original = path.read_text()

    def before(i: int) -> None:
        path.write_text(original + f"# edit {tag} {i} {time.time_ns()}\n")

    return before


def machine(env: dict[str, str]) -> dict[str, str]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    with contextlib.suppress(OSError, IndexError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    docker = subprocess.run(
        [DOCKER, "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "docker": docker,
    }


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return ""


def find_scenarios_script() -> Path:
    for cand in SCENARIOS_SCRIPT_CANDIDATES:
        if cand and Path(cand).is_file():
            return Path(cand)
    raise SystemExit("perf-scenarios.py not found (set NBBUILD_PERF_SCENARIOS)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-n", type=int, default=5, help="measured runs per builder (default 5)")
    parser.add_argument("--only", default="", help="comma-separated figure groups: P1,P2,P3,P4")
    parser.add_argument("--work", default="", help="work directory (default: a temporary one)")
    parser.add_argument("--json", default="", help="write the raw figures here")
    parser.add_argument("--markdown", default="", help="write the table here")
    parser.add_argument(
        "--oracle-state",
        default="/var/tmp/nbbuild-bench-oracle",
        help="state directory of the private BuildKit daemon",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--no-rootless",
        action="store_true",
        help=f"leave out the rootless figures (nbbuild as the user {BENCH_USER})",
    )
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()} or {"P1", "P2", "P3", "P4"}

    if os.geteuid() != 0:
        raise SystemExit("bench needs root (containers, dockerd)")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="nbbuild-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # the bench user reads the scenarios
    # the engine API runs in this process: import it from the repository
    sys.path.insert(0, str(REPO))

    # the CLI as pip installs it: a venv of its own, the checkout installed non-editable
    Nbbuild.setup(work)
    rootless_note = "left out (--no-rootless)" if args.no_rootless else ""
    user: BenchUser | None = None
    if not args.no_rootless:
        try:
            user = BenchUser()
            user.setup()
        except (SetupError, OSError, subprocess.CalledProcessError) as exc:
            rootless_note = f"not taken: the bench user could not be set up ({exc})"
            log(f"rootless figures {rootless_note}")
            user = None

    bk = BuildKit(work, Path(args.oracle_state))
    log(f"starting BuildKit (private daemon, state {bk.state}) …")
    bk.start()
    bk.prune()
    nb = Nbbuild(work)
    rl = RootlessNbbuild(user, work) if user is not None else None
    sides: list[NbbuildCli] = [nb] if rl is None else [nb, rl]
    figures: list[Figure] = []
    mem: dict[str, Any] = {}
    servers: dict[str, dict[str, Any]] = {}
    try:
        sc = work / "scenarios"
        if sc.exists():
            shutil.rmtree(sc)
        subprocess.run(
            [sys.executable, str(find_scenarios_script()), str(sc), "busybox:latest"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # the same busybox bits on all sides
        shutil.rmtree(nb.root, ignore_errors=True)
        nb.import_base(bk.tar)
        if rl is not None:
            tar = work / "busybox-rootfs.tar"  # where the bench user can read it
            shutil.copyfile(bk.tar, tar)
            tar.chmod(0o644)
            rl.import_base(tar)
        # the import (each side's first command) started its server: every CLI figure goes
        # through it from here on
        for side in sides:
            side.wait_for_server()
        mem["dockerd_start"] = bk.daemon_mem_kb()
        n = args.n
        dep = sc / "depfirst"

        def rl_cli(context: Path, tag: str, **kw: Any) -> Callable[[], Run] | None:
            return (lambda: rl.cli(context, tag, **kw)) if rl is not None else None

        def rl_api(context: Path, tag: str) -> Callable[[], Run] | None:
            return (lambda: rl.api(context, tag)) if rl is not None else None

        if "P1" in only:
            log("P1: no-op rebuild of depfirst")
            nb.cli(dep, "bench-dep")  # first builds (not measured)
            if rl is not None:
                rl.cli(dep, "bench-dep")
            bk.cli(dep, "bench-dep")
            noop = lambda r: r == 0  # noqa: E731
            figures.append(
                alternate(
                    Figure("P1-cli", "depfirst no-op rebuild, CLI", 0.75),
                    n,
                    lambda: nb.cli(dep, "bench-dep"),
                    lambda: bk.cli(dep, "bench-dep"),
                    rl=rl_cli(dep, "bench-dep"),
                    expect_ran=noop,
                )
            )
            figures.append(
                alternate(
                    Figure(
                        "P1-cli-inproc",
                        "depfirst no-op rebuild, CLI with NBBUILD_SERVER=0 (imports and runs "
                        "everything itself)",
                        None,
                    ),
                    n,
                    lambda: nb.cli(dep, "bench-dep", inproc=True),
                    lambda: bk.cli(dep, "bench-dep"),
                    rl=rl_cli(dep, "bench-dep", inproc=True),
                    expect_ran=noop,
                )
            )
            figures.append(interpreter_start(n, nb, rl))
            figures.append(
                alternate(
                    Figure("P1-api", "depfirst no-op rebuild, engine API in a warm process", 0.125),
                    n,
                    lambda: nb.api(dep, "bench-dep"),
                    lambda: bk.cli(dep, "bench-dep"),
                    rl=rl_api(dep, "bench-dep"),
                    expect_ran=noop,
                )
            )

        if "P2" in only:
            log("P2: rebuild after an edit")
            nb.cli(dep, "bench-dep")
            if rl is not None:
                rl.cli(dep, "bench-dep")
            bk.cli(dep, "bench-dep")
            figures.append(
                alternate(
                    Figure("P2-src", "depfirst after a one-file source edit, CLI", 0.5),
                    n,
                    lambda: nb.cli(dep, "bench-dep"),
                    lambda: bk.cli(dep, "bench-dep"),
                    rl=rl_cli(dep, "bench-dep"),
                    before=edit_file(dep / "src" / "f007.txt", "src"),
                    expect_ran=lambda r: r == 3,  # COPY . ., RUN, COPY --from
                )
            )
            figures.append(
                alternate(
                    Figure("P2-manifest", "depfirst after a manifest (deps.txt) edit, CLI", 0.5),
                    n,
                    lambda: nb.cli(dep, "bench-dep"),
                    lambda: bk.cli(dep, "bench-dep"),
                    rl=rl_cli(dep, "bench-dep"),
                    before=edit_file(dep / "deps.txt", "manifest"),
                    expect_ran=lambda r: r == 5,  # COPY deps, RUN, COPY ., RUN, COPY --from
                )
            )

        if "P3" in only:
            log("P3: steps, cold (--no-cache on a warm store)")
            steps = sc / "steps"
            figures.append(
                alternate(
                    Figure("P3", "steps (30 trivial RUN) cold, CLI", 0.33),
                    n,
                    lambda: nb.cli(steps, "bench-steps", no_cache=True),
                    lambda: bk.cli(steps, "bench-steps", no_cache=True),
                    rl=rl_cli(steps, "bench-steps", no_cache=True),
                    expect_ran=lambda r: r == 30,
                )
            )

        if "P4" in only:
            log("P4: bigctx (5,000 files, 200 MB)")
            big = sc / "bigctx"
            mem["dockerd_before_bigctx"] = bk.daemon_mem_kb()
            first = alternate(
                Figure("P4-first", "bigctx first build (cold: --no-cache, warm store), CLI", 0.5),
                n,
                lambda: nb.cli(big, "bench-big", no_cache=True),
                lambda: bk.cli(big, "bench-big", no_cache=True),
                rl=rl_cli(big, "bench-big", no_cache=True),
                expect_ran=lambda r: r == 2,
            )
            figures.append(first)
            mem["dockerd_after_bigctx_first"] = bk.daemon_mem_kb()
            noop_cli = alternate(
                Figure("P4-noop-cli", "bigctx no-op rebuild, CLI", 0.33),
                n,
                lambda: nb.cli(big, "bench-big"),
                lambda: bk.cli(big, "bench-big"),
                rl=rl_cli(big, "bench-big"),
                expect_ran=lambda r: r == 0,
            )
            figures.append(noop_cli)
            figures.append(
                alternate(
                    Figure(
                        "P4-noop-cli-inproc",
                        "bigctx no-op rebuild, CLI with NBBUILD_SERVER=0 (imports and runs "
                        "everything itself)",
                        None,
                    ),
                    n,
                    lambda: nb.cli(big, "bench-big", inproc=True),
                    lambda: bk.cli(big, "bench-big"),
                    rl=rl_cli(big, "bench-big", inproc=True),
                    expect_ran=lambda r: r == 0,
                )
            )
            figures.append(
                alternate(
                    Figure(
                        "P4-noop-api", "bigctx no-op rebuild, engine API in a warm process", 0.125
                    ),
                    n,
                    lambda: nb.api(big, "bench-big"),
                    lambda: bk.cli(big, "bench-big"),
                    rl=rl_api(big, "bench-big"),
                    expect_ran=lambda r: r == 0,
                )
            )
            mem["dockerd_after_bigctx"] = bk.daemon_mem_kb()
            mem["docker_client_maxrss_kb_bigctx"] = max(r.maxrss_kb for r in first.bk)
            # Memory where the work happens: through the server the client only hands its
            # descriptors over (its RSS is the bare interpreter's), the build runs in a child of
            # the server, whose peak no rusage here sees. So the CLI's peak comes from runs
            # with NBBUILD_SERVER=0 (the command does all the work in its own process), and
            # the server's own memory is read from /proc.
            for side, prefix in zip(sides, ("nbbuild", "rootless"), strict=False):
                log(f"P4-mem: {side.label} CLI with NBBUILD_SERVER=0, --no-cache and no-op")
                cold = side.cli(big, "bench-big", no_cache=True, inproc=True)
                again = side.cli(big, "bench-big", inproc=True)
                for what, r, want in (("--no-cache", cold, 2), ("no-op", again, 0)):
                    if r.ran != want:
                        raise RuntimeError(f"P4-mem {side.label} {what}: {r.ran} steps ran")
                mem[f"{prefix}_cli_maxrss_kb_bigctx_first"] = cold.maxrss_kb
                mem[f"{prefix}_cli_maxrss_kb_bigctx_noop"] = again.maxrss_kb
                runs = first.nb if side is nb else first.rl
                mem[f"{prefix}_client_maxrss_kb_bigctx_first"] = max(r.maxrss_kb for r in runs)
                mem[f"{prefix}_server_mem_kb"] = side.server_mem_kb()
                log(
                    f"  {side.label}: in-process CLI max RSS {cold.maxrss_kb / 1024:.0f} MB "
                    f"(--no-cache) / {again.maxrss_kb / 1024:.0f} MB (no-op); server "
                    f"{mem[f'{prefix}_server_mem_kb']}"
                )
        for side in sides:
            servers[side.label] = {
                "pids_at_start": side.server_pids,
                "pids_at_end": side.running_servers(),
                "runs_through_server": side.served,
                "runs_not_through_server": side.not_served,
            }
        info = machine_info_safe(bk.env)
        info["nbbuild"] = (
            f"installed from a copy of the checkout by `pip install` (non-editable) into a venv "
            f"of its own ({ROOT_VENV}, {_python_version(Path(nb.python))})"
        )
        info["server"] = server_line(servers)
        if user is not None:
            info["rootless"] = (
                f"user {user.name} (uid {user.uid}, subordinate range from /etc/subuid), "
                f"{_python_version(user.python)}"
            )
    finally:
        if rl is not None:
            rl.close()
        for side in sides:  # no server outlives the bench
            log(f"{side.label}: {side.stop_servers() or 'nbbuild server stop said nothing'}")
        close_spawner()
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            bk.prune()
            bk.remove_images()
        bk.stop()
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)

    info["rootless_note"] = rootless_note
    table = markdown(figures, mem, info, n=args.n)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "n": args.n,
                    "figures": [f.to_json() for f in figures],
                    "memory": mem,
                    "servers": servers,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


def _python_version(python: Path) -> str:
    out = subprocess.run([str(python), "--version"], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def machine_info_safe(env: dict[str, str]) -> dict[str, str]:
    try:
        return machine(env)
    except OSError:
        return {}


def server_line(servers: dict[str, dict[str, Any]]) -> str:
    """The server mode, for the table: which server ran the CLI figures, and whether every run
    went through it."""
    parts = []
    odd = []
    for label, s in servers.items():
        start, end = s["pids_at_start"], s["pids_at_end"]
        done, missed = s["runs_through_server"], s["runs_not_through_server"]
        parts.append(f"{label} pid {', '.join(map(str, start)) or '?'}")
        if start != end:
            odd.append(f"the {label} servers changed during the run ({start} → {end})")
        if missed:
            odd.append(
                f"{len(missed)} of {done + len(missed)} {label} CLI runs did **not** go through "
                f"the server: {'; '.join(missed[:5])}{' …' if len(missed) > 5 else ''}"
            )
    counts = " / ".join(
        f"{s['runs_through_server']} of "
        f"{s['runs_through_server'] + len(s['runs_not_through_server'])} {label}"
        for label, s in servers.items()
    )
    line = (
        "the CLI figures go through nbbuild's warm fork server (nbbuild/server.py), one per side "
        f"in a socket directory of its own, started by the base image import and stopped at the "
        f"end ({'; '.join(parts)}); CLI runs through it, judged by the client's max RSS: "
        f"{counts}. The -inproc figures and P4-mem run with NBBUILD_SERVER=0"
    )
    return line + ("; " + "; ".join(odd) if odd else "")


def _fmt_s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s"


def _met(ratio: float, target: float | None) -> str:
    if target is None or ratio != ratio:  # nan: not measured
        return ""
    return "yes" if ratio <= target else "**no**"


def markdown(figures: list[Figure], mem: dict[str, Any], info: dict[str, str], *, n: int) -> str:
    rootless = any(f.rl for f in figures)
    lines = [
        f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores, {info.get('memory', '?')}, "
        f"{info.get('os', '?')}, kernel {info.get('kernel', '?')}, Python {info.get('python', '?')}, "
        f"Docker {info.get('docker', '?')} (embedded BuildKit, rootful dockerd); load average at "
        f"the end {info.get('load', '?')}.",
        f"nbbuild {info.get('nbbuild', '?')}; {info.get('server', 'server mode unknown')}.",
        f"Medians of {n} runs per builder after one warm-up each, alternated "
        + ("(nbbuild as root, nbbuild rootless, BuildKit)." if rootless else "A/B."),
    ]
    if rootless:
        lines.append(
            f"Rootless: nbbuild as {info.get('rootless', 'an unprivileged user')}; BuildKit "
            "stays Docker's rootful daemon, so both ratios divide by the same BuildKit runs."
        )
    elif info.get("rootless_note"):
        lines.append(f"Rootless figures {info['rootless_note']}.")
    lines.append("")
    if rootless:
        lines += [
            "| figure | nbbuild root | nbbuild rootless | BuildKit | ratio root | ratio rootless "
            "| target | met root / rootless |",
            "|---|---:|---:|---:|---:|---:|---:|:-:|",
        ]
    else:
        lines += [
            "| figure | nbbuild | BuildKit | ratio | target | met |",
            "|---|---:|---:|---:|---:|:-:|",
        ]
    for f in figures:
        nbm = _fmt_s(f.median(f.nb))
        rlm = _fmt_s(f.median(f.rl)) if f.rl else ""
        if f.bk:
            bkm = _fmt_s(f.median(f.bk))
            ratio, ratio_rl = f.ratio, f.ratio_of(f.rl)
            target = "" if f.target is None else f"≤ {f.target}"
            if rootless:
                met = f"{_met(ratio, f.target)} / {_met(ratio_rl, f.target) or '-'}"
                lines.append(
                    f"| {f.fid}: {f.title} | {nbm} | {rlm} | {bkm} | {ratio:.2f} | "
                    f"{ratio_rl:.2f} | {target} | {met if f.target is not None else ''} |"
                )
            else:
                lines.append(
                    f"| {f.fid}: {f.title} | {nbm} | {bkm} | {ratio:.2f} | {target} | "
                    f"{_met(ratio, f.target)} |"
                )
        elif rootless:
            lines.append(f"| {f.fid}: {f.title} | {nbm} | {rlm} | | | | | |")
        else:
            lines.append(f"| {f.fid}: {f.title} | {nbm} | | | | |")
    if "nbbuild_cli_maxrss_kb_bigctx_first" in mem:
        rss = mem["nbbuild_cli_maxrss_kb_bigctx_first"] / 1024
        noop = mem["nbbuild_cli_maxrss_kb_bigctx_noop"] / 1024
        before = mem.get("dockerd_before_bigctx", {})
        after = mem.get("dockerd_after_bigctx", {})
        client = mem.get("docker_client_maxrss_kb_bigctx", 0) / 1024
        cell = f"{rss:.0f} MB / {noop:.0f} MB"
        mem_title = (
            "bigctx CLI peak memory, the command run in-process (NBBUILD_SERVER=0; max RSS, "
            "--no-cache build / no-op)"
        )
        if rootless:
            rl_rss = mem.get("rootless_cli_maxrss_kb_bigctx_first", 0) / 1024
            rl_noop = mem.get("rootless_cli_maxrss_kb_bigctx_noop", 0) / 1024
            met = f"{'yes' if rss < 100 else '**no**'} / {'yes' if rl_rss < 100 else '**no**'}"
            lines.append(
                f"| P4-mem: {mem_title} | {cell} | "
                f"{rl_rss:.0f} MB / {rl_noop:.0f} MB | see below | | | < 100 MB | {met} |"
            )
        else:
            met = "yes" if rss < 100 else "**no**"
            lines.append(f"| P4-mem: {mem_title} | {cell} | see below | | < 100 MB | {met} |")
        lines += [
            "",
            "BuildKit's memory is dockerd's (BuildKit is embedded in it, the builds run there): "
            f"RSS {before.get('VmRSS', 0) / 1024:.0f} MB before the bigctx figures, "
            f"{after.get('VmRSS', 0) / 1024:.0f} MB after, high-water mark (VmHWM, since this run "
            f"started the daemon) {after.get('VmHWM', 0) / 1024:.0f} MB; the docker client's "
            f"own max RSS {client:.0f} MB. nbbuild's figure is the whole CLI process (wait4 "
            "rusage) run with NBBUILD_SERVER=0, so that the build's work is in it, its containers "
            "excluded — as dockerd's figure excludes its containers.",
        ]
        server = [
            f"{label} VmRSS {m.get('VmRSS', 0) / 1024:.0f} MB, "
            f"VmHWM {m.get('VmHWM', 0) / 1024:.0f} MB"
            for label, key in (
                ("root", "nbbuild_server_mem_kb"),
                ("rootless", "rootless_server_mem_kb"),
            )
            if (m := mem.get(key))
        ]
        if server:
            lines += [
                "",
                "nbbuild's server process after the bigctx figures (it has imported the CLI and "
                "the engine; each command runs in a forked child of it, whose own peak is what "
                f"the in-process figures above measure): {'; '.join(server)}.",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
