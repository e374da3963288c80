"""The ``nbbuild`` command through a warm server (nbbuild/client.py, nbbuild/server.py).

Real processes throughout: ``python -m nbbuild`` (the console script's path), a real server
started by the first command, real builds with crun into real stores. Each test has a server
directory of its own (``NBBUILD_SERVER_DIR``) and stops its servers at the end.

What must hold: the first command runs in its own process and starts a server; later commands
run in a child of that server, and nothing a caller can see differs from running in-process
(exit codes, output, the working directory, environment, stdin and any other inherited
descriptor); signals reach the command; a command killed with SIGKILL takes its build with it;
a stale, foreign or unusable server is never used and never an error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import mmap
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from nbbuild import client, server


def _helper() -> ModuleType:
    name = "nbbuild_tests_whole_build"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "engine" / "whole_build.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


wb = _helper()

DOCKERFILE = """\
FROM busybox
COPY hello.txt /hello.txt
RUN cat /hello.txt > /copied
"""
SLEEPY = """\
FROM busybox
ARG NAP=30
RUN sleep $NAP && echo slept > /slept
"""


@pytest.fixture(scope="module")
def tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = wb.busybox_tar(tmp_path_factory.mktemp("server-base"))
    return path


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Path]:
    """A server directory of this test's own (short: a socket path has at most 107 bytes)."""
    directory = Path(os.environ["NBBUILD_SERVER_DIR"]) / tmp_path.name[-20:]
    directory.mkdir(mode=0o700)
    try:
        yield directory
    finally:
        server.stop(str(directory))


def env_for(directory: Path, root: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "NBBUILD_SERVER_DIR": str(directory), "NBBUILD_ROOT": str(root)}
    env.pop("NBBUILD_SERVER", None)
    env.pop("BUILDKIT_PROGRESS", None)
    env.update(extra)
    return env


def nbbuild(
    *args: str | Path, env: dict[str, str], cwd: Path | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-m", "nbbuild", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or wb.REPO,
        timeout=120,
        **kw,
    )


def started(*args: str | Path, env: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    """``nbbuild ARGS`` started, not waited for (output discarded unless ``kw`` says)."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-m", "nbbuild", *map(str, args)],
        env=env,
        cwd=wb.REPO,
        text=True,
        **kw,
    )


def running(directory: Path) -> list[server.ServerInfo]:
    return server.servers(str(directory))


def warm(directory: Path, env: dict[str, str]) -> server.ServerInfo:
    """Run commands until one has started a server, and wait until it listens."""
    nbbuild("image", "ls", env=env)
    assert wb.wait_for(lambda: len(running(directory)) == 1, timeout=60.0), running(directory)
    sockets = list(directory.glob("*.sock"))
    assert wb.wait_for(lambda: bool(list(directory.glob("*.sock"))), timeout=60.0), sockets
    info = running(directory)[0]
    return info


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def test_the_first_command_starts_a_server_and_the_next_runs_in_its_child(
    servers: Path, tar: Path, tmp_path: Path
) -> None:
    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root)
    first = nbbuild("image", "ls", env=env)
    assert first.returncode == 0, first.stderr
    info = warm(servers, env)
    # A build with a step that waits: while it runs, the engine is a child of the server,
    # and the command's own process has no child at all.
    ctx = wb.write_files(tmp_path / "ctx", {"Dockerfile": SLEEPY})
    run = started(
        "build", "--progress=plain", ctx, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wb.wait_for_container(root, ("sleep", "30"), alive=lambda: run.poll() is None)
        engine = wb.engine_of(root)
        assert engine != run.pid
        assert engine in children_of(info.pid)
        assert children_of(run.pid) == []
        run.send_signal(signal.SIGINT)  # Ctrl-C reaches the command: it cancels the build
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, err
    assert "error: build canceled" in err
    assert wb.wait_for(lambda: not wb.store_processes(root), timeout=10.0)
    assert wb.runtime_entries(engine) == []
    assert wb.live_leases(root) == 0


def test_commands_through_the_server_answer_as_they_do_in_process(
    servers: Path, tar: Path, tmp_path: Path
) -> None:
    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root)
    warm(servers, env)
    ctx = wb.write_files(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "hello.txt": "hi\n"})
    bad = wb.write_files(tmp_path / "bad", {"Dockerfile": "FROM busybox\nRUNN echo\n"})
    failing = wb.write_files(tmp_path / "failing", {"Dockerfile": "FROM busybox\nRUN exit 3\n"})
    commands: list[tuple[str | Path, ...]] = [
        ("--help",),
        ("build", "--help"),
        ("plan", "--format", "json", ctx),
        ("plan", bad),  # a Dockerfile error: exit 1, the line and a did-you-mean
        ("build", "--progress=quiet", "-t", "same", ctx),
        ("build", "--progress=quiet", failing),  # a failing RUN: exit 1, step and exit code
        ("image", "ls"),
        ("no-such-command",),  # argparse: exit 2
    ]
    for args in commands:
        served = nbbuild(*args, env=env)
        here = nbbuild(*args, env={**env, "NBBUILD_SERVER": "0"})
        if args[0] == "build" and "--progress=quiet" in args and here.returncode == 0:
            # an image's config records when it was built (as BuildKit's does): the IDs differ
            assert served.stdout.startswith("sha256:") and here.stdout.startswith("sha256:")
            served.stdout = here.stdout = "<image id>"
        assert (served.returncode, served.stdout, served.stderr) == (
            here.returncode,
            here.stdout,
            here.stderr,
        ), args
    assert nbbuild("plan", bad, env=env).returncode == 1
    assert "RUN" in nbbuild("plan", bad, env=env).stderr
    assert nbbuild("no-such-command", env=env).returncode == 2
    assert len(running(servers)) == 1  # all of them through one server
    assert running(servers)[0].last_error == ""  # and none fell back to running in-process


def test_the_child_has_the_commands_directory_environment_stdin_and_descriptors(
    servers: Path, tar: Path, tmp_path: Path
) -> None:
    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root)
    info = warm(servers, env)
    ctx = wb.write_files(tmp_path / "ctx", {"hello.txt": "hi\n"})
    # the working directory: a relative context; stdin: the Dockerfile (-f -)
    out = tmp_path / "out"
    proc = nbbuild(
        "build", "--progress=quiet", "-f", "-", "-o", f"type=local,dest={out}", ".",
        env=env, cwd=ctx, input=DOCKERFILE,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "copied").read_text() == "hi\n"
    # the environment of this command, not the server's: another store
    other = wb.new_store(tmp_path / "other", tar)
    proc = nbbuild("build", "--progress=quiet", "-t", "elsewhere", "-f", "-", ctx,
                   env=env_for(servers, other), input=DOCKERFILE)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "elsewhere" in nbbuild("image", "ls", env=env_for(servers, other)).stdout
    assert "elsewhere" not in nbbuild("image", "ls", env=env).stdout
    # a descriptor other than 0-2, by its number (bash's <(...) gives /dev/fd/63)
    read_end, write_end = os.pipe()
    os.write(write_end, DOCKERFILE.encode())
    os.close(write_end)
    try:
        proc = nbbuild(
            "build", "--progress=quiet", "-f", f"/dev/fd/{read_end}", "-o",
            f"type=local,dest={tmp_path / 'out2'}", ctx, env=env, pass_fds=(read_end,),
        )  # fmt: skip
    finally:
        os.close(read_end)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out2" / "copied").read_text() == "hi\n"
    # the umask: an output file the build makes is created under the command's umask
    proc = nbbuild(
        "build", "--progress=quiet", "--metadata-file", tmp_path / "meta.json", "-f", "-", ctx,
        env=env, input=DOCKERFILE, preexec_fn=lambda: os.umask(0o077),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "meta.json").stat().st_mode & 0o777 == 0o600
    assert [s.pid for s in running(servers)] == [info.pid]  # all served by the same server


def test_a_command_killed_with_sigkill_takes_its_build_with_it(
    servers: Path, tar: Path, tmp_path: Path
) -> None:
    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root)
    info = warm(servers, env)
    ctx = wb.write_files(tmp_path / "ctx", {"Dockerfile": SLEEPY})
    run = started("build", "--progress=plain", "-t", "nap", ctx, env=env)
    try:
        sleeper = wb.wait_for_container(root, ("sleep", "30"), alive=lambda: run.poll() is None)
        engine = wb.engine_of(root)
        assert engine in children_of(info.pid)
        run.kill()
        run.wait()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    from engine.store.leases import process_start_ticks

    # the engine, the runtime and the container are gone, nothing is mounted
    assert wb.wait_for(lambda: process_start_ticks(sleeper[0]) != sleeper[1], timeout=10.0)
    assert wb.wait_for(lambda: not wb.store_processes(root), timeout=10.0), wb.store_processes(root)
    assert wb.wait_for(lambda: engine not in children_of(info.pid), timeout=10.0)
    assert wb.host_mounts(root) == []
    # the next open sweeps the dead build's lease; the same build then succeeds
    wb.check_clean(root)
    assert wb.live_leases(root) == 0
    proc = nbbuild("build", "--progress=quiet", "--build-arg", "NAP=0", "-t", "nap", ctx, env=env)
    assert proc.returncode == 0, proc.stderr
    assert wb.runtime_entries(engine) == []
    assert [s.pid for s in running(servers)] == [info.pid]  # the server lives on


def test_a_command_ends_as_its_child_ended_even_by_a_signal(
    servers: Path, tar: Path, tmp_path: Path
) -> None:
    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root)
    info = warm(servers, env)
    ctx = wb.write_files(tmp_path / "ctx", {"Dockerfile": SLEEPY})
    run = started("build", "--progress=plain", ctx, env=env)
    try:
        wb.wait_for_container(root, ("sleep", "30"), alive=lambda: run.poll() is None)
        engine = wb.engine_of(root)
        os.kill(engine, signal.SIGKILL)  # the engine dies (as by the OOM killer)
        code = run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert code == -signal.SIGKILL
    assert wb.wait_for(lambda: not wb.store_processes(root), timeout=10.0)
    assert [s.pid for s in running(servers)] == [info.pid]


def test_a_command_with_a_low_descriptor_limit(servers: Path, tar: Path, tmp_path: Path) -> None:
    """The child lays the client's descriptors out within the client's own limit (a limit is
    part of the key: the server runs with the limit of the command that started it)."""
    import resource

    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root)

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    first = nbbuild("image", "ls", env=env, preexec_fn=low)
    assert first.returncode == 0, first.stderr
    assert wb.wait_for(lambda: bool(list(servers.glob("*.sock"))), timeout=60.0)
    for _ in range(3):
        proc = nbbuild("image", "ls", env=env, preexec_fn=low)
        assert (proc.returncode, proc.stdout) == (first.returncode, first.stdout), proc.stderr
    [info] = running(servers)
    assert info.last_error == ""
    ctx = wb.write_files(tmp_path / "ctx", {"Dockerfile": SLEEPY})
    run = started("build", "--progress=plain", ctx, env=env, preexec_fn=low)
    try:
        wb.wait_for_container(root, ("sleep", "30"), alive=lambda: run.poll() is None)
        assert wb.engine_of(root) in children_of(info.pid)  # it ran in the server's child
    finally:
        run.kill()
        run.wait()
    assert wb.wait_for(lambda: not wb.store_processes(root), timeout=10.0)


def test_another_key_gets_its_own_server_and_idle_servers_exit(
    servers: Path, tar: Path, tmp_path: Path
) -> None:
    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root, NBBUILD_SERVER_IDLE="3")
    first = warm(servers, env)
    # PYTHONHASHSEED changes how Python runs: not the same server
    other_env = {**env, "PYTHONHASHSEED": "7"}
    nbbuild("image", "ls", env=other_env)
    assert wb.wait_for(lambda: len(running(servers)) == 2, timeout=60.0), running(servers)
    assert first.pid in [s.pid for s in running(servers)]
    # with nothing to do they exit, and remove their sockets
    assert wb.wait_for(lambda: running(servers) == [], timeout=30.0), running(servers)
    assert list(servers.glob("*.sock")) == []


def test_stop_and_a_dead_servers_socket(servers: Path, tar: Path, tmp_path: Path) -> None:
    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root)
    info = warm(servers, env)
    stopped = nbbuild("server", "stop", env=env)
    assert stopped.returncode == 0
    assert f"stopped: pid {info.pid}" in stopped.stdout
    assert running(servers) == []
    assert "no server is running" in nbbuild("server", "status", env=env).stdout
    # a server killed outright leaves its socket behind: commands still work (here), and the
    # next server takes the name over
    info = warm(servers, env)
    os.kill(info.pid, signal.SIGKILL)
    assert wb.wait_for(lambda: running(servers) == [], timeout=10.0)
    assert list(servers.glob("*.sock"))  # stale
    proc = nbbuild("image", "ls", env=env)
    assert proc.returncode == 0, proc.stderr
    again = warm(servers, env)
    assert again.pid != info.pid
    assert nbbuild("image", "ls", env=env).returncode == 0


def test_a_server_directory_that_is_not_private_is_not_used(
    servers: Path, tar: Path, tmp_path: Path
) -> None:
    root = wb.new_store(tmp_path / "store", tar)
    shared = servers / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    env = env_for(shared, root)
    for _ in range(2):
        proc = nbbuild("image", "ls", env=env)
        assert proc.returncode == 0, proc.stderr
    time.sleep(1.0)
    assert running(shared) == []
    assert list(shared.iterdir()) == []
    # NBBUILD_SERVER=0: never a server
    off = env_for(servers, root, NBBUILD_SERVER="0")
    for _ in range(2):
        assert nbbuild("image", "ls", env=off).returncode == 0
    time.sleep(1.0)
    assert running(servers) == []


def test_the_key_follows_what_decides_how_python_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = client.server_key()
    monkeypatch.setenv("NBBUILD_ROOT", str(tmp_path))  # read per command: same server
    monkeypatch.setenv("SOME_TOOL_SETTING", "1")
    assert client.server_key() == key
    monkeypatch.setenv("PYTHONWARNINGS", "error")
    assert client.server_key() != key
    monkeypatch.delenv("PYTHONWARNINGS")
    monkeypatch.setenv("LC_ALL", "C")
    assert client.server_key() != key
    monkeypatch.delenv("LC_ALL")
    assert client.server_key() == key
    # the package's code: a changed file is another fingerprint
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    before = client._code_fingerprint([str(pkg)])
    assert [Path(p).name for p, _, _ in before] == ["a.py", "b.py"]
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    os.utime(pkg / "sub" / "b.py", ns=(1, 1))
    assert client._code_fingerprint([str(pkg)]) != before


def test_which_commands_use_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NBBUILD_SERVER", raising=False)
    assert client._wanted(["nbbuild", "build", "."])
    assert not client._wanted(["nbbuild", "server", "stop"])
    assert not client._wanted(["nbbuild", "unshare"])  # needs the terminal it runs in
    for off in ("0", "off", "no", "false"):
        monkeypatch.setenv("NBBUILD_SERVER", off)
        assert not client._wanted(["nbbuild", "build", "."])


def test_an_idle_server_exits_when_its_code_changed_or_its_socket_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commands of edited or reinstalled code have another key: the old server would only
    wait out its idle time, so it checks (when idle) and exits; as it does when its socket was
    removed (``nbbuild server stop``) or taken over."""
    import threading

    monkeypatch.setattr(server, "_CHECK_EVERY", 0.05)
    for cause in ("code", "socket"):
        path = tmp_path / f"{cause}.sock"
        listener = server._listen(path)
        changed = threading.Event()
        serving = threading.Thread(
            target=server._serve,
            args=(listener, path, server._socket_ids(path), 3600.0, lambda c=changed: not c.is_set()),
        )
        serving.start()
        try:
            time.sleep(0.3)
            assert serving.is_alive()
            if cause == "code":
                changed.set()
            else:
                path.unlink()
            serving.join(timeout=5.0)
            assert not serving.is_alive()
        finally:
            changed.set()
            serving.join(timeout=5.0)
            listener.close()


# -- the context watch the server holds for its children ---------------------------------------

COPY_ALL = """\
FROM scratch
COPY . /
"""


def contexts(directory: Path, env: dict[str, str]) -> dict[str, int]:
    """What the server says its children did with its context watch (``nbbuild server
    status``): walks started (each asked the server for its watches), checksums reused
    without a walk, checksums handed over."""
    status = nbbuild("server", "status", env=env)
    assert status.returncode == 0, status.stderr
    for line in status.stdout.splitlines():
        line = line.strip()
        if line.startswith("context walks "):
            words = line.replace(",", "").split()
            return {"walks": int(words[2]), "reused": int(words[4]), "kept": int(words[6])}
    return {"walks": 0, "reused": 0, "kept": 0}


def exported(directory: Path) -> dict[str, tuple[int, bytes]]:
    """A local export's files: mode and bytes (a symlink's target)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            data = os.readlink(path).encode()
        elif path.is_file():
            data = path.read_bytes()
        else:
            data = b""
        found[str(path.relative_to(directory))] = (st.st_mode, data)
    return found


def build_out(ctx: Path, out: Path, env: dict[str, str]) -> dict[str, tuple[int, bytes]]:
    """Build ``ctx`` (its Dockerfile copies the whole context) into a fresh local export."""
    if out.exists():
        import shutil

        shutil.rmtree(out)
    proc = nbbuild("build", "--progress=plain", "-o", f"type=local,dest={out}", ctx, env=env)
    assert proc.returncode == 0, proc.stderr
    return exported(out)


def _same_size_edit(path: Path, data: str) -> None:
    st = path.stat()
    assert len(data.encode()) == st.st_size
    path.write_text(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


EDITS = {
    "content, same size and mtime": lambda r: _same_size_edit(r / "a" / "x.txt", "HELLO x\n"),
    "new file": lambda r: (r / "a" / "new.txt").write_text("new\n"),
    "new file in a new directory": lambda r: (
        (r / "c").mkdir(),
        (r / "c" / "f.txt").write_text("in c\n"),
    ),
    "deleted file": lambda r: (r / "b" / "deep" / "z.txt").unlink(),
    "rename": lambda r: (r / "a" / "y.txt").rename(r / "a" / "w.txt"),
    "chmod": lambda r: (r / "a" / "w.txt").chmod(0o600),
    ".dockerignore": lambda r: (r / ".dockerignore").write_text("a/new.txt\n"),
}


def _settle() -> None:
    """Let the racy window pass: a checksum whose files changed less than it before their walk
    began is kept but not trusted (the next command walks again)."""
    from engine.context.statcache import DEFAULT_RACY_WINDOW_NS

    time.sleep(DEFAULT_RACY_WINDOW_NS / 1e9 + 0.1)


def _context(tmp_path: Path) -> Path:
    return wb.write_files(  # type: ignore[no-any-return]
        tmp_path / "ctx",
        {
            "Dockerfile": COPY_ALL,
            "a/x.txt": "hello x\n",
            "a/y.txt": "hello y\n",
            "b/deep/z.txt": "hello z\n",
            "top.txt": "top\n",
        },
    )


def test_a_no_op_rebuild_through_the_server_walks_nothing_and_every_edit_is_seen(
    servers: Path, tar: Path, tmp_path: Path
) -> None:
    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root)
    info = warm(servers, env)
    ctx = _context(tmp_path)
    _settle()
    out = tmp_path / "out"
    first = build_out(ctx, out, env)
    assert first["a/x.txt"][1] == b"hello x\n"
    assert contexts(servers, env)["walks"] == 1
    # the second and third commands reuse what the first one's child handed to the server
    for n in (2, 3):
        assert build_out(ctx, out, env) == first
        assert contexts(servers, env) == {"walks": 1, "reused": n - 1, "kept": 1}
    here = {**env, "NBBUILD_SERVER": "0"}
    walks = 1
    for what, edit in EDITS.items():
        edit(ctx)
        _settle()
        got = build_out(ctx, out, env)
        walks += 1
        seen = contexts(servers, env)
        assert seen["walks"] == walks, what  # the edit made the next command walk
        assert got == build_out(ctx, tmp_path / "here", here), what  # as a process of its own
        # and the command after it reuses the new state
        assert build_out(ctx, out, env) == got, what
        assert contexts(servers, env)["walks"] == walks, what
    assert got["a/x.txt"][1] == b"HELLO x\n"
    assert "a/new.txt" not in got and "a/y.txt" not in got and "b/deep/z.txt" not in got
    assert got["a/w.txt"][0] & 0o777 == 0o600 and got["c/f.txt"][1] == b"in c\n"
    assert [s.pid for s in running(servers)] == [info.pid]
    assert running(servers)[0].last_error == ""


def test_a_write_through_a_shared_mapping_is_seen_through_the_server(
    servers: Path, tar: Path, tmp_path: Path
) -> None:
    """As numpy.memmap(path, mode="r+") writes: open, map, close the descriptor, write through
    the mapping. None of it is an inotify event; the child that reuses the server's checksum
    checks the stat of every file it covers first, and the file's mtime and ctime changed."""
    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root)
    warm(servers, env)
    ctx = _context(tmp_path)
    _settle()
    out = tmp_path / "out"
    first = build_out(ctx, out, env)
    with open(ctx / "a" / "x.txt", "r+b") as f:
        mapping = mmap.mmap(f.fileno(), 0)
    try:
        assert build_out(ctx, out, env) == first
        assert contexts(servers, env) == {"walks": 1, "reused": 1, "kept": 1}
        mapping[:8] = b"HELLO x\n"  # the same size
        mapping.flush()
        _settle()
        got = build_out(ctx, out, env)
        assert got["a/x.txt"][1] == b"HELLO x\n"
        assert contexts(servers, env) == {"walks": 2, "reused": 1, "kept": 2}
        assert build_out(ctx, out, env) == got
        assert contexts(servers, env) == {"walks": 2, "reused": 2, "kept": 2}
    finally:
        mapping.close()
    assert got == build_out(ctx, tmp_path / "here", {**env, "NBBUILD_SERVER": "0"})


def test_with_the_watch_off_every_command_walks(servers: Path, tar: Path, tmp_path: Path) -> None:
    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root, NBBUILD_CONTEXT_WATCH="0")
    warm(servers, env)
    ctx = _context(tmp_path)
    out = tmp_path / "out"
    build_out(ctx, out, env)
    build_out(ctx, out, env)
    _same_size_edit(ctx / "a" / "x.txt", "HELLO x\n")
    assert build_out(ctx, out, env)["a/x.txt"][1] == b"HELLO x\n"
    assert contexts(servers, env) == {"walks": 0, "reused": 0, "kept": 0}  # never asked


def test_a_server_killed_between_commands_loses_no_edit(
    servers: Path, tar: Path, tmp_path: Path
) -> None:
    root = wb.new_store(tmp_path / "store", tar)
    env = env_for(servers, root)
    info = warm(servers, env)
    ctx = _context(tmp_path)
    _settle()
    out = tmp_path / "out"
    build_out(ctx, out, env)
    build_out(ctx, out, env)
    assert contexts(servers, env) == {"walks": 1, "reused": 1, "kept": 1}
    os.kill(info.pid, signal.SIGKILL)
    assert wb.wait_for(lambda: running(servers) == [], timeout=10.0)
    _same_size_edit(ctx / "a" / "x.txt", "HELLO x\n")
    # no server: this command runs in its own process (and starts the next server)
    assert build_out(ctx, out, env)["a/x.txt"][1] == b"HELLO x\n"
    again = warm(servers, env)
    assert again.pid != info.pid
    (ctx / "top.txt").write_text("TOP\n")
    _settle()
    got = build_out(ctx, out, env)
    assert (got["a/x.txt"][1], got["top.txt"][1]) == (b"HELLO x\n", b"TOP\n")
    assert contexts(servers, env)["walks"] == 1  # the new server's first child walked
    assert build_out(ctx, out, env) == got
    assert contexts(servers, env) == {"walks": 1, "reused": 1, "kept": 1}


def _serve_child(service: object, channel: object, pid: int) -> int:
    """The server's side for one forked child (as ``server._serve`` does it): drain the
    inotify queue when readable, answer the child; its exit code."""
    import select

    from engine.context import remote

    assert isinstance(service, remote.Service) and isinstance(channel, remote.Channel)
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(channel.fileno(), select.POLLIN)
    inotify = service.fileno()
    assert inotify is not None
    poller.register(inotify, select.POLLIN)
    try:
        while True:
            ready = dict(poller.poll(60_000))
            assert ready, "the child hangs"
            if inotify in ready:
                service.drain()
            if channel.fileno() in ready and not channel.handle():
                poller.unregister(channel.fileno())
            if pidfd in ready:
                channel.pending()
                channel.close()
                _, status = os.waitpid(pid, 0)
                return os.waitstatus_to_exitcode(status)
    finally:
        os.close(pidfd)


def test_an_edit_racing_a_childs_walk_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real inotify, real forked children talking to the server's side over a socket pair:
    a file written into a directory just after a child listed it (the directory was watched
    before the listing) makes the next child walk again, and that one sees the file."""
    import socket

    from engine.context import remote, source, watch
    from engine.context.source import ContextHasher
    from engine.context.tree import ContextTree
    from engine.graph.ops import ContentSpec, LocalSource, PathSelector

    monkeypatch.delenv("NBBUILD_CONTEXT_WATCH", raising=False)
    monkeypatch.setattr(watch, "_WATCHER", watch.Watcher())
    monkeypatch.setattr(source, "_KEPT", {})
    monkeypatch.setattr(source, "_RACY_WINDOW_NS", 0)  # the context was just written
    service = remote.Service()
    ctx = _context(tmp_path)
    every = ContentSpec((PathSelector("/"),))

    def hashed() -> dict[str, str]:
        hasher = ContextHasher(None)
        try:
            return dict(hasher.manifest(LocalSource("context", str(ctx)), every))
        finally:
            hasher.close()

    def in_child(body: object) -> int:
        server_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # report through the exit status only
            code = 1
            try:
                server_end.close()
                remote.install(child_end)
                code = body()  # type: ignore[operator]
            finally:
                os._exit(code)
        child_end.close()
        return _serve_child(service, remote.Channel(service, server_end), pid)

    listed: list[str] = []
    real_scan = ContextTree._scan_children

    def counting_scan(self: ContextTree, rel: str) -> list[str]:
        listed.append(rel)
        return real_scan(self, rel)

    monkeypatch.setattr(ContextTree, "_scan_children", counting_scan)

    def racing() -> int:
        real_scandir = os.scandir

        @contextlib.contextmanager
        def racing_scandir(path: str) -> Iterator[Iterator[os.DirEntry[str]]]:
            with real_scandir(path) as it:
                entries = list(it)
            if path.endswith("/a") and not (ctx / "a" / "raced.txt").exists():
                (ctx / "a" / "raced.txt").write_text("after the listing\n")
            yield iter(entries)

        os.scandir = racing_scandir  # type: ignore[assignment]
        manifest = hashed()
        return 0 if "a/raced.txt" not in manifest and listed else 1

    def walks_and_sees_it() -> int:
        return 0 if "a/raced.txt" in hashed() and listed else 1

    def walks_nothing() -> int:
        return 0 if "a/raced.txt" in hashed() and not listed else 1

    assert in_child(racing) == 0
    assert (service.walks, service.kept) == (1, 1)  # kept, but under an epoch that ended
    assert in_child(walks_and_sees_it) == 0
    assert (service.walks, service.reused) == (2, 0)
    assert in_child(walks_nothing) == 0
    assert (service.walks, service.reused) == (2, 1)
    # and what the server kept is what a process without any watch computes
    monkeypatch.setenv("NBBUILD_CONTEXT_WATCH", "0")
    monkeypatch.setattr(ContextTree, "_scan_children", real_scan)
    assert hashed() == source._KEPT[next(iter(source._KEPT))][2]
    service.watcher.clear()


def test_a_child_whose_server_is_gone_walks_as_without_a_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from engine.context import remote, source, watch
    from engine.context.source import ContextHasher
    from engine.graph.ops import ContentSpec, LocalSource, PathSelector

    monkeypatch.delenv("NBBUILD_CONTEXT_WATCH", raising=False)
    monkeypatch.setattr(source, "_KEPT", {})
    ctx = _context(tmp_path)
    server_end, child_end = socket.socketpair()
    server_end.close()  # the server died
    remote_watcher = remote.RemoteWatcher(child_end)
    monkeypatch.setattr(watch, "_WATCHER", remote_watcher)
    every = ContentSpec((PathSelector("/"),))

    def hashed() -> str:
        hasher = ContextHasher(None)
        try:
            return hasher.checksum(LocalSource("context", str(ctx)), every)
        finally:
            hasher.close()

    first = hashed()
    assert watch.begin(str(ctx)) is None
    assert watch.changed_since(str(ctx), 1)
    assert source._KEPT == {}  # nothing kept, nothing trusted
    _same_size_edit(ctx / "a" / "x.txt", "HELLO x\n")
    assert hashed() != first
    remote_watcher.clear()
