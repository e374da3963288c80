"""``nbbuild cache``: argument parsing (sizes, durations, aliases) and each command's output."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from pathlib import Path

import pytest

from engine.store.store import Result, Store
from nbbuild._cli_cache import (
    human_duration,
    human_size,
    parse_duration,
    parse_filter,
    parse_size,
    register,
)

HOUR = 3600 * 10**9


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nbbuild")
    sub = p.add_subparsers(dest="command")
    sub.required = True
    register(sub)
    return p


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = parser().parse_args(argv)
    code = args.run(args)
    return code, capsys.readouterr().out


def populate(root: Path, n: int = 3) -> list[Result]:
    out = []
    with Store.open(root) as store, store.lease() as lease:
        base: tuple[str, ...] = ()
        for i in range(n):
            d = store.new_diff_dir(lease)
            (d / "f").write_bytes(b"x" * 10_000 * (i + 1))
            r = store.commit(
                keys=[f"k{i}"],
                base=base,
                diff=d,
                exec_ns=1,
                description=f"RUN step {i}",
                lease=lease,
            )
            base = r.layers
            out.append(r)
    return out


def test_parse_size() -> None:
    assert parse_size("100") == 100
    assert parse_size("512MB") == 512 << 20  # buildx (go-units RAMInBytes): binary multipliers
    assert parse_size("2GiB") == 2 << 30
    assert parse_size("1.5g") == int(1.5 * (1 << 30))
    assert parse_size("10k") == 10 << 10
    assert parse_size("0") == 0
    for bad in ("", "MB", "12XB", "-5", "1.2.3", "5 MBs"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)


def test_parse_duration() -> None:
    assert parse_duration("48h") == 48 * HOUR
    assert parse_duration("10m") == 600 * 10**9
    assert parse_duration("1h30m") == 90 * 60 * 10**9
    assert parse_duration("1.5s") == 1_500_000_000
    assert parse_duration("0") == 0
    for bad, message in (
        ("5", "missing unit"),
        ("2d", "unknown unit"),
        ("x", "invalid"),
        ("-1h", "negative"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse_duration(bad)


def test_parse_filter() -> None:
    assert parse_filter("until=24h") == ("until", "24h")
    assert parse_filter("UNTIL=1m") == ("until", "1m")
    with pytest.raises(argparse.ArgumentTypeError, match="unsupported filter"):
        parse_filter("type=regular")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_filter("until")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown unit"):
        parse_filter("until=3days")


def test_go_units_formatting() -> None:
    assert human_size(0) == "0B"
    assert human_size(999) == "999B"
    assert human_size(1000) == "1kB"
    assert human_size(1234567) == "1.235MB"
    assert human_size(20_480) == "20.48kB"
    assert human_size(5 * 10**12) == "5TB"
    s = 10**9
    assert human_duration(0) == "Less than a second"
    assert human_duration(1 * s) == "1 second"
    assert human_duration(59 * s) == "59 seconds"
    assert human_duration(61 * s) == "About a minute"
    assert human_duration(45 * 60 * s) == "45 minutes"
    assert human_duration(HOUR + 10 * 60 * s) == "About an hour"
    assert human_duration(5 * HOUR) == "5 hours"
    assert human_duration(72 * HOUR) == "3 days"
    assert human_duration(24 * 21 * HOUR) == "3 weeks"
    assert human_duration(24 * 90 * HOUR) == "3 months"
    assert human_duration(24 * 365 * 3 * HOUR) == "3 years"


def test_prune_flags_and_keep_storage_alias(tmp_path: Path) -> None:
    p = parser()
    args = p.parse_args(
        [
            "cache", "prune", "--root", str(tmp_path), "--all", "-f",
            "--filter", "until=48h", "--max-used-space", "2GiB",
            "--min-free-space", "512MB", "--keep-storage", "1g",
        ]
    )  # fmt: skip
    assert args.all and args.force
    assert args.filter == [("until", "48h")]
    assert args.max_used_space == 2 << 30
    assert args.min_free_space == 512 << 20
    assert args.keep_storage == 1 << 30 and args.reserved_space is None
    args = p.parse_args(["cache", "prune", "--reserved-space", "10MB"])
    assert args.reserved_space == 10 << 20 and args.root is None


def test_bad_flags_exit_with_usage_not_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["cache", "prune", "--max-used-space", "lots"],
        ["cache", "prune", "--filter", "until=forever"],
        ["cache"],
        ["cache", "nope"],
    ):
        with pytest.raises(SystemExit) as exc:
            parser().parse_args(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "usage:" in err and "Traceback" not in err


def test_keep_storage_acts_as_reserved_space(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = populate(tmp_path, 1)
    with Store.open(tmp_path) as store:
        (size,) = [store.snapshot_size(s) for s in results[0].layers]
    assert size is not None
    code, out = run(
        ["cache", "prune", "--root", str(tmp_path), "-f", "--keep-storage", str(size)], capsys
    )
    assert code == 0 and out.strip() == "Total: 0B"
    code, out = run(
        ["cache", "prune", "--root", str(tmp_path), "-f", "--keep-storage", str(size - 1)], capsys
    )
    assert results[0].id in out and out.endswith(f"Total: {human_size(size)}\n")


def test_root_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    results = populate(tmp_path / "env-root", 1)
    monkeypatch.setenv("NBBUILD_ROOT", str(tmp_path / "env-root"))
    code, out = run(["cache", "ls"], capsys)
    assert code == 0 and results[0].id in out


def test_du_table_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = populate(tmp_path)
    code, out = run(["cache", "du", "--root", str(tmp_path)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "RECLAIMABLE", "SIZE", "LAST", "ACCESSED"]
    assert {ln.split()[0] for ln in lines[1:4]} == {r.id for r in results}
    assert all(ln.split()[1] == "true" for ln in lines[1:4])
    assert all("ago" in ln for ln in lines[1:4])
    assert lines[4].startswith("Reclaimable:") and lines[5].startswith("Total:")
    assert lines[4].split()[1] == lines[5].split()[1]
    code, out = run(["cache", "du", "--root", str(tmp_path), "--verbose"], capsys)
    assert out.count("ID:") == 3 and "Description: RUN step 1" in out and "Parents:" in out
    code, out = run(["cache", "du", "--root", str(tmp_path), "--format", "json"], capsys)
    data = json.loads(out)
    assert {d["id"] for d in data} == {r.id for r in results}
    assert all(d["reclaimable"] and d["kind"] == "result" for d in data)


def test_ls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    populate(tmp_path)
    code, out = run(["cache", "ls", "--root", str(tmp_path)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "SIZE", "CREATED"]
    assert len(lines) == 4 and all("RUN step" in ln for ln in lines[1:])
    code, out = run(["cache", "ls", "--root", str(tmp_path), "--format", "json"], capsys)
    assert sorted(d["description"] for d in json.loads(out)) == [f"RUN step {i}" for i in range(3)]


def test_prune_asks_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    results = populate(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, out = run(["cache", "prune", "--root", str(tmp_path)], capsys)
    assert code == 0
    assert out == (
        "WARNING! This will remove all dangling build cache. "
        "Are you sure you want to continue? [y/N] \n"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # EOF: no
    run(["cache", "prune", "--root", str(tmp_path), "--all"], capsys)
    with Store.open(tmp_path) as store:
        assert all(store.result(r.id) == r for r in results)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    code, out = run(["cache", "prune", "--root", str(tmp_path), "--filter", "until=1h"], capsys)
    assert "matches the filter" in out and "Total: 0B" in out  # all used just now
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    code, out = run(["cache", "prune", "--root", str(tmp_path)], capsys)
    lines = out.splitlines()
    assert lines[0].endswith("[y/N] ")
    assert lines[1].split() == ["ID", "RECLAIMABLE", "SIZE", "LAST", "ACCESSED"]
    assert {ln.split()[0] for ln in lines[2:-1]} == {r.id for r in results}
    assert lines[-1].startswith("Total:") and lines[-1] != "Total: 0B"
    with Store.open(tmp_path) as store:
        assert all(store.result(r.id) is None for r in results)


def test_prune_max_used_space_lru(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Store.open(tmp_path) as store, store.lease() as lease:
        rs = []
        for i in range(3):
            d = store.new_diff_dir(lease)
            (d / "f").write_bytes(b"x" * 50_000)
            rs.append(
                store.commit(
                    keys=[f"k{i}"], base=(), diff=d, exec_ns=1, description="", lease=lease
                )
            )
    with Store.open(tmp_path) as store, store.db.transaction() as conn:
        for age, r in zip((3, 1, 2), rs, strict=True):
            conn.execute(
                "UPDATE results SET last_used_ns = ? WHERE id = ?",
                (time.time_ns() - age * HOUR, r.id),
            )
    with Store.open(tmp_path) as store:
        sizes = [store.snapshot_size(r.layers[0]) or 0 for r in rs]
    cap = sum(sizes) - sizes[0]  # removing the least recently used one is enough
    code, out = run(
        ["cache", "prune", "--root", str(tmp_path), "-f", "--max-used-space", str(cap)], capsys
    )
    assert code == 0
    removed = [ln.split()[0] for ln in out.splitlines()[1:-1]]
    assert removed == [rs[0].id]


def test_check_clean_then_broken_then_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = populate(tmp_path)
    code, out = run(["cache", "check", "--root", str(tmp_path)], capsys)
    assert code == 0 and out.strip().endswith(": no problems")
    assert "checked 3 snapshots, 3 results, 0 blobs" in out
    shutil.rmtree(tmp_path / "snapshots" / results[1].layers[-1])
    code, out = run(["cache", "check", "--root", str(tmp_path)], capsys)
    assert code == 1
    assert "missing-snapshot" in out and out.count("broken-result") == 2
    assert "nbbuild cache check --repair" in out
    code, out = run(["cache", "check", "--root", str(tmp_path), "--repair"], capsys)
    assert code == 0 and out.count("[repaired]") == 3 and "3 items quarantined" in out
    code, out = run(["cache", "check", "--root", str(tmp_path)], capsys)
    assert code == 0 and "no problems" in out
