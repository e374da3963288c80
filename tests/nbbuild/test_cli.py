"""``nbbuild plan`` end to end, as a subprocess (the way users and CI call it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLASSIC = """\
FROM golang:1.20 AS builder
WORKDIR /app
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=linux go build -o /app/my-app .
FROM alpine:latest
COPY --from=builder /app/my-app /my-app
ENTRYPOINT ["/my-app"]
"""


def run_cli(*args: str, root: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NBBUILD_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "nbbuild", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=env,
        timeout=120,
    )


@pytest.fixture
def classic(tmp_path: Path) -> Path:
    ctx = tmp_path / "app"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(CLASSIC)
    (ctx / "go.mod").write_text("module example.com/app\n\ngo 1.20\n")
    (ctx / "go.sum").write_text("")
    (ctx / "main.go").write_text("package main\n\nfunc main() {}\n")
    return ctx


def test_plan_json_schema_and_vertices(classic: Path, tmp_path: Path) -> None:
    proc = run_cli("plan", "--format", "json", str(classic), root=tmp_path / "store")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == 1
    steps = [v for v in doc["vertices"] if v["step"] is not None]
    assert [v["name"] for v in steps] == [
        "[builder 1/6] FROM docker.io/library/golang:1.20",
        "[builder 2/6] WORKDIR /app",
        "[builder 3/6] COPY go.mod go.sum ./",
        "[builder 4/6] RUN go mod download",
        "[builder 5/6] COPY . .",
        "[builder 6/6] RUN CGO_ENABLED=0 GOOS=linux go build -o /app/my-app .",
        "[stage-1 1/2] FROM docker.io/library/alpine:latest",
        "[stage-1 2/2] COPY --from=builder /app/my-app /my-app",
    ]
    assert [v["line"] for v in steps] == [1, 2, 3, 4, 5, 6, 7, 8]
    ids = {v["id"] for v in doc["vertices"]}
    for v in doc["vertices"]:
        assert set(v["inputs"]) <= ids
        assert v["key_status"] in ("known", "pending")
        assert {"id", "step", "stage", "line", "instruction", "op_digest", "cache_key", "preimage"} <= set(v)
    # Images cannot be resolved before the local store exists: provisional, and marked so.
    assert all(v["provisional"] for v in steps)
    copy_from = steps[-1]
    assert [c["status"] for c in copy_from["content_keys"]] == ["pending"]
    assert doc["image_config"]["config"]["Entrypoint"] == ["/my-app"]


def test_plan_json_is_stable_across_runs_and_stores(classic: Path, tmp_path: Path) -> None:
    first = run_cli("plan", "--format", "json", str(classic), root=tmp_path / "s1")
    second = run_cli("plan", "--format", "json", str(classic), root=tmp_path / "s2")
    third = run_cli("plan", "--format", "json", str(classic), root=tmp_path / "s1")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout == third.stdout


def test_plan_json_does_not_depend_on_the_context_path(classic: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "app"
    moved.parent.mkdir()
    classic.rename(moved)
    a = run_cli("plan", "--format", "json", str(moved), root=tmp_path / "s")
    b = run_cli("plan", "--format", "json", "-f", str(moved / "Dockerfile"), str(moved), root=tmp_path / "s")
    assert a.returncode == 0, a.stderr
    keys_a = [v["cache_key"] for v in json.loads(a.stdout)["vertices"]]
    keys_b = [v["cache_key"] for v in json.loads(b.stdout)["vertices"]]
    assert keys_a == keys_b


def test_plan_source_edit_changes_only_late_steps(classic: Path, tmp_path: Path) -> None:
    def step_keys() -> dict[str, str]:
        proc = run_cli("plan", "--format", "json", str(classic), root=tmp_path / "s")
        assert proc.returncode == 0, proc.stderr
        return {v["name"]: v["cache_key"] for v in json.loads(proc.stdout)["vertices"] if v["step"]}

    before = step_keys()
    (classic / "main.go").write_text("package main\n\nfunc main() { println(1) }\n")
    after = step_keys()
    assert [n for n in before if before[n] != after[n]] == [
        "[builder 5/6] COPY . .",
        "[builder 6/6] RUN CGO_ENABLED=0 GOOS=linux go build -o /app/my-app .",
        "[stage-1 2/2] COPY --from=builder /app/my-app /my-app",
    ]


def test_plan_text_lists_steps(classic: Path, tmp_path: Path) -> None:
    proc = run_cli("plan", str(classic), root=tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert "[builder 4/6] RUN go mod download" in proc.stdout
    assert "provisional" in proc.stdout


def test_plan_reads_dockerfile_from_stdin(classic: Path, tmp_path: Path) -> None:
    proc = run_cli("plan", "--format", "json", "-f", "-", str(classic), root=tmp_path / "s", stdin="FROM scratch\nCOPY go.mod /\n")
    assert proc.returncode == 0, proc.stderr
    (vertex,) = [v for v in json.loads(proc.stdout)["vertices"] if v["step"]]
    assert vertex["name"] == "[1/1] COPY go.mod /"
    assert vertex["key_status"] == "known" and not vertex["provisional"]


def test_dockerfile_error_is_one_clear_line_and_exit_1(classic: Path, tmp_path: Path) -> None:
    (classic / "Dockerfile").write_text("FROM alpine\nRUNN echo hi\n")
    proc = run_cli("plan", str(classic), root=tmp_path / "s")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "Dockerfile:2" in proc.stderr
    assert "unknown instruction: RUNN" in proc.stderr
    assert "did you mean RUN" in proc.stderr


def test_missing_copy_source_names_the_path(classic: Path, tmp_path: Path) -> None:
    (classic / "Dockerfile").write_text("FROM alpine\nCOPY nothere.txt /\n")
    proc = run_cli("plan", str(classic), root=tmp_path / "s")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert '"/nothere.txt": not found' in proc.stderr


def test_missing_context_and_dockerfile_are_usage_errors(tmp_path: Path) -> None:
    proc = run_cli("plan", str(tmp_path / "nope"), root=tmp_path / "s")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("plan", str(empty), root=tmp_path / "s")
    assert proc.returncode == 1 and "cannot read Dockerfile" in proc.stderr


def test_unknown_target_suggests(classic: Path, tmp_path: Path) -> None:
    proc = run_cli("plan", "--target", "buidler", str(classic), root=tmp_path / "s")
    assert proc.returncode == 1
    assert "target stage" in proc.stderr and "builder" in proc.stderr
