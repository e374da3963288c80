"""``%nbbuild doctor``: the host probe of :mod:`engine.doctor`, shown in a notebook.

:class:`DoctorReport` displays as ``text/plain`` (the same lines as ``nbbuild doctor`` would
print) and a static ``text/html`` table (no script): status, topic, what was found, what it
means, how to fix it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.doctor import Report

__all__ = ["DoctorReport", "doctor"]

_COLORS = {"ok": "#2e7d32", "info": "#1f5fbf", "warn": "#b7791f", "fail": "#c62828"}


class DoctorReport:
    """What ``%nbbuild doctor`` returns: the engine's :class:`~engine.doctor.Report`, displayed.

    Attributes:
        report: the findings.
    """

    def __init__(self, report: Report) -> None:
        self.report = report

    @property
    def can_run(self) -> bool:
        """RUN steps can execute on this host."""
        return self.report.can_run

    def text(self) -> str:
        """The report as text."""
        return self.report.text()

    def html(self) -> str:
        """The report as a static HTML table."""
        rows = []
        for f in self.report.findings:
            color = _COLORS.get(f.status, "#555")
            fix = (
                f'<div style="color:#555">fix: <code>{html.escape(f.fix)}</code></div>'
                if f.fix
                else ""
            )
            rows.append(
                "<tr>"
                f'<td style="color:{color};font-weight:bold;text-align:left">{f.status}</td>'
                f'<td style="text-align:left;white-space:nowrap">{html.escape(f.topic)}</td>'
                f'<td style="text-align:left">{html.escape(f.found)}'
                f'<div style="color:#555">{html.escape(f.meaning)}</div>{fix}</td>'
                "</tr>"
            )
        return (
            '<div class="nbb-doctor"><table style="border-collapse:collapse">'
            + "".join(rows)
            + f'</table><p style="margin:4px 0">{html.escape(self.report.verdict())}</p></div>'
        )

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None, **kwargs: Any
    ) -> dict[str, str]:
        bundle = {"text/plain": self.text(), "text/html": self.html()}
        if include:
            bundle = {k: v for k, v in bundle.items() if k in include}
        if exclude:
            bundle = {k: v for k, v in bundle.items() if k not in exclude}
        return bundle

    def __repr__(self) -> str:
        return self.text().rstrip("\n")


def doctor(root: Path, *, root_source: str = "") -> DoctorReport:
    """Probe this host for builds into the store at ``root`` (see :mod:`engine.doctor`)."""
    from engine.doctor import probe

    return DoctorReport(probe(root, root_source=root_source))
