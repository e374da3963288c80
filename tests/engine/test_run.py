"""``engine.run.run_image``: a command in a stored image, like ``docker run --rm``.

Real containers (crun) over the image's real layer directories: the image's config applies
(Entrypoint + Cmd, Env, WorkingDir, User) as Docker applies it, the network is off unless
asked for, and nothing the command writes is kept - not in the image, not in the store.

Run by a normal user (rootless), the same runs go through ``run_image_at``, which runs them
in a helper inside the user's namespace, as a notebook kernel's ``%nbbuild run`` does: this
process cannot touch the image's files (they belong to the user's subordinate IDs). With a
single ID mapping, what needs user ``nobody`` (its ``chown``, a run as ``nobody``) fails with
the clear error (``expect_unmapped`` of tests/buildkit_base.py); the rest runs as root does.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.build import BuildRequest, build
from engine.errors import UsageError
from engine.images.errors import ImageError
from engine.run import RunResult, image_command, run_image, run_image_at
from engine.store.check import check
from engine.store.store import Store


def _whole_build() -> Any:
    name = "nbbuild_tests_whole_build"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("whole_build.py")
        )
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


wb = _whole_build()


def run(store: Store, image: str, cmd: list[str] | tuple[str, ...] = (), **options: Any) -> RunResult:
    """``run_image`` on the open store as root; rootless ``run_image_at`` (a helper in the
    user's namespace runs it)."""
    if wb.base().rootless():
        return run_image_at(store.root, image, cmd, **options)
    return run_image(store, image, cmd, **options)


APP = """\
FROM busybox
ENV GREETING=hello WHO=world
WORKDIR /app
RUN echo data > /app/file && chown 65534 /app/file
USER nobody
ENTRYPOINT ["sh", "-c"]
CMD ["echo $GREETING $WHO from $(pwd) as $(id -u)"]
"""
# Single mapping: the image without its chown (USER nobody stays: only a run as nobody needs
# the ID).
APP_SINGLE = APP.replace(" && chown 65534 /app/file", "")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("run")
    root = wb.new_store(base / "store", wb.busybox_tar(base))
    ctx = base / "ctx"
    ctx.mkdir()
    dockerfile = APP
    if wb.base().single():
        wb.base().expect_unmapped(
            lambda: build(BuildRequest(dockerfile=APP, context=ctx, tags=("app",)), root=root)
        )
        dockerfile = APP_SINGLE
    build(BuildRequest(dockerfile=dockerfile, context=ctx, tags=("app",)), root=root)
    with Store.open(root) as opened:
        yield opened
    wb.base().release(base)


def test_the_image_config_applies(store: Store) -> None:
    if wb.base().single():
        wb.base().expect_unmapped(lambda: run(store, "app"))  # USER nobody
        return
    result = run(store, "app")
    assert isinstance(result, RunResult) and result.ok
    assert result.text == "hello world from /app as 65534\n"
    assert result.stdout == result.output and result.stderr == b""


def test_cmd_replaces_cmd_and_keeps_the_entrypoint(store: Store) -> None:
    if wb.base().single():
        wb.base().expect_unmapped(lambda: run(store, "app", ["echo override"]))  # as nobody
        return
    result = run(store, "app", ["echo override; cat file"], env=["WHO=you"])
    assert result.text == "override\ndata\n"
    overridden = run(store, "app", ["echo $GREETING $WHO"], env=["WHO=you"])
    assert overridden.text == "hello you\n"


def test_user_workdir_and_exit_code(store: Store) -> None:
    if wb.base().single():
        wb.base().expect_unmapped(lambda: run(store, "busybox", ["id"], user="nobody"))
        return
    result = run(store, "busybox", ["sh", "-c", "id -u; pwd; echo oops >&2; exit 5"],
                       user="nobody", workdir="/tmp")  # fmt: skip
    assert result.exit_code == 5 and not result.ok
    assert result.stdout == b"65534\n/tmp\n"
    assert result.stderr == b"oops\n"
    assert sorted(result.output.splitlines()) == sorted([b"65534", b"/tmp", b"oops"])


def test_network_is_off_unless_asked(store: Store) -> None:
    links = run(store, "busybox", ["ip", "-o", "link"])
    assert [line.split()[1] for line in links.text.splitlines()] == ["lo:"]
    host = run(store, "busybox", ["ip", "-o", "link"], network="default")
    assert len(host.text.splitlines()) > 1  # the host's interfaces, as a RUN step sees them


def test_nothing_is_kept(store: Store) -> None:
    before = wb.tree(store.root / "snapshots")
    wrote = run(store, "busybox", ["sh", "-c", "echo x > /etc/new; rm /etc/passwd; ls /etc"])
    # hosts and resolv.conf are the sandbox's own mounts, as in a RUN step
    assert wrote.text == "group\nhosts\nnew\nresolv.conf\n"  # changed inside the run...
    after = run(store, "busybox", ["ls", "/etc"])
    assert after.text == "group\nhosts\npasswd\nresolv.conf\n"  # ...and gone with it
    assert wb.tree(store.root / "snapshots") == before
    assert wb.store_leftovers(store.root) == []
    assert wb.live_leases(store.root) == 0
    if wb.base().rootless():  # the same check, where the files can be read
        assert wb.base().inside(wb.unswept_problems, store.root) == set()
    else:
        assert check(store).clean


def test_output_streams_as_it_comes(store: Store) -> None:
    chunks: list[tuple[int, bytes, float]] = []
    started = time.monotonic()
    run(
        store,
        "busybox",
        ["sh", "-c", "echo one; sleep 0.5; echo two >&2"],
        on_output=lambda fd, data: chunks.append((fd, data, time.monotonic() - started)),
    )
    assert [(fd, data) for fd, data, _ in chunks] == [(1, b"one\n"), (2, b"two\n")]
    assert chunks[1][2] - chunks[0][2] >= 0.4  # the first arrived before the sleep ended


def test_cancel_stops_the_command(store: Store) -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    started = time.monotonic()
    result = run(store, "busybox", ["sleep", "30"], cancel=cancel)
    timer.join()
    assert result.canceled and time.monotonic() - started < 15
    assert wb.store_processes(store.root) == []
    assert wb.live_leases(store.root) == 0


def test_errors(store: Store) -> None:
    with pytest.raises(ImageError, match="no such image: nope"):
        run(store, "nope")
    with pytest.raises(UsageError, match="no command specified"):
        run(store, "busybox")
    with pytest.raises(UsageError, match="invalid network"):
        run(store, "busybox", ["true"], network="wifi")
    with pytest.raises(UsageError, match="invalid environment variable"):
        run(store, "busybox", ["true"], env=["NOEQUALS"])


def test_image_command() -> None:
    config: dict[str, Any] = {"config": {"Entrypoint": ["/entry"], "Cmd": ["a", "b"]}}
    assert image_command(config) == ("/entry", "a", "b")
    assert image_command(config, ["c"]) == ("/entry", "c")
    assert image_command({"config": {"Cmd": ["x"]}}) == ("x",)
    with pytest.raises(UsageError):
        image_command({})
