"""``nbbuild unshare``: a command as root of the namespace rootless builds use.

Runs as root in CI's first run (no namespace: the command just runs) and as normal users in
the rootless runs (``scripts/rootless-tests.sh``), where it is the way to reach files owned by
the subordinate range.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine.userns import current_mapping, mode

REPO = Path(__file__).resolve().parents[2]


def _nbbuild(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nbbuild", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_the_command_runs_as_root_of_the_builds_namespace(tmp_path: Path) -> None:
    proc = _nbbuild("unshare", "sh", "-c", "id -u; cat /proc/self/uid_map", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[0] == "0"
    uid_map = [tuple(int(x) for x in ln.split()) for ln in lines[1:] if ln.strip()]
    if mode() == "root":
        assert uid_map == [(0, 0, 4294967295)]  # real root: no namespace at all
    else:
        assert uid_map == [(r.inside, r.outside, r.count) for r in current_mapping().uids]


def test_files_of_subordinate_ids_are_made_and_removed_through_it(tmp_path: Path) -> None:
    target = tmp_path / "owned"
    made = _nbbuild(
        "unshare", "sh", "-c", f"touch {target} && chown 1000:1000 {target}", cwd=tmp_path
    )
    mapping = current_mapping()
    if mode() != "root" and mapping.single:
        assert made.returncode != 0  # uid 1000 is not mapped: chown refuses
        return
    assert made.returncode == 0, made.stderr
    expected = 1000 if mode() == "root" else mapping.uids[1].outside + 999
    assert target.stat().st_uid == expected
    if mode() != "root":
        # from outside the user may not change it: it belongs to the subordinate range
        try:
            os.chown(target, os.getuid(), os.getgid())
            raise AssertionError("a normal user chowned a file of its subordinate range")
        except PermissionError:
            pass
    removed = _nbbuild("unshare", "rm", str(target), cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert not target.exists()


def test_an_unknown_command_is_a_clear_error(tmp_path: Path) -> None:
    proc = _nbbuild("unshare", "no-such-command-here", cwd=tmp_path)
    assert proc.returncode == 1
    assert "cannot run 'no-such-command-here': no such command" in proc.stderr
