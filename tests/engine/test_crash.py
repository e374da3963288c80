"""``kill -9`` of a whole ``nbbuild build`` at 20 random moments.

The build is a CLI subprocess (its own process group, like a terminal's job): multi-stage, RUN
steps that take a little time and write files, a COPY from the context, ``-t`` and
``--output type=local``. The delays are seeded and stratified over the length of a reference
build, so the kills land everywhere: while keys are computed, while a container runs, between
a diff's rename and its publication, during tagging and export. After every kill:

(a) before any sweep, ``check`` finds nothing but a dead owner's leftovers (a stale lease,
    unpublished diffs, partial blobs); by design (engine/store/store.py) those are swept on the
    next ``Store.open`` - which ``nbbuild cache check`` does - and it then reports no problems,
    and the store holds no unpublished diff, partial blob or build work dir;
(b) the same build, run again, succeeds and its output equals that of a reference build in a
    fresh store (files, contents, modes, owners, links), and the tag names what it built;
(c) no process of the dead build survives anywhere (the runtime and the container die with the
    engine: see engine/executor/oci.py) and no mount is left on the host under the store or
    /run/nbbuild;
(d) the runtime state and bundles of the dead build's containers are gone once the next build
    has started (every build sweeps dead owners' entries);
(e) at the end the store can be removed (``cache prune --all``, then its directory, by the
    user's engine: for a rootless user, in its user namespace). Rootless, nothing else the
    builds left - the executor's state dir (~/.cache/nbbuild-run), temporary files (TMPDIR is
    the test's own), outputs, logs, /tmp itself - belongs to the user's subordinate IDs, which
    the user could not delete.

Run by a normal user (scripts/rootless-tests.sh), the builds are rootless. With a single ID
mapping the build cannot run at all (it chowns to other IDs): it must fail with the clear error.

The engine's own death is tested: the commands run in the CLI process itself
(``NBBUILD_SERVER=0``), so the killed process is the engine. That a warm server's child dies with
its killed command is tested in tests/nbbuild/test_server.py.

Each round uses its own ``ROUND`` build arg: it is in every RUN's environment, so every step's
key is new and the whole build runs again, while the output does not depend on it.
"""

from __future__ import annotations

import importlib.util
import json
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from engine.images.store import ImageStore
from engine.store.leases import process_start_ticks
from engine.store.store import Store


def _helper() -> ModuleType:
    name = "nbbuild_tests_whole_build"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("whole_build.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


wb = _helper()

KILLS = 20
# What a dead build may leave, all removed by the sweep of the next Store.open (store.py).
SWEPT_ON_OPEN = {"stale-lease", "tmp-dir", "orphan-dir", "partial-blob"}
SEED = 20261128

DOCKERFILE = """\
FROM busybox AS base
ARG ROUND
RUN mkdir -p /opt/app/lib && i=0; while [ $i -lt 40 ]; do echo "lib $i" > /opt/app/lib/f$i; i=$((i+1)); done; sleep 0.2
RUN chmod 0750 /opt/app/lib && chown -R 1000:1000 /opt/app && ln -s lib /opt/app/link && rm /opt/app/lib/f7

FROM base AS left
ARG ROUND
RUN dd if=/dev/zero of=/opt/app/blob bs=64k count=32 2>/dev/null && rm /opt/app/lib/f3 && sleep 0.2
RUN echo left > /opt/app/left && chmod 4755 /opt/app/left && mkdir -m 1777 /opt/app/sticky

FROM base AS right
ARG ROUND
RUN mkdir /opt/app/right && seq 1 500 > /opt/app/right/numbers && ln /opt/app/right/numbers /opt/app/right/hard && sleep 0.2
COPY --chown=7:8 data /opt/app/right/data

FROM busybox
ARG ROUND
COPY --from=left /opt/app /app
COPY --from=right /opt/app/right /app/right
RUN rm /app/lib/f4 /bin/vi && chown 65534:65534 /app/left && touch /app/done
"""

FILES = {
    "Dockerfile": DOCKERFILE,
    "data/a.txt": "hello\n",
    "data/sub/b.txt": "x" * 5000,
}


def build_args(round_: str, tag: str, out: Path, metadata: Path | None = None) -> list[str]:
    args = ["build", "--progress=plain", "--build-arg", f"ROUND={round_}", "-t", tag]
    if metadata is not None:
        args += ["--metadata-file", str(metadata)]
    return [*args, "--output", f"type=local,dest={out}"]


@pytest.fixture(autouse=True)
def _engine_in_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBBUILD_SERVER", "0")


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR of the builds: the test's own, so what they leave there can be checked."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp


def assert_nothing_left_the_user_cannot_delete(
    tmp_path: Path, stores: tuple[Path, ...], since: float
) -> None:
    """(e): the stores can be removed; rootless, nothing else is the subordinate IDs'."""
    if wb.base().rootless():
        # (the stores hold the builds' files, owned by the IDs they have in the containers)
        assert wb.foreign_files(tmp_path, skip=stores) == []
        assert wb.foreign_files(wb.state_dir()) == []
        assert wb.subordinate_in(Path("/tmp"), since) == []
    for store in stores:
        wb.remove_store(store)


def test_sigkill_of_the_cli_at_random_moments(tmp_path: Path, private_tmp: Path) -> None:
    since = time.time()
    tar = wb.busybox_tar(tmp_path)
    ctx = wb.write_files(tmp_path / "ctx", FILES)

    # The reference: the same build in a fresh store; its length sets the kill window.
    ref_root = wb.new_store(tmp_path / "ref", tar)
    started = time.monotonic()
    ref = wb.cli(*build_args("ref", "crash", tmp_path / "ref-out"), ctx, root=ref_root)
    length = time.monotonic() - started
    if wb.base().single():
        wb.check_unmapped(ref)  # chown -R 1000:1000: the IDs are not mapped
        return
    assert ref.returncode == 0, ref.stderr
    reference = wb.tree(tmp_path / "ref-out")

    root = wb.new_store(tmp_path / "store", tar)
    rng = random.Random(SEED)
    # One delay in each twentieth of the window (a little past the end: a kill after the
    # build finished must be harmless too), in random order.
    delays = [(i + rng.random()) / KILLS * length * 1.1 for i in range(KILLS)]
    rng.shuffle(delays)
    killed_running = 0
    for round_, delay in enumerate(delays):
        run = wb.Cli(
            *build_args(str(round_), "crash", tmp_path / "killed-out" / str(round_)),
            ctx,
            root=root,
            logs=tmp_path / "logs" / f"killed-{round_}",
        )
        try:
            time.sleep(delay)
            killed_running += run.proc.poll() is None
            run.signal_group(signal.SIGKILL)
            run.wait()
        finally:
            run.kill()
        where = f"round {round_}, kill after {delay:.2f}s of {length:.2f}s"

        # (c) nothing of the dead build keeps running, nothing stays mounted
        pid = run.pid
        assert wb.wait_for(lambda: not wb.store_processes(root, pid)), (  # noqa: B023
            where,
            wb.store_processes(root, pid),
        )
        assert wb.host_mounts(root) == [], where

        # (a) before any sweep, the only problems are a dead owner's leftovers: no published
        # result, snapshot, key or blob is damaged ...
        kinds = wb.base().inside(wb.unswept_problems, root)
        assert kinds <= SWEPT_ON_OPEN, (where, kinds)
        # ... and the first open (cache check) sweeps them; then it is clean
        out = wb.check_clean(root)
        assert "checked" in out
        assert wb.store_leftovers(root) == [], where
        assert wb.live_leases(root) == 0, where

        # (b) the same build again: correct output, and the tag names it
        metadata = tmp_path / "meta" / f"{round_}.json"
        metadata.parent.mkdir(exist_ok=True)
        out_dir = tmp_path / "out" / str(round_)
        again = wb.cli(*build_args(str(round_), "crash", out_dir, metadata), ctx, root=root)
        assert again.returncode == 0, (where, again.stderr)
        assert wb.diff_trees(wb.tree(out_dir), reference) == [], where
        image_id = json.loads(metadata.read_text())["containerimage.config.digest"]
        with Store.open(root) as store:
            image = ImageStore(store).get("crash")
            assert image is not None and image.config_digest == image_id, where

        # (d) the next build removed the dead build's bundles and runtime state (even when
        # all its steps were cache hits and it made no executor)
        assert wb.runtime_entries(pid) == [], where
        assert wb.store_leftovers(root) == [], where

    # Kills must have hit running builds, or this tested little. (Loose: builds are slower or
    # faster than the reference as the machine's load changes.)
    assert killed_running >= KILLS // 4, killed_running
    wb.check_clean(root)
    assert wb.host_mounts(root) == []
    assert_nothing_left_the_user_cannot_delete(tmp_path, (root, ref_root), since)


LONG_DOCKERFILE = """\
FROM busybox AS base
RUN mkdir /out && echo base > /out/base

FROM base
ARG NAP=30
RUN sleep $NAP && echo slept > /out/slept
RUN echo after > /out/after
"""


def test_sigkill_during_a_long_run_leaves_no_container_running(
    tmp_path: Path, private_tmp: Path
) -> None:
    """The deterministic case of (c): the kill lands while a step's container runs for 30 s
    more. The runtime and the container die with the CLI; they do not finish the step."""
    since = time.time()
    tar = wb.busybox_tar(tmp_path)
    ctx = wb.write_files(tmp_path / "ctx", {"Dockerfile": LONG_DOCKERFILE})
    ref_root = wb.new_store(tmp_path / "ref", tar)
    ref = wb.cli("build", "--build-arg", "NAP=0", "-o", f"type=local,dest={tmp_path / 'ref-out'}", ctx, root=ref_root)
    assert ref.returncode == 0, ref.stderr

    root = wb.new_store(tmp_path / "store", tar)
    run = wb.Cli("build", "--progress=plain", "-t", "long", ctx, root=root, logs=tmp_path / "logs")
    try:
        sleeper, ticks = wb.wait_for_container(
            root, ("sleep", "30"), lambda: run.proc.poll() is None
        )
        assert wb.runtime_entries(run.pid) != []  # the container's bundle and runtime state
        run.signal_group(signal.SIGKILL)
        run.wait()
    finally:
        run.kill()
    # Gone at once, not in 30 s: the sleep, the runtime, unshare - anything of the build.
    assert wb.wait_for(lambda: process_start_ticks(sleeper) != ticks, timeout=10.0)
    assert wb.wait_for(lambda: not wb.store_processes(root, run.pid), timeout=10.0), (
        wb.store_processes(root, run.pid)
    )
    assert wb.host_mounts(root) == []
    wb.check_clean(root)
    assert wb.store_leftovers(root) == []
    again = wb.cli("build", "--build-arg", "NAP=0", "-o", f"type=local,dest={tmp_path / 'out'}", ctx, root=root)
    assert again.returncode == 0, again.stderr
    assert wb.diff_trees(wb.tree(tmp_path / "out"), wb.tree(tmp_path / "ref-out")) == []
    # The next build's executor swept the dead build's bundle and runtime state.
    assert wb.runtime_entries(run.pid) == []
    assert_nothing_left_the_user_cannot_delete(tmp_path, (root, ref_root), since)


@pytest.fixture(autouse=True)
def _no_strays(tmp_path: Path) -> Iterator[None]:
    yield
    # Whatever happened, leave no container of this test running.
    try:
        assert wb.store_processes(tmp_path) == []
    finally:
        wb.base().release(tmp_path)
