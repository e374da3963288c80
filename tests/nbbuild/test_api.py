"""``nbbuild.build()`` and the package's public names.

The Python API and ``%%dockerfile`` take the same options and return the same
:class:`nbbuild.BuildResult`; the tests that apply to both run once per entry point (as
ipytest parametrises its function and magic entry points). Builds are real (busybox, crun).
"""

from __future__ import annotations

import _thread
import importlib.util
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import nbbuild


def _whole_build() -> types.ModuleType:
    name = "nbbuild_tests_whole_build"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "engine" / "whole_build.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


wb = _whole_build()


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(wb.busybox_tar(tmp_path_factory.mktemp("busybox")))


@pytest.fixture
def root(tmp_path: Path, busybox: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    store = Path(wb.new_store(tmp_path / "store", busybox))
    monkeypatch.setenv("NBBUILD_ROOT", str(store))
    return store


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "work"
    directory.mkdir()
    (directory / "data.txt").write_text("data\n")
    monkeypatch.chdir(directory)
    return directory


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    InteractiveShell.clear_instance()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "nbbuild")
    shell.run_line_magic("config", "DockerfileMagics.progress = 'none'")
    yield shell
    shell.run_line_magic("unload_ext", "nbbuild")
    InteractiveShell.clear_instance()


Build = Callable[..., Any]


def _magic_line(options: dict[str, Any]) -> str:
    parts: list[str] = []
    for key, value in options.items():
        flag = {
            "tags": "-t",
            "outputs": "-o",
            "build_args": "--build-arg",
            "build_contexts": "--build-context",
            "labels": "--label",
        }.get(key, "--" + key.replace("_", "-"))
        if key == "raise_error":
            if value is False:
                parts.append("--no-raise-error")
        elif isinstance(value, bool):
            if value:
                parts.append(flag)
        elif isinstance(value, dict):
            parts += [f"{flag} '{k}={v}'" for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            parts += [f"{flag} '{v}'" for v in value]
        else:
            parts.append(f"{flag} '{value}'")
    return " ".join(parts)


@pytest.fixture(params=["magic", "api"])
def build(request: pytest.FixtureRequest, shell: InteractiveShell) -> Build:
    """``build(dockerfile, **options)`` through ``%%dockerfile`` or ``nbbuild.build``; returns
    the result or raises what the cell raised."""

    def via_magic(dockerfile: str, **options: Any) -> Any:
        result = shell.run_cell(f"%%dockerfile {_magic_line(options)}\n{dockerfile}")
        if result.error_in_exec is not None:
            raise result.error_in_exec
        return result.result

    def via_api(dockerfile: str, **options: Any) -> Any:
        return nbbuild.build(dockerfile, **options)

    return via_magic if request.param == "magic" else via_api


HELLO = "FROM busybox\nARG WHO=nobody\nRUN echo hello $WHO > /hello\nCOPY . /ctx\n"
FAILING = "FROM busybox\nRUN echo doomed; exit 7\n"


# -- both entry points ------------------------------------------------------------------------


def test_build_then_all_cached(build: Build, root: Path, ctx: Path) -> None:
    first = build(HELLO, tags=["hello:1"], build_args={"WHO": "you"})
    assert isinstance(first, nbbuild.BuildResult)
    assert first.status == "executed" and first.tags == ("hello:1",)
    again = build(HELLO, tags=["hello:1"], build_args={"WHO": "you"})
    assert {s.status for s in again.steps if not s.internal} == {"cached"}
    other = build(HELLO, build_args={"WHO": "them"})
    assert other.step("[2/3]").status == "executed"


def test_outputs_target_and_network(build: Build, root: Path, ctx: Path, tmp_path: Path) -> None:
    dockerfile = (
        "FROM busybox AS base\nRUN echo base > /base\nFROM base AS final\nRUN ip -o link > /links\n"
    )
    out = tmp_path / "out"
    result = build(dockerfile, target="base", outputs=[f"type=local,dest={out}"])
    assert result.target == "base" and (out / "base").read_text() == "base\n"
    out2 = tmp_path / "out2"
    build(dockerfile, network="none", outputs=[f"type=local,dest={out2}"])
    assert [line.split()[1] for line in (out2 / "links").read_text().splitlines()] == ["lo:"]


def test_failure_raises_with_the_result(build: Build, root: Path, ctx: Path) -> None:
    with pytest.raises(nbbuild.StepFailed) as raised:
        build(FAILING)
    assert raised.value.exit_code == 7
    assert raised.value.result.status == "failed"
    assert raised.value.logs == ("doomed",)
    returned = build(FAILING, raise_error=False)
    assert returned.status == "failed"


def test_dockerfile_errors_raise(build: Build, root: Path, ctx: Path) -> None:
    with pytest.raises(nbbuild.DockerfileError, match="unknown instruction: FORM"):
        build("FORM busybox\n")


def test_ctrl_c_raises_keyboard_interrupt(build: Build, root: Path, ctx: Path) -> None:
    done = threading.Event()

    def press() -> None:
        wb.wait_for_container(root, ("sleep", "30"), alive=lambda: not done.is_set())
        _thread.interrupt_main()

    presser = threading.Thread(target=press)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            build("FROM busybox\nRUN sleep 30\n", name="nap")
    finally:
        done.set()
        presser.join()
    assert wb.store_processes(root) == []
    assert wb.live_leases(root) == 0


# -- the Python API only ----------------------------------------------------------------------


def test_api_takes_a_dockerfile_path(root: Path, ctx: Path, tmp_path: Path) -> None:
    path = tmp_path / "app.Dockerfile"
    path.write_text("FROM busybox\nRUNN x\n")
    with pytest.raises(nbbuild.DockerfileError) as raised:
        nbbuild.build(path, progress="none")
    assert (raised.value.filename, raised.value.line) == ("app.Dockerfile", 2)
    path.write_text("FROM busybox\nCOPY data.txt /\n")
    result = nbbuild.build(str(path), context=ctx, progress="none")
    assert result.step("[2/2]").status == "executed"


def test_api_without_the_extension_uses_the_defaults(
    root: Path, ctx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    InteractiveShell.clear_instance()
    result = nbbuild.build("FROM busybox\nRUN echo plain\n", tags="plain")
    assert result.status == "executed" and result.tags == ("plain",)
    assert "#2 [2/2] RUN echo plain" in capsys.readouterr().out  # auto → plain outside Jupyter
    with pytest.raises(nbbuild.StepFailed):
        nbbuild.build(FAILING, progress="none")


def test_api_follows_the_loaded_extension_settings(
    shell: InteractiveShell, root: Path, ctx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("config", "DockerfileMagics.raise_on_error = False")
    result = nbbuild.build(FAILING)
    assert result.status == "failed"
    assert capsys.readouterr().out == ""  # progress none, from the setting


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"network": "wifi"}, "invalid --network 'wifi'"),
        ({"allow": "root"}, "unknown entitlement root"),
        ({"progress": "loud"}, "invalid --progress 'loud'"),
        ({"outputs": "type=zip,dest=x"}, "unsupported output type 'zip'"),
        ({"tags": "Bad Tag"}, "invalid tag 'Bad Tag'"),
        ({"context": "/no/such/dir"}, "is not a directory"),
    ],
)
def test_api_option_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(nbbuild.UsageError, match=None) as raised:
        nbbuild.build("FROM busybox\n", **options)
    assert message in str(raised.value)


# -- the package ------------------------------------------------------------------------------


def test_all_is_sorted_and_complete() -> None:
    assert nbbuild.__all__ == sorted(nbbuild.__all__)
    for name in nbbuild.__all__:
        assert getattr(nbbuild, name) is not None
    public = {
        name
        for name, value in vars(nbbuild).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", "").startswith(("nbbuild", "engine"))
    }
    assert public <= set(nbbuild.__all__), public - set(nbbuild.__all__)
    assert nbbuild.BuildResult.__module__ == "nbbuild._result"
    assert issubclass(nbbuild.StepFailed, nbbuild.BuildError)
    assert issubclass(nbbuild.BuildError, nbbuild.NbbuildError)


def test_import_is_light() -> None:
    code = "import sys, nbbuild; print(sorted(m for m in ('IPython', 'ipywidgets', 'graphviz', 'rich') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
