"""``%load_ext nbbuild``, ``%%dockerfile`` and ``%nbbuild`` in a real IPython shell.

Every test drives a fresh :class:`~IPython.core.interactiveshell.InteractiveShell` (the
singleton cleared around it) through ``run_cell``, as a notebook's kernel does, and builds for
real: busybox from ``scripts/busybox-rootfs.sh`` imported into a fresh store per test,
containers with crun, overlay mounts in private namespaces. Progress is off (``none``) except
where a test looks at it, so the captured output is the result and the errors.
"""

from __future__ import annotations

import _thread
import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import nbbuild
from engine.store.check import check
from engine.store.store import Store
from nbbuild._options import NOTEBOOK_EXCLUDES, Options, parse_line


def _whole_build() -> ModuleType:
    name = "nbbuild_tests_whole_build"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "engine" / "whole_build.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


wb = _whole_build()

HELLO = """\
FROM busybox
RUN echo hello > /hello
COPY . /ctx
"""


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(wb.busybox_tar(tmp_path_factory.mktemp("busybox")))


@pytest.fixture
def root(tmp_path: Path, busybox: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh store with busybox, chosen through NBBUILD_ROOT."""
    store = Path(wb.new_store(tmp_path / "store", busybox))
    monkeypatch.setenv("NBBUILD_ROOT", str(store))
    return store


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The kernel's working directory: the default build context."""
    directory = tmp_path / "work"
    directory.mkdir()
    (directory / "data.txt").write_text("data\n")
    monkeypatch.chdir(directory)
    return directory


def new_shell(tmp_path: Path) -> InteractiveShell:
    """A fresh shell (what a kernel restart gives) with the extension loaded."""
    InteractiveShell.clear_instance()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "nbbuild")
    shell.run_line_magic("config", "DockerfileMagics.progress = 'none'")
    return shell


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    shell = new_shell(tmp_path)
    yield shell
    if "nbbuild" in shell.extension_manager.loaded:
        shell.run_line_magic("unload_ext", "nbbuild")
    InteractiveShell.clear_instance()


def cell(shell: InteractiveShell, line: str, body: str) -> Any:
    """Run ``%%dockerfile LINE`` with ``body`` as a notebook cell; return its ExecutionResult."""
    return shell.run_cell(
        f"%%dockerfile {line}\n{body}".replace("%%dockerfile \n", "%%dockerfile\n")
    )


def ok(result: Any) -> Any:
    """The cell's value, after checking it raised nothing."""
    assert result.error_before_exec is None, result.error_before_exec
    assert result.error_in_exec is None, result.error_in_exec
    return result.result


def statuses(build: Any) -> dict[str, str]:
    return {s.instruction: s.status for s in build.steps if not s.internal}


# -- loading ----------------------------------------------------------------------------------


def test_load_registers_both_magics_and_the_configurable(shell: InteractiveShell) -> None:
    manager = shell.magics_manager
    assert "dockerfile" in manager.magics["cell"]
    assert "nbbuild" in manager.magics["line"]
    magics = manager.registry["DockerfileMagics"]
    assert magics in shell.configurables  # %config DockerfileMagics.… works
    assert shell.extension_manager.load_extension("nbbuild") == "already loaded"


def test_unload_removes_the_magics_and_closes_the_store(
    shell: InteractiveShell, root: Path, ctx: Path
) -> None:
    magics = shell.magics_manager.registry["DockerfileMagics"]
    shell.run_line_magic("nbbuild", "history")  # opens the session's store
    assert magics.session._store is not None
    shell.run_line_magic("unload_ext", "nbbuild")
    assert "dockerfile" not in shell.magics_manager.magics["cell"]
    assert "nbbuild" not in shell.magics_manager.magics["line"]
    assert "DockerfileMagics" not in shell.magics_manager.registry
    assert magics not in shell.configurables
    assert magics.session._store is None
    result = shell.run_cell("%%dockerfile\nFROM busybox\n")
    assert isinstance(result.error_in_exec, UsageError)  # "Cell magic not found"


def test_reload_ext_is_clean(shell: InteractiveShell, root: Path, ctx: Path) -> None:
    before = shell.magics_manager.registry["DockerfileMagics"]
    ok(cell(shell, "", "FROM busybox\n"))
    shell.run_line_magic("reload_ext", "nbbuild")
    after = shell.magics_manager.registry["DockerfileMagics"]
    assert after is not before
    assert [type(c).__name__ for c in shell.configurables].count("DockerfileMagics") == 1
    assert shell.magics_manager.magics["cell"]["dockerfile"].__self__ is after
    after.progress = "none"
    build = ok(cell(shell, "", "FROM busybox\n"))
    assert build.status == "cached"


def test_extension_loads_from_the_config_file(tmp_path: Path, root: Path) -> None:
    """``c.InteractiveShellApp.extensions = ['nbbuild']`` in a real IPython process."""
    ipdir = tmp_path / "ipython"
    profile = ipdir / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text(
        "c.InteractiveShellApp.extensions = ['nbbuild']\n"
        "c.DockerfileMagics.progress = 'none'\n"
        "c.HistoryManager.hist_file = ':memory:'\n"
    )
    code = (
        "ip = get_ipython(); m = ip.magics_manager.registry['DockerfileMagics']; "
        "print('dockerfile' in ip.magics_manager.magics['cell'], m.progress)"
    )
    done = subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "IPYTHONDIR": str(ipdir)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("True none"), done.stdout


# -- options ----------------------------------------------------------------------------------


def test_parse_line_without_a_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_ENV", "env value")
    options = parse_line(
        "-t app:1 --tag app:latest --target final --build-arg 'MSG=hello world' "
        "--build-arg FROM_ENV --build-context base=docker-image://busybox --label a=b "
        "--no-cache --no-cache-filter x,y --no-cache-filter z --network none "
        "--allow network.host -o type=local,dest=out --progress plain --name mine --out r "
        "--no-raise-error"
    )
    assert options == Options(
        tags=("app:1", "app:latest"),
        target="final",
        build_args={"MSG": "hello world", "FROM_ENV": "env value"},
        build_contexts={"base": "docker-image://busybox"},
        labels={"a": "b"},
        no_cache=True,
        no_cache_filter=("x", "y", "z"),
        network="none",
        allow=frozenset({"network.host"}),
        outputs=("type=local,dest=out",),
        progress="plain",
        name="mine",
        out="r",
        raise_error=False,
    )
    assert parse_line("") == Options()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--bogus", "unrecognized arguments: --bogus"),
        ("--network wifi", "invalid --network 'wifi'"),
        ("--progress fancy", "invalid --progress 'fancy'"),
        ("--allow root", "unknown entitlement root"),
        ("--out 2x", "--out '2x' is not a Python variable name"),
        ("--build-arg =v", "invalid build-arg '=v'"),
        ("--build-arg NBBUILD_TEST_UNSET", "NBBUILD_TEST_UNSET is not set in the environment"),
        ("--label nolabel", "invalid label 'nolabel'"),
        ("-o type=zip,dest=x", "unsupported output type 'zip'"),
        ("-t 'Not A Tag'", "invalid tag 'Not A Tag'"),
        ("--context /no/such/dir", "--context '/no/such/dir' is not a directory"),
        ("--target 'unbalanced", "cannot split the line"),
    ],
)
def test_bad_options_are_one_line_usage_errors(
    line: str, message: str, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError, match=None) as raised:
        parse_line(line)
    assert type(raised.value) is UsageError  # exactly: IPython shows it without a traceback
    assert message in str(raised.value)
    result = cell(shell, line, "FROM busybox\n")
    assert type(result.error_in_exec) is UsageError
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"UsageError: {raised.value}"]


def test_help_lists_every_option(shell: InteractiveShell) -> None:
    doc = shell.find_cell_magic("dockerfile").__doc__
    for flag in (
        "--tag", "--target", "--build-arg", "--build-context", "--context", "--no-cache",
        "--no-cache-filter", "--network", "--allow", "--output", "--progress", "--name",
        "--out", "--no-raise-error",
    ):  # fmt: skip
        assert flag in doc
    assert "Build the cell as a Dockerfile" in doc


def test_only_the_line_is_expanded_the_body_stays_raw(
    shell: InteractiveShell, root: Path, ctx: Path, tmp_path: Path
) -> None:
    shell.user_ns["greeting"] = "hello there"
    shell.user_ns["dest"] = str(tmp_path / "out")
    body = 'FROM busybox\nARG MSG\nRUN echo "${MSG}|$MSG|{greeting}" > /msg\n'
    build = ok(cell(shell, "--build-arg 'MSG={greeting}' -o type=local,dest=$dest", body))
    assert (tmp_path / "out" / "msg").read_text() == "hello there|hello there|{greeting}\n"
    run = next(s for s in build.steps if s.instruction.startswith("RUN"))
    assert run.instruction == 'RUN echo "${MSG}|$MSG|{greeting}" > /msg'


# -- builds -----------------------------------------------------------------------------------


def test_cache_persists_across_cells(shell: InteractiveShell, root: Path, ctx: Path) -> None:
    first = ok(cell(shell, "-t hello", HELLO))
    assert first.status == "executed"
    assert statuses(first) == {
        "FROM busybox": "cached",
        "RUN echo hello > /hello": "executed",
        "COPY . /ctx": "executed",
    }
    second = ok(cell(shell, "-t hello", HELLO))
    assert set(statuses(second).values()) == {"cached"}
    assert second.engine_result.layers == first.engine_result.layers  # the same layers


def test_cache_persists_across_a_kernel_restart(
    shell: InteractiveShell, root: Path, ctx: Path, tmp_path: Path
) -> None:
    ok(cell(shell, "", HELLO))
    shell.run_line_magic("unload_ext", "nbbuild")
    restarted = new_shell(tmp_path)  # a new kernel: new shell, same store
    try:
        again = ok(cell(restarted, "", HELLO))
        assert set(statuses(again).values()) == {"cached"}
    finally:
        restarted.run_line_magic("unload_ext", "nbbuild")


def test_result_is_the_cell_value_and_out_binds_it(
    shell: InteractiveShell, root: Path, ctx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = cell(shell, "", HELLO)
    assert isinstance(ok(plain), nbbuild.BuildResult)
    assert "BuildResult" in capsys.readouterr().out  # displayed as Out[…]
    bound = cell(shell, "--out built", HELLO)
    assert shell.user_ns["built"] is ok(bound)
    assert "BuildResult" in capsys.readouterr().out  # displayed either way


def test_progress_plain_prints_buildkit_progress(
    shell: InteractiveShell, root: Path, ctx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(cell(shell, "--progress plain", HELLO))
    out = capsys.readouterr().out
    assert "[2/3] RUN echo hello > /hello" in out
    assert "DONE" in out


def test_notebook_files_are_left_out_of_the_context(
    shell: InteractiveShell, root: Path, ctx: Path, tmp_path: Path
) -> None:
    (ctx / "analysis.ipynb").write_text("{}")
    (ctx / "sub").mkdir()
    (ctx / "sub" / "other.ipynb").write_text("{}")
    (ctx / ".ipynb_checkpoints").mkdir()
    (ctx / ".ipynb_checkpoints" / "analysis-checkpoint.ipynb").write_text("{}")
    out = tmp_path / "out"
    ok(cell(shell, f"-o type=local,dest={out}", "FROM busybox\nCOPY . /ctx\n"))
    assert sorted(p.name for p in (out / "ctx").iterdir()) == ["data.txt", "sub"]
    assert list((out / "ctx" / "sub").iterdir()) == []
    # An autosave does not invalidate COPY . /ctx
    (ctx / "analysis.ipynb").write_text('{"cells": []}')
    (ctx / ".ipynb_checkpoints" / "analysis-checkpoint.ipynb").write_text('{"x": 1}')
    again = ok(cell(shell, "", "FROM busybox\nCOPY . /ctx\n"))
    assert statuses(again) == {"FROM busybox": "cached", "COPY . /ctx": "cached"}
    # ... and a .dockerignore can bring them back
    (ctx / ".dockerignore").write_text("!analysis.ipynb\n")
    back = tmp_path / "back"
    ok(cell(shell, f"-o type=local,dest={back}", "FROM busybox\nCOPY . /ctx\n"))
    assert (back / "ctx" / "analysis.ipynb").exists()
    assert not (back / "ctx" / ".ipynb_checkpoints").exists()
    assert NOTEBOOK_EXCLUDES == ("**/*.ipynb", "**/.ipynb_checkpoints")


def test_context_option_and_large_context_warning(
    shell: InteractiveShell,
    root: Path,
    ctx: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    big = tmp_path / "big"
    big.mkdir()
    (big / "small.txt").write_text("x")
    with open(big / "huge.bin", "wb") as f:
        f.truncate(101 * 1000 * 1000)  # sparse: 101 MB without writing them
    body = "FROM busybox\nCOPY small.txt /\n"
    build = ok(cell(shell, f"--context {big}", body))
    assert statuses(build)["COPY small.txt /"] == "executed"
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    assert "more than 100 MB" in warnings[0] and ".dockerignore" in warnings[0]
    ok(cell(shell, f"--context {big}", body))
    assert "warning" not in capsys.readouterr().err  # once per context and kernel
    # relative --context is relative to the kernel's working directory
    (ctx / "sub").mkdir()
    (ctx / "sub" / "small.txt").write_text("y")
    ok(cell(shell, "--context sub", body))
    assert "warning" not in capsys.readouterr().err


def test_store_size_warning_names_prune_once(
    shell: InteractiveShell, root: Path, ctx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("config", "DockerfileMagics.store_warn_size = 1000")
    ok(cell(shell, "", HELLO))
    err = capsys.readouterr().err
    assert "more than 1kB" in err and "%nbbuild cache prune" in err, err
    ok(cell(shell, "", HELLO))
    assert "%nbbuild cache prune" not in capsys.readouterr().err


# -- errors -----------------------------------------------------------------------------------

FAILING = """\
FROM busybox
RUN echo step one
RUN echo first line; echo second line >&2; exit 3
RUN echo never
"""


def test_failed_build_shows_the_result_then_raises_with_a_short_traceback(
    shell: InteractiveShell, root: Path, ctx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cell(shell, "--out failed", FAILING)
    error = result.error_in_exec
    assert isinstance(error, nbbuild.StepFailed)
    assert error.exit_code == 3 and error.line == 3 and error.filename == "<cell>"
    shown = error.result
    assert shell.user_ns["failed"] is shown
    assert shown.status == "failed"
    assert statuses(shown)["RUN echo first line; echo second line >&2; exit 3"] == "failed"
    lines = error._render_traceback_()
    text = "\n".join(lines)
    assert text.startswith(
        "StepFailed: [3/4] RUN echo first line; echo second line >&2; exit 3 (<cell>:3): "
    )
    assert "exit code: 3" in text
    assert "  | first line" in text and "  | second line" in text
    out = capsys.readouterr().out
    # the result (with the failed step) is displayed first, then the error, no Python frames
    assert out.index("BuildResult") < out.index("StepFailed:")
    assert "Traceback" not in out and "File " not in out


def test_dockerfile_error_points_at_the_cell_line(
    shell: InteractiveShell, root: Path, ctx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = cell(shell, "", "FROM busybox\nRUNN echo hi\n")
    error = result.error_in_exec
    assert isinstance(error, nbbuild.DockerfileError)
    assert (error.filename, error.line) == ("<cell>", 2)
    out = capsys.readouterr().out
    assert "DockerfileError: <cell>:2: unknown instruction: RUNN (did you mean RUN?)" in out
    assert "2 | RUNN echo hi" in out


def test_no_raise_error_returns_the_failed_result(
    shell: InteractiveShell, root: Path, ctx: Path
) -> None:
    failed = ok(cell(shell, "--no-raise-error", FAILING))
    assert failed.status == "failed"
    assert isinstance(failed.error, nbbuild.StepFailed)
    shell.run_line_magic("config", "DockerfileMagics.raise_on_error = False")
    assert ok(cell(shell, "", FAILING)).status == "failed"


def test_ctrl_c_cancels_the_build_and_raises_keyboard_interrupt(
    shell: InteractiveShell, root: Path, ctx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = "FROM busybox\nRUN sleep 30\nRUN echo after\n"
    running = threading.Event()

    def press_ctrl_c() -> None:
        wb.wait_for_container(root, ("sleep", "30"), alive=lambda: not running.is_set())
        _thread.interrupt_main()  # what the kernel's SIGINT handler does on "interrupt"

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    started = time.monotonic()
    try:
        result = cell(shell, "--name nap", body)
    finally:
        running.set()
        presser.join()
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert time.monotonic() - started < 20  # far below the 30 s sleep
    magics = shell.magics_manager.registry["DockerfileMagics"]
    assert magics.session.running == 0  # the worker wound down before the cell ended
    assert "canceled" in capsys.readouterr().out  # the canceled result was shown
    assert wb.store_processes(root) == []
    assert wb.host_mounts(root) == []
    assert wb.live_leases(root) == 0
    with Store.open(root) as store:
        record = store.last_build("nap")
        assert record is not None and record.status == "canceled"
        assert check(store).clean
    # the next build works, and the steps before the sleep came from the cache
    done = ok(cell(shell, "--name nap", "FROM busybox\nRUN sleep 0\nRUN echo after\n"))
    assert done.status == "executed"


# -- %nbbuild ---------------------------------------------------------------------------------


def test_history_lists_builds_newest_first(
    shell: InteractiveShell, root: Path, ctx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(cell(shell, "--name first", HELLO))
    cell(shell, "--name second", FAILING)
    capsys.readouterr()
    shell.run_line_magic("nbbuild", "history")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["WHEN", "NAME", "TARGET", "STATUS", "STEPS", "TAG"]
    assert " second " in lines[1] and " failed " in lines[1]
    assert " first " in lines[2] and "1 cached, 2 executed" in lines[2]
    shell.run_line_magic("nbbuild", "history -n 5 first")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and " first " in lines[1]


def test_images_and_run(
    shell: InteractiveShell, root: Path, ctx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(cell(shell, "-t greeter", 'FROM busybox\nRUN echo hello > /hello\nCMD ["cat", "/hello"]\n'))
    capsys.readouterr()
    shell.run_line_magic("nbbuild", "images")
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["REPOSITORY", "TAG", "IMAGE"]
    assert any(line.split()[:2] == ["greeter", "latest"] for line in out.splitlines())
    shell.run_line_magic("nbbuild", "run greeter")  # the image's CMD
    assert capsys.readouterr().out == "hello\n"
    shell.run_line_magic("nbbuild", "run greeter sh -c 'echo out; echo err >&2; exit 4'")
    captured = capsys.readouterr()
    assert captured.out == "out\n"
    assert captured.err == "err\nexit code 4\n"
    shell.run_line_magic("nbbuild", "run -e WHO=you greeter sh -c 'echo hi $WHO; ip -o link'")
    out = capsys.readouterr().out
    assert out.startswith("hi you\n")
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["lo:"]  # network none
    result = shell.run_cell("%nbbuild run no-such-image")
    assert "no such image: no-such-image" in str(result.error_in_exec)


def test_doctor(shell: InteractiveShell, root: Path) -> None:
    report = shell.run_line_magic("nbbuild", "doctor")
    bundle = report._repr_mimebundle_()
    text = bundle["text/plain"]
    for topic in ("user", "user namespaces", "overlayfs", "runtimes", "sandbox", "cgroups"):
        assert f"] {topic}" in text or f"]  {topic}" in text or f" {topic} " in text
    assert f"{root} (from NBBUILD_ROOT)" in text
    assert "<table" in bundle["text/html"] and "<script" not in bundle["text/html"]
    assert report.can_run


def test_cache_subcommands(
    shell: InteractiveShell,
    root: Path,
    ctx: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ok(cell(shell, "", HELLO))
    capsys.readouterr()
    shell.run_line_magic("nbbuild", "cache du")
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["ID", "RECLAIMABLE", "SIZE", "LAST", "ACCESSED"]
    assert "Total:" in out
    shell.run_line_magic("nbbuild", "cache ls")
    assert "[2/3] RUN echo hello > /hello" in capsys.readouterr().out
    # prune asks first; "n" keeps everything
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    shell.run_line_magic("nbbuild", "cache prune")
    shell.run_line_magic("nbbuild", "cache ls")
    assert "RUN echo hello" in capsys.readouterr().out
    shell.run_line_magic("nbbuild", "cache prune -f")
    assert "Total:" in capsys.readouterr().out
    shell.run_line_magic("nbbuild", "cache ls")
    assert "RUN echo hello" not in capsys.readouterr().out
    with pytest.raises(UsageError, match="invalid arguments"):
        shell.run_line_magic("nbbuild", "cache frobnicate")


WHY = """\
FROM busybox
ARG V=1
COPY data.txt /
RUN echo $V
"""


def test_explain_and_whatif(
    shell: InteractiveShell, root: Path, ctx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError, match="no builds yet"):
        shell.run_line_magic("nbbuild", "explain")
    with pytest.raises(UsageError, match="run its %%dockerfile cell first"):
        shell.run_line_magic("nbbuild", "whatif --changed data.txt")
    ok(cell(shell, "--name why", WHY))
    (ctx / "data.txt").write_text("new data\n")
    second = ok(cell(shell, "--name why --build-arg V=2", WHY))
    # the result says why each step ran
    assert second.step("[2/3]").reason == "file `data.txt` changed"
    assert second.step("[3/3]").reason == "build-arg `V` 1 → 2"
    capsys.readouterr()
    shell.run_line_magic("nbbuild", "explain")
    out = capsys.readouterr().out
    assert "[2/3] COPY data.txt /: executed: file `data.txt` changed" in out
    assert "op.meta.env.V: 1 → 2" in out
    shell.run_line_magic("nbbuild", "explain why")
    assert capsys.readouterr().out == out
    shell.run_line_magic("nbbuild", "whatif --changed data.txt")
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["[2/3]", "COPY", "data.txt", "/"]
    assert "will run" in lines[1] and "`data.txt` changed" in lines[1]
    shell.run_line_magic("nbbuild", "whatif why --build-arg V=3")
    lines = capsys.readouterr().out.splitlines()
    assert "cached" in lines[1]
    assert "will run" in lines[2] and "build-arg `V` 2 → 3" in lines[2]
    with pytest.raises(UsageError, match="give --changed"):
        shell.run_line_magic("nbbuild", "whatif")


def test_failed_build_reasons_come_from_the_history(
    shell: InteractiveShell, root: Path, ctx: Path
) -> None:
    ok(cell(shell, "--name why", WHY))
    failed = ok(cell(shell, "--name why --no-raise-error --build-arg V=2", WHY + "RUN false\n"))
    assert failed.status == "failed"
    assert failed.step("[3/4]").reason == "build-arg `V` 1 → 2"
    assert failed.step("[4/4]").reason == "new step"


def test_line_magic_usage_errors(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError):
        shell.run_line_magic("nbbuild", "frobnicate")
    shell.run_line_magic("nbbuild", "")
    out = capsys.readouterr().out
    assert out.startswith("Inspect and manage builds::")
    for command in ("history", "cache", "images", "doctor", "run", "explain", "whatif"):
        assert f"%nbbuild {command}" in out


# -- in a real Jupyter kernel -----------------------------------------------------------------


def test_in_a_real_kernel_output_errors_and_interrupt(root: Path, ctx: Path) -> None:
    """ipykernel 7: progress and results reach the cell (drawn from the main thread), a failed
    build sends an ``error`` message with the short traceback, and the kernel's interrupt
    (SIGINT) cancels a running build cleanly."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(ctx), env={**os.environ})
    try:

        def run(code: str, timeout: float = 120) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            messages: list[dict[str, Any]] = []
            reply = kc.execute_interactive(code, timeout=timeout, output_hook=messages.append)
            for msg in messages:
                assert msg["parent_header"]["msg_id"] == reply["parent_header"]["msg_id"]
            return reply, messages

        reply, _ = run("%load_ext nbbuild")
        assert reply["content"]["status"] == "ok"
        reply, messages = run(f"%%dockerfile --progress plain -t hello\n{HELLO}")
        assert reply["content"]["status"] == "ok", reply
        streams = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
        assert "[2/3] RUN echo hello > /hello" in streams and "DONE" in streams
        results = [m for m in messages if m["msg_type"] == "execute_result"]
        assert (
            len(results) == 1 and "BuildResult hello" in results[0]["content"]["data"]["text/plain"]
        )

        reply, messages = run(f"%%dockerfile --progress none\n{FAILING}")
        assert reply["content"]["status"] == "error"
        kinds = [m["msg_type"] for m in messages if m["msg_type"] != "status"]
        assert kinds.index("display_data") < kinds.index("error")  # the result, then the error
        error = next(m["content"] for m in messages if m["msg_type"] == "error")
        assert error["ename"] == "StepFailed"
        traceback = "\n".join(error["traceback"])
        assert "(<cell>:3)" in traceback and "exit code: 3" in traceback
        assert "  | second line" in traceback and "Traceback" not in traceback

        msg_id = kc.execute("%%dockerfile --progress none --name nap\nFROM busybox\nRUN sleep 30\n")
        wb.wait_for_container(root, ("sleep", "30"), alive=lambda: True)
        started = time.monotonic()
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - started < 20
        assert wb.store_processes(root) == []
        assert wb.live_leases(root) == 0
        reply, _ = run("%nbbuild history -n 1")
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    with Store.open(root) as store:
        record = store.last_build("nap")
        assert record is not None and record.status == "canceled"
        assert check(store).clean
