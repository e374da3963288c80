"""Execute a notebook headlessly with nbclient, as GitHub readers and nbval later see it.

Used by the notebook tests (on a temporary copy) and by ``make notebooks`` (in place, to refresh
the committed outputs after a change to what nbbuild displays)::

    .venv/bin/python tests/notebooks/execute.py notebooks/01-first-build.ipynb [OUT.ipynb]

The kernel is this interpreter's (``python3`` resolves to ``sys.executable`` in jupyter_client)
and starts in the notebook's directory, as JupyterLab and nbval start it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

__all__ = ["execute", "main"]

CELL_TIMEOUT = 600  # seconds: a cell builds for real (crun), on a slow CI machine


def execute(
    path: Path, out: Path | None = None, *, cwd: Path | None = None
) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh kernel; write the executed notebook to ``out``.

    Args:
        path: the notebook to run.
        out: where to write it with its outputs (``None``: not written).
        cwd: the kernel's working directory (default: the notebook's directory).

    Returns:
        The executed notebook.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (unless tagged ``raises-exception``).
    """
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd or path.resolve().parent)}},
    )
    client.execute()
    if out is not None:
        nbformat.write(nb, out)
    return nb


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(args[0])
    dest = Path(args[1]) if len(args) == 2 else src
    execute(src, dest, cwd=src.resolve().parent)
    print(f"executed {src} -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
