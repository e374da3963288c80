"""What a killed engine leaves in the executor's state dir, and its removal.

Every bundle and every runtime state entry is named ``nbbuild-<pid>-<start ticks>-<random>``
after the engine process that made it. An entry whose owner is gone (no process with that pid
and start time) belongs to a killed engine: its containers died with it (see
:mod:`engine.executor.oci`), so the entry only takes space. Every build sweeps them, not only
the executor (which a build whose steps are all cache hits never makes): an engine killed
while a finished step's bundle was still being removed in the background would otherwise leave
it until the next build that runs something.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from engine.store.leases import process_start_ticks

__all__ = ["DEFAULT_STATE_DIR", "OWNED_ID", "default_state_dir", "sweep"]

DEFAULT_STATE_DIR = Path("/run/nbbuild")
OWNED_ID = re.compile(r"nbbuild-(\d+)-(\d+)-[0-9a-f]+")


def default_state_dir() -> Path:
    """Where bundles and the runtime's state live: ``/run/nbbuild`` as root; for a rootless
    build ``$XDG_RUNTIME_DIR/nbbuild`` (a per-user tmpfs), else ``~/.cache/nbbuild-run``
    (``/run`` belongs to the real root, and a shared ``/tmp`` name could be taken by others)."""
    from engine.userns.namespace import mode

    if mode() == "root":
        return DEFAULT_STATE_DIR
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime_dir and os.path.isdir(runtime_dir) and os.access(runtime_dir, os.W_OK):
        return Path(runtime_dir) / "nbbuild"
    return Path(os.path.expanduser("~")) / ".cache" / "nbbuild-run"


def sweep(state_dir: Path) -> int:
    """Remove the bundles and runtime state of engines that are gone; returns how many
    entries went. Entries of live engines (other builds) are left alone."""
    removed = 0
    for parent in (state_dir / "bundles", *state_dir.glob("state-*")):
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            match = OWNED_ID.fullmatch(name)
            if match is None:
                continue
            pid, ticks = int(match.group(1)), int(match.group(2))
            if process_start_ticks(pid) == ticks:
                continue  # its engine still runs
            shutil.rmtree(parent / name, ignore_errors=True)
            removed += 1
    return removed
