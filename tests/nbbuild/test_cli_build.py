"""``nbbuild build`` as a user runs it: a real process, real containers, a real store.

Progress output (BuildKit's plain format, quiet, rawjson), ``-f -``, errors without tracebacks,
``--iidfile``/``--metadata-file``, outputs, entitlements, ``--platform`` and cancellation
(fixtures in tests/buildkit_base.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.events import BuildFinished, BuildStarted, VertexEvent, VertexLog, event_from_line


def _load_base() -> ModuleType:
    name = "nbbuild_tests_buildkit_base"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "buildkit_base.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


base = _load_base()
busybox_archive = base.busybox_archive
bk = base.bk

DOCKERFILE = """\
FROM busybox AS builder
WORKDIR /app
COPY requirements.txt ./
RUN echo "deps: $(cat requirements.txt)" > /deps
COPY . .
RUN cat src/*.txt > /app/artifact && wc -l /app/artifact

FROM busybox
COPY --from=builder /app/artifact /artifact
CMD ["cat", "/artifact"]
"""

FILES = {
    "Dockerfile": DOCKERFILE,
    "requirements.txt": "numpy\n",
    "src/a.txt": "alpha\n",
    "src/b.txt": "beta\n",
}

IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


def _no_traceback(run: Any) -> None:
    assert "Traceback" not in run.stderr, run.stderr
    assert "Traceback" not in run.stdout, run.stdout


def _blocks(plain: str) -> dict[int, list[str]]:
    """Plain progress as ``{N: [lines of #N without the prefix]}``."""
    out: dict[int, list[str]] = {}
    for line in plain.splitlines():
        m = re.match(r"^#(\d+) (.*)$", line)
        if m:
            out.setdefault(int(m.group(1)), []).append(m.group(2))
    return out


# -- progress ---------------------------------------------------------------------------------


def test_plain_progress_has_buildkits_lines(bk: Any) -> None:
    bk.write(FILES)
    run = bk.cli("build", "--progress=plain", "-t", "demo", str(bk.ctx))
    assert run.code == 0, run.stderr
    _no_traceback(run)
    assert run.stdout == ""  # progress goes to stderr, as buildx
    blocks = _blocks(run.stderr)
    titles = {n: lines[0] for n, lines in blocks.items()}
    assert "[builder 1/6] FROM docker.io/library/busybox:latest" in titles.values()
    run_step = next(n for n, t in titles.items() if t.startswith("[builder 6/6] RUN cat"))
    assert blocks[run_step][-1].startswith("DONE ")
    assert re.fullmatch(r"DONE \d+\.\d+s", blocks[run_step][-1])
    # the step's output, with BuildKit's timestamp prefix
    assert any(re.fullmatch(r"\d+\.\d+ 2 /app/artifact", line) for line in blocks[run_step])
    copy_step = next(n for n, t in titles.items() if t.startswith("[stage-1 2/2] COPY --from"))
    assert blocks[copy_step][-1].startswith("DONE")
    # numbering: #1, #2, ... in order of first appearance
    assert sorted(blocks) == list(range(1, len(blocks) + 1))

    again = bk.cli("build", "--progress=plain", "-t", "demo", str(bk.ctx))
    assert again.code == 0, again.stderr
    blocks = _blocks(again.stderr)
    steps = {lines[0]: lines[1:] for lines in blocks.values() if lines[0].startswith("[")}
    assert len(steps) == 7
    for title, rest in steps.items():
        assert rest == ["CACHED"], title


def test_plain_progress_of_a_source_edit_shows_which_steps_ran(bk: Any) -> None:
    bk.write(FILES)
    assert bk.cli("build", "--progress=plain", str(bk.ctx)).code == 0
    bk.write({"src/b.txt": "beta, edited\n"})
    run = bk.cli("build", "--progress=plain", str(bk.ctx))
    assert run.code == 0, run.stderr
    steps = {lines[0]: lines[-1] for lines in _blocks(run.stderr).values()}
    assert steps['[builder 4/6] RUN echo "deps: $(cat requirements.txt)" > /deps'] == "CACHED"
    assert steps["[builder 5/6] COPY . ."].startswith("DONE")
    assert steps[
        "[builder 6/6] RUN cat src/*.txt > /app/artifact && wc -l /app/artifact"
    ].startswith("DONE")


def _stored_id(bk: Any, name: str) -> str:
    from engine.images.store import ImageStore
    from engine.store.store import Store

    store = Store.open(bk.root)
    try:
        image = ImageStore(store).get(name)
        assert image is not None
        return str(image.config_digest)
    finally:
        store.close()


def test_quiet_prints_only_the_image_id(bk: Any) -> None:
    bk.write(FILES)
    for flag in ("--progress=quiet", "-q"):
        run = bk.cli("build", flag, "-t", "demo:q", str(bk.ctx))
        assert run.code == 0, run.stderr
        assert IMAGE_ID.match(run.stdout.strip()), run.stdout
        assert run.stdout.count("\n") == 1
        assert run.stderr == ""
        # the ID printed is the stored image's: the digest of its config
        assert _stored_id(bk, "demo:q") == run.stdout.strip()


def test_rawjson_lines_parse_as_events(bk: Any) -> None:
    bk.write(FILES)
    run = bk.cli("build", "--progress=rawjson", "-t", "demo:raw", str(bk.ctx))
    assert run.code == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines and run.stderr.endswith("\n")
    events = [event_from_line(line) for line in lines]
    assert isinstance(events[0], BuildStarted)
    assert isinstance(events[-1], BuildFinished)
    assert events[-1].status == "executed"
    assert events[-1].image_id and IMAGE_ID.match(events[-1].image_id)
    vertices: dict[str, VertexEvent] = {}
    for e in events:
        if isinstance(e, VertexEvent):
            vertices[e.digest] = e
    named = {v.name: v for v in vertices.values()}
    run_step = named["[builder 6/6] RUN cat src/*.txt > /app/artifact && wc -l /app/artifact"]
    assert run_step.status == "executed"
    assert run_step.key and run_step.key.startswith("sha256:")
    logs = b"".join(
        e.data for e in events if isinstance(e, VertexLog) and e.digest == run_step.digest
    )
    assert logs == b"2 /app/artifact\n"


def test_rawjson_of_a_failed_build_ends_with_the_failure(bk: Any) -> None:
    bk.write({"Dockerfile": "FROM busybox\nRUN echo bad >&2; exit 4\n"})
    run = bk.cli("build", "--progress=rawjson", str(bk.ctx))
    assert run.code != 0
    _no_traceback(run)
    lines = run.stderr.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    events = [event_from_line(line) for line in lines[:end]]
    assert isinstance(events[-1], BuildFinished)
    assert events[-1].status == "failed"
    assert events[-1].error and events[-1].error.startswith("[2/2] RUN echo bad >&2; exit 4")
    assert lines[end].startswith("error: [2/2] RUN echo bad >&2; exit 4 (Dockerfile:2)")
    assert lines[end + 1 :] == ["  | bad"]


# -- Dockerfile from stdin, -f, args ----------------------------------------------------------


def test_dockerfile_from_stdin(bk: Any) -> None:
    bk.write({"f.txt": "from the context\n"})
    run = bk.cli(
        "build",
        "--progress=plain",
        "-f",
        "-",
        str(bk.ctx),
        stdin="FROM busybox\nCOPY f.txt /\nRUN cat /f.txt\n",
    )
    assert run.code == 0, run.stderr
    assert "from the context" in run.stderr


def test_dockerfile_elsewhere_with_f_and_build_args_and_target(bk: Any) -> None:
    other = bk.tmp / "dockerfiles" / "Custom.Dockerfile"
    other.parent.mkdir()
    other.write_text(
        'FROM busybox AS one\nARG WHO\nRUN echo "one $WHO"\nFROM busybox AS two\nRUN echo two\n'
    )
    run = bk.cli(
        "build",
        "--progress=plain",
        "-f",
        str(other),
        "--build-arg",
        "WHO=arg-value",
        "--target",
        "one",
        str(bk.ctx),
    )
    assert run.code == 0, run.stderr
    assert "one arg-value" in run.stderr
    assert "two" not in run.stderr.replace("[one", "")


def test_missing_dockerfile_is_a_clear_error(bk: Any) -> None:
    run = bk.cli("build", str(bk.ctx))
    assert run.code != 0
    _no_traceback(run)
    assert "Dockerfile" in run.stderr and "no such file" in run.stderr


# -- errors -----------------------------------------------------------------------------------


def test_failing_run_exits_non_zero_with_the_step_and_no_traceback(bk: Any) -> None:
    bk.write(
        {
            "Dockerfile": "FROM busybox\nRUN echo preparing\n"
            "RUN echo 'compiling...' && echo 'error: missing symbol' >&2 && exit 2\n"
        }
    )
    run = bk.cli("build", "--progress=plain", str(bk.ctx))
    assert run.code == 1
    _no_traceback(run)
    err = run.stderr
    assert "error: [3/3] RUN echo 'compiling...'" in err
    assert "(Dockerfile:3)" in err
    assert "exit code: 2" in err
    assert "| error: missing symbol" in err
    # BuildKit's plain ERROR block for the failed step
    assert re.search(r"^#\d+ ERROR: ", err, re.M)


def test_refused_mount_is_a_clear_error(bk: Any) -> None:
    bk.write({"Dockerfile": "FROM busybox\nRUN --mount=type=cache,target=/x echo hi\n"})
    run = bk.cli("build", "--progress=plain", str(bk.ctx))
    assert run.code == 1
    _no_traceback(run)
    assert "--mount=type=cache is not supported yet" in run.stderr


def test_network_host_needs_allow_on_the_command_line(bk: Any) -> None:
    bk.write({"Dockerfile": "FROM busybox\nRUN --network=host cat /proc/net/dev\n"})
    refused = bk.cli("build", "--progress=plain", str(bk.ctx))
    assert refused.code == 1
    _no_traceback(refused)
    assert "network.host is not allowed" in refused.stderr
    allowed = bk.cli("build", "--progress=plain", "--allow", "network.host", str(bk.ctx))
    assert allowed.code == 0, allowed.stderr
    unknown = bk.cli("build", "--allow", "network.everything", str(bk.ctx))
    assert unknown.code != 0
    assert "unknown entitlement" in unknown.stderr


def test_foreign_platform_is_a_clear_error(bk: Any) -> None:
    bk.write(FILES)
    import platform

    foreign = "linux/arm64" if platform.machine() in ("x86_64", "AMD64") else "linux/amd64"
    run = bk.cli("build", "--platform", foreign, str(bk.ctx))
    assert run.code != 0
    _no_traceback(run)
    assert foreign in run.stderr
    assert "not this host's" in run.stderr
    native = "linux/amd64" if foreign == "linux/arm64" else "linux/arm64"
    ok = bk.cli("build", "--progress=quiet", "--platform", native, str(bk.ctx))
    assert ok.code == 0, ok.stderr


def test_dockerfile_syntax_error_exits_with_the_line(bk: Any) -> None:
    bk.write({"Dockerfile": "FROM busybox\nCOPY\n"})
    run = bk.cli("build", str(bk.ctx))
    assert run.code == 1
    _no_traceback(run)
    assert "Dockerfile:2" in run.stderr


# -- outputs ----------------------------------------------------------------------------------


def test_iidfile_and_metadata_file(bk: Any) -> None:
    bk.write(FILES)
    iid = bk.tmp / "iid"
    meta = bk.tmp / "meta.json"
    run = bk.cli(
        "build",
        "--progress=quiet",
        "-t",
        "demo:meta",
        "--iidfile",
        str(iid),
        "--metadata-file",
        str(meta),
        str(bk.ctx),
    )
    assert run.code == 0, run.stderr
    image_id = iid.read_text()
    assert IMAGE_ID.match(image_id)  # no newline, as buildx writes it
    assert run.stdout.strip() == image_id
    doc = json.loads(meta.read_text())
    assert doc["containerimage.config.digest"] == image_id
    assert doc["image.name"] == "demo:meta"
    steps = {s["name"]: s for s in doc["nbbuild.steps"]}
    assert (
        steps["[builder 6/6] RUN cat src/*.txt > /app/artifact && wc -l /app/artifact"]["status"]
        == "executed"
    )


def test_metadata_file_has_the_manifest_digest_like_buildx(bk: Any) -> None:
    bk.write(FILES)
    meta = bk.tmp / "meta.json"
    run = bk.cli(
        "build", "--progress=quiet", "-t", "demo:m", "--metadata-file", str(meta), str(bk.ctx)
    )
    assert run.code == 0, run.stderr
    doc = json.loads(meta.read_text())
    from engine.images.store import ImageStore
    from engine.store.store import Store

    store = Store.open(bk.root)
    try:
        image = ImageStore(store).get("demo:m")
        assert image is not None
        manifest_digest = image.manifest_digest
    finally:
        store.close()
    assert doc["containerimage.digest"] == manifest_digest
    descriptor = doc["containerimage.descriptor"]
    assert descriptor["digest"] == manifest_digest
    assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert descriptor["size"] > 0


def test_output_local_and_label_from_the_command_line(bk: Any) -> None:
    bk.write(FILES)
    out = bk.tmp / "out"
    run = bk.cli(
        "build",
        "--progress=quiet",
        "-t",
        "demo:l",
        "--label",
        "org.example.k=v",
        "-o",
        f"type=local,dest={out}",
        str(bk.ctx),
    )
    assert run.code == 0, run.stderr
    assert (out / "artifact").read_text() == "alpha\nbeta\n"
    inspect = json.loads(bk.cli("image", "inspect", "demo:l").stdout)
    assert inspect["config"]["Labels"] == {"org.example.k": "v"}


def test_output_bare_path_means_local(bk: Any) -> None:
    bk.write(FILES)
    out = bk.tmp / "plain-out"
    run = bk.cli("build", "--progress=quiet", "-o", str(out), str(bk.ctx))
    assert run.code == 0, run.stderr
    assert (out / "artifact").is_file()


def test_no_cache_and_no_cache_filter_flags(bk: Any) -> None:
    bk.write(FILES)
    assert bk.cli("build", "--progress=quiet", str(bk.ctx)).code == 0
    run = bk.cli("build", "--progress=plain", "--no-cache-filter", "builder", str(bk.ctx))
    assert run.code == 0, run.stderr
    steps = {lines[0]: lines[-1] for lines in _blocks(run.stderr).values()}
    assert steps[
        "[builder 6/6] RUN cat src/*.txt > /app/artifact && wc -l /app/artifact"
    ].startswith("DONE")
    assert steps["[stage-1 2/2] COPY --from=builder /app/artifact /artifact"] == "CACHED"
    run = bk.cli("build", "--progress=plain", "--no-cache", str(bk.ctx))
    assert run.code == 0, run.stderr
    steps = {lines[0]: lines[-1] for lines in _blocks(run.stderr).values()}
    assert steps['[builder 4/6] RUN echo "deps: $(cat requirements.txt)" > /deps'].startswith(
        "DONE"
    )


# -- cancellation -----------------------------------------------------------------------------


def test_sigterm_cancels_a_running_step_and_the_store_stays_usable(bk: Any) -> None:
    bk.write({"Dockerfile": "FROM busybox\nRUN echo started && sleep 300\n"})
    env = {**os.environ, "NBBUILD_ROOT": str(bk.root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbbuild", "build", "--progress=plain", str(bk.ctx)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(bk.tmp),
    )
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if line.rstrip().endswith(" started"):
            break
    else:
        proc.wait()
        raise AssertionError("the step never started:\n" + "".join(seen))
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert code == 130, "".join(seen) + rest
    assert "build canceled" in rest
    assert "Traceback" not in rest
    # the store is consistent: the next build runs the step again (nothing half-saved)
    bk.write({"Dockerfile": "FROM busybox\nRUN echo started && sleep 0\n"})
    after = bk.cli("build", "--progress=plain", str(bk.ctx))
    assert after.code == 0, after.stderr
    check = bk.cli("cache", "check")
    assert check.code == 0, check.stdout + check.stderr


def test_output_to_stdout_is_only_the_archive_even_when_quiet(bk: Any) -> None:
    bk.write(FILES)
    as_file = bk.tmp / "fs.tar"
    assert (
        bk.cli(
            "build",
            "--progress=quiet",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
            "-o",
            f"type=tar,dest={as_file}",
            str(bk.ctx),
        ).code
        == 0
    )
    env = {**os.environ, "NBBUILD_ROOT": str(bk.root)}
    for flag in ("-q", "--progress=plain"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "nbbuild",
                "build",
                flag,
                "--build-arg",
                "SOURCE_DATE_EPOCH=1700000000",
                "-o",
                "type=tar,dest=-",
                str(bk.ctx),
            ],
            capture_output=True,
            env=env,
            cwd=str(bk.tmp),
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == as_file.read_bytes(), flag  # nothing but the tar on stdout
    docker = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbbuild",
            "build",
            "-q",
            "-t",
            "std:1",
            "-o",
            "type=docker,dest=-",
            str(bk.ctx),
        ],
        capture_output=True,
        env=env,
        cwd=str(bk.tmp),
    )
    assert docker.returncode == 0, docker.stderr
    image_id = docker.stderr.decode().strip()
    assert IMAGE_ID.match(image_id)  # quiet's ID moved to stderr
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(docker.stdout)) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest[0]["Config"] == "blobs/sha256/" + image_id.split(":")[1]
    assert docker.stdout.endswith(b"\0" * 1024)
