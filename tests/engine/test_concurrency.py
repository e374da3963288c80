"""Whole builds into one store at the same time, and ``cache prune --all`` during a build.

1. Two ``nbbuild build`` processes build Dockerfiles that share their base steps and differ in
   their tails, into one store, started together, 10 rounds. Each round has its own ``ROUND``
   build arg (in every RUN's environment), so both processes race to run the same base steps
   and commit the same keys: one publishes, the other adopts the published result and drops
   its own diff. Every output must equal the output of a reference build in a fresh store, and
   ``cache check`` must be clean at the end.
2. ``nbbuild cache prune --all --force`` runs again and again while a build runs: it removes
   what nothing holds (an earlier build's cache) and nothing the running build holds; the build
   succeeds with the right output, and the store is clean.

Run by a normal user, the builds are rootless. Both Dockerfiles chown to uid 1000: with a single
ID mapping they cannot run, and each test checks that the build fails with the clear error.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

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

ROUNDS = 10

BASE = """\
FROM busybox AS base
ARG ROUND
RUN mkdir -p /opt/shared && i=0; while [ $i -lt 30 ]; do echo "s $i" > /opt/shared/f$i; i=$((i+1)); done; sleep 0.2
RUN chown -R 1000:1000 /opt/shared && chmod 0750 /opt/shared && ln -s shared /opt/link
COPY --chmod=0640 files /opt/files
"""

TAIL_A = """
FROM base AS tool
ARG ROUND
RUN echo tool-a > /opt/tool && sleep 0.2

FROM base
ARG ROUND
COPY --from=tool /opt/tool /opt/shared/tool
RUN rm /opt/shared/f1 && echo a > /opt/which
"""

TAIL_B = """
FROM base
ARG ROUND
RUN seq 1 300 > /opt/shared/numbers && rm /opt/shared/f2 /opt/files/one && echo b > /opt/which && sleep 0.2
"""

FILES = {
    "a.Dockerfile": BASE + TAIL_A,
    "b.Dockerfile": BASE + TAIL_B,
    "files/one": "1\n",
    "files/two": "2\n" * 100,
}


def build_args(ctx: Path, name: str, round_: str, out: Path) -> list[str]:
    return [
        "build",
        "--progress=plain",
        "-f",
        str(ctx / f"{name}.Dockerfile"),
        "--build-arg",
        f"ROUND={round_}",
        "-t",
        f"conc-{name}",
        "--output",
        f"type=local,dest={out}",
    ]


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, Path, dict[str, dict[str, object]]]]:
    """(busybox tar, context, reference output tree of each Dockerfile from a fresh store)."""
    base = tmp_path_factory.mktemp("concurrency")
    tar = wb.busybox_tar(base)
    ctx = wb.write_files(base / "ctx", FILES)
    references: dict[str, dict[str, object]] = {}
    if wb.base().single():
        yield tar, ctx, references  # the tests check the error instead
        return
    for name in ("a", "b"):
        root = wb.new_store(base / f"ref-{name}", tar)
        out = base / f"ref-out-{name}"
        proc = wb.cli(*build_args(ctx, name, "ref", out), ctx, root=root)
        assert proc.returncode == 0, proc.stderr
        references[name] = wb.tree(out)
    assert references["a"] != references["b"]
    yield tar, ctx, references
    wb.base().release(base)


@pytest.fixture(autouse=True)
def _no_strays(tmp_path: Path) -> Iterator[None]:
    yield
    try:
        assert wb.store_processes(tmp_path) == []
    finally:
        wb.base().release(tmp_path)


def single_mapping_fails_clearly(tar: Path, ctx: Path, tmp_path: Path) -> bool:
    """With a single ID mapping: the build fails with the clear error (chown -R 1000:1000)."""
    if not wb.base().single():
        return False
    root = wb.new_store(tmp_path / "store", tar)
    wb.check_unmapped(wb.cli(*build_args(ctx, "a", "single", tmp_path / "out"), ctx, root=root))
    return True


def test_two_processes_build_overlapping_dockerfiles_into_one_store(
    setup: tuple[Path, Path, dict[str, dict[str, object]]], tmp_path: Path
) -> None:
    tar, ctx, references = setup
    if single_mapping_fails_clearly(tar, ctx, tmp_path):
        return
    root = wb.new_store(tmp_path / "store", tar)
    for round_ in range(ROUNDS):
        runs = {
            name: wb.Cli(
                *build_args(ctx, name, str(round_), tmp_path / "out" / f"{round_}-{name}"),
                ctx,
                root=root,
                logs=tmp_path / "logs" / f"{round_}-{name}",
            )
            for name in ("a", "b")
        }
        try:
            codes = {name: run.wait() for name, run in runs.items()}
        finally:
            for run in runs.values():
                run.kill()
        for name, run in runs.items():
            assert codes[name] == 0, (round_, name, run.stderr)
            got = wb.tree(tmp_path / "out" / f"{round_}-{name}")
            assert wb.diff_trees(got, references[name]) == [], (round_, name)
        # Both finished: nothing is held, nothing is left.
        assert wb.live_leases(root) == 0, round_
        assert wb.store_leftovers(root) == [], round_
    wb.check_clean(root)
    report = wb.base().inside(wb.check_store, root)  # (rootless: it reads the subordinate IDs' files)
    assert report.clean and not report.held, report.problems
    with Store.open(root) as store:
        builds = store.builds(limit=2 * ROUNDS + 10)
        assert sorted(b.status for b in builds) == ["executed"] * (2 * ROUNDS)
        # Both raced for the same base steps in every round: whoever committed second adopted
        # the first one's result, so no key names two results and no diff was kept twice.
        with store.db.reading() as conn:
            shared = conn.execute(
                "SELECT key, COUNT(*) FROM cache_keys GROUP BY key HAVING COUNT(*) > 1"
            ).fetchall()
            results = conn.execute(
                "SELECT description, COUNT(*) FROM results GROUP BY description"
            ).fetchall()
        assert shared == []
        per_step = dict(results)
        base_run = next(d for d in per_step if d.startswith("[base 2/4] RUN"))
        assert per_step[base_run] == ROUNDS, per_step
    assert wb.host_mounts(root) == []


def test_prune_all_during_a_build_removes_nothing_it_holds(
    setup: tuple[Path, Path, dict[str, dict[str, object]]], tmp_path: Path
) -> None:
    tar, ctx, references = setup
    if single_mapping_fails_clearly(tar, ctx, tmp_path):
        return
    root = wb.new_store(tmp_path / "store", tar)
    # An earlier build's cache: untagged, so nothing but the cache keeps it.
    earlier = wb.cli(
        "build", "--progress=plain", "-f", ctx / "b.Dockerfile", "--build-arg", "ROUND=earlier", ctx,
        root=root,
    )
    assert earlier.returncode == 0, earlier.stderr

    run = wb.Cli(*build_args(ctx, "a", "during", tmp_path / "out"), ctx, root=root, logs=tmp_path / "logs")
    prunes: list[str] = []
    try:
        # Prune as often as possible until the build has finished, so prunes see every phase.
        while run.proc.poll() is None or not prunes:
            proc = wb.cli("cache", "prune", "--all", "--force", root=root)
            assert proc.returncode == 0, proc.stderr
            prunes.append(proc.stdout)
        code = run.wait()
    finally:
        run.signal_group(signal.SIGKILL)
        run.kill()
    assert code == 0, run.stderr
    assert wb.diff_trees(wb.tree(tmp_path / "out"), references["a"]) == []
    # The prunes did remove something (the earlier build's cache) while the build ran.
    assert any("Total:" in out and not out.rstrip().endswith(" 0B") for out in prunes), prunes
    assert len(prunes) >= 2, prunes
    wb.check_clean(root)
    assert wb.store_leftovers(root) == []
    # The store is still usable (the tagged image's layers, the base image): the same build
    # again is right too.
    again = wb.cli(*build_args(ctx, "a", "during", tmp_path / "again"), ctx, root=root)
    assert again.returncode == 0, again.stderr
    assert wb.diff_trees(wb.tree(tmp_path / "again"), references["a"]) == []
