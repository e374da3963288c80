"""``--chmod``: octal and symbolic modes as dchapes-mode (BSD setmode) applies them."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.fileops import FileOpError
from engine.fileops.chmod import parse_chmod, parse_mode

FILE, DIR = False, True

# (mode text, starting bits, is_dir, expected bits)
TABLE = [
    ("u=rwX,go=rX", 0o600, FILE, 0o644),
    ("u=rwX,go=rX", 0o700, FILE, 0o755),
    ("u=rwX,go=rX", 0o700, DIR, 0o755),
    ("u=rwX,go=rX", 0o600, DIR, 0o755),
    ("a+X", 0o644, FILE, 0o644),
    ("a+X", 0o744, FILE, 0o755),
    ("a+X", 0o644, DIR, 0o755),
    ("+x", 0o600, FILE, 0o711),
    ("a-x", 0o755, FILE, 0o644),
    ("u+x,g-w", 0o664, FILE, 0o744),
    ("u+rw-x", 0o777, FILE, 0o677),  # several operators after one "who"
    ("g=u", 0o640, FILE, 0o660),
    ("o=g", 0o750, FILE, 0o755),
    ("go=", 0o755, FILE, 0o700),
    ("u=rwx,g=rx,o=", 0o777, FILE, 0o750),
    ("=r", 0o4755, FILE, 0o444),  # "=" clears setuid too
    ("=", 0o1755, DIR, 0o1000),  # ... but not the sticky bit (not a "standard" bit)
    ("+", 0o640, FILE, 0o640),
    ("u+s", 0o755, FILE, 0o4755),
    ("g+s", 0o755, DIR, 0o2755),
    ("o+s", 0o755, FILE, 0o755),  # s needs u or g
    ("+t", 0o755, DIR, 0o1755),
    ("a+t", 0o755, DIR, 0o1755),
    ("o+t", 0o755, DIR, 0o755),  # BSD: t needs a non-"other" who
    ("u-s", 0o4755, FILE, 0o755),
    ("a=rw,u+x", 0o000, FILE, 0o766),
    ("0755", 0o4777, FILE, 0o755),  # octal through the symbolic parser: "="
    ("7777", 0o000, FILE, 0o7777),
    ("+x,go=wX", 0o644, FILE, 0o722),  # X sees the starting mode (GNU chmod would give 0733)
]


@pytest.mark.parametrize(("text", "start", "is_dir", "want"), TABLE)
def test_symbolic_table(text: str, start: int, is_dir: bool, want: int) -> None:
    assert parse_mode(text).apply(start, is_dir) == want


@pytest.mark.parametrize(
    "text", ["", "z", "u", "u+z", "u+r,", "ur", "10000", "8", "0o7", "u+r,,g+w"]
)
def test_invalid_modes(text: str) -> None:
    with pytest.raises(FileOpError, match="invalid"):
        parse_mode(text)


def test_parse_chmod_classifies_octal_and_symbolic() -> None:
    assert parse_chmod("") is None
    octal = parse_chmod("0644")
    assert octal is not None and octal.octal == 0o644 and octal.symbolic is None
    assert octal.apply(0o100777, False) == 0o644 and octal.dir_perm == 0o644
    setuid = parse_chmod("4755")
    assert setuid is not None and setuid.apply(0o100600, False) == 0o4755
    assert setuid.dir_perm == 0o755  # created directories get permission bits only
    sym = parse_chmod("u=rwX,go=rX")
    assert sym is not None and sym.octal is None and sym.dir_perm is None
    assert sym.apply(0o40700, True) == 0o755
    with pytest.raises(FileOpError, match="between 0 and 07777"):
        parse_chmod("10000")


def _gnu_chmod_results(tmp_path: Path, cases: list[tuple[str, int, bool]]) -> list[int]:
    chmod = shutil.which("chmod")
    assert chmod, "coreutils chmod is needed for the cross-check"
    paths = [tmp_path / f"e{i}" for i in range(len(cases))]
    by_start: dict[int, list[str]] = {}
    by_text: dict[str, list[str]] = {}
    lines = ["set -e", "umask 0"]
    for path, (text, start, is_dir) in zip(paths, cases, strict=True):
        if is_dir:
            path.mkdir()
        else:
            path.touch()
        by_start.setdefault(start, []).append(f"'{path}'")
        by_text.setdefault(text, []).append(f"'{path}'")
    lines += [f"chmod {start:o} {' '.join(ps)}" for start, ps in by_start.items()]
    lines += [f"chmod -- '{text}' {' '.join(ps)}" for text, ps in by_text.items()]
    lines.append("stat -c %a " + " ".join(f"'{p}'" for p in paths))
    script = tmp_path / "chmod.sh"
    script.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [int(x, 8) for x in proc.stdout.split()]


def test_agrees_with_gnu_chmod_on_rwx_modes(tmp_path: Path) -> None:
    # Without special bits and with umask 0, BSD setmode and GNU chmod agree; check many
    # combinations (and pairs of clauses) against the real chmod(1).
    whos = ["", "a", "u", "g", "o", "ug", "go"]
    ops = ["+", "-", "="]
    perms = ["", "r", "w", "x", "X", "rw", "rwx", "rX", "wX", "u", "g", "o"]
    clauses = [w + o + p for w, o, p in itertools.product(whos, ops, perms)]
    # One known difference is left out: BSD's X looks at the mode *before* the whole set, GNU's
    # at the mode left by earlier clauses (see the "+x,go=wX" table row).
    pairs = [f"{a},{b}" for a, b in zip(clauses, reversed(clauses), strict=True) if "X" not in b]
    texts = clauses + pairs
    starts = [
        (0o644, FILE),
        (0o755, FILE),
        (0o600, FILE),
        (0o070, FILE),
        (0o750, DIR),
        (0o600, DIR),
    ]
    cases = [(t, s, d) for t in texts for s, d in starts]
    gnu = _gnu_chmod_results(tmp_path, cases)
    diffs = [
        (t, oct(s), d, oct(parse_mode(t).apply(s, d)), oct(g))
        for (t, s, d), g in zip(cases, gnu, strict=True)
        if parse_mode(t).apply(s, d) != g
    ]
    assert not diffs, diffs[:20]
