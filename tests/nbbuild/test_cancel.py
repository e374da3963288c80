"""Canceling a build: Ctrl-C (SIGINT to the process group), SIGTERM, and ``cancel.set()``.

A build runs ``RUN sleep $NAP`` with ``NAP=30``; once the ``sleep`` runs in its container:

* the CLI exits with code 130 within a few seconds (well before the sleep would end) and the
  step shows ``CANCELED`` in the progress output; the history records it as canceled;
* the build cleaned up after itself - no lease, no unpublished diff, no work dir, before any
  other process opened the store - and ``nbbuild cache check`` is clean;
* no process of the build remains (container, runtime), nothing is mounted on the host, the
  runtime's state and bundle of the container are gone;
* the next build (``NAP=0``: same output) succeeds with the output of a reference build.

A second Ctrl-C stops waiting: the CLI exits at once, abandoning its lease; the container dies
with it all the same, and the next open sweeps what it left.

The runtime runs in its own session, so a terminal's Ctrl-C reaches only the CLI, which
decides to cancel (SIGINT, SIGTERM, SIGKILL to the step). The API test sets the build's
``cancel`` event from another thread and gets :class:`~engine.errors.BuildCanceled`.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from engine.build import BuildRequest, OutputSpec, build
from engine.errors import BuildCanceled
from engine.events import BuildFinished, ListReporter, VertexEvent
from engine.store.check import check
from engine.store.leases import process_start_ticks
from engine.store.store import Store


def _helper() -> ModuleType:
    name = "nbbuild_tests_whole_build"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "engine" / "whole_build.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


wb = _helper()

DOCKERFILE = """\
FROM busybox AS base
RUN mkdir -p /out && echo base > /out/base && chmod 0600 /out/base
COPY files /out/files

FROM base
ARG NAP=30
RUN sleep $NAP && echo slept > /out/slept
RUN echo after > /out/after
"""
FILES = {"Dockerfile": DOCKERFILE, "files/one": "1\n", "files/two": "2\n"}
SLEEP_STEP = "RUN sleep 30 && echo slept > /out/slept"  # BuildKit shows ARGs expanded
EXIT_TIMEOUT = 20.0  # far below the 30 s the step would sleep


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    """(busybox tar, context, reference output tree of the NAP=0 build in a fresh store)."""
    base = tmp_path_factory.mktemp("cancel")
    tar = wb.busybox_tar(base)
    ctx = wb.write_files(base / "ctx", FILES)
    root = wb.new_store(base / "ref", tar)
    out = base / "ref-out"
    proc = wb.cli("build", "--build-arg", "NAP=0", "-o", f"type=local,dest={out}", ctx, root=root)
    assert proc.returncode == 0, proc.stderr
    return tar, ctx, wb.tree(out)


@pytest.fixture(autouse=True)
def _no_strays(tmp_path: Path) -> Iterator[None]:
    yield
    assert wb.store_processes(tmp_path) == []


def wait_for_sleep(root: Path, alive: Callable[[], bool]) -> tuple[int, int]:
    """(pid, start ticks) of the step's ``sleep 30``, once it runs in its container."""
    result: tuple[int, int] = wb.wait_for_container(root, ("sleep", "30"), alive)
    return result


def assert_cleaned_up(root: Path, owner: int | None) -> None:
    """What a canceled build must leave: nothing running or mounted, nothing in the store."""
    assert wb.wait_for(lambda: not wb.store_processes(root, owner), timeout=10.0), (
        wb.store_processes(root, owner)
    )
    assert wb.host_mounts(root) == []
    if owner is not None:
        assert wb.runtime_entries(owner) == []
    # The build released its lease and removed its diffs itself: no sweep was needed.
    assert wb.live_leases(root) == 0
    assert wb.store_leftovers(root) == []
    wb.check_clean(root)


def assert_next_build_is_right(root: Path, ctx: Path, out: Path, reference: dict[str, object]) -> None:
    proc = wb.cli("build", "--build-arg", "NAP=0", "-o", f"type=local,dest={out}", ctx, root=root)
    assert proc.returncode == 0, proc.stderr
    assert wb.diff_trees(wb.tree(out), reference) == []


@pytest.mark.parametrize(
    "how", ["ctrl-c", "sigterm"], ids=["sigint-to-the-process-group", "sigterm-to-the-cli"]
)
def test_cli_cancel_during_a_long_run(
    how: str, setup: tuple[Path, Path, dict[str, object]], tmp_path: Path
) -> None:
    tar, ctx, reference = setup
    root = wb.new_store(tmp_path / "store", tar)
    run = wb.Cli("build", "--progress=plain", "-t", "nap", ctx, root=root, logs=tmp_path / "logs")
    try:
        sleeper = wait_for_sleep(root, alive=lambda: run.proc.poll() is None)
        engine = wb.engine_of(root)
        if how == "ctrl-c":
            run.signal_group(signal.SIGINT)  # what a terminal does on Ctrl-C
        else:
            run.signal(signal.SIGTERM)
        code = run.wait(timeout=EXIT_TIMEOUT)
    finally:
        run.kill()
    stderr = run.stderr
    assert code == 130, stderr
    assert "error: build canceled" in stderr
    # The step's progress line ends CANCELED (BuildKit's plain output), and only that one.
    index = next(
        line.split()[0] for line in stderr.splitlines() if line.endswith(SLEEP_STEP) and line.startswith("#")
    )
    assert f"{index} CANCELED" in stderr.splitlines(), stderr
    assert "ERROR" not in stderr, stderr
    assert process_start_ticks(sleeper[0]) != sleeper[1], "the step's sleep still runs"
    assert_cleaned_up(root, engine)
    with Store.open(root) as store:
        record = store.last_build("nap")
        assert record is not None and record.status == "canceled"
        steps = {s.name.split("] ", 1)[1]: s.status for s in record.steps if s.step is not None}
        assert steps[SLEEP_STEP] == "canceled", steps
        assert steps["RUN echo after > /out/after"] in ("canceled", "skipped", "pending"), steps
        assert check(store).clean
    assert_next_build_is_right(root, ctx, tmp_path / "next", reference)


def test_second_ctrl_c_stops_waiting_and_leaves_nothing_running(
    setup: tuple[Path, Path, dict[str, object]], tmp_path: Path
) -> None:
    """Ctrl-C twice: the CLI stops waiting for the build to wind down and exits at once. It
    dies with its lease held and the step's container mid-cancel: the container dies with it
    (engine/executor/oci.py), and the next open sweeps the lease and the step's diffs."""
    tar, ctx, reference = setup
    root = wb.new_store(tmp_path / "store", tar)
    run = wb.Cli("build", "--progress=plain", ctx, root=root, logs=tmp_path / "logs")
    try:
        sleeper = wait_for_sleep(root, alive=lambda: run.proc.poll() is None)
        engine = wb.engine_of(root)
        run.signal_group(signal.SIGINT)
        # The second Ctrl-C once the first has been taken (not merged into one pending signal),
        # and a moment for its handler to run: the first cancels, the second stops waiting.
        assert wb.wait_for(lambda: not _pending(run.pid, signal.SIGINT), timeout=10.0)
        time.sleep(0.2)
        run.signal_group(signal.SIGINT)
        code = run.wait(timeout=EXIT_TIMEOUT)
    finally:
        run.kill()
    assert code == 130, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert wb.wait_for(lambda: process_start_ticks(sleeper[0]) != sleeper[1], timeout=10.0)
    assert wb.wait_for(lambda: not wb.store_processes(root, engine), timeout=10.0), (
        wb.store_processes(root, engine)
    )
    assert wb.host_mounts(root) == []
    assert wb.live_leases(root) == 1  # abandoned, not wound down: its lease is still there
    wb.check_clean(root)  # its first open sweeps what the abandoned build left
    assert wb.live_leases(root) == 0
    assert wb.store_leftovers(root) == []
    assert_next_build_is_right(root, ctx, tmp_path / "next", reference)
    assert wb.runtime_entries(engine) == []


def test_api_cancel_from_another_thread_raises_build_canceled(
    setup: tuple[Path, Path, dict[str, object]], tmp_path: Path
) -> None:
    tar, ctx, reference = setup
    root = wb.new_store(tmp_path / "store", tar)
    cancel = threading.Event()
    reporter = ListReporter()
    outcome: dict[str, BaseException | object] = {}

    def work() -> None:
        try:
            outcome["result"] = build(
                BuildRequest(
                    dockerfile=DOCKERFILE,
                    context=ctx,
                    tags=("nap",),
                    outputs=(OutputSpec("local", str(tmp_path / "never")),),
                ),
                root=root,
                reporter=reporter,
                cancel=cancel,
            )
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="test-build")
    worker.start()
    try:
        sleeper = wait_for_sleep(root, alive=worker.is_alive)
        threading.Thread(target=cancel.set, name="test-cancel").start()
        worker.join(timeout=EXIT_TIMEOUT)
        assert not worker.is_alive(), "the build did not stop"
    finally:
        cancel.set()
        worker.join()
    assert isinstance(outcome.get("error"), BuildCanceled), outcome
    assert process_start_ticks(sleeper[0]) != sleeper[1], "the step's sleep still runs"
    events = reporter.events
    finished = [e for e in events if isinstance(e, BuildFinished)]
    assert [e.status for e in finished] == ["canceled"]
    vertices = {e.name: e for e in events if isinstance(e, VertexEvent)}
    sleep_step = next(v for name, v in vertices.items() if name.endswith(SLEEP_STEP))
    assert sleep_step.status == "canceled"
    assert not (tmp_path / "never").exists()
    assert_cleaned_up(root, None)
    with Store.open(root) as store:
        assert store.last_build("nap").status == "canceled"  # type: ignore[union-attr]
    assert_next_build_is_right(root, ctx, tmp_path / "next", reference)


def _pending(pid: int, sig: int) -> bool:
    """``sig`` is pending for the process (not yet taken by any of its threads)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return False
    return bool(int(fields["ShdPnd"].strip(), 16) & (1 << (sig - 1)))
