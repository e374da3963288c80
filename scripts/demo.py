"""`make demo` (until execution lands): plan the example, edit it, and show which keys change.

This is the cache-key half of the demo; the build half (run, rebuild cached, edit, rebuild)
arrives with execution.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from engine.digest import short
from engine.plan import Plan, PlanRequest, plan

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "depfirst"


def step_keys(ctx: Path, store: Path) -> tuple[Plan, dict[str, str | None]]:
    result = plan(PlanRequest((ctx / "Dockerfile").read_text(), ctx), store_root=store)
    keys = {
        v.meta.name: result.keys[v.digest].cache_key
        for v in result.definition.vertices
        if v.meta.step is not None
    }
    return result, keys


def show(title: str, before: dict[str, str | None], after: dict[str, str | None]) -> None:
    print(f"\n== {title}")
    for name, key in after.items():
        mark = "new    " if not before else "same   " if before.get(name) == key else "CHANGED"
        print(f"  {mark}  {short(key) if key else '-':<12}  {name}")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp) / "depfirst"
        shutil.copytree(EXAMPLE, ctx)
        store = Path(tmp) / "store"
        _, first = step_keys(ctx, store)
        show("first plan", {}, first)
        _, again = step_keys(ctx, store)
        show("plan again, nothing edited (all keys equal: everything would be cached)", first, again)
        (ctx / "src" / "main.txt").write_text('print("hello, edited")\n')
        _, edited = step_keys(ctx, store)
        show("after editing src/main.txt (only the steps after `COPY . .` change)", again, edited)
        (ctx / "requirements.txt").write_text("numpy\npandas\nscipy\n")
        _, manifest = step_keys(ctx, store)
        show("after editing requirements.txt (the dependency step changes too)", edited, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
