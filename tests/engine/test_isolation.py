"""The engine imports nothing from the notebook stack, and stays quick to import."""

from __future__ import annotations

import subprocess
import sys

NOTEBOOK_MODULES = ("IPython", "ipywidgets", "graphviz", "ipykernel", "traitlets", "rich")


def test_engine_imports_no_notebook_modules() -> None:
    code = (
        "import sys, engine, engine.plan, engine.frontend.convert, engine.cache.keys;"
        f"bad = [m for m in {NOTEBOOK_MODULES!r} if m in sys.modules];"
        "print(','.join(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_cli_plan_path_imports_no_notebook_modules() -> None:
    code = (
        "import sys, nbbuild.cli;"
        f"bad = [m for m in {NOTEBOOK_MODULES!r} if m in sys.modules];"
        "print(','.join(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""
