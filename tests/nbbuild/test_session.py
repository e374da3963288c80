"""The worker/main-thread hand-over of a notebook build (:mod:`nbbuild._session`).

The engine runs in a worker; the cell's main thread drains what it emits and feeds the view
at most ten times a second; Ctrl-C (a ``KeyboardInterrupt`` in the main thread, raised here
with ``_thread.interrupt_main`` as the kernel's SIGINT handler would) sets the cancel event
and the main thread waits for the worker to wind down. Real threads, real time.
"""

from __future__ import annotations

import _thread
import itertools
import threading
import time
from pathlib import Path

import pytest

from nbbuild._session import (
    CONTEXT_WARN_BYTES,
    Session,
    Settings,
    context_warning,
    store_root,
)


def test_items_reach_the_main_thread_in_batches_at_most_ten_a_second() -> None:
    main = threading.get_ident()
    calls: list[tuple[int, int, float]] = []  # (thread, batch size, time)

    def work(cancel: threading.Event, emit: object) -> str:
        for i in range(300):
            emit(i)  # type: ignore[operator]
            time.sleep(0.005)  # 1.5 s of a steady stream
        return "done"

    received: list[int] = []

    def on_items(batch: list[int]) -> None:
        calls.append((threading.get_ident(), len(batch), time.monotonic()))
        received.extend(batch)

    started = time.monotonic()
    outcome = Session().run(work, on_items)
    elapsed = time.monotonic() - started
    assert outcome.value == "done" and outcome.error is None and not outcome.interrupted
    assert received == list(range(300))  # all of them, in order
    assert {t for t, _, _ in calls} == {main}  # only ever on the calling thread
    times = [t for _, _, t in calls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.09 for gap in gaps[:-1]), gaps  # the last call may come early (end)
    assert len(calls) <= elapsed / 0.1 + 2


def test_an_idle_worker_still_ticks_the_view() -> None:
    batches: list[list[int]] = []

    def work(cancel: threading.Event, emit: object) -> None:
        time.sleep(0.55)

    Session().run(work, batches.append)
    assert len(batches) >= 4 and all(b == [] for b in batches)


def test_the_worker_error_is_handed_over() -> None:
    def work(cancel: threading.Event, emit: object) -> None:
        raise ValueError("boom")

    outcome = Session().run(work, lambda batch: None)
    assert isinstance(outcome.error, ValueError) and outcome.value is None


def _interrupt_after(delay: float) -> threading.Thread:
    def press() -> None:
        time.sleep(delay)
        _thread.interrupt_main()

    thread = threading.Thread(target=press)
    thread.start()
    return thread


def test_ctrl_c_sets_cancel_and_waits_for_the_worker() -> None:
    seen_cancel = threading.Event()
    wound_down = threading.Event()

    def work(cancel: threading.Event, emit: object) -> str:
        assert cancel.wait(10)
        seen_cancel.set()
        time.sleep(0.3)  # cleaning up after the cancel
        wound_down.set()
        return "canceled cleanly"

    session = Session()
    presser = _interrupt_after(0.2)
    outcome = session.run(work, lambda batch: None)
    presser.join()
    assert outcome.interrupted
    assert seen_cancel.is_set() and wound_down.is_set()  # returned only after the worker ended
    assert outcome.value == "canceled cleanly"
    assert session.running == 0


def test_a_second_ctrl_c_stops_waiting_and_stop_ends_the_worker() -> None:
    release = threading.Event()

    def work(cancel: threading.Event, emit: object) -> None:
        assert cancel.wait(10)
        release.wait(10)  # a build that takes long to wind down

    session = Session()

    def press_twice() -> None:
        time.sleep(0.2)
        _thread.interrupt_main()
        time.sleep(0.4)
        _thread.interrupt_main()

    presser = threading.Thread(target=press_twice)
    presser.start()
    with pytest.raises(KeyboardInterrupt):
        session.run(work, lambda batch: None)
    presser.join()
    assert session.running == 1  # abandoned, still winding down
    release.set()
    assert session.stop(timeout=10)
    assert session.running == 0


def test_stop_cancels_running_workers() -> None:
    session = Session()
    ended = threading.Event()

    def work(cancel: threading.Event, emit: object) -> None:
        cancel.wait(30)
        ended.set()

    # a worker another thread started (as a build abandoned by a second Ctrl-C)
    runner = threading.Thread(target=lambda: session.run(work, lambda batch: None))
    runner.start()
    while session.running == 0:
        time.sleep(0.01)
    assert session.stop(timeout=10)
    runner.join(10)
    assert ended.is_set()


def test_store_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NBBUILD_ROOT", raising=False)
    assert store_root("") == (tmp_path / "home" / ".cache" / "nbbuild", "the default")
    setting = store_root(str(tmp_path / "setting"))
    assert setting == (tmp_path / "setting", "the DockerfileMagics.store_root setting")
    monkeypatch.setenv("NBBUILD_ROOT", str(tmp_path / "env"))
    assert store_root(str(tmp_path / "setting")) == (tmp_path / "env", "NBBUILD_ROOT")
    assert Settings(store_setting="x").root == tmp_path / "env"


def test_context_warning(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for i in range(12):
        (ctx / f"f{i}").write_text("x")
    assert context_warning(ctx) is None
    warning = context_warning(ctx, max_files=10)
    assert warning is not None and "more than 10 files" in warning and ".dockerignore" in warning
    assert len(warning.splitlines()) == 1
    # .dockerignore and the notebook excludes count: what is left out is not the context
    (ctx / ".dockerignore").write_text("f1*\n")
    assert context_warning(ctx, max_files=10) is None
    (ctx / "data").mkdir()
    with open(ctx / "data" / "big.bin", "wb") as f:
        f.truncate(CONTEXT_WARN_BYTES + 1)
    warning = context_warning(ctx)
    assert warning is not None and "more than 100 MB" in warning
    assert context_warning(ctx, excludes=("**/*.bin",)) is None
    # a "!" line below an excluded directory is still found
    (ctx / ".dockerignore").write_text("data\n!data/big.bin\n")
    assert context_warning(ctx) is not None
