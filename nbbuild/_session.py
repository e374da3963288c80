"""Running a build from a notebook cell: the engine in a worker, the display on the main thread.

ipykernel 7 drops output sent from threads other than the cell's, so nothing here draws from
the worker: the engine runs in a worker thread and hands its events over a queue; the cell's
main thread drains the queue and updates the live view at most ten times a second. Ctrl-C
(a ``KeyboardInterrupt`` in the main thread) sets the build's cancel event; the main thread
keeps draining until the engine has wound down (its steps stopped, its lease released, the
store consistent) and then raises ``KeyboardInterrupt``. A second Ctrl-C stops waiting at once
(the build is abandoned; its worker still winds down in the background and
:meth:`Session.stop` waits for it).

:class:`Session` holds what outlives one cell: the workers, the open store, what was warned
about. :func:`run_build` is the whole of one build, shared by ``%%dockerfile`` and
:func:`nbbuild.build`: request → view → worker → result → display → raise or return.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from engine.build import BuildRequest
    from engine.events import Event
    from engine.store.store import Store

__all__ = [
    "CONTEXT_WARN_BYTES",
    "CONTEXT_WARN_FILES",
    "UPDATE_INTERVAL",
    "Outcome",
    "Session",
    "Settings",
    "View",
    "context_warning",
    "open_view",
    "run_build",
    "store_root",
]

R = TypeVar("R")
T = TypeVar("T")

UPDATE_INTERVAL = 0.1  # the live view is updated at most ten times a second
CONTEXT_WARN_FILES = 10_000
CONTEXT_WARN_BYTES = 100 * 1000 * 1000
_CONTEXT_SCAN_LIMIT = 200_000  # entries looked at before giving up on the size estimate
_STORE_CHECK_INTERVAL = 60.0  # seconds between two looks at the store's size


def store_root(setting: str = "") -> tuple[Path, str]:
    """The store directory and why: ``NBBUILD_ROOT`` > the ``store_root`` setting > the default
    (``~/.cache/nbbuild``)."""
    from engine.plan import default_store_root

    env = os.environ.get("NBBUILD_ROOT")
    if env:
        return Path(env).expanduser(), "NBBUILD_ROOT"
    if setting:
        return Path(setting).expanduser(), "the DockerfileMagics.store_root setting"
    return default_store_root(), "the default"


@dataclass(frozen=True, slots=True)
class Settings:
    """The configured defaults of a build (the ``DockerfileMagics`` traits).

    Attributes:
        store_setting: the ``store_root`` setting ("" for none); see :func:`store_root`.
        progress: ``auto``, ``widget``, ``html``, ``plain`` or ``none``.
        graph_format: how the result draws its graph (``auto``, ``svg``, ``text``, ``off``).
        max_log_lines: lines of a step's log the live view keeps.
        raise_on_error: a failed build raises (else the result is returned).
        store_warn_size: warn once when the store grows past this many bytes (0: never).
    """

    store_setting: str = ""
    progress: str = "auto"
    graph_format: str = "auto"
    max_log_lines: int = 200
    raise_on_error: bool = True
    store_warn_size: int = 5 * 1000 * 1000 * 1000

    @property
    def root(self) -> Path:
        """The store directory builds use."""
        return store_root(self.store_setting)[0]


# -- the worker and the main thread -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome(Generic[R]):
    """How a worker ended: its value or its error, and whether Ctrl-C canceled it."""

    value: R | None = None
    error: BaseException | None = None
    interrupted: bool = False


class Session:
    """What a kernel keeps between builds: running workers, the open store, warnings given.

    One lives on each ``DockerfileMagics`` instance (and one serves :func:`nbbuild.build`
    when the extension is not loaded).
    """

    def __init__(self) -> None:
        from engine.context import watch

        # A kernel builds cell after cell: its contexts are watched from their first walk (a
        # rebuild of an unchanged context then walks nothing; engine.context.watch).
        watch.enable()
        self._lock = threading.Lock()
        self._workers: dict[threading.Thread, threading.Event] = {}
        self._store: Store | None = None
        self.warned_contexts: set[Path] = set()
        self.warned_store_size = False
        self._store_checked = 0.0
        self.last_name: str | None = None  # the last build's name (%nbbuild explain)
        self.requests: dict[str, BuildRequest] = {}  # the last request of each build name

    # -- workers ----------------------------------------------------------------------------

    def run(
        self,
        work: Callable[[threading.Event, Callable[[T], None]], R],
        on_items: Callable[[list[T]], None],
        *,
        interval: float = UPDATE_INTERVAL,
        name: str = "nbbuild-build",
    ) -> Outcome[R]:
        """Run ``work(cancel, emit)`` in a worker; call ``on_items`` here with what it emits.

        ``on_items`` runs on this (the calling, main) thread once per ``interval`` seconds,
        with every item emitted since the last call (possibly none: a clock tick), and once
        more at the end.
        A ``KeyboardInterrupt`` here sets ``cancel`` and keeps waiting for the worker; the
        outcome then says ``interrupted``. A second one is re-raised at once.
        """
        items: queue.SimpleQueue[T] = queue.SimpleQueue()
        cancel = threading.Event()
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                result["value"] = work(cancel, items.put)
            except BaseException as exc:  # handed to the main thread
                result["error"] = exc

        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            self._workers[thread] = cancel
        thread.start()
        interrupted = False
        pending: list[T] = []
        last = 0.0
        while True:
            try:
                alive = thread.is_alive()
                try:
                    pending.append(items.get(block=alive, timeout=interval))
                    while True:
                        pending.append(items.get_nowait())
                except queue.Empty:
                    pass
                now = time.monotonic()
                finished = not alive and items.empty()
                if finished or now - last >= interval:
                    # an empty batch ticks the view's clock (running steps' times move on)
                    batch, pending = pending, []
                    last = now
                    on_items(batch)
                if finished:
                    break
            except KeyboardInterrupt:
                if interrupted:
                    raise  # a second Ctrl-C: stop waiting; the worker winds down alone
                interrupted = True
                cancel.set()
        thread.join()
        with self._lock:
            self._workers.pop(thread, None)
        return Outcome(result.get("value"), result.get("error"), interrupted)

    @property
    def running(self) -> int:
        """Workers still running (abandoned by a second Ctrl-C, or started elsewhere)."""
        with self._lock:
            return sum(1 for t in self._workers if t.is_alive())

    def stop(self, timeout: float = 30.0) -> bool:
        """Cancel every worker, wait up to ``timeout`` seconds for them, close the store.

        Returns True when no worker is left running.
        """
        with self._lock:
            workers = list(self._workers.items())
        deadline = time.monotonic() + timeout
        for _, cancel in workers:
            cancel.set()
        for thread, _ in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for thread, _ in workers:
                if not thread.is_alive():
                    self._workers.pop(thread, None)
            left = bool(self._workers)
        self.close_store()
        return not left

    # -- the store --------------------------------------------------------------------------

    def store(self, root: Path) -> Store:
        """The store at ``root``, opened once and kept (reopened when ``root`` changes)."""
        from engine.store.store import Store

        with self._lock:
            if self._store is not None and self._store.root != root:
                self._store.close()
                self._store = None
            if self._store is None:
                self._store = Store.open(root)
            return self._store

    def close_store(self) -> None:
        """Close the store if it is open."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def check_store_size(self, root: Path, limit: int) -> str | None:
        """A warning, once per session, when the store is larger than ``limit`` bytes."""
        if self.warned_store_size or limit <= 0:
            return None
        now = time.monotonic()
        if self._store_checked and now - self._store_checked < _STORE_CHECK_INTERVAL:
            return None
        self._store_checked = now
        from engine.store.gc import disk_usage
        from nbbuild._cli_cache import human_size

        size = sum(r.size for r in disk_usage(self.store(root)))
        if size <= limit:
            return None
        self.warned_store_size = True
        return (
            f"warning: the build cache at {root} uses {human_size(size)}, more than "
            f"{human_size(limit)}: %nbbuild cache prune removes what no image uses "
            "(--all: everything)"
        )


# -- views ------------------------------------------------------------------------------------


class View(Protocol):
    """A live view of a build (``nbbuild._widgets.LiveView``): fed on the main thread."""

    def start(self) -> None:
        """Show the view."""

    def update(self, events: Sequence[Event]) -> None:
        """Take new events (an empty batch: the clock ticked)."""

    def finish(self, result: Any = None, *, error: BaseException | None = None) -> None:
        """Draw the end state (the result itself is displayed separately)."""


class _NullView:
    def start(self) -> None:
        pass

    def update(self, events: Sequence[Event]) -> None:
        pass

    def finish(self, result: Any = None, *, error: BaseException | None = None) -> None:
        pass


def open_view(mode: str, settings: Settings, *, name: str = "") -> View:
    """The live view for a progress ``mode`` (``auto``: the widget in a Jupyter kernel, plain
    text elsewhere)."""
    if mode == "none":
        return _NullView()
    from nbbuild._widgets import live_view

    view: View = live_view(
        mode,
        name=name,
        max_log_lines=settings.max_log_lines,
        graph=settings.graph_format != "off",
    )
    return view


# -- results ----------------------------------------------------------------------------------


def make_result(
    engine_result: Any,
    events: Sequence[Event],
    *,
    request: BuildRequest,
    error: BaseException | None,
    store: Store | None = None,
) -> Any:
    """The notebook's :class:`nbbuild.BuildResult`, from the engine's result when the build
    returned one, else from its events (a failed or canceled build).

    Why each step re-ran: the engine's result carries the reasons; for a build that raised,
    they are read back from the history, where the build recorded them (``store``).
    """
    from nbbuild._result import BuildResult

    if engine_result is not None:
        return BuildResult(engine_result, reasons=dict(engine_result.reasons), error=error)
    reasons = _recorded_reasons(store, request) if store is not None else {}
    return BuildResult.from_events(events, tags=request.tags, reasons=reasons, error=error)


def _recorded_reasons(store: Store, request: BuildRequest) -> dict[str, str]:
    from engine.build import default_build_name

    record = store.last_build(default_build_name(request))
    if record is None:
        return {}
    return {s.digest: s.reason for s in record.steps if s.reason}


# -- the context ------------------------------------------------------------------------------


def context_warning(
    context: Path,
    dockerfile_path: Path | None = None,
    excludes: Sequence[str] = (),
    *,
    max_files: int = CONTEXT_WARN_FILES,
    max_bytes: int = CONTEXT_WARN_BYTES,
) -> str | None:
    """A one-line warning when the context (after ``.dockerignore``) is large, else None.

    Counting stops as soon as a limit is passed, so a huge directory costs no more than a
    small one.
    """
    from engine.context.dockerignore import load_ignore_rules
    from engine.errors import ContextError

    try:
        rules = load_ignore_rules(context, dockerfile_path, excludes)
    except ContextError:
        return None  # the build reports a bad .dockerignore itself
    files = size = seen = 0
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(context / rel if rel else context) as entries:
                listed = list(entries)
        except OSError:
            continue
        for entry in listed:
            seen += 1
            if seen > _CONTEXT_SCAN_LIMIT:
                return None
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                excluded = rules.excluded(path)
                if is_dir:
                    # a later "!" line may bring back something below an excluded directory
                    if not excluded or rules.has_exclusions:
                        stack.append(path)
                    continue
                if excluded:
                    continue
                files += 1
                size += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
            if files > max_files or size > max_bytes:
                what = (
                    f"more than {max_files:,} files"
                    if files > max_files
                    else f"more than {max_bytes // 1_000_000:,} MB"
                )
                return (
                    f"warning: the build context {context} has {what}; list what the build "
                    "does not need in a .dockerignore (e.g. data/, .git/, .venv/)"
                )
    return None


# -- one build --------------------------------------------------------------------------------


def run_build(
    session: Session,
    settings: Settings,
    request: BuildRequest,
    *,
    progress: str | None = None,
    raise_error: bool | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> Any:
    """Build ``request`` with a live view; return the result or raise the build's error.

    A failed build's result is displayed (when a shell is running) before its error is
    raised, so the graph shows where it failed; the error carries it as ``.result``. With
    ``raise_error`` False (``--no-raise-error``) the failed result is returned instead. An
    error before the build started (a Dockerfile that does not parse) is always raised.

    Raises:
        KeyboardInterrupt: Ctrl-C; the build was canceled and has wound down.
        NbbuildError: the build failed (``StepFailed``, ``DockerfileError``, …).
    """
    from engine.build import build, default_build_name
    from engine.events import ListReporter

    root, _ = store_root(settings.store_setting)
    context = request.context.resolve()
    if context not in session.warned_contexts:
        warning = context_warning(context, request.dockerfile_path, request.context_excludes)
        if warning:
            session.warned_contexts.add(context)
            print(warning, file=sys.stderr)
    name = default_build_name(request)
    session.last_name = name
    session.requests[name] = request  # for %nbbuild whatif
    view = open_view(progress or settings.progress, settings, name=name)
    view.start()
    record = ListReporter()  # every event, even if a Ctrl-C drops a batch on the way

    def work(cancel: threading.Event, emit: Callable[[Event], None]) -> Any:
        class Tee:
            def emit(self, event: Event) -> None:
                record.emit(event)
                emit(event)

        return build(request, root=root, reporter=Tee(), cancel=cancel)

    outcome = session.run(work, view.update)
    events = record.events
    error = outcome.error
    started = bool(events)
    if error is not None and (not started or not _is_build_error(error)):
        view.finish(None, error=error)
        if outcome.interrupted:
            raise KeyboardInterrupt from error
        raise error
    result = make_result(
        outcome.value, events, request=request, error=error, store=session.store(root)
    )
    view.finish(result, error=error)
    note = session.check_store_size(root, settings.store_warn_size)
    if note:
        print(note, file=sys.stderr)
    if on_result is not None:
        on_result(result)
    if outcome.interrupted:
        _display(result)
        raise KeyboardInterrupt
    if error is None:
        return result
    if raise_error is None:
        raise_error = settings.raise_on_error
    if not raise_error:
        return result
    _display(result)
    error.result = result  # type: ignore[attr-defined]
    raise error


def _is_build_error(error: BaseException) -> bool:
    from engine.errors import NbbuildError

    return isinstance(error, NbbuildError)


def _display(result: Any) -> None:
    from IPython.core.getipython import get_ipython

    if get_ipython() is None:
        return
    from IPython.display import display

    display(result)  # type: ignore[no-untyped-call]
