"""Plain-text rendering of plans (the CLI's ``--format text``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.digest import short

if TYPE_CHECKING:
    from engine.plan import Plan

__all__ = ["plan_text"]


def plan_text(plan: Plan) -> str:
    """A table of steps: name, line, short key and key status, then the image config summary."""
    lines: list[str] = []
    target = plan.definition.target_stage or "(default)"
    lines.append(f"target: {target}")
    for vertex in plan.definition.vertices:
        key = plan.keys[vertex.digest]
        if vertex.meta.step is None and not vertex.meta.name:
            continue
        shown = short(key.cache_key) if key.cache_key else "-"
        status = key.status + (" (provisional)" if key.provisional else "")
        if vertex.meta.ignore_cache:
            status += " no-cache"
        pending = [c for c in key.content if c.status == "pending"]
        if pending:
            status += f", content pending on input {', '.join(str(c.input) for c in pending)}"
        line = f"L{vertex.meta.line}" if vertex.meta.line else "   "
        lines.append(f"  {line:>5}  {shown:<12}  {vertex.meta.name}  [{status}]")
    return "\n".join(lines) + "\n"
