"""Container start cost on this machine: crun vs runc vs bwrap (and nbbuild's full path).

Runs ``sh -c true`` in a busybox rootfs N times per runtime and prints the median wall time.
Needs root and scripts/busybox-rootfs.sh's dependencies. Not a test: figures vary by machine.

    .venv/bin/python bench/runtime_start.py [-n 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.executor import OciExecutor, ProcessSpec, detect_runtimes
from engine.executor.bundle import write_bundle
from engine.executor.user import ResolvedUser
from engine.snapshot import OverlayMount

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], None], n: int) -> float:
    fn()  # warm the page cache
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nbbuild-bench-"))
    try:
        rootfs = work / "rootfs"
        subprocess.run(
            ["bash", str(REPO / "scripts" / "busybox-rootfs.sh"), str(rootfs)], check=True
        )
        spec = ProcessSpec(("sh", "-c", "true"), network="none")
        runtimes = {r.name: r for r in detect_runtimes()}
        results: dict[str, float] = {}
        for name in ("crun", "runc"):
            if name not in runtimes:
                continue
            rt = runtimes[name]
            bundle = work / f"bundle-{name}"
            write_bundle(bundle, spec, ResolvedUser(0, 0, (0,), "/root"), rootfs)
            state = work / f"state-{name}"
            extra = ["--cgroup-manager=disabled"] if name == "crun" else []
            # crun 1.8 needs the hybrid unified hierarchy hidden (see engine.executor.oci)
            prefix = (
                [
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec "$@"',
                    "x",
                ]
                if name == "crun"
                else []
            )
            counter = iter(range(10**6))

            def run_raw(
                rt_path: str = str(rt.path),
                b: Path = bundle,
                s: Path = state,
                e: list[str] = extra,
                p: list[str] = prefix,
                counter: Iterator[int] = counter,
            ) -> None:
                cid = f"bench{next(counter)}"
                subprocess.run(
                    [*p, rt_path, "--root", str(s), *e, "run", "--bundle", str(b), cid],
                    check=True,
                    stdin=subprocess.DEVNULL,
                )

            results[f"{name} {rt.version} (bare run)"] = timed(run_raw, args.n)
        if "bwrap" in runtimes:
            bw = runtimes["bwrap"]

            def run_bwrap() -> None:
                subprocess.run(
                    [
                        str(bw.path),
                        "--bind",
                        str(rootfs),
                        "/",
                        "--proc",
                        "/proc",
                        "--dev",
                        "/dev",
                        "--unshare-pid",
                        "--unshare-net",
                        "--unshare-ipc",
                        "--unshare-uts",
                        "--hostname",
                        "buildkitsandbox",
                        "sh",
                        "-c",
                        "true",
                    ],
                    check=True,
                    stdin=subprocess.DEVNULL,
                )

            results[f"bwrap {bw.version} (bare run)"] = timed(run_bwrap, args.n)
        for name in ("crun", "runc"):
            if name not in runtimes:
                continue
            executor = OciExecutor(runtimes[name], state_dir=work / "nbstate")
            steps = iter(range(10**6))

            def run_step(ex: OciExecutor = executor, steps: Iterator[int] = steps) -> None:
                d = work / f"step{next(steps)}"
                ex.run(spec, OverlayMount((rootfs,), d / "u", d / "w"))

            results[f"OciExecutor({name}) overlay step"] = timed(run_step, args.n)
        for label, ms in results.items():
            print(f"{label:45s} median {ms:6.1f} ms  (n={args.n})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
