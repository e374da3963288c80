"""The degraded worker's executor: steps under PRoot over a plain busybox rootfs.

PRoot works as root too, so these run in the root suite (the whole degraded worker, as a normal
user where user namespaces are refused, is tested in tests/engine/userns/test_no_userns.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.executor.errors import SandboxError
from engine.executor.process import ExitResult, Mount, ProcessSpec
from engine.executor.proot import ProotExecutor
from engine.snapshot.overlay import OverlayMount
from engine.userns.errors import DegradedUnsupported

from .conftest import SCRIPT, ensure_packages


@dataclass
class Ran:
    result: ExitResult
    stdout: str
    stderr: str


@dataclass
class Box:
    """A fresh busybox rootfs (in its own directory, as a step's copy is) and an executor."""

    rootfs: Path
    executor: ProotExecutor

    def run(self, *args: str, cancel: threading.Event | None = None, **spec: object) -> Ran:
        out: list[bytes] = []
        err: list[bytes] = []
        result = self.executor.run(
            ProcessSpec(args=args, **spec),  # type: ignore[arg-type]
            self.rootfs,
            stdout=out.append,
            stderr=err.append,
            cancel=cancel,
        )
        return Ran(result, b"".join(out).decode(), b"".join(err).decode())

    def sh(self, script: str, **spec: object) -> Ran:
        return self.run("/bin/sh", "-c", script, **spec)


def _processes_naming(path: Path) -> list[str]:
    """Live processes whose command line names ``path`` (PRoot's does: ``-r ROOTFS``)."""
    needle = str(path).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            state = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state not in (b"Z", b"X"):
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{name}: {argv}")
    return found


def _sleepers(marker: str) -> list[int]:
    """Pids of live processes whose command line holds ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            state = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


@pytest.fixture
def box(tmp_path: Path) -> Box:
    ensure_packages("proot", "busybox-static")
    step = tmp_path / "step"
    step.mkdir()
    rootfs = step / "rootfs"
    made = subprocess.run(["bash", str(SCRIPT), str(rootfs)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    (rootfs / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        "app:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\napp:x:1000:\n")
    return Box(rootfs, ProotExecutor(grace=0.3))


def test_output_exit_code_and_a_clean_environment(box: Box) -> None:
    ran = box.sh("echo out; echo err >&2; env | sort; exit 3", env=("FOO=bar", "EMPTY="))
    assert ran.result.exit_code == 3 and not ran.result.cancelled
    lines = ran.stdout.splitlines()
    assert lines[0] == "out"
    env = dict(line.split("=", 1) for line in lines[1:])
    # exactly the spec's environment, PATH and HOME defaulted as the OCI bundle does; PRoot
    # adds PWD (and busybox's sh SHLVL); nothing of this test process leaks in
    assert env.pop("PWD") == "/" and env.pop("SHLVL") == "1"
    assert env == {
        "FOO": "bar",
        "EMPTY": "",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
    }
    assert ran.stderr == "err\n"


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_codes(box: Box, code: int) -> None:
    assert box.sh(f"exit {code}").result.exit_code == code


def test_a_main_process_killed_by_a_signal_is_128_plus_it(box: Box) -> None:
    # /bin/true exits normally first: PRoot's own status would be its 0
    ran = box.sh("/bin/true; kill -9 $$")
    assert ran.result.exit_code == 137
    assert not ran.result.ok


def test_a_failing_step_that_leaves_a_background_child_fails(box: Box) -> None:
    # PRoot's own status is the last process's: the child's 0 here
    ran = box.sh("(sleep 0.3; exit 0) & exit 3")
    assert ran.result.exit_code == 3


def test_the_step_ends_with_its_main_process(box: Box) -> None:
    """What the main process leaves running is killed when it exits (``--kill-on-exit``),
    and the exit status is the main process's, not the last one's."""
    marker = "4242.5"
    started = time.monotonic()
    ran = box.sh(f"sleep {marker} & sleep {marker} & exit 7")
    assert ran.result.exit_code == 7
    assert time.monotonic() - started < 10
    assert _sleepers(marker) == []
    assert _processes_naming(box.rootfs) == []


def test_a_main_process_that_was_not_seen_still_ends_the_step(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A main process may exit before the executor sees it (a loaded machine): PRoot still
    tracing only orphans says it has gone, and the step ends all the same, with PRoot's own
    status (the main process's: the others die by SIGKILL, which PRoot does not count)."""
    import engine.executor.proot as proot_module

    monkeypatch.setattr(proot_module, "_first_child", lambda pid: None)
    marker = "4245.5"
    started = time.monotonic()
    ran = box.sh(f"sleep {marker} & exit 9")
    assert ran.result.exit_code == 9
    assert time.monotonic() - started < 10
    assert _sleepers(marker) == []


def test_without_pidfd_exit_information_the_status_is_proots(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels before 6.15 keep no exit status for a pidfd: PRoot's is used."""
    import engine.executor.proot as proot_module

    monkeypatch.setattr(proot_module, "_exit_status", lambda fd: None)
    assert box.sh("exit 5").result.exit_code == 5
    assert box.sh("sleep 4246.5 & exit 6").result.exit_code == 6
    assert _sleepers("4246.5") == []


def test_working_directory_is_made_in_the_rootfs(box: Box) -> None:
    os.symlink("/srv", box.rootfs / "link")
    ran = box.sh("pwd > here", cwd="/link/app/sub")
    assert ran.result.exit_code == 0, ran.stderr
    made = box.rootfs / "srv" / "app" / "sub"
    assert made.is_dir() and (made / "here").read_text() == "/srv/app/sub\n"
    assert (made.stat().st_mode & 0o777) == 0o755
    # never outside the rootfs, even through ".." and absolute links
    os.symlink("../../../../..", box.rootfs / "up")
    assert box.sh("pwd", cwd="/up/escaped").result.exit_code == 0
    assert (box.rootfs / "escaped").is_dir()
    (box.rootfs / "file").write_text("x")
    with pytest.raises(SandboxError, match="not a directory"):
        box.sh("true", cwd="/file/sub")


def test_user_is_what_the_step_sees(box: Box) -> None:
    ran = box.sh("id -u; id -g; echo $HOME; ls -ln /bin/busybox", user="app")
    uid, gid, home, listing = ran.stdout.splitlines()
    assert (uid, gid, home) == ("1000", "1000", "/home/app")
    # the runner's files appear as the step user's (proot -i)
    assert listing.split()[2:4] == ["1000", "1000"]
    assert box.sh("id -u", user="65534:65534").stdout == "65534\n"
    root = box.sh("id -u; id -g; touch /f; chown 1000:1000 /f && echo chowned")
    assert root.stdout.splitlines() == ["0", "0", "chowned"]
    if os.geteuid() != 0:
        # faked by proot -0: nothing changed on disk (as real root the chown is real)
        assert (box.rootfs / "f").stat().st_uid == os.getuid()


def test_sandbox_files_are_the_steps_own(box: Box) -> None:
    ran = box.sh(
        "cat /etc/hosts; cat /etc/resolv.conf > /dev/null && echo resolv; "
        "echo x > /etc/hosts || echo hosts-ro; echo y > /dev/null && echo null-ok; "
        "echo z > /dev/shm/z && echo shm-ok; echo w > /dev/made && echo dev-ok; "
        "test -c /dev/zero && echo zero; readlink /dev/fd; echo data > /made-here"
    )
    assert ran.result.exit_code == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost buildkitsandbox"
    for word in ("resolv", "null-ok", "shm-ok", "dev-ok", "zero", "/proc/self/fd"):
        assert word in lines, (word, lines)
    # whatever a step wrote into /etc/hosts (proot -0 may write a 0444 file) was a scratch
    # copy: the next step has BuildKit's again
    assert box.sh("cat /etc/hosts").stdout.startswith("127.0.0.1\tlocalhost buildkitsandbox\n")
    # the step's writes land in its rootfs, the sandbox's (/dev, /etc/hosts) do not
    assert (box.rootfs / "made-here").read_text() == "data\n"
    assert not (box.rootfs / "dev").exists() and not (box.rootfs / "etc" / "hosts").exists()
    # the scratch directory beside the rootfs is gone
    assert sorted(p.name for p in box.rootfs.parent.iterdir()) == ["rootfs"]


def test_read_only_mounts_are_copies(box: Box, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "script").write_text("echo from-mount\n")
    ran = box.sh(
        "sh /mnt/in/script; echo changed > /mnt/in/script; cat /mnt/in/script",
        mounts=(Mount("/mnt/in", source),),
    )
    assert ran.stdout == "from-mount\nchanged\n", ran.stderr
    assert (source / "script").read_text() == "echo from-mount\n"


def test_what_proot_cannot_do_is_refused(box: Box, tmp_path: Path) -> None:
    with pytest.raises(DegradedUnsupported, match="--network=none cannot be isolated"):
        box.sh("true", network="none")
    with pytest.raises(DegradedUnsupported, match="--security=insecure"):
        box.sh("true", privileged=True)
    overlay = OverlayMount((box.rootfs,), tmp_path / "upper", tmp_path / "work")
    with pytest.raises(SandboxError, match="copy of their layers"):
        box.executor.run(ProcessSpec(args=("true",)), overlay)
    with pytest.raises(SandboxError, match="'no-such-program' not found"):
        box.run("no-such-program")
    # host networking is what default and host give
    assert box.sh("true", network="host").result.exit_code == 0


def test_cancel_is_a_ladder_and_leaves_nothing(box: Box) -> None:
    cancel = threading.Event()
    marker = "4243.5"
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    started = time.monotonic()
    ran = box.sh(f"trap '' INT TERM; setsid sleep {marker} & sleep {marker}", cancel=cancel)
    elapsed = time.monotonic() - started
    assert ran.result.cancelled and not ran.result.ok
    assert elapsed < 10, elapsed
    # the session's processes and the one that left it (setsid) are gone: PRoot killed its
    # tracees before it exited
    assert _sleepers(marker) == []
    assert _processes_naming(box.rootfs) == []


def test_an_interrupt_ends_the_step_too(box: Box) -> None:
    """A BaseException in the supervising thread (Ctrl-C) ends the step before it leaves."""

    class Interrupt(BaseException):
        pass

    class Exploding(threading.Event):
        def __init__(self, after: float) -> None:
            super().__init__()
            self.at = time.monotonic() + after

        def is_set(self) -> bool:
            if time.monotonic() >= self.at:
                raise Interrupt
            return False

    marker = "4244.5"
    with pytest.raises(Interrupt):
        box.sh(f"trap '' INT TERM; sleep {marker}", cancel=Exploding(0.3))
    assert _sleepers(marker) == []
    assert _processes_naming(box.rootfs) == []


def test_the_banner_comes_once(box: Box) -> None:
    executor = ProotExecutor(banner="nbbuild: warning: degraded\n")
    seen: list[bytes] = []
    for _ in range(2):
        executor.run(ProcessSpec(args=("true",)), box.rootfs, stderr=seen.append)
    assert b"".join(seen) == b"nbbuild: warning: degraded\n"


def test_needs_proot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    from engine.executor.errors import CapabilityError

    with pytest.raises(CapabilityError, match="apt-get install proot"):
        ProotExecutor()
