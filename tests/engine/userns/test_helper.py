"""The helper process that runs engine calls inside a user namespace for a caller with threads.

Real processes, real namespaces and real builds: as root (CI's first run) the helper maps root
to root alone; as a normal user (the rootless runs of ``make test``) it maps the user and its
subordinate range. Either way the caller stays where it is and the call runs inside.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.build import BuildRequest, OutputSpec
from engine.errors import BuildCanceled, DockerfileError, StepFailed
from engine.events import ListReporter
from engine.userns import UsernsUnavailable, current_mapping, enter, mode
from engine.userns.helper import Helper, call

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def helper() -> Iterator[Helper]:
    h = Helper()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def busybox_store(tmp_path_factory: pytest.TempPathFactory, helper: Helper) -> Path:
    work = tmp_path_factory.mktemp("busybox")
    tar = work / "busybox.tar"
    subprocess.run(
        ["bash", str(REPO / "scripts" / "busybox-rootfs.sh"), str(work / "rootfs"), str(tar)],
        check=True,
        capture_output=True,
    )
    root = work / "store"
    code = helper.call(
        "nbbuild.cli:main",
        (["image", "import", "--root", str(root), str(tar), "busybox:latest"],),
        {},
        capture=True,
    )
    assert code == 0
    return root


def test_the_call_runs_inside_a_namespace_and_the_caller_stays_outside(helper: Helper) -> None:
    assert helper.call("engine.userns.namespace:mode", (), {}) == "inside"
    inside = helper.call("engine.userns.namespace:current", (), {})
    assert inside == current_mapping()
    assert mode() in ("root", "outside")  # this process never moved


def test_working_directory_and_environment_are_the_callers_at_call_time(
    helper: Helper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NBBUILD_TEST_HELPER", "set after the helper started")
    assert helper.call("os:getcwd", (), {}) == str(tmp_path)
    assert helper.call("os:getenv", ("NBBUILD_TEST_HELPER",), {}) == "set after the helper started"


def test_errors_come_back_with_their_class_and_attributes(helper: Helper, tmp_path: Path) -> None:
    request = BuildRequest(dockerfile="FROM scratch\nRUNN true\n", context=tmp_path)
    with pytest.raises(DockerfileError) as info:
        helper.call("engine.build:build", (request,), {"root": tmp_path / "store"})
    assert info.value.line == 2
    assert info.value.suggestion == "RUN"
    assert "unknown instruction" in str(info.value)


def test_a_build_inside_reports_every_event_here_and_writes_outputs_as_the_caller(
    helper: Helper, tmp_path: Path
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hi\n")
    out = tmp_path / "out.tar"
    request = BuildRequest(
        dockerfile="FROM scratch\nCOPY --chmod=640 hello.txt /srv/\n",
        context=ctx,
        outputs=(OutputSpec("tar", str(out)),),
    )
    reporter = ListReporter()
    result = helper.call(
        "engine.build:build", (request,), {"root": tmp_path / "store"}, reporter=reporter
    )
    kinds = [type(e).__name__ for e in reporter.events]
    assert kinds[0] == "BuildStarted" and kinds[-1] == "BuildFinished"
    assert [s.status for s in result.steps if s.step is not None] == ["executed"]
    # the worker is reported: crun first in a user namespace too, with the mapping
    assert result.worker == f"oci: crun, rootless ({current_mapping().describe()})"
    # the tar was written inside the namespace, as the caller's own file
    assert out.stat().st_uid == os.getuid()
    with tarfile.open(out) as tar:
        member = tar.getmember("srv/hello.txt")
    assert (member.uid, member.gid, member.mode) == (0, 0, 0o640)


def test_cancel_reaches_a_running_step_and_the_helper_stays_usable(
    helper: Helper, busybox_store: Path, tmp_path: Path
) -> None:
    request = BuildRequest(dockerfile="FROM busybox\nRUN sleep 60\n", context=tmp_path)
    cancel = threading.Event()

    class CancelWhenRunning(ListReporter):
        def emit(self, event: object) -> None:
            super().emit(event)  # type: ignore[arg-type]
            if getattr(event, "status", None) == "running" and "sleep" in str(
                getattr(event, "name", "")
            ):
                cancel.set()

    started = time.monotonic()
    with pytest.raises(BuildCanceled):
        helper.call(
            "engine.build:build",
            (request,),
            {"root": busybox_store},
            reporter=CancelWhenRunning(),
            cancel=cancel,
        )
    assert time.monotonic() - started < 30
    assert helper.alive
    assert helper.call("engine.userns.namespace:mode", (), {}) == "inside"


def test_callbacks_are_called_here_with_what_the_helper_passed(
    helper: Helper, busybox_store: Path
) -> None:
    chunks: list[tuple[int, bytes]] = []
    result = helper.call(
        "engine.run:run_image_at",
        (busybox_store, "busybox", ["sh", "-c", "echo out; echo err >&2"]),
        {"on_output": lambda fd, data: chunks.append((fd, data))},
    )
    assert result.exit_code == 0
    assert b"".join(d for fd, d in chunks if fd == 1) == b"out\n"
    assert b"".join(d for fd, d in chunks if fd == 2) == b"err\n"


def test_the_pool_runs_two_calls_at_once_in_two_helpers(busybox_store: Path) -> None:
    results: list[float] = []

    def one() -> None:
        started = time.monotonic()
        r = call("engine.run:run_image_at", busybox_store, "busybox", ["sleep", "2"])
        assert r.exit_code == 0
        results.append(time.monotonic() - started)

    threads = [threading.Thread(target=one) for _ in range(2)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    # side by side, not one after the other (each helper's first start costs an interpreter)
    assert time.monotonic() - started < 2 * 2 + 3


def test_a_helper_dies_with_its_caller(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from engine.userns.helper import Helper\n"
        "h = Helper()\n"
        "print(h.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.strip())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)


def test_a_process_with_threads_cannot_enter_in_process() -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with pytest.raises(UsernsUnavailable, match="threads"):
            enter(current_mapping())
    finally:
        stop.set()
        t.join()
    assert mode() in ("root", "outside")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def test_steps_that_need_other_ids_say_what_is_missing_when_only_one_id_is_mapped(
    helper: Helper, busybox_store: Path, tmp_path: Path
) -> None:
    """As root the helper maps root alone (like a user without a subordinate range); as a user
    with a range, the same steps work."""
    chown = BuildRequest(
        dockerfile="FROM busybox\nRUN touch /f && chown 1000:1000 /f\n", context=tmp_path
    )
    user = BuildRequest(dockerfile="FROM busybox\nUSER 1000\nRUN id -u\n", context=tmp_path)
    if helper.mapping.single:
        with pytest.raises(StepFailed) as failed:
            helper.call("engine.build:build", (chown,), {"root": busybox_store})
        assert failed.value.exit_code == 1
        assert "Invalid argument" in "\n".join(failed.value.logs)
        assert "maps only your own ID" in str(failed.value) and "uidmap" in str(failed.value)
        with pytest.raises(StepFailed, match=r"RUN id -u.*USER 1000 runs as uid 1000.*uidmap"):
            helper.call("engine.build:build", (user,), {"root": busybox_store})
    else:
        for request in (chown, user):
            result = helper.call("engine.build:build", (request,), {"root": busybox_store})
            assert result.steps[-1].status == "executed"
