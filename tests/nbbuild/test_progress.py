"""Progress renderers fed with fixed event sequences and a fake clock.

The ``plain`` expectations are derived by hand from BuildKit's printer, read at
moby/buildkit ``util/progress/progressui/printer.go`` (``textMux.printVtx``/``print``) and
``display.go`` (``trace.update``, ``printErrorLogs``, ``plainDisplay``) plus buildx
``commands/build.go`` (``printWarnings``). The rules each expectation relies on:

R1  A vertex is printed only once started. Its header ``#N <name>`` is written whenever the
    printer switches to it; N is given at its first print (1, 2, …); ``#0 <desc>`` and a blank
    line precede the very first header, a blank line precedes every later one.
R2  A vertex status (our VertexProgress) prints ``#N <id>[ <bytes>][ <t>s][ done]``: bytes as
    ``units.Bytes`` ``%.2f`` (``current / total`` when total is known), the time (completed or
    timestamp minus started, ``%.1f``) only when above 0.01 s. An unfinished status that moved
    less than 5% and less than 5 s since it was last printed is skipped.
R3  A log line prints ``#N <t> <text>``; t is the log's time minus the vertex start, ``%.3f``
    under 10 s, ``%.2f`` under 100 s, else ``%.1f``. A line without its newline yet is printed
    as far as it goes; its rest is appended later without a prefix.
R4  A completed vertex ends with ``#N CANCELED`` (error ends in "context canceled"),
    ``#N ERROR: <error>``, ``#N CACHED`` or ``#N DONE <t>s`` (sum of its merged intervals).
R5  Updates are printed at most once per 100 ms (the display limiter); the rest wait for the
    next allowed update, a ``refresh`` (the 150 ms ticker) or the end. Warnings do not count
    as an update: they appear the next time their vertex is printed.
R6  When a vertex is current and another has news, the printer stays with the current one
    (anti-flicker) until it completes, or the other has been waiting over 10 s, or the
    current one had its fair share (``1/(1-share)*5s`` of blocking). Switching away prints
    ``#N ...`` (after a newline if a partial log line was open).
R7  At the end: for each failed (not canceled) vertex, ``------``, `` > <name>:``, the vertex's
    kept partial line, the ring of its last 10 printed lines (from the ring's position, so a
    line still open comes first and tails of continued lines appear as tails), ``------``.
    Then buildx lists the warnings: ``\\n 1 warning found:`` / ``N warnings found:`` and
    `` - <message>`` each.

Everything else (tty, quiet, rawjson, choosing modes, pump) is checked for behaviour.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from engine.errors import UsageError
from engine.events import (
    BuildFinished,
    BuildStarted,
    Event,
    ListReporter,
    QueueReporter,
    Status,
    TeeReporter,
    VertexEvent,
    VertexLog,
    VertexProgress,
    VertexWarning,
    event_from_line,
)
from nbbuild.progress import (
    NullRenderer,
    PlainRenderer,
    QuietRenderer,
    RawJsonRenderer,
    TtyRenderer,
    format_bytes,
    open_renderer,
    pump,
    resolve_mode,
)

MS = 1_000_000
DESC = 'building with "nbbuild" instance using in-process driver'


class FakeClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def vertex(n: int, name: str) -> VertexEvent:
    return VertexEvent(digest=f"sha256:{n:064x}", name=name)


def log(v: VertexEvent, ms: int, data: bytes, stream: int = 1) -> VertexLog:
    return VertexLog(digest=v.digest, stream=stream, data=data, time_ns=ms * MS)


def progress(
    v: VertexEvent,
    id: str,
    ms: int,
    *,
    started: int | None,
    completed: int | None = None,
    current: int = 0,
    total: int = 0,
) -> VertexProgress:
    return VertexProgress(
        digest=v.digest,
        id=id,
        current=current,
        total=total,
        time_ns=ms * MS,
        started_ns=None if started is None else started * MS,
        completed_ns=None if completed is None else completed * MS,
    )


class Player:
    """Emits (time in ms, event) pairs with the fake clock set to each time."""

    def __init__(self, desc: str = "", environ: dict[str, str] | None = None) -> None:
        self.clock = FakeClock()
        self.out = io.StringIO()
        self.renderer = PlainRenderer(self.out, clock=self.clock, desc=desc, environ=environ or {})

    def at(self, ms: int, *events: Event) -> None:
        self.clock.now = ms * MS
        for e in events:
            self.renderer.emit(e)

    def refresh(self, ms: int) -> None:
        self.clock.now = ms * MS
        self.renderer.refresh()

    @property
    def text(self) -> str:
        return self.out.getvalue()


# --- plain: golden sequences -----------------------------------------------------------------


def test_plain_sequential_build_with_cache_hits() -> None:
    # Every event is at least 100 ms after the previous one, so each is printed at once (R5).
    p = Player(desc=DESC)
    dockerfile = vertex(1, "[internal] load build definition from Dockerfile")
    meta = vertex(2, "[internal] load metadata for docker.io/library/python:3.12-slim")
    base = vertex(3, "[1/4] FROM docker.io/library/python:3.12-slim@sha256:abc")
    ctx = vertex(4, "[internal] load build context")
    workdir = vertex(5, "[2/4] WORKDIR /app")
    copy = vertex(6, "[3/4] COPY requirements.txt .")
    run = vertex(7, "[4/4] RUN pip install -r requirements.txt")
    export = vertex(8, "exporting to image")

    p.at(0, BuildStarted(build_id="b", time_ns=0), dockerfile)  # pending: nothing (R1)
    p.at(100, dockerfile.running(100 * MS))  # "#0 desc", blank, "#1 …" (R1)
    p.at(
        200,
        progress(
            dockerfile, "transferring dockerfile:", 200, started=100, completed=200, current=87
        ),
    )
    p.at(300, dockerfile.running(100 * MS).finished("executed", 300 * MS))  # DONE 0.2s
    p.at(400, meta.running(400 * MS))
    p.at(900, meta.running(400 * MS).finished("executed", 900 * MS))  # DONE 0.5s
    p.at(1000, base.finished("cached", 1000 * MS))  # header and CACHED together
    p.at(1100, ctx.running(1100 * MS))
    p.at(1200, progress(ctx, "transferring context:", 1200, started=1100, current=2340))  # 0.1s
    p.at(
        1300,
        progress(ctx, "transferring context:", 1300, started=1100, completed=1300, current=4096),
    )
    p.at(1400, ctx.running(1100 * MS).finished("executed", 1400 * MS))
    p.at(1500, workdir.finished("cached", 1500 * MS))
    p.at(1600, copy.finished("cached", 1600 * MS))
    p.at(1700, run.running(1700 * MS))
    p.at(2000, log(run, 2000, b"Collecting numpy\n"))  # 0.3 s after start: "0.300"
    p.at(13_700, log(run, 13_700, b"Successfully installed numpy-2.0.0\n", stream=2))  # "12.00"
    p.at(14_000, run.running(1700 * MS).finished("executed", 14_000 * MS))  # DONE 12.3s
    p.at(14_100, export.running(14_100 * MS))
    p.at(14_300, progress(export, "exporting layers", 14_300, started=14_100, completed=14_300))
    # started == completed: no time shown, just "done" (R2)
    p.at(
        14_400,
        progress(export, "writing image sha256:1234", 14_400, started=14_400, completed=14_400),
    )
    p.at(
        14_500,
        progress(
            export,
            "naming to docker.io/library/app:latest",
            14_500,
            started=14_500,
            completed=14_500,
        ),
    )
    p.at(14_600, export.running(14_100 * MS).finished("executed", 14_600 * MS))
    p.at(
        14_700,
        BuildFinished(build_id="b", status="executed", time_ns=14_700 * MS, image_id="sha256:1"),
    )

    assert p.text == (
        f"#0 {DESC}\n"
        "\n"
        "#1 [internal] load build definition from Dockerfile\n"
        "#1 transferring dockerfile: 87B 0.1s done\n"
        "#1 DONE 0.2s\n"
        "\n"
        "#2 [internal] load metadata for docker.io/library/python:3.12-slim\n"
        "#2 DONE 0.5s\n"
        "\n"
        "#3 [1/4] FROM docker.io/library/python:3.12-slim@sha256:abc\n"
        "#3 CACHED\n"
        "\n"
        "#4 [internal] load build context\n"
        "#4 transferring context: 2.34kB 0.1s\n"
        "#4 transferring context: 4.10kB 0.2s done\n"
        "#4 DONE 0.3s\n"
        "\n"
        "#5 [2/4] WORKDIR /app\n"
        "#5 CACHED\n"
        "\n"
        "#6 [3/4] COPY requirements.txt .\n"
        "#6 CACHED\n"
        "\n"
        "#7 [4/4] RUN pip install -r requirements.txt\n"
        "#7 0.300 Collecting numpy\n"
        "#7 12.00 Successfully installed numpy-2.0.0\n"
        "#7 DONE 12.3s\n"
        "\n"
        "#8 exporting to image\n"
        "#8 exporting layers 0.2s done\n"
        "#8 writing image sha256:1234 done\n"
        "#8 naming to docker.io/library/app:latest done\n"
        "#8 DONE 0.5s\n"
    )


def test_plain_parallel_vertices_wait_for_the_current_one() -> None:
    # A is current; B starts and logs while A still runs. Derivation (R6), clock in ms:
    #  200: B started. Speeds (updates/second since each one's block began): B 1/0 s = +Inf,
    #       A 1/0.1 s = 10; A's share is 10/Inf = 0 -> 1/(1-0)*5 s = 5 s > A's 0.1 s of
    #       blocking: stay with A, B's header waits.
    #  300: A logs -> printed (A is current). 400: B logs -> A keeps its turn (shares 0.6/0.4:
    #       8.3 s > 0.3 s).
    #  600: A completes -> "DONE"; then the busiest waiting vertex (B) is printed with its log.
    # No desc: the first header has no "#0" line before it.
    p = Player()
    a = vertex(1, "[build 2/2] RUN make a")
    b = vertex(2, "[test 2/2] RUN make b")
    p.at(0, a, b)
    p.at(100, a.running(100 * MS))
    p.at(200, b.running(200 * MS))
    p.at(300, log(a, 300, b"a1\n"))
    p.at(400, log(b, 400, b"b1\n"))
    p.at(600, a.running(100 * MS).finished("executed", 600 * MS))
    p.at(700, b.running(200 * MS).finished("executed", 700 * MS))
    p.at(800, BuildFinished(build_id="b", status="executed", time_ns=800 * MS))
    assert p.text == (
        "#1 [build 2/2] RUN make a\n"
        "#1 0.200 a1\n"
        "#1 DONE 0.5s\n"
        "\n"
        "#2 [test 2/2] RUN make b\n"
        "#2 0.200 b1\n"
        "#2 DONE 0.5s\n"
    )


def test_plain_switches_to_a_vertex_hidden_for_over_ten_seconds() -> None:
    # A current; B started at 200 and waits. At 10 300 A prints its continued line, then B has
    # waited 10.1 s > 10 s (over limit): the printer leaves A ("#1 ...") and shows B (R6).
    # At 10 400 A completes while B is current: "#2 ...", A's header again, DONE; B is still
    # running and current was B, so nothing more. At 10 500 B completes (R1, R4).
    p = Player()
    a = vertex(1, "[a 1/1] RUN compile")
    b = vertex(2, "[b 1/1] RUN sleep 20")
    p.at(100, a.running(100 * MS))
    p.at(200, b.running(200 * MS))
    p.at(300, log(a, 300, b"compiling"))  # partial line: printed without its newline (R3)
    p.at(10_300, log(a, 10_300, b"... ok\n"))  # the rest, appended without a prefix
    p.at(10_400, a.running(100 * MS).finished("executed", 10_400 * MS))
    p.at(10_500, b.running(200 * MS).finished("executed", 10_500 * MS))
    assert p.text == (
        "#1 [a 1/1] RUN compile\n"
        "#1 0.200 compiling... ok\n"
        "#1 ...\n"
        "\n"
        "#2 [b 1/1] RUN sleep 20\n"
        "#2 ...\n"
        "\n"
        "#1 [a 1/1] RUN compile\n"
        "#1 DONE 10.3s\n"
        "\n"
        "#2 [b 1/1] RUN sleep 20\n"
        "#2 DONE 10.3s\n"
    )


def test_plain_switching_away_closes_an_open_line() -> None:
    # As above, but A's output ends without a newline when the printer leaves it: a newline
    # comes before "#1 ..." (R6).
    p = Player()
    a = vertex(1, "[a 1/1] RUN compile")
    b = vertex(2, "[b 1/1] RUN sleep 20")
    p.at(100, a.running(100 * MS))
    p.at(200, b.running(200 * MS))
    p.at(10_300, log(a, 10_300, b"50%"))
    assert p.text == ("#1 [a 1/1] RUN compile\n#1 10.20 50%\n#1 ...\n\n#2 [b 1/1] RUN sleep 20\n")


def test_plain_failure_canceled_sibling_and_error_logs() -> None:
    # RUN make writes two lines, then an unfinished one, then fails; its sibling is canceled.
    # Printing (R3, R4): the open line "0.200 progress 50%" has no newline until the vertex
    # completes. Error block (R7): the kept partial line; then the ring from its position:
    # slot 2 holds "" (the empty tail re-printed at completion), slots 3-9 are empty, slots
    # 0-1 hold the two complete lines.
    p = Player()
    make = vertex(1, "[2/2] RUN make")
    test = vertex(2, "[test 1/1] RUN pytest")
    p.at(100, make.running(100 * MS))
    p.at(200, log(make, 200, b"line1\nline2\n"))
    p.at(300, log(make, 300, b"progress 50%"))
    err = 'process "/bin/sh -c make" did not complete successfully: exit code: 2'
    p.at(400, make.running(100 * MS).finished("failed", 400 * MS, error=err))
    p.at(500, test.running(450 * MS))
    p.at(600, test.running(450 * MS).finished("canceled", 600 * MS))
    p.at(700, BuildFinished(build_id="b", status="failed", time_ns=700 * MS, error=err))
    assert p.text == (
        "#1 [2/2] RUN make\n"
        "#1 0.100 line1\n"
        "#1 0.100 line2\n"
        "#1 0.200 progress 50%\n"
        f"#1 ERROR: {err}\n"
        "\n"
        "#2 [test 1/1] RUN pytest\n"
        "#2 CANCELED\n"
        "------\n"
        " > [2/2] RUN make:\n"
        "0.200 progress 50%\n"
        "\n"
        "0.100 line1\n"
        "0.100 line2\n"
        "------\n"
    )


def test_plain_error_logs_keep_the_last_ten_lines() -> None:
    p = Player()
    make = vertex(1, "[1/1] RUN seq 12")
    p.at(100, make.running(100 * MS))
    for i in range(1, 13):
        p.at(100 + 100 * i, log(make, 100 + 100 * i, f"{i}\n".encode()))
    p.at(1400, make.running(100 * MS).finished("failed", 1400 * MS, error="exit code: 1"))
    p.at(1500, BuildFinished(build_id="b", status="failed", time_ns=1500 * MS))
    ring = "".join(f"{i / 10:.3f} {i}\n" for i in range(3, 13))
    assert p.text.endswith(f"#1 ERROR: exit code: 1\n------\n > [1/1] RUN seq 12:\n{ring}------\n")


def test_plain_rate_limit_batches_and_warning_before_done() -> None:
    # The Dockerfile vertex starts at 0 (printed: first update). Its transfer, its completion
    # and a lint warning all come within 100 ms: held back (R5). The next allowed update
    # (B starting at 150) prints them in printVtx's order: statuses, warnings, logs, then the
    # end line -- so the warning comes before DONE, as in real BuildKit output. The transfer
    # took 30 ms (> 0.01 s) so its time shows as "0.0s" (R2). Then buildx lists the warning.
    p = Player()
    df = vertex(1, "[internal] load build definition from Dockerfile")
    b = vertex(2, "[internal] load metadata for docker.io/library/alpine:3.20")
    warning = VertexWarning.lint(
        df.digest, "JSONArgsRecommended", "JSON arguments recommended for CMD", 5
    )
    p.at(0, df.running(0))
    p.at(30, progress(df, "transferring dockerfile:", 30, started=0, completed=30, current=120))
    p.at(40, df.running(0).finished("executed", 40 * MS))
    p.at(50, warning)
    assert p.text == "#1 [internal] load build definition from Dockerfile\n"
    p.at(150, b.running(150 * MS))
    p.at(250, b.running(150 * MS).finished("executed", 250 * MS))
    p.at(260, BuildFinished(build_id="b", status="executed", time_ns=260 * MS))
    assert p.text == (
        "#1 [internal] load build definition from Dockerfile\n"
        "#1 transferring dockerfile: 120B 0.0s done\n"
        "#1 WARN: JSONArgsRecommended: JSON arguments recommended for CMD (line 5)\n"
        "#1 DONE 0.0s\n"
        "\n"
        "#2 [internal] load metadata for docker.io/library/alpine:3.20\n"
        "#2 DONE 0.1s\n"
        "\n"
        " 1 warning found:\n"
        " - JSONArgsRecommended: JSON arguments recommended for CMD (line 5)\n"
    )


def test_plain_refresh_prints_held_back_updates() -> None:
    p = Player()
    v = vertex(1, "[1/1] RUN true")
    p.at(0, v.running(0))
    p.at(50, v.running(0).finished("executed", 50 * MS))  # held back by the limiter
    assert p.text == "#1 [1/1] RUN true\n"
    p.refresh(200)  # the ticker
    assert p.text == "#1 [1/1] RUN true\n#1 DONE 0.1s\n"


def test_plain_warning_after_done_waits_for_the_end_list() -> None:
    # R5: a warning is no update; once its vertex is done it is never re-printed, so it only
    # shows in buildx's list. Duplicates (same text on another vertex) are listed once.
    p = Player()
    v = vertex(1, "[1/1] RUN true")
    w = vertex(2, "[internal] load build definition from Dockerfile")
    p.at(0, v.running(0))
    p.at(100, v.running(0).finished("executed", 100 * MS))
    p.at(200, VertexWarning(digest=v.digest, message="first"))
    p.at(300, VertexWarning(digest=w.digest, message="first"))  # unknown vertex: list only
    p.at(400, VertexWarning(digest=v.digest, message="second"))
    p.at(500, BuildFinished(build_id="b", status="executed", time_ns=500 * MS))
    assert p.text == (
        "#1 [1/1] RUN true\n#1 DONE 0.1s\n\n 2 warnings found:\n - first\n - second\n"
    )


def test_plain_progress_updates_are_thinned() -> None:
    # R2: an unfinished status is printed again only after 5% more progress or 5 s.
    p = Player()
    pull = vertex(1, "[1/2] FROM docker.io/library/alpine:3.20@sha256:beef")
    layer = "sha256:4abcf2066143"
    total = 10_485_760
    p.at(0, pull.running(0))
    p.at(100, progress(pull, layer, 100, started=0, current=1_048_576, total=total))
    p.at(200, progress(pull, layer, 200, started=0, current=1_100_000, total=total))  # +0.5%
    p.at(300, progress(pull, layer, 300, started=0, current=2_097_152, total=total))  # +10%
    p.at(5_400, progress(pull, layer, 5_400, started=0, current=2_200_000, total=total))  # 5.1 s
    p.at(
        5_500, progress(pull, layer, 5_500, started=0, completed=5_500, current=total, total=total)
    )
    p.at(5_600, progress(pull, "extracting " + layer, 5_600, started=5_500, completed=5_600))
    p.at(5_700, pull.running(0).finished("executed", 5_700 * MS))
    assert p.text == (
        "#1 [1/2] FROM docker.io/library/alpine:3.20@sha256:beef\n"
        f"#1 {layer} 1.05MB / 10.49MB 0.1s\n"
        f"#1 {layer} 2.10MB / 10.49MB 0.3s\n"
        f"#1 {layer} 2.20MB / 10.49MB 5.4s\n"
        f"#1 {layer} 10.49MB / 10.49MB 5.5s done\n"
        f"#1 extracting {layer} 0.1s done\n"
        "#1 DONE 5.7s\n"
    )


def test_plain_log_time_precision_and_chunking() -> None:
    # R3: three decimals under 10 s, two under 100 s, one above; 9.9999 s rounds to "10.000"
    # (the precision is chosen before rounding, as in Go). Lines split across chunks join;
    # one chunk may hold several lines; stderr is printed like stdout.
    p = Player()
    v = vertex(1, "[1/1] RUN ./long")
    p.at(0, v.running(0))
    p.at(123, log(v, 123, b"a\nb\n"))
    p.at(9_999, VertexLog(digest=v.digest, data=b"c\n", time_ns=9_999_900_000))
    p.at(12_345, log(v, 12_345, b"d", stream=2))
    p.at(12_500, log(v, 12_500, b"e\n"))
    p.at(123_456, log(v, 123_456, b"f\n"))
    p.at(123_600, v.running(0).finished("executed", 123_600 * MS))
    assert p.text == (
        "#1 [1/1] RUN ./long\n"
        "#1 0.123 a\n"
        "#1 0.123 b\n"
        "#1 10.000 c\n"
        "#1 12.35 de\n"
        "#1 123.5 f\n"
        "#1 DONE 123.6s\n"
    )


def test_plain_progress_no_trunc_zero_truncates_names() -> None:
    name = "[2/2] RUN " + "x" * 80
    for env, shown in (({}, name), ({"PROGRESS_NO_TRUNC": "0"}, name[:72] + "...")):
        p = Player(environ=env)
        v = vertex(1, name)
        p.at(0, v.finished("cached", 0))
        assert p.text == f"#1 {shown}\n#1 CACHED\n"


def test_plain_ignores_pending_and_skipped_vertices_and_close_is_idempotent() -> None:
    p = Player()
    v = vertex(1, "[1/2] RUN a")
    s = vertex(2, "[2/2] RUN b")
    p.at(0, v, s)
    p.at(100, s.finished("skipped", 100 * MS))
    p.at(200, v.finished("canceled", 200 * MS))  # never started: not shown either
    p.renderer.close()
    p.renderer.close()
    p.at(300, v.running(300 * MS))  # after close: ignored
    assert p.text == ""


# --- format_bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (999, "999B"),
        (1000, "1.00kB"),
        (1234, "1.23kB"),
        (1235, "1.24kB"),  # 1.235 is stored just above: rounds up
        (999_999, "1000.00kB"),
        (1_500_000, "1.50MB"),
        (3_620_000_000, "3.62GB"),
        (-1234, "-1.23kB"),
    ],
)
def test_format_bytes_like_go_units(n: int, text: str) -> None:
    assert format_bytes(n) == text


# --- tty -------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def tty(width: int = 100, height: int = 25) -> tuple[TtyRenderer, FakeClock, io.StringIO]:
    buf = io.StringIO()
    console = Console(
        file=buf, force_terminal=True, width=width, height=height, color_system="standard"
    )
    clock = FakeClock()
    return TtyRenderer(console, clock=clock, desc="nbbuild:local", environ={}), clock, buf


def feed(r: TtyRenderer, clock: FakeClock, ms: int, *events: Event) -> None:
    clock.now = ms * MS
    for e in events:
        r.emit(e)


def test_tty_shows_the_final_state() -> None:
    r, clock, buf = tty()
    ctx = vertex(1, "[internal] load build context")
    base = vertex(2, "[1/3] FROM docker.io/library/alpine:3.20")
    run = vertex(3, "[2/3] RUN make")
    feed(r, clock, 0, BuildStarted(build_id="b", time_ns=0), ctx, base, run)
    feed(r, clock, 1000, ctx.running(1000 * MS))
    feed(
        r,
        clock,
        1200,
        progress(ctx, "transferring context:", 1200, started=1000, completed=1200, current=2340),
    )
    feed(r, clock, 1300, ctx.running(1000 * MS).finished("executed", 1300 * MS))
    feed(r, clock, 1400, base.finished("cached", 1400 * MS))
    feed(r, clock, 1500, run.running(1500 * MS))
    feed(r, clock, 1600, log(run, 1600, b"cc -o app main.c\n"))
    feed(r, clock, 3500, run.running(1500 * MS).finished("executed", 3500 * MS))
    feed(r, clock, 3600, BuildFinished(build_id="b", status="executed", time_ns=3600 * MS))
    out = buf.getvalue()
    final = _ANSI.sub("", out.rsplit("[+] ", 1)[1]).splitlines()
    final = [line.rstrip() for line in final]
    # started at 1.0 s (the first vertex start), finished at 3.6 s
    assert final[0].startswith("Building 2.6s (3/3) FINISHED")
    assert final[0].endswith("nbbuild:local")
    body = [re.sub(r"\s+", " ", line) for line in final[1:] if line]
    assert body == [
        " => [internal] load build context 0.3s",
        " => => transferring context: 2.34kB 0.2s",
        " => CACHED [1/3] FROM docker.io/library/alpine:3.20 0.0s",
        " => [2/3] RUN make 2.0s",
    ]
    # the timers are right-aligned at the console width
    assert all(len(line) == 99 for line in final[1:] if line)
    assert "\x1b[34m" in out  # completed lines in blue, as BuildKit


def test_tty_running_vertex_shows_its_last_log_lines() -> None:
    r, clock, _ = tty()
    run = vertex(1, "[2/3] RUN pip install -r requirements.txt")
    feed(r, clock, 0, run.running(0))
    for i in range(10):
        feed(r, clock, 100 + i * 100, log(run, 100 + i * 100, f"Collecting pkg{i}\n".encode()))
    feed(r, clock, 1200, log(run, 1200, b"Downloading 10%\rDownloading 55%\x1b[K"))
    clock.now = 2500 * MS
    lines = r.frame().plain.splitlines()
    assert lines[0].startswith("[+] Building 2.5s (0/1)")
    assert re.sub(r"\s+", " ", lines[1]) == " => [2/3] RUN pip install -r requirements.txt 2.5s"
    # the last 6 lines (BuildKit's default log height), a progress bar redrawn in place
    assert lines[2:] == [f" => => # Collecting pkg{i}" for i in range(5, 10)] + [
        " => => # Downloading 55%"
    ]


def test_tty_failure_prints_all_logs_and_warnings_after_the_frame() -> None:
    r, clock, buf = tty()
    run = vertex(1, "[2/2] RUN make")
    other = vertex(2, "[other 1/1] RUN sleep 9")
    feed(r, clock, 0, run.running(0), other.running(0))
    feed(r, clock, 100, log(run, 100, b"one\ntwo\n"))
    feed(
        r,
        clock,
        200,
        VertexWarning(digest=run.digest, message="SecretsUsedInArgOrEnv: careful (line 3)"),
    )
    feed(r, clock, 300, run.running(0).finished("failed", 300 * MS, error="exit code: 2"))
    feed(r, clock, 400, other.running(0).finished("canceled", 400 * MS))
    feed(r, clock, 500, BuildFinished(build_id="b", status="failed", time_ns=500 * MS))
    out = _ANSI.sub("", buf.getvalue())
    frame = out.rsplit("[+] ", 1)[1]
    assert frame.startswith("Building 0.5s (2/2) FINISHED")
    assert re.search(r" => ERROR \[2/2\] RUN make +0\.3s\n", frame)
    assert re.search(r" => WARN: SecretsUsedInArgOrEnv: careful \(line 3\) +0\.3s\n", frame)
    assert re.search(r" => CANCELED \[other 1/1\] RUN sleep 9 +0\.4s\n", frame)
    assert frame.endswith(
        "------\n > [2/2] RUN make:\n0.100 one\n0.100 two\n------\n"
        "\n 1 warning found:\n - SecretsUsedInArgOrEnv: careful (line 3)\n"
    )


def test_tty_degrades_on_a_narrow_and_short_console() -> None:
    r, clock, _ = tty(width=40, height=8)
    vs = [vertex(i, f"[{i}/9] RUN step number {i} with a long command line") for i in range(1, 10)]
    for i, v in enumerate(vs[:8]):
        feed(r, clock, i * 100, v.finished("cached", i * 100 * MS))
    feed(r, clock, 900, vs[8].running(900 * MS))
    lines = r.frame().plain.splitlines()
    assert all(len(line) <= 39 for line in lines)
    # height 8: header + 6 vertex lines; the oldest finished ones scrolled away, the running
    # one is still there
    assert len(lines) == 7
    assert lines[-1].startswith(" => [9/9] RUN step number 9")
    assert "[1/9]" not in "".join(lines)
    final = r.frame(final=True).plain.splitlines()
    assert len(final) == 10  # the final frame shows everything


def test_tty_on_a_console_that_is_no_terminal_draws_only_the_final_frame() -> None:
    buf = io.StringIO()
    clock = FakeClock()
    r = TtyRenderer(Console(file=buf, width=80), clock=clock)
    v = vertex(1, "[1/1] RUN true")
    feed(r, clock, 0, v.running(0))
    feed(r, clock, 500, v.running(0).finished("executed", 500 * MS))
    r.refresh()
    assert buf.getvalue() == ""
    r.close()
    assert buf.getvalue().count("[+] Building") == 1
    assert "\x1b" not in buf.getvalue()


# --- quiet, rawjson, none ---------------------------------------------------------------------


def test_quiet_prints_only_the_image_id_on_success() -> None:
    out = io.StringIO()
    q = QuietRenderer(out)
    v = vertex(1, "[1/1] RUN true")
    for e in (BuildStarted(build_id="b", time_ns=0), v.running(0), log(v, 1, b"noise\n")):
        q.emit(e)
    assert out.getvalue() == ""
    q.emit(BuildFinished(build_id="b", status="cached", time_ns=2, image_id="sha256:" + "c" * 64))
    q.close()
    assert out.getvalue() == "sha256:" + "c" * 64 + "\n"
    failed = io.StringIO()
    q = QuietRenderer(failed)
    q.emit(BuildFinished(build_id="b", status="failed", time_ns=2, image_id="sha256:x", error="e"))
    assert failed.getvalue() == ""


def test_rawjson_writes_one_line_per_event_that_round_trips() -> None:
    out = io.StringIO()
    r = RawJsonRenderer(out)
    v = vertex(1, "[1/1] RUN echo hi")
    events: list[Event] = [
        BuildStarted(build_id="b", time_ns=0),
        v,
        v.running(1),
        log(v, 2, b"hi\n\xff"),
        VertexWarning(digest=v.digest, message="w"),
        v.running(1).finished("executed", 3),
        BuildFinished(build_id="b", status="executed", time_ns=4, image_id="sha256:i"),
    ]
    for e in events:
        r.emit(e)
    r.refresh()
    r.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == len(events)
    assert [event_from_line(line) for line in lines] == events


def test_null_renderer_shows_nothing() -> None:
    r = NullRenderer()
    r.emit(BuildStarted(build_id="b", time_ns=0))
    r.refresh()
    r.close()


# --- choosing a mode ---------------------------------------------------------------------------


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_auto_is_tty_on_a_terminal_else_plain() -> None:
    assert resolve_mode("auto", Stream(True), {}) == "tty"
    assert resolve_mode("auto", Stream(False), {}) == "plain"
    assert resolve_mode("plain", Stream(True), {}) == "plain"
    assert resolve_mode("quiet", Stream(False), {}) == "quiet"


def test_buildkit_progress_env_overrides_auto_only() -> None:
    env = {"BUILDKIT_PROGRESS": "rawjson"}
    assert resolve_mode("auto", Stream(True), env) == "rawjson"
    assert resolve_mode("plain", Stream(True), env) == "plain"
    with pytest.raises(UsageError, match="invalid progress mode fancy"):
        resolve_mode("auto", Stream(True), {"BUILDKIT_PROGRESS": "fancy"})


def test_bad_modes_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="invalid progress mode fancy"):
        resolve_mode("fancy", Stream(True), {})
    # BuildKit: an explicit tty needs a console
    with pytest.raises(UsageError, match="failed to get console"):
        resolve_mode("tty", Stream(False), {})


def test_open_renderer_routes_progress_to_stderr_and_the_id_to_stdout() -> None:
    err, out = Stream(False), Stream(False)
    clock = FakeClock()
    v = vertex(1, "[1/1] RUN true")
    done = BuildFinished(build_id="b", status="executed", time_ns=1, image_id="sha256:i")
    for mode in ("plain", "rawjson", "quiet", "none"):
        r = open_renderer(mode, stderr=err, stdout=out, clock=clock, desc="d", environ={})
        for e in (v.finished("cached", 0), done):
            r.emit(e)
        r.close()
    assert err.getvalue().startswith("#0 d\n\n#1 [1/1] RUN true\n#1 CACHED\n{")
    assert err.getvalue().count("\n") == 4 + 2  # plain's lines, then rawjson's two
    assert out.getvalue() == "sha256:i\n"  # quiet only
    assert isinstance(open_renderer("tty", stderr=Stream(True), environ={}), TtyRenderer)


# --- pump ------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)
        self.calls.append("emit")

    def refresh(self) -> None:
        self.calls.append("refresh")

    def close(self) -> None:
        self.calls.append("close")


def test_pump_drains_a_build_thread_refreshes_when_idle_and_closes() -> None:
    q = QueueReporter()
    kept = ListReporter()
    reporter = TeeReporter(q, kept)
    v = vertex(1, "[1/1] RUN sleep")

    def build() -> None:
        try:
            reporter.emit(BuildStarted(build_id="b", time_ns=0))
            reporter.emit(v.running(1))
            time.sleep(0.2)  # long enough for a few idle ticks
            reporter.emit(v.running(1).finished("executed", 2))
            reporter.emit(BuildFinished(build_id="b", status="executed", time_ns=3))
        finally:
            q.close()

    worker = threading.Thread(target=build)
    rec = Recorder()
    worker.start()
    pump(q, rec, tick=0.02)
    worker.join()
    assert rec.events == kept.events
    assert rec.calls[-1] == "close"
    assert rec.calls.count("close") == 1
    assert "refresh" in rec.calls


def test_pump_closes_the_renderer_when_the_producer_fails() -> None:
    q = QueueReporter()

    def build() -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            pass
        finally:
            q.close()

    rec = Recorder()
    threading.Thread(target=build).start()
    pump(q, rec, tick=0.01)
    assert rec.calls[-1] == "close"


def test_plain_renderer_works_from_pump_with_the_real_clock() -> None:
    q = QueueReporter()
    out = io.StringIO()
    v = vertex(1, "[1/1] RUN true")
    t = time.time_ns()
    q.emit(v.running(t))
    q.emit(v.running(t).finished("executed", t + 300 * MS))
    q.close()
    pump(q, PlainRenderer(out, environ={}))
    assert out.getvalue() == "#1 [1/1] RUN true\n#1 DONE 0.3s\n"


def test_progress_module_imports_rich_lazily() -> None:
    code = "import sys, nbbuild.progress; print('rich' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


# --- robustness ------------------------------------------------------------------------------

_ENDS: tuple[Status, ...] = ("executed", "cached", "failed", "canceled")
_NAMES = ["[internal] load build context", "[1/3] FROM alpine", "[2/3] RUN a", "[3/3] RUN b"]


@st.composite
def _streams(draw: st.DrawFn) -> list[tuple[int, Event]]:
    """Plausible streams: each vertex pending -> running -> (logs, progress, warnings) -> end."""
    out: list[tuple[int, Event]] = []
    clock = 0
    states: dict[int, VertexEvent] = {}
    for _ in range(draw(st.integers(min_value=1, max_value=40))):
        clock += draw(st.sampled_from([0, 1, 30, 99, 100, 150, 5_000, 11_000]))
        n = draw(st.integers(min_value=0, max_value=len(_NAMES) - 1))
        v = states.get(n) or vertex(n, _NAMES[n])
        kind = draw(st.sampled_from(["start", "log", "progress", "warn", "end"]))
        t = clock * MS
        event: Event
        if kind == "start" and v.started_ns is None:
            event = v.running(t)
        elif kind == "log":
            event = log(
                v, clock, draw(st.binary(max_size=12)) + draw(st.sampled_from([b"", b"\n", b"\r"]))
            )
        elif kind == "progress":
            done = draw(st.booleans())
            event = progress(
                v,
                draw(st.sampled_from(["x", "y"])),
                clock,
                started=clock - 5,
                completed=clock if done else None,
                current=draw(st.integers(0, 5000)),
                total=draw(st.sampled_from([0, 5000])),
            )
        elif kind == "warn":
            event = VertexWarning(digest=v.digest, message="w")
        elif v.started_ns is not None and v.completed_ns is None:
            status: Status = draw(st.sampled_from(_ENDS))
            event = v.finished(status, t, error="boom" if status == "failed" else None)
        else:
            event = v.finished("cached", t) if v.started_ns is None else v
        if isinstance(event, VertexEvent):
            states[n] = event
        out.append((clock, event))
    return out


@settings(max_examples=150, deadline=None)
@given(stream=_streams())
def test_renderers_survive_any_plausible_stream_and_are_deterministic(
    stream: list[tuple[int, Event]],
) -> None:
    texts = []
    for _ in range(2):
        p = Player(desc="d")
        for ms, event in stream:
            p.at(ms, event)
        p.at(stream[-1][0] + 1, BuildFinished(build_id="b", status="executed", time_ns=0))
        texts.append(p.text)
    assert texts[0] == texts[1]
    r, clock, buf = tty(width=60, height=10)
    for ms, event in stream:
        feed(r, clock, ms, event)
    r.close()
    assert "[+] Building" in buf.getvalue()


def test_rawjson_lines_stay_whole_when_threads_emit_at_once() -> None:
    out = io.StringIO()
    r = RawJsonRenderer(out)
    v = vertex(1, "[1/1] RUN x")

    def spam(n: int) -> None:
        for i in range(300):
            r.emit(log(v, i, f"{n}:{i}\n".encode() * 20))

    threads = [threading.Thread(target=spam, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1200
    assert all(isinstance(event_from_line(line), VertexLog) for line in lines)
