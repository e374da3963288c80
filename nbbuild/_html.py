"""Static HTML pieces shared by the result, the graph and the live views.

Everything here is plain strings: no ``<script>``, no ``<style>`` element, only ``style``
attributes, so the output survives untrusted notebooks and HTML sanitizers.

Volatile values are marked so a notebook test can drop them. nbval compares ``text/html``
outputs too, and two runs of the same build differ only in these:

- ``<span class="nbb-time">…</span>`` wraps every duration or elapsed time (one value each);
- ``<code class="nbb-id">…</code>`` wraps an image id (the image config carries the build
  time unless ``SOURCE_DATE_EPOCH`` is set).

A sanitizer file for ``pytest --nbval --nbval-sanitize-with`` can remove both::

    [nbbuild-volatile]
    regex: <(span|code) class="nbb-(time|id)">[^<]*</(span|code)>
    replace: <nbb/>
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

__all__ = [
    "ID_CLASS",
    "STATUS_COLORS",
    "STATUS_ICONS",
    "TIME_CLASS",
    "badge",
    "box",
    "clean",
    "colors",
    "esc",
    "filter_bundle",
    "format_ns",
    "id_span",
    "log_block",
    "logs_html",
    "pre",
    "steps_table_html",
    "tail_lines",
    "time_span",
    "truncate",
]

TIME_CLASS = "nbb-time"
ID_CLASS = "nbb-id"

# (fill, stroke): the fill is a light tint for node and badge backgrounds, the stroke the
# border and text colour.
STATUS_COLORS: Mapping[str, tuple[str, str]] = {
    "cached": ("#e3f4e5", "#2e7d32"),
    "executed": ("#e3ecfb", "#1f5fbf"),
    "failed": ("#fde7e7", "#c62828"),
    "running": ("#fff4d6", "#b7791f"),
    "pending": ("#f1f1f1", "#8a8a8a"),
    "skipped": ("#f1f1f1", "#8a8a8a"),
    "canceled": ("#d6d6d6", "#424242"),
}
_UNKNOWN_COLORS = ("#f1f1f1", "#8a8a8a")

STATUS_ICONS: Mapping[str, str] = {
    "cached": "✔",
    "executed": "✔",
    "failed": "✘",
    "running": "⏳",
    "pending": "…",
    "skipped": "-",
    "canceled": "⊘",
}

_FONT = "font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',Helvetica,Arial,sans-serif"
_MONO = "font-family:SFMono-Regular,Menlo,Consolas,'Liberation Mono',monospace"
# Control characters other than tab/newline break graphviz labels and look like garbage.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class StepLike(Protocol):
    """What the table and log renderers read from a step (``nbbuild._step.Step``)."""

    @property
    def name(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def line(self) -> int | None: ...
    @property
    def instruction(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def duration_ns(self) -> int: ...
    @property
    def saved_ns(self) -> int: ...
    @property
    def short_key(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def logs(self) -> str: ...
    @property
    def error(self) -> str: ...


def esc(text: object) -> str:
    """``text`` escaped for HTML content and attribute values."""
    return html.escape(str(text), quote=True)


def clean(text: str) -> str:
    """``text`` without control characters (kept: tab and newline)."""
    return _CONTROL.sub("", text)


def truncate(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``…`` when cut."""
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


def format_ns(ns: int) -> str:
    """A duration as people read it: ``0.0s``, ``4.2s``, ``1m05s``, ``2h03m``."""
    seconds = max(ns, 0) / 1e9
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def time_span(ns: int) -> str:
    """A duration in its own ``<span class="nbb-time">`` (see the module docstring)."""
    return f'<span class="{TIME_CLASS}">{format_ns(ns)}</span>'


def id_span(image_id: str) -> str:
    """An image id in its own ``<code class="nbb-id">`` (see the module docstring)."""
    return f'<code class="{ID_CLASS}">{esc(image_id)}</code>'


def colors(status: str) -> tuple[str, str]:
    """(fill, stroke) of ``status``; grey for a status this version does not know."""
    return STATUS_COLORS.get(status, _UNKNOWN_COLORS)


def badge(status: str) -> str:
    """A small coloured label for a status."""
    fill, stroke = colors(status)
    return (
        f'<span style="background:{fill};color:{stroke};border:1px solid {stroke};'
        f'border-radius:3px;padding:0 4px;font-size:11px;white-space:nowrap">'
        f"{esc(status)}</span>"
    )


def tail_lines(text: str, limit: int) -> tuple[list[str], int]:
    """The last ``limit`` lines of ``text`` and how many lines came before them."""
    lines = text.splitlines()
    if limit <= 0 or len(lines) <= limit:
        return lines, 0
    return lines[-limit:], len(lines) - limit


def _duration_cell(step: StepLike) -> str:
    if step.status == "cached":
        return f"{time_span(step.saved_ns)} saved" if step.saved_ns else ""
    if step.status in ("executed", "failed", "running") or step.duration_ns:
        return time_span(step.duration_ns)
    return ""


_TH = "text-align:left;padding:2px 8px;border-bottom:1px solid #ccc;font-weight:600"
_TD = "text-align:left;padding:2px 8px;vertical-align:top;border-bottom:1px solid #eee"


def steps_table_html(steps: Sequence[StepLike], *, width: int = 80) -> str:
    """A table of steps: step, line, instruction, status, duration, short key, reason."""
    head = "".join(
        f'<th style="{_TH}">{name}</th>'
        for name in ("step", "line", "instruction", "status", "duration", "key", "reason")
    )
    rows = []
    for s in steps:
        instruction = clean(s.instruction or s.name)
        reason = s.reason
        rows.append(
            "<tr>"
            f'<td style="{_TD};white-space:nowrap">{esc(s.label)}</td>'
            f'<td style="{_TD}">{"" if s.line is None else s.line}</td>'
            f'<td style="{_TD};{_MONO};font-size:12px" title="{esc(instruction)}">'
            f"{esc(truncate(instruction, width))}</td>"
            f'<td style="{_TD}">{badge(s.status)}</td>'
            f'<td style="{_TD};white-space:nowrap">{_duration_cell(s)}</td>'
            f'<td style="{_TD};{_MONO};font-size:12px">{esc(s.short_key)}</td>'
            f'<td style="{_TD}">{esc(clean(reason))}</td>'
            "</tr>"
        )
    return (
        f'<table class="nbb-steps" style="border-collapse:collapse;font-size:12px;{_FONT}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def pre(text: str) -> str:
    """``text`` in a scrolling ``<pre>`` block."""
    return (
        f'<pre style="{_MONO};font-size:12px;margin:2px 0;padding:4px 6px;background:#f7f7f7;'
        f'max-height:24em;overflow:auto;white-space:pre-wrap">{esc(clean(text))}</pre>'
    )


def log_block(title: str, status: str, text: str, *, limit: int, error: str = "") -> str:
    """One step's log in a ``<details>``, open only when the step failed."""
    lines, earlier = tail_lines(text, limit)
    body = "\n".join(lines)
    if earlier:
        body = f"… {earlier} earlier line{'s' if earlier != 1 else ''}\n" + body
    count = len(lines) + earlier
    what = f"{count} line{'s' if count != 1 else ''}"
    parts = []
    if error:
        _, stroke = colors("failed")
        parts.append(f'<div style="color:{stroke};{_MONO};font-size:12px">{esc(error)}</div>')
    if body:
        parts.append(pre(body))
    opened = " open" if status == "failed" else ""
    return (
        f'<details class="nbb-log"{opened} style="margin:2px 0">'
        f'<summary style="cursor:pointer;{_MONO};font-size:12px">{esc(title)} '
        f'{badge(status)} <span style="color:#777">{what}</span></summary>'
        f"{''.join(parts)}</details>"
    )


def logs_html(steps: Iterable[StepLike], *, limit: int = 200) -> str:
    """``<details>`` blocks for every step with logs or an error ("" when there are none)."""
    blocks = [
        log_block(
            truncate(f"[{s.label}] {clean(s.instruction or s.name)}", 90),
            s.status,
            s.logs,
            limit=limit,
            error=s.error.splitlines()[0] if s.status == "failed" and s.error else "",
        )
        for s in steps
        if s.logs or (s.status == "failed" and s.error)
    ]
    if not blocks:
        return ""
    return f'<div class="nbb-logs" style="margin-top:6px">{"".join(blocks)}</div>'


def box(inner: str, *, css_class: str) -> str:
    """The outer ``<div>`` of a view."""
    return f'<div class="{css_class}" style="{_FONT};font-size:13px;line-height:1.4">{inner}</div>'


def filter_bundle(
    makers: Mapping[str, Any], include: Any = None, exclude: Any = None
) -> dict[str, str]:
    """Call the makers IPython asked for; a maker that fails or returns None is left out."""
    out: dict[str, str] = {}
    for mime, make in makers.items():
        if include and mime not in include:
            continue
        if exclude and mime in exclude:
            continue
        try:
            value = make()
        except Exception:  # a display formatter must never raise
            continue
        if value is not None:
            out[mime] = value
    return out
