"""nbbuild and real BuildKit side by side, on the same scenarios, on the same machine, in one run.

    .venv/bin/python bench/bench.py [-n 5] [--only P1,P3] [--json OUT] [--markdown OUT]
    make bench

Scenarios come from ``perf-scenarios.py`` (``depfirst``, ``steps``, ``bigctx``). BuildKit is
Docker's embedded BuildKit driven by ``/usr/bin/docker`` on a *private* daemon this script starts
through ``scripts/buildkit-oracle.sh`` with its own state directory (so other users of the
differential oracle cannot prune its cache mid-run, and the daemon's memory is this run's).
nbbuild uses a fresh store into which the same busybox rootfs tar is imported.

For every figure both builders get one warm-up run, then ``n`` measured runs alternated A/B
(nbbuild, BuildKit, nbbuild, …). Reported: medians, the ratio of the medians (nbbuild/BuildKit)
and the target. Peak memory: the nbbuild CLI's max RSS from ``wait4`` (the child's own rusage);
BuildKit's builds run in dockerd, so its figure is dockerd's RSS growth and high-water mark
(``VmHWM``: since the daemon started, which this script did) plus the docker client's max RSS.

Every run's step statuses are checked (a no-op must run nothing, a cold build must run every
RUN), so a figure cannot come from a build that did something else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
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
    note: str = ""

    def median(self, runs: list[Run]) -> float:
        return statistics.median(r.seconds for r in runs) if runs else float("nan")

    @property
    def ratio(self) -> float:
        bk = self.median(self.bk)
        return self.median(self.nb) / bk if self.bk and bk else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.fid,
            "title": self.title,
            "target": self.target,
            "nbbuild_s": [r.seconds for r in self.nb],
            "buildkit_s": [r.seconds for r in self.bk],
            "nbbuild_median_s": self.median(self.nb),
            "buildkit_median_s": self.median(self.bk) if self.bk else None,
            "ratio": self.ratio if self.bk else None,
            "nbbuild_maxrss_kb": max((r.maxrss_kb for r in self.nb), default=0),
            "note": self.note,
        }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# running things


def run_child(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[Run, str]:
    """Run ``argv``; its wall time, its own max RSS (wait4) and its stderr+stdout."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{text[-3000:]}")
    return Run(elapsed, int(usage.ru_maxrss)), text


class Nbbuild:
    def __init__(self, work: Path) -> None:
        self.root = work / "nbbuild-store"
        # Bytecode as any installed package has it: the CLI's modules are compiled once (into
        # the work directory, not the source tree), even where PYTHONDONTWRITEBYTECODE is set.
        self.env = {
            **os.environ,
            "NBBUILD_ROOT": str(self.root),
            "PYTHONPYCACHEPREFIX": str(work / "pycache"),
            # nbbuild's own start-up cache (nbbuild._fastimport) starts empty in every run
            "XDG_CACHE_HOME": str(work / "xdg-cache"),
        }
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.exe = str(Path(sys.executable).parent / "nbbuild")
        self.meta = work / "nbbuild-metadata.json"

    def import_base(self, tar: Path) -> None:
        run_child([self.exe, "image", "import", str(tar), "busybox:latest"], self.env)

    def cli(self, context: Path, tag: str, *, no_cache: bool = False) -> Run:
        argv = [self.exe, "build", "--progress=quiet", "-t", tag]
        argv += ["--metadata-file", str(self.meta)]
        if no_cache:
            argv.append("--no-cache")
        run, _ = run_child([*argv, str(context)], self.env)
        run.ran = self._ran_from_metadata()
        return run

    def _ran_from_metadata(self) -> int:
        try:
            steps = json.loads(self.meta.read_text())["nbbuild.steps"]
        except (OSError, KeyError, ValueError):
            return -1
        return sum(1 for s in steps if s.get("step") is not None and s.get("status") == "executed")

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
        out: dict[str, int] = {}
        try:
            for line in Path(f"/proc/{self.daemon_pid()}/status").read_text().splitlines():
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
        except (OSError, ValueError):
            pass
        return out


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
    before: Callable[[int], None] | None = None,
    expect_ran: Callable[[int], bool] | None = None,
) -> Figure:
    """Warm-up once each, then ``n`` rounds of nb, bk (``before(i)`` ahead of each round)."""
    for i in range(-1, n):
        if before:
            before(i)
        a = nb()
        b = bk() if bk else None
        if i >= 0:
            fig.nb.append(a)
            if b:
                fig.bk.append(b)
        for who, r in (("nbbuild", a), ("buildkit", b)):
            if r is not None and expect_ran and r.ran >= 0 and not expect_ran(r.ran):
                raise RuntimeError(f"{fig.fid} {who}: {r.ran} steps ran, not what was expected")
        log(
            f"  {fig.fid} {'warm-up' if i < 0 else f'run {i + 1}'}: nbbuild {a.seconds:.3f}s"
            + (f" ({a.ran} ran)" if a.ran >= 0 else "")
            + (f", buildkit {b.seconds:.3f}s ({b.ran} ran)" if b else "")
        )
    return fig


def interpreter_start(n: int, env: dict[str, str]) -> Figure:
    fig = Figure("P1-py", "python -c pass (the interpreter's own start-up)", None)
    exe = sys.executable
    for i in range(-1, n):
        run, _ = run_child([exe, "-c", "pass"], env)
        if i >= 0:
            fig.nb.append(run)
    fig.note = "interpreter start-up alone, included in every nbbuild CLI figure"
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
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()} or {"P1", "P2", "P3", "P4"}

    if os.geteuid() != 0:
        raise SystemExit("bench needs root (containers, dockerd)")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="nbbuild-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    # the engine API runs in this process: import it from the repository
    sys.path.insert(0, str(REPO))

    bk = BuildKit(work, Path(args.oracle_state))
    log(f"starting BuildKit (private daemon, state {bk.state}) …")
    bk.start()
    bk.prune()
    nb = Nbbuild(work)
    figures: list[Figure] = []
    mem: dict[str, Any] = {}
    try:
        sc = work / "scenarios"
        if sc.exists():
            shutil.rmtree(sc)
        subprocess.run(
            [sys.executable, str(find_scenarios_script()), str(sc), "busybox:latest"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # the same busybox bits on both sides
        shutil.rmtree(nb.root, ignore_errors=True)
        nb.import_base(bk.tar)
        mem["dockerd_start"] = bk.daemon_mem_kb()
        n = args.n
        dep = sc / "depfirst"

        if "P1" in only:
            log("P1: no-op rebuild of depfirst")
            nb.cli(dep, "bench-dep")  # first builds (not measured)
            bk.cli(dep, "bench-dep")
            noop = lambda r: r == 0  # noqa: E731
            figures.append(
                alternate(
                    Figure("P1-cli", "depfirst no-op rebuild, CLI", 0.75),
                    n,
                    lambda: nb.cli(dep, "bench-dep"),
                    lambda: bk.cli(dep, "bench-dep"),
                    expect_ran=noop,
                )
            )
            figures.append(interpreter_start(n, nb.env))
            figures.append(
                alternate(
                    Figure("P1-api", "depfirst no-op rebuild, engine API in a warm process", 0.125),
                    n,
                    lambda: nb.api(dep, "bench-dep"),
                    lambda: bk.cli(dep, "bench-dep"),
                    expect_ran=noop,
                )
            )

        if "P2" in only:
            log("P2: rebuild after an edit")
            nb.cli(dep, "bench-dep")
            bk.cli(dep, "bench-dep")
            figures.append(
                alternate(
                    Figure("P2-src", "depfirst after a one-file source edit, CLI", 0.5),
                    n,
                    lambda: nb.cli(dep, "bench-dep"),
                    lambda: bk.cli(dep, "bench-dep"),
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
                expect_ran=lambda r: r == 2,
            )
            figures.append(first)
            mem["dockerd_after_bigctx_first"] = bk.daemon_mem_kb()
            noop_cli = alternate(
                Figure("P4-noop-cli", "bigctx no-op rebuild, CLI", 0.33),
                n,
                lambda: nb.cli(big, "bench-big"),
                lambda: bk.cli(big, "bench-big"),
                expect_ran=lambda r: r == 0,
            )
            figures.append(noop_cli)
            figures.append(
                alternate(
                    Figure(
                        "P4-noop-api", "bigctx no-op rebuild, engine API in a warm process", 0.125
                    ),
                    n,
                    lambda: nb.api(big, "bench-big"),
                    lambda: bk.cli(big, "bench-big"),
                    expect_ran=lambda r: r == 0,
                )
            )
            mem["dockerd_after_bigctx"] = bk.daemon_mem_kb()
            mem["nbbuild_cli_maxrss_kb_bigctx_first"] = max(r.maxrss_kb for r in first.nb)
            mem["nbbuild_cli_maxrss_kb_bigctx_noop"] = max(r.maxrss_kb for r in noop_cli.nb)
            mem["docker_client_maxrss_kb_bigctx"] = max(r.maxrss_kb for r in first.bk)
        info = machine_info_safe(bk.env)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            bk.prune()
        bk.stop()
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)

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
                },
                indent=2,
            )
            + "\n"
        )
    return 0


def machine_info_safe(env: dict[str, str]) -> dict[str, str]:
    try:
        return machine(env)
    except OSError:
        return {}


def _fmt_s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s"


def markdown(figures: list[Figure], mem: dict[str, Any], info: dict[str, str], *, n: int) -> str:
    lines = [
        f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores, {info.get('memory', '?')}, "
        f"{info.get('os', '?')}, kernel {info.get('kernel', '?')}, Python {info.get('python', '?')}, "
        f"Docker {info.get('docker', '?')} (embedded BuildKit); load average at the end "
        f"{info.get('load', '?')}.",
        f"Medians of {n} runs per builder after one warm-up each, alternated A/B.",
        "",
        "| figure | nbbuild | BuildKit | ratio | target | met |",
        "|---|---:|---:|---:|---:|:-:|",
    ]
    for f in figures:
        nbm = f.median(f.nb)
        if f.bk:
            bkm = f.median(f.bk)
            ratio = f.ratio
            met = "yes" if f.target is not None and ratio <= f.target else "**no**"
            lines.append(
                f"| {f.fid}: {f.title} | {_fmt_s(nbm)} | {_fmt_s(bkm)} | {ratio:.2f} | "
                f"≤ {f.target} | {met} |"
            )
        else:
            lines.append(f"| {f.fid}: {f.title} | {_fmt_s(nbm)} | | | | |")
    if "nbbuild_cli_maxrss_kb_bigctx_first" in mem:
        rss = mem["nbbuild_cli_maxrss_kb_bigctx_first"] / 1024
        noop = mem["nbbuild_cli_maxrss_kb_bigctx_noop"] / 1024
        before = mem.get("dockerd_before_bigctx", {})
        after = mem.get("dockerd_after_bigctx", {})
        client = mem.get("docker_client_maxrss_kb_bigctx", 0) / 1024
        met = "yes" if rss < 100 else "**no**"
        lines.append(
            f"| P4-mem: bigctx CLI peak memory (max RSS, first build / no-op) | "
            f"{rss:.0f} MB / {noop:.0f} MB | see below | | < 100 MB | {met} |"
        )
        lines += [
            "",
            "BuildKit's memory is dockerd's (BuildKit is embedded in it, the builds run there): "
            f"RSS {before.get('VmRSS', 0) / 1024:.0f} MB before the bigctx figures, "
            f"{after.get('VmRSS', 0) / 1024:.0f} MB after, high-water mark (VmHWM, since this run "
            f"started the daemon) {after.get('VmHWM', 0) / 1024:.0f} MB; the docker client's "
            f"own max RSS {client:.0f} MB. nbbuild's figure is the whole CLI process (wait4 "
            "rusage), its containers excluded — as dockerd's figure excludes its containers.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
