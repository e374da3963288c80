"""Progress renderers: BuildKit's plain and tty displays, quiet, and raw JSON, over one stream.

Every renderer takes :mod:`engine.events` through ``emit`` (so it is a
:class:`~engine.events.Reporter` too), may be ``refresh``-ed when nothing happened for a while
(BuildKit's display ticker), and is ``close``-d at the end. :func:`pump` drives one from a
:class:`~engine.events.QueueReporter` the way BuildKit's ``Display.UpdateFrom`` drives its
displays: a batch of events per update, a refresh after 150 ms of silence.

Modes, as ``docker buildx build --progress``:

- ``plain``: BuildKit's text format (``util/progress/progressui/printer.go``), reproduced
  rule for rule, including its choice of which vertex to show when several run at once;
- ``tty``: a live view in the style of BuildKit's console display, drawn with rich;
- ``quiet``: nothing while building, then the image id on stdout;
- ``rawjson``: one JSON object per event and line (``docs/progress-events.md``);
- ``none``: nothing at all;
- ``auto``: ``$BUILDKIT_PROGRESS`` if set, else ``tty`` when stderr is a terminal, else ``plain``.

Progress goes to stderr in every mode (as buildx), only ``quiet``'s image id to stdout.

Renderers lock, so build threads may call ``emit`` directly (the CLI); a notebook must draw
on its main thread, so there a :class:`~engine.events.QueueReporter` hands events over and
:func:`pump` feeds the renderer.
Time comes from an injectable clock (integer nanoseconds) so output is reproducible in tests.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol

from engine.errors import UsageError
from engine.events import (
    BuildFinished,
    BuildStarted,
    Event,
    QueueReporter,
    Summary,
    VertexEvent,
    VertexLog,
    VertexProgress,
    VertexWarning,
    event_to_line,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

__all__ = [
    "MODES",
    "NullRenderer",
    "PlainRenderer",
    "QuietRenderer",
    "RawJsonRenderer",
    "Renderer",
    "Summary",
    "TtyRenderer",
    "format_bytes",
    "make_renderer",
    "open_renderer",
    "pump",
    "resolve_mode",
]

MODES: tuple[str, ...] = ("auto", "plain", "tty", "quiet", "rawjson", "none")

Clock = Callable[[], int]

_SECOND = 1_000_000_000
# BuildKit's constants (printer.go, display.go, init.go).
_ANTI_FLICKER = 5 * _SECOND
_MAX_DELAY = 10 * _SECOND
_MIN_TIME_DELTA = 5 * _SECOND
_MIN_PROGRESS_DELTA = 0.05
_LOGS_BUFFER_SIZE = 10
_DISPLAY_INTERVAL = 100_000_000  # the display limiter: one update per 100 ms
TICK_SECONDS = 0.15  # refresh after this long without an update (BuildKit's ticker)
_TERM_HEIGHT_MIN = 6
_TERM_PAD = 10
_CANCELED_SUFFIX = "context canceled"


class Renderer(Protocol):
    """Shows a build's events. ``emit`` is the :class:`~engine.events.Reporter` method."""

    def emit(self, event: Event) -> None:
        """Take one event."""

    def refresh(self) -> None:
        """Redraw if the display changes with time alone (no new event for a while)."""

    def close(self) -> None:
        """Finish the display (idempotent); called after :class:`BuildFinished` or instead."""


# ---------------------------------------------------------------------------------------------
# Go arithmetic where Python's differs


def _seconds(ns: int) -> float:
    """``time.Duration.Seconds()``: whole seconds plus the fraction, truncating like Go."""
    sec, nsec = divmod(abs(ns), _SECOND)
    value = float(sec) + float(nsec) / 1e9
    return -value if ns < 0 else value


def _div(a: float, b: float) -> float:
    """IEEE division as Go does it: x/0 is ±Inf, 0/0 is NaN (Python raises)."""
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def format_bytes(n: int) -> str:
    """``fmt.Sprintf("%.2f", units.Bytes(n))`` (tonistiigi/units): ``123B``, ``1.23kB``."""
    i = 0
    base = -1 if n < 0 else 1
    while True:
        nxt = base * 1000
        if (base > 0 and n >= nxt) or (base < 0 and n <= nxt):
            i += 1
            base = nxt
            continue
        if i == 0:
            return f"{n}B"
        return f"{n / abs(base):.2f}{_UNITS[min(i, len(_UNITS) - 1)]}"


# ---------------------------------------------------------------------------------------------
# The trace: BuildKit's ``trace``/``vertex`` state (display.go), fed by our events


@dataclass(slots=True)
class _Interval:
    start: int | None
    stop: int | None

    def duration(self, now: int) -> int:
        if self.start is None:
            return 0
        if self.stop is None:
            return now - self.start
        return self.stop - self.start


def _merge_intervals(intervals: list[_Interval]) -> list[_Interval]:
    """display.go ``mergeIntervals``: overlapping intervals joined; an open one absorbs later."""
    items = sorted((i for i in intervals if i.start is not None), key=lambda i: i.start or 0)
    if not items:
        return []
    merged: list[_Interval] = []
    cur = items[0]
    for nxt in items[1:]:
        cur_stop, nxt_start, nxt_stop = cur.stop, nxt.start, nxt.stop
        assert nxt_start is not None
        if cur_stop is None:
            merged.append(cur)
            return merged
        if cur_stop < nxt_start:
            merged.append(cur)
            cur = nxt
            continue
        if nxt_stop is None:
            merged.append(_Interval(cur.start, None))
            return merged
        if cur_stop >= nxt_stop:
            continue
        cur = _Interval(cur.start, nxt_stop)
    merged.append(cur)
    return merged


class _Term:
    """The last lines a process wrote, as a terminal shows them (BuildKit feeds a vt100).

    Escape sequences and control characters are dropped; a carriage return moves back to
    the start of the line so progress bars overwrite themselves as on a terminal.
    """

    _ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")
    _KEEP = 200

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.current = ""
        self.col = 0

    def write(self, data: bytes) -> None:
        text = self._ESCAPE.sub("", data.decode("utf-8", "replace")).expandtabs(8)
        for i, part in enumerate(text.split("\n")):
            if i:
                self.lines.append(self.current)
                self.current, self.col = "", 0
            for k, seg in enumerate(part.split("\r")):
                if k:
                    self.col = 0
                end = self.col + len(seg)
                self.current = self.current[: self.col] + seg + self.current[end:]
                self.col = end
        del self.lines[: -self._KEEP]

    def content(self, height: int) -> list[str]:
        rows = [*self.lines, self.current] if self.current else list(self.lines)
        return rows[-height:] if height > 0 else []


@dataclass(slots=True, eq=False)
class _Prog:
    """One VertexStatus (BuildKit ``status``), updated in place."""

    ev: VertexProgress


@dataclass(eq=False)
class _Vtx:
    """BuildKit's display ``vertex``: the latest Vertex plus what the displays keep about it."""

    digest: str
    vertex: VertexEvent | None = None
    prev: VertexEvent | None = None
    statuses: list[_Prog] = field(default_factory=list)
    by_id: dict[str, _Prog] = field(default_factory=dict)
    status_updates: dict[str, None] = field(default_factory=dict)
    index: int = 0
    logs: list[bytes] = field(default_factory=list)
    logs_partial: bool = False
    logs_offset: int = 0
    ring: list[bytes | None] | None = None  # logsBuffer: the last lines, for error output
    ring_pos: int = 0
    last_block_time: int | None = None
    count: int = 0
    warnings: list[VertexWarning] = field(default_factory=list)
    warning_idx: int = 0
    intervals: dict[int, _Interval] = field(default_factory=dict)
    merged: list[_Interval] = field(default_factory=list)
    term: _Term | None = None
    term_bytes: int = 0
    term_count: int = 0

    @property
    def name(self) -> str:
        return self.vertex.name if self.vertex is not None else ""

    @property
    def cached(self) -> bool:
        v = self.vertex
        return v is not None and (v.cached or v.status == "cached")

    @property
    def error(self) -> str:
        return _error_of(self.vertex)

    @property
    def canceled(self) -> bool:
        return self.error.endswith(_CANCELED_SUFFIX)

    def update(self, c: int, now: int) -> None:
        if self.count == 0:
            self.last_block_time = now
        self.count += c

    def most_recent_interval(self) -> _Interval | None:
        return self.merged[-1] if self.merged else None

    def is_started(self) -> bool:
        return bool(self.merged)

    def is_completed(self) -> bool:
        ival = self.most_recent_interval()
        return ival is not None and ival.stop is not None


def _error_of(v: VertexEvent | None) -> str:
    """BuildKit's ``Vertex.error`` for our statuses; canceled ends in "context canceled"."""
    if v is None:
        return ""
    if v.status == "canceled":
        if v.error and v.error.endswith(_CANCELED_SUFFIX):
            return v.error
        return f"{v.error}: {_CANCELED_SUFFIX}" if v.error else _CANCELED_SUFFIX
    if v.error:
        return v.error
    return "failed" if v.status == "failed" else ""


def _cached_of(v: VertexEvent) -> bool:
    return v.cached or v.status == "cached"


class _Trace:
    """display.go ``trace.update``: the state every BuildKit display draws from."""

    def __init__(self, clock: Clock, *, console: bool) -> None:
        self.clock = clock
        self.console = console
        self.start_time: int | None = None
        self.local_time_diff = 0
        self.vertexes: list[_Vtx] = []  # in order of start
        self.by_digest: dict[str, _Vtx] = {}
        self.updates: dict[str, None] = {}  # an ordered set; Go's map order is random
        self.warnings: list[VertexWarning] = []
        self.term_height = _TERM_HEIGHT_MIN

    def update(self, event: Event) -> None:
        if isinstance(event, VertexEvent):
            self._vertex(event)
        elif isinstance(event, VertexProgress):
            self._status(event)
        elif isinstance(event, VertexWarning):
            self.warnings.append(event)
            vw = self.by_digest.get(event.digest)
            if vw is not None:
                vw.warnings.append(event)
                vw.update(1, self.clock())
        elif isinstance(event, VertexLog):
            self._log(event)

    def _vertex(self, v: VertexEvent) -> None:
        if self.start_time is None:
            self.start_time = v.started_ns
        prev = self.by_digest.get(v.digest)
        if prev is None:
            self.by_digest[v.digest] = _Vtx(v.digest, term=_Term() if self.console else None)
        vtx = self.by_digest[v.digest]
        self._trigger(v, vtx)
        if v.started_ns is not None and (prev is None or not prev.is_started()):
            if self.local_time_diff == 0:
                self.local_time_diff = self.clock() - v.started_ns
            self.vertexes.append(vtx)
        # a repeated announcement of a started vertex does not reset it
        if prev is None or not prev.is_started() or v.started_ns is not None:
            vtx.vertex = v
        if v.started_ns is not None:
            vtx.intervals[v.started_ns] = _Interval(v.started_ns, v.completed_ns)
            vtx.merged = _merge_intervals(list(vtx.intervals.values()))

    def _trigger(self, v: VertexEvent, vtx: _Vtx) -> None:
        # triggerVertexEvent: does this message change what the printer shows?
        if v.started_ns is None:
            return
        old = vtx.prev
        if old is None:
            changed = True
        else:
            changed = (
                v.name != old.name
                or v.started_ns != old.started_ns
                # Go compares the Completed pointers: every new message differs
                or v.completed_ns is not None
                or _cached_of(v) != _cached_of(old)
                or _error_of(v) != _error_of(old)
            )
        if changed:
            vtx.update(1, self.clock())
            self.updates[v.digest] = None
        vtx.prev = v

    def _status(self, s: VertexProgress) -> None:
        v = self.by_digest.get(s.digest)
        if v is None:
            return
        prev = v.by_id.get(s.id)
        if prev is None:
            v.by_id[s.id] = _Prog(s)
        if s.started_ns is not None and (prev is None or prev.ev.started_ns is None):
            v.statuses.append(v.by_id[s.id])
        v.by_id[s.id].ev = s
        v.status_updates[s.id] = None
        self.updates[s.digest] = None
        v.update(1, self.clock())

    def _log(self, event: VertexLog) -> None:
        v = self.by_digest.get(event.digest)
        if v is None:
            return
        if v.term is not None:
            v.term_bytes += len(event.data)
            v.term.write(event.data)
        data = event.data
        first = True
        complete = False
        # display.go split(): every piece before a newline, then the rest (a partial line)
        while data:
            idx = data.find(b"\n")
            piece = data if idx < 0 else data[:idx]
            if v.logs_partial and v.logs and first:
                v.logs[-1] += piece
            else:
                ts = 0
                ival = v.most_recent_interval()
                if ival is not None and ival.start is not None:
                    ts = event.time_ns - ival.start
                sec = _seconds(ts)
                prec = 3 if sec < 10 else 2 if sec < 100 else 1
                v.logs.append(f"{sec:.{prec}f} ".encode() + piece)
            first = False
            if idx < 0:
                break
            data = data[idx + 1 :]
            if not data:
                complete = True
        v.logs_partial = not complete
        self.updates[event.digest] = None
        v.update(1, self.clock())


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _print_error_logs(trace: _Trace, write: Callable[[str], Any]) -> None:
    """display.go ``printErrorLogs``: each failed vertex's kept log lines between rulers."""
    for v in trace.vertexes:
        if v.error and not v.canceled:
            write("------\n")
            write(f" > {v.name}:\n")
            for line in v.logs:  # the tty keeps every line; plain only a partial last one
                write(_text(line) + "\n")
            if v.ring is not None:  # plain keeps the last lines in a ring
                pos = v.ring_pos
                for _ in range(_LOGS_BUFFER_SIZE):
                    value = v.ring[pos]
                    if value is not None:
                        write(_text(value) + "\n")
                    pos = (pos + 1) % _LOGS_BUFFER_SIZE
            write("------\n")


def _print_warnings(write: Callable[[str], Any], warnings: list[VertexWarning]) -> None:
    """buildx ``printWarnings`` after the display (without the "use docker --debug" hint)."""
    seen: set[tuple[Any, ...]] = set()
    unique: list[VertexWarning] = []
    for w in warnings:  # buildx dedupWarnings: equal apart from the vertex
        ident = (w.message, w.line, w.level, w.detail, w.url)
        if ident not in seen:
            seen.add(ident)
            unique.append(w)
    if not unique:
        return
    n = len(unique)
    write("\n ")
    write("1 warning found:\n" if n == 1 else f"{n} warnings found:\n")
    for w in unique:
        write(f" - {w.message}\n")


# ---------------------------------------------------------------------------------------------
# plain: printer.go's textMux


class _TextMux:
    def __init__(self, write: Callable[[str], Any], desc: str, clock: Clock, no_trunc: bool):
        self.write = write
        self.desc = desc
        self.clock = clock
        self.truncate = not no_trunc
        self.current = ""
        self.last: dict[str, tuple[int, int]] = {}  # status id -> (timestamp, current)
        self.not_first = False
        self.next_index = 0

    def print_vtx(self, t: _Trace, dgst: str) -> None:
        w = self.write
        v = t.by_digest.get(dgst)
        if v is None:
            return
        if v.index == 0:
            self.next_index += 1
            v.index = self.next_index

        if dgst != self.current:
            if self.current:
                old = t.by_digest[self.current]
                if old.logs_partial:
                    w("\n")
                old.logs_offset = 0
                old.count = 0
                w(f"#{old.index} ...\n")
            if self.not_first:
                w("\n")
            else:
                if self.desc:
                    w(f"#0 {self.desc}\n\n")
                self.not_first = True
            name = v.name
            if self.truncate and len(name) > 72:
                name = name[:72] + "..."
            w(f"#{v.index} {name}\n")

        is_open_status = False
        for holder in v.statuses:
            s = holder.ev
            if s.id not in v.status_updates:
                continue
            last = self.last.get(s.id)
            if last is not None and s.completed_ns is None:
                progress_delta = (s.current - last[1]) / s.total if s.total > 0 else 0.0
                if progress_delta < _MIN_PROGRESS_DELTA and s.time_ns - last[0] < _MIN_TIME_DELTA:
                    continue
            self.last[s.id] = (s.time_ns, s.current)
            size = ""
            if s.total != 0:
                size = f" {format_bytes(s.current)} / {format_bytes(s.total)}"
            elif s.current != 0:
                size = f" {format_bytes(s.current)}"
            tm = ""
            end = s.completed_ns if s.completed_ns is not None else s.time_ns
            if s.started_ns is not None:
                diff = _seconds(end - s.started_ns)
                if diff > 0.01:
                    tm = f" {diff:.1f}s"
            if s.completed_ns is not None:
                tm += " done"
            else:
                is_open_status = True
            w(f"#{v.index} {s.id}{size}{tm}\n")
        v.status_updates.clear()

        for warning in v.warnings[v.warning_idx :]:
            w(f"#{v.index} WARN: {warning.message}\n")
            v.warning_idx += 1

        for i, line in enumerate(v.logs):
            if i == 0 and v.logs_offset != 0:  # the start of this line is already out
                line = line[v.logs_offset :]
                w(_text(line))
            else:
                w(f"#{v.index} " + _text(line))
            if i != len(v.logs) - 1 or not v.logs_partial:
                w("\n")
            if v.ring is None:
                v.ring = [None] * _LOGS_BUFFER_SIZE
            v.ring[v.ring_pos] = line
            if not v.logs_partial:
                v.ring_pos = (v.ring_pos + 1) % _LOGS_BUFFER_SIZE

        if v.logs:
            if v.logs_partial:
                v.logs = v.logs[-1:]
                v.logs_offset = len(v.logs[0])
            else:
                v.logs = []
                v.logs_offset = 0

        self.current = dgst
        if v.is_completed() and not is_open_status:
            self.current = ""
            v.count = 0
            if v.logs_partial:
                w("\n")
            if v.error:
                if v.canceled:
                    w(f"#{v.index} CANCELED\n")
                else:
                    w(f"#{v.index} ERROR: {v.error}\n")
            elif v.cached:
                w(f"#{v.index} CACHED\n")
            else:
                tm = ""
                ivals = _merge_intervals(list(v.intervals.values()))
                if ivals:
                    now = self.clock()
                    dt = 0.0
                    for ival in ivals:
                        dt += _seconds(ival.duration(now))
                    tm = f" {dt:.1f}s"
                w(f"#{v.index} DONE{tm}\n")

        t.updates.pop(dgst, None)

    def print(self, t: _Trace) -> None:
        completed: dict[str, None] = {}
        rest: dict[str, None] = {}
        for dgst in t.updates:
            v = t.by_digest.get(dgst)
            if v is None:
                continue
            if v.is_completed():
                completed[dgst] = None
            else:
                rest[dgst] = None

        current = self.current

        # items that have completed are printed first, in order of completion
        if current in completed:
            self.print_vtx(t, current)

        def stop_of(d: str) -> int:
            ival = t.by_digest[d].most_recent_interval()
            return ival.stop if ival is not None and ival.stop is not None else 0

        for dgst in sorted(completed, key=stop_of):
            if dgst != current:
                self.print_vtx(t, dgst)

        if not rest:
            if current:
                cv = t.by_digest[current]
                if cv.is_started() and not cv.is_completed():
                    return
            # make any open vertex active (Go takes one at random; we take the first started)
            for v in t.vertexes:
                if v.is_started() and not v.is_completed():
                    self.print_vtx(t, v.digest)
                    return
            return

        # now print the active one
        if current in rest:
            self.print_vtx(t, current)

        now = self.clock()
        stats: dict[str, _VtxStat] = {}
        total = 0.0
        best = ""
        if current:
            rest[current] = None
        for dgst in rest:
            v = t.by_digest.get(dgst)
            if v is None or v.last_block_time is None:
                continue
            tm = now - v.last_block_time
            speed = _div(float(v.count), _seconds(tm))
            over_limit = tm > _MAX_DELAY and dgst != current
            stats[dgst] = _VtxStat(block_time=tm, speed=speed, over_limit=over_limit)
            total += speed
            if over_limit or not best or stats[best].speed < speed:
                best = dgst
        for st in stats.values():
            st.share = _div(st.speed, total)

        if current in completed or not current:
            self.print_vtx(t, best)
            return

        # show items that were hidden for too long
        for dgst in rest:
            hidden = stats.get(dgst)
            if hidden is not None and hidden.over_limit:
                self.print_vtx(t, dgst)
                return

        # fair split between vertices
        cur = stats.get(current)
        if cur is not None:
            limit = _div(1.0, 1.0 - cur.share) * _seconds(_ANTI_FLICKER)
            if limit < _seconds(cur.block_time):
                self.print_vtx(t, best)


@dataclass(slots=True)
class _VtxStat:
    block_time: int
    speed: float
    over_limit: bool
    share: float = 0.0


class _Limiter:
    """``rate.NewLimiter(rate.Every(100ms), 1).Allow()``: one update per 100 ms."""

    def __init__(self, clock: Clock, interval_ns: int = _DISPLAY_INTERVAL) -> None:
        self.clock = clock
        self.interval = interval_ns
        self.last: int | None = None

    def allow(self) -> bool:
        now = self.clock()
        if self.last is None or now - self.last >= self.interval:
            self.last = now
            return True
        return False


def _flush(out: IO[str]) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        out.flush()


class PlainRenderer:
    """BuildKit's ``--progress=plain`` output (``printer.go``), then buildx's warning list.

    Args:
        out: where to write (default ``sys.stderr``).
        clock: nanoseconds now (default ``time.time_ns``); event times are the producer's.
        desc: the ``#0`` line BuildKit prints first (buildx: ``building with "default"
            instance using docker driver``); none when empty.
        environ: environment for ``PROGRESS_NO_TRUNC`` (default ``os.environ``).
    """

    def __init__(
        self,
        out: IO[str] | None = None,
        *,
        clock: Clock | None = None,
        desc: str = "",
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._out = out if out is not None else sys.stderr
        self._clock = clock if clock is not None else _time_ns
        self._trace = _Trace(self._clock, console=False)
        # PROGRESS_NO_TRUNC=0 is the one value that truncates names (printer.go)
        self._mux = _TextMux(
            self._out.write, desc, self._clock, no_trunc=env.get("PROGRESS_NO_TRUNC") != "0"
        )
        self._limiter = _Limiter(self._clock)
        self._closed = False
        self._lock = threading.RLock()

    def emit(self, event: Event) -> None:
        """Take one event; print when the display limiter allows (BuildKit's 100 ms)."""
        with self._lock:
            if self._closed or isinstance(event, BuildStarted):
                return
            if isinstance(event, BuildFinished):
                self.close()
                return
            self._trace.update(event)
            if self._limiter.allow():
                self.refresh()

    def refresh(self) -> None:
        """Print what changed (BuildKit's ticker calls this after 150 ms of silence)."""
        with self._lock:
            if self._closed:
                return
            self._mux.print(self._trace)
            _flush(self._out)

    def close(self) -> None:
        """Print the rest, the failed steps' last log lines, and the warnings."""
        with self._lock:
            if self._closed:
                return
            self.refresh()
            self._closed = True
            _print_error_logs(self._trace, self._out.write)
            _print_warnings(self._out.write, self._trace.warnings)
            _flush(self._out)


# ---------------------------------------------------------------------------------------------
# tty: a live view like BuildKit's console display, drawn with rich


@dataclass(slots=True, eq=False)
class _Job:
    intervals: list[_Interval]
    is_completed: bool
    name: str
    status: str = ""
    has_error: bool = False
    is_canceled: bool = False
    vertex: _Vtx | None = None
    show_term: bool = False


def _shift(value: int | None, diff: int) -> int | None:
    return None if value is None else value + diff


def _wrap_height(jobs: list[_Job], limit: int) -> list[_Job]:
    """display.go ``wrapHeight``: the last ``limit`` lines, keeping unfinished jobs visible."""
    if limit < 0:
        return []
    wrapped = list(jobs)
    if len(jobs) > limit:
        wrapped = wrapped[len(jobs) - limit :]
        invisible = [j for j in jobs[: len(jobs) - limit] if not j.is_completed]
        left = len(invisible)
        if left > 0:
            rewrapped: list[_Job] = []
            for j in wrapped:
                if not j.is_completed or left <= 0:
                    rewrapped.append(j)
                left -= 1
            free = len(wrapped) - len(rewrapped)
            wrapped = invisible[len(invisible) - free :] + rewrapped if free else rewrapped
    return wrapped


class TtyRenderer:
    """A live view in the style of BuildKit's tty display, drawn with rich.

    A header (``[+] Building 3.2s (5/7)``), a line per started vertex with its time (``CACHED``,
    ``ERROR`` and ``CANCELED`` prefixes as BuildKit), its progress items (``=> …``), and the
    last lines of running vertices' output (``=> => # …``). When the build ends the final
    frame stays (``FINISHED`` when every vertex completed), followed by the failed steps'
    logs and the warnings. It fits the console: long names are cut, and when vertices do not
    fit the height the oldest finished ones scroll away first. On a console that is not a
    terminal rich draws only the final frame.

    Args:
        console: the rich console (default: one on stderr).
        clock: nanoseconds now (default ``time.time_ns``).
        desc: shown at the right of the header (buildx: ``docker:default``).
        phase: the header's verb.
        environ: environment for ``BUILDKIT_TTY_LOG_LINES`` (log lines per running vertex).
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        clock: Clock | None = None,
        desc: str = "",
        phase: str = "Building",
        environ: Mapping[str, str] | None = None,
    ) -> None:
        from rich.console import Console
        from rich.live import Live

        env = os.environ if environ is None else environ
        self._console = console if console is not None else Console(file=sys.stderr)
        self._clock = clock if clock is not None else _time_ns
        self._trace = _Trace(self._clock, console=True)
        self._limiter = _Limiter(self._clock)
        self._desc = desc
        self._phase = phase
        self._term_height_initial = _TERM_HEIGHT_MIN
        with contextlib.suppress(ValueError):
            lines = int(env.get("BUILDKIT_TTY_LOG_LINES", ""))
            if lines > 0:
                self._term_height_initial = lines
        self._live: Live = Live(
            console=self._console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="visible",
        )
        self._started = False
        self._closed = False
        self._lock = threading.RLock()

    def emit(self, event: Event) -> None:
        """Take one event; redraw when the display limiter allows."""
        with self._lock:
            if self._closed or isinstance(event, BuildStarted):
                return
            if isinstance(event, BuildFinished):
                self.close()
                return
            self._trace.update(event)
            if self._limiter.allow():
                self.refresh()

    def refresh(self) -> None:
        """Redraw (the running times move on)."""
        with self._lock:
            if self._closed:
                return
            self._draw(final=False)

    def close(self) -> None:
        """Draw the final frame and stop; then the failed steps' logs and the warnings."""
        with self._lock:
            if self._closed:
                return
            if not self._started:
                self._live.start(refresh=False)
                self._started = True
            self._live.update(self.frame(final=True), refresh=False)
            self._live.stop()  # draws the final frame once more and leaves it
            self._closed = True
            parts: list[str] = []
            _print_error_logs(self._trace, parts.append)
            if parts:
                self._console.out("".join(parts), highlight=False, end="")
            self._warnings()

    def _warnings(self) -> None:
        from rich.text import Text

        parts: list[str] = []
        _print_warnings(parts.append, self._trace.warnings)
        if not parts:
            return
        text = Text(no_wrap=True, overflow="ignore", end="")
        text.append(parts[0])
        text.append(parts[1], style="yellow")
        text.append("".join(parts[2:]))
        self._console.print(text, highlight=False, soft_wrap=True, end="")

    def _draw(self, *, final: bool) -> None:
        if not self._started:
            self._live.start(refresh=False)
            self._started = True
        self._live.update(self.frame(final=final), refresh=True)

    def frame(self, *, final: bool = False) -> Text:
        """The current view as rich text (``final``: every line, ``FINISHED`` when done)."""
        from rich.text import Text

        width, height = self._console.size
        now = self._clock()
        t = self._trace
        start = now if t.start_time is None else t.start_time + t.local_time_diff
        total = len(t.by_digest)
        done = sum(1 for v in t.by_digest.values() if v.is_completed())
        jobs = self._jobs()
        jobs = self._setup_terminals(jobs, height, final)

        text = Text(no_wrap=True, overflow="crop", end="")
        status = "FINISHED" if done > 0 and done == total and final else ""
        head = f"[+] {self._phase} {_seconds(now - start):.1f}s ({done}/{total}) {status}"
        head = _align(head, self._desc, width - 1) if self._desc else _align(head, "", width)
        text.append(head[:width].rstrip() + "\n")

        for j in jobs:
            if not j.intervals:
                continue
            dt = sum(_seconds(i.duration(now)) for i in j.intervals)
            if dt < 0.05:
                dt = 0.0
            pfx = " => "
            timer = f" {dt:3.1f}s"
            show_status = False
            left = width - len(pfx) - len(timer) - 2  # BuildKit counts the newline in timer
            if j.status and left + len(j.status) > 20:
                show_status = True
                left -= len(j.status) + 1
            if left < 12:  # too narrow to show progress
                continue
            line = pfx + j.name[:left]
            if show_status:
                line += " " + j.status
            line = _align(line, timer, width - 1)
            style = ""
            if j.is_completed:
                style = "yellow" if j.is_canceled else "red" if j.has_error else "blue"
            text.append(line.rstrip() + "\n", style=style)
            if j.show_term and j.vertex is not None and j.vertex.term is not None:
                for row in j.vertex.term.content(t.term_height):
                    if row.strip():
                        text.append(f" => => # {row[: width - _TERM_PAD]}\n", style="dim")
                j.vertex.term_count += 1
        text.rstrip()
        return text

    def _jobs(self) -> list[_Job]:
        """display.go ``displayInfo``: a job per started vertex, its statuses and warnings."""
        t = self._trace
        diff = t.local_time_diff
        jobs: list[_Job] = []
        for v in t.vertexes:
            j = _Job(intervals=[], is_completed=True, name=v.name.replace("\t", " "), vertex=v)
            for ival in v.intervals.values():
                j.intervals.append(_Interval(_shift(ival.start, diff), _shift(ival.stop, diff)))
                if ival.stop is None:
                    j.is_completed = False
            j.intervals = _merge_intervals(j.intervals)
            if v.error:
                if v.canceled:
                    j.is_canceled = True
                    j.name = "CANCELED " + j.name
                else:
                    j.has_error = True
                    j.name = "ERROR " + j.name
            if v.cached:
                j.name = "CACHED " + j.name
            jobs.append(j)
            for holder in v.statuses:
                s = holder.ev
                sj = _Job(
                    intervals=[_Interval(_shift(s.started_ns, diff), _shift(s.completed_ns, diff))],
                    is_completed=s.completed_ns is not None,
                    name="=> " + s.id,
                )
                if s.total != 0:
                    sj.status = f"{format_bytes(s.current)} / {format_bytes(s.total)}"
                elif s.current != 0:
                    sj.status = format_bytes(s.current)
                jobs.append(sj)
            for w in v.warnings:
                recent = v.most_recent_interval() or _Interval(None, None)
                jobs.append(
                    _Job(
                        intervals=[
                            _Interval(_shift(recent.start, diff), _shift(recent.stop, diff))
                        ],
                        is_completed=False,
                        name="WARN: " + w.message,
                        is_canceled=True,
                    )
                )
        return jobs

    def _setup_terminals(self, jobs: list[_Job], height: int, final: bool) -> list[_Job]:
        """display.go ``setupTerminals``: which running vertices show their last lines."""
        candidates = [
            j
            for j in jobs
            if j.vertex is not None and j.vertex.term_bytes > 0 and not j.is_completed
        ]
        in_use = sum(1 for j in jobs if not j.is_completed)
        candidates.sort(
            key=lambda j: (j.vertex.term_bytes + j.vertex.term_count * 50) if j.vertex else 0,
            reverse=True,
        )
        free = height - 2 - in_use
        term_height = max(
            _TERM_HEIGHT_MIN, min(self._term_height_initial, height - _TERM_HEIGHT_MIN - 1)
        )
        self._trace.term_height = term_height
        term_limit = term_height + 3
        to_hide = 0
        for j in candidates:
            if free <= term_limit:
                break
            j.show_term = True
            if j.vertex is not None and j.vertex.term is not None:
                to_hide += sum(1 for row in j.vertex.term.content(term_height) if row.strip())
            free -= term_limit
        if not final:
            jobs = _wrap_height(jobs, height - 2 - to_hide)
        return jobs


def _align(left: str, right: str, width: int) -> str:
    """display.go ``align``: ``left`` padded so ``right`` ends at ``width``."""
    return f"{left:<{max(width - len(right) - 1, 0)}} {right}"


# ---------------------------------------------------------------------------------------------
# quiet, rawjson, none


class QuietRenderer:
    """Prints nothing while building; the image id on stdout when the build succeeds."""

    def __init__(self, stdout: IO[str] | None = None) -> None:
        self._stdout = stdout if stdout is not None else sys.stdout
        self._closed = False

    def emit(self, event: Event) -> None:
        """Print the image id of a successful :class:`BuildFinished`."""
        if self._closed or not isinstance(event, BuildFinished):
            return
        self._closed = True
        if event.ok and event.image_id:
            self._stdout.write(event.image_id + "\n")
            _flush(self._stdout)

    def refresh(self) -> None:
        """Nothing to redraw."""

    def close(self) -> None:
        """Nothing more to print."""
        self._closed = True


class RawJsonRenderer:
    """One JSON object per event and line (``docs/progress-events.md``), flushed at once."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out if out is not None else sys.stderr
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        """Write ``event`` as one line."""
        line = event_to_line(event) + "\n"
        with self._lock:  # whole lines even when several threads emit
            self._out.write(line)
            _flush(self._out)

    def refresh(self) -> None:
        """Nothing to redraw."""

    def close(self) -> None:
        """Flush."""
        _flush(self._out)


class NullRenderer:
    """``--progress=none``: shows nothing."""

    def emit(self, event: Event) -> None:
        """Ignore ``event``."""

    def refresh(self) -> None:
        """Nothing to redraw."""

    def close(self) -> None:
        """Nothing to finish."""


# ---------------------------------------------------------------------------------------------
# choosing and driving


def _time_ns() -> int:
    import time

    return time.time_ns()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def resolve_mode(
    mode: str, stream: Any | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The display for ``--progress=mode`` writing to ``stream`` (default stderr).

    ``auto`` takes ``$BUILDKIT_PROGRESS`` when set (buildx), then ``tty`` if ``stream`` is a
    terminal, else ``plain``. ``tty`` on a stream that is not a terminal is an error, as in
    BuildKit. Raises :class:`~engine.errors.UsageError` for an unknown mode.
    """
    env = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    if mode not in MODES:
        raise UsageError(f"invalid progress mode {mode}")
    if mode == "auto" and env.get("BUILDKIT_PROGRESS"):
        mode = env["BUILDKIT_PROGRESS"]
        if mode not in MODES:
            raise UsageError(f"invalid progress mode {mode} (from BUILDKIT_PROGRESS)")
    if mode == "auto":
        return "tty" if _isatty(stream) else "plain"
    if mode == "tty" and not _isatty(stream):
        raise UsageError("failed to get console: provided file is not a console")
    return mode


def open_renderer(
    mode: str,
    *,
    stderr: IO[str] | None = None,
    stdout: IO[str] | None = None,
    clock: Clock | None = None,
    desc: str = "",
    console_desc: str = "",
    environ: Mapping[str, str] | None = None,
) -> Renderer:
    """A renderer for ``--progress=mode`` (see :func:`resolve_mode`).

    Args:
        mode: one of :data:`MODES`.
        stderr: where progress goes (default ``sys.stderr``).
        stdout: where ``quiet`` prints the image id (default ``sys.stdout``).
        clock: nanoseconds now, for reproducible output.
        desc: plain's ``#0`` line.
        console_desc: tty's header label.
        environ: environment (``BUILDKIT_PROGRESS``, ``PROGRESS_NO_TRUNC``, …).
    """
    err = stderr if stderr is not None else sys.stderr
    resolved = resolve_mode(mode, err, environ)
    if resolved == "plain":
        return PlainRenderer(err, clock=clock, desc=desc, environ=environ)
    if resolved == "tty":
        from rich.console import Console

        return TtyRenderer(Console(file=err), clock=clock, desc=console_desc, environ=environ)
    if resolved == "quiet":
        return QuietRenderer(stdout)
    if resolved == "rawjson":
        return RawJsonRenderer(err)
    return NullRenderer()


make_renderer = open_renderer  # the name the CLI's first draft used


def pump(source: QueueReporter, renderer: Renderer, *, tick: float = TICK_SECONDS) -> None:
    """Feed ``renderer`` from ``source`` until the producer closes it, then close the renderer.

    Run this on the thread that owns the output (the notebook's main thread) while the build
    runs in another thread. Like BuildKit's ``Display.UpdateFrom``, it refreshes the display
    after ``tick`` seconds without events so running times keep moving.
    """
    try:
        while True:
            batch = source.wait(tick)
            for event in batch:
                renderer.emit(event)
            if batch:
                continue
            if source.closed:
                break
            renderer.refresh()
    finally:
        renderer.close()
