"""Real containers with crun (and one runc check) over overlays of a busybox rootfs."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from engine.executor import (
    Mount,
    OciExecutor,
    ProcessSpec,
    SandboxError,
    UserLookupError,
    find_runtime,
)
from engine.snapshot import ChangeKind, is_whiteout, read_diff

from .conftest import Sandbox, host_overlay_mounts


def test_echo_output_is_captured(sandbox: Sandbox) -> None:
    run = sandbox.sh("echo hi; echo oops >&2")
    assert run.result.exit_code == 0 and run.result.ok
    assert run.stdout == "hi\n"
    assert run.stderr == "oops\n"


@pytest.mark.parametrize("code", [1, 3, 42, 255])
def test_exit_code_propagates(sandbox: Sandbox, code: int) -> None:
    run = sandbox.sh(f"exit {code}")
    assert run.result.exit_code == code
    assert not run.result.ok and not run.result.cancelled


def test_killed_by_signal_is_128_plus_signal(sandbox: Sandbox) -> None:
    # a child killed by SIGKILL: the shell (PID 1) reports 137 like Docker does
    assert sandbox.sh("sh -c 'kill -9 $$'; exit $?").result.exit_code == 137


def test_env_and_default_path_and_home(sandbox: Sandbox) -> None:
    run = sandbox.sh('echo "$FOO|$PATH|$HOME"', env=("FOO=bar baz",))
    assert (
        run.stdout == "bar baz|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|/root\n"
    )
    run = sandbox.sh('echo "$PATH|$HOME"', env=("PATH=/bin", "HOME=/h"))
    assert run.stdout == "/bin|/h\n"


def test_cwd_is_created_and_used(sandbox: Sandbox) -> None:
    run = sandbox.sh("pwd", cwd="/work/dir")
    assert run.stdout == "/work/dir\n"
    # WORKDIR dirs are part of the step's diff, as in BuildKit
    assert (run.overlay.upper / "work" / "dir").is_dir()


def test_user_by_name(sandbox: Sandbox) -> None:
    run = sandbox.sh('id -u; id -g; echo "$HOME"', user="nobody")
    assert run.stdout == "65534\n65534\n/nonexistent\n"


def test_user_numeric_uid_gid(sandbox: Sandbox) -> None:
    run = sandbox.sh('id -u; id -g; echo "$HOME"', user="1000:1001")
    assert run.stdout == "1000\n1001\n/\n"


def test_non_root_user_has_no_capabilities(sandbox: Sandbox) -> None:
    run = sandbox.sh("grep CapEff /proc/self/status; touch /root/x", user="nobody")
    assert "CapEff:\t0000000000000000" in run.stdout
    assert run.result.exit_code != 0  # /root is 0700: nobody cannot write there


def test_unknown_user_is_an_error(sandbox: Sandbox) -> None:
    with pytest.raises(UserLookupError, match="nosuchuser"):
        sandbox.sh("true", user="nosuchuser")


def test_hostname(sandbox: Sandbox) -> None:
    assert sandbox.sh("hostname").stdout == "buildkitsandbox\n"


def test_hosts_and_resolv_conf_are_mounted_not_committed(sandbox: Sandbox) -> None:
    run = sandbox.sh("cat /etc/hosts; cat /etc/resolv.conf")
    assert "127.0.0.1\tlocalhost buildkitsandbox" in run.stdout
    assert "nameserver" in run.stdout
    upper = run.overlay.upper
    assert not (upper / "etc" / "hosts").exists()
    assert not (upper / "etc" / "resolv.conf").exists()
    paths = {c.path for c in read_diff(upper, run.overlay.lowers)}
    assert "/etc/hosts" not in paths and "/etc/resolv.conf" not in paths


def test_hosts_is_read_only(sandbox: Sandbox) -> None:
    run = sandbox.sh("echo x >> /etc/hosts")
    assert run.result.exit_code != 0


def test_write_lands_in_upper_not_lower(sandbox: Sandbox, busybox_rootfs: Path) -> None:
    run = sandbox.sh("echo data > /x")
    assert run.result.ok
    assert (run.overlay.upper / "x").read_text() == "data\n"
    assert not (busybox_rootfs / "x").exists()
    assert any(c.path == "/x" and c.kind is ChangeKind.ADDED for c in read_diff(run.overlay.upper))


def test_delete_of_lower_file_is_a_whiteout(sandbox: Sandbox, busybox_rootfs: Path) -> None:
    run = sandbox.sh("rm /etc/group && test ! -e /etc/group")
    assert run.result.ok
    assert is_whiteout(os.lstat(run.overlay.upper / "etc" / "group"))
    assert (busybox_rootfs / "etc" / "group").exists()
    changes = {c.path: c.kind for c in read_diff(run.overlay.upper, run.overlay.lowers)}
    assert changes["/etc/group"] is ChangeKind.DELETED


def test_layer_chain_is_stacked(sandbox: Sandbox) -> None:
    first = sandbox.sh("echo one > /a; echo keep > /b")
    second = sandbox.sh(
        "cat /a /b; rm /b; echo two > /a", overlay=sandbox.overlay(first.overlay.upper)
    )
    assert second.stdout == "one\nkeep\n"
    third = sandbox.sh(
        "cat /a; test ! -e /b && echo gone",
        overlay=sandbox.overlay(first.overlay.upper, second.overlay.upper),
    )
    assert third.stdout == "two\ngone\n"


def test_network_none_has_only_lo(sandbox: Sandbox) -> None:
    assert sandbox.sh("ls /sys/class/net", network="none").stdout.split() == ["lo"]


def test_network_default_is_the_host_namespace(sandbox: Sandbox) -> None:
    inside = sandbox.sh("ls /sys/class/net", network="default").stdout.split()
    assert sorted(inside) == sorted(os.listdir("/sys/class/net"))


@pytest.mark.parametrize("fd", range(3, 9))
def test_workdir_proc_self_fd_cannot_reach_host(sandbox: Sandbox, fd: int) -> None:
    # CVE-2024-21626: a leaked host fd as cwd let `../../..` walk the host's filesystem
    host = Path("/etc/hostname").read_text() if Path("/etc/hostname").exists() else None
    try:
        run = sandbox.sh("cat ../../../../etc/hostname; ls ../../../../", cwd=f"/proc/self/fd/{fd}")
    except SandboxError:
        return  # refusing to start is a pass
    if host is not None:
        assert host not in run.stdout
    assert "boot" not in run.stdout.split()  # the busybox rootfs has no /boot; the host does


def test_cancel_kills_sleep_quickly_and_leaves_no_mounts(sandbox: Sandbox) -> None:
    cancel = threading.Event()
    overlay = sandbox.overlay()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    start = time.monotonic()
    result = sandbox.executor.run(ProcessSpec(("sleep", "100")), overlay, cancel=cancel)
    elapsed = time.monotonic() - start
    timer.cancel()
    assert result.cancelled and not result.ok
    assert elapsed < 3.0
    assert not [m for m in host_overlay_mounts() if str(overlay.upper) in m]
    sandbox.executor.drain()  # bundles are removed off the step's path
    assert not list((sandbox.executor.state_dir / "bundles").iterdir())
    assert not list(sandbox.executor.state_dir.glob("state-*/nbbuild-*"))


def test_cancel_of_process_ignoring_signals(sandbox: Sandbox) -> None:
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    start = time.monotonic()
    result = sandbox.executor.run(
        ProcessSpec(("sh", "-c", "trap '' INT TERM; while :; do sleep 1; done")),
        sandbox.overlay(),
        cancel=cancel,
    )
    assert result.cancelled
    assert time.monotonic() - start < 3.0


def test_no_overlay_mount_visible_on_host_during_run(sandbox: Sandbox) -> None:
    overlay = sandbox.overlay()
    seen: list[list[str]] = []

    def look(_: bytes) -> None:
        seen.append([m for m in host_overlay_mounts() if str(overlay.upper) in m])

    result = sandbox.executor.run(ProcessSpec(("echo", "x")), overlay, stdout=look)
    assert result.ok and seen == [[]]


def test_extra_bind_mount_is_read_only_and_its_stub_removed(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("from host\n")
    overlay = sandbox.overlay()
    out: list[bytes] = []
    result = sandbox.executor.run(
        ProcessSpec(
            ("sh", "-c", "cat /mnt/data/f; touch /mnt/data/g"), mounts=(Mount("/mnt/data", src),)
        ),
        overlay,
        stdout=out.append,
    )
    assert b"from host" in b"".join(out)
    assert result.exit_code != 0  # read-only
    assert not (src / "g").exists()
    assert not (overlay.upper / "mnt" / "data").exists()


def test_missing_executable_is_a_sandbox_error(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match="nosuchcmd"):
        sandbox.executor.run(ProcessSpec(("nosuchcmd",)), sandbox.overlay())


def test_plain_directory_rootfs(sandbox: Sandbox, busybox_rootfs: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "plain"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    result = sandbox.executor.run(ProcessSpec(("sh", "-c", "echo y > /y")), root)
    assert result.ok
    assert (root / "y").read_text() == "y\n"
    assert not (root / "etc" / "hosts").exists()


def test_runc_runs_the_same_spec(busybox_rootfs: Path, tmp_path: Path, state_dir: Path) -> None:
    from engine.snapshot import OverlayMount

    executor = OciExecutor(find_runtime(("runc",)), state_dir=state_dir)
    overlay = OverlayMount((busybox_rootfs,), tmp_path / "u", tmp_path / "w")
    out: list[bytes] = []
    result = executor.run(
        ProcessSpec(("sh", "-c", "hostname; id -u"), user="nobody", network="none"),
        overlay,
        stdout=out.append,
    )
    assert result.ok
    assert b"".join(out) == b"buildkitsandbox\n65534\n"
    assert not (overlay.upper / "etc" / "hosts").exists()


# -- supervision from the step's own thread (no reader or watcher threads) -------------------


def test_large_interleaved_output_is_delivered_whole(sandbox: Sandbox) -> None:
    # more than a pipe buffer on each stream, written in turns: neither pipe may stall
    run = sandbox.sh(
        "i=0; while [ $i -lt 2000 ]; do "
        'echo "out $i ................................................................"; '
        'echo "err $i ................................................................" >&2; '
        "i=$((i+1)); done"
    )
    assert run.result.ok
    assert run.stdout.splitlines() == [f"out {i} " + "." * 64 for i in range(2000)]
    assert run.stderr.splitlines() == [f"err {i} " + "." * 64 for i in range(2000)]


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "no-pidfd"])
def test_step_that_closes_its_pipes_early_is_waited_for(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, pidfd: bool
) -> None:
    if not pidfd:
        monkeypatch.setattr("engine.executor.oci._pidfd_open", lambda pid: None)
    start = time.monotonic()
    run = sandbox.sh("echo before; exec >&- 2>&-; sleep 0.4; touch /done; exit 7")
    assert run.result.exit_code == 7
    assert run.stdout == "before\n"
    assert time.monotonic() - start >= 0.4
    assert (run.overlay.upper / "done").exists()


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "no-pidfd"])
def test_cancel_after_the_pipes_closed(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, pidfd: bool
) -> None:
    if not pidfd:
        monkeypatch.setattr("engine.executor.oci._pidfd_open", lambda pid: None)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    start = time.monotonic()
    result = sandbox.executor.run(
        ProcessSpec(("sh", "-c", "exec >&- 2>&-; sleep 100")), sandbox.overlay(), cancel=cancel
    )
    assert result.cancelled and not result.ok
    assert time.monotonic() - start < 3.0


def test_no_thread_is_started_for_a_step(sandbox: Sandbox) -> None:
    cancel = threading.Event()
    sandbox.sh("true")  # the executor's own one-time set-up (background removals) done
    before = threading.active_count()
    seen: list[int] = []
    result = sandbox.executor.run(
        ProcessSpec(("sh", "-c", "echo a; sleep 0.2; echo b >&2")),
        sandbox.overlay(),
        stdout=lambda _: seen.append(threading.active_count()),
        stderr=lambda _: seen.append(threading.active_count()),
        cancel=cancel,
    )
    assert result.ok
    assert seen and max(seen) <= before


def test_the_steps_overlay_is_volatile_where_the_kernel_has_it(sandbox: Sandbox) -> None:
    # no sync of the whole upper filesystem when the step's mount goes away: the store's
    # commit flushes it (syncfs) before a row names the diff; a volatile mount marks its work dir
    from engine.snapshot.overlay import volatile_supported

    run = sandbox.sh("echo x > /f; sync")
    assert run.result.ok and (run.overlay.upper / "f").read_text() == "x\n"
    marked = (run.overlay.work / "work" / "incompat" / "volatile").exists()
    assert marked is volatile_supported()
