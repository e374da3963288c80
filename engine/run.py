"""Run a command in a stored image, like ``docker run --rm``: nothing of the run is kept.

The image's layer directories are the overlay's lower layers, read-only and shared with every
build that uses them; a throwaway upper directory (a diff directory of a lease, so a killed
process leaves nothing that the next :meth:`~engine.store.store.Store.open` does not sweep)
takes whatever the command writes and is removed afterwards. The command runs in the same
sandbox as a ``RUN`` step (:class:`~engine.executor.oci.OciExecutor`), with the image's config
(``Env``, ``WorkingDir``, ``User``, ``Entrypoint`` + ``Cmd``) as Docker applies it, and with no
network unless asked: a quick look inside an image should not reach out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from engine.executor.process import Executor, Network
    from engine.store.store import Store

__all__ = ["RunResult", "image_command", "run_image", "run_image_at"]

_NETWORKS = ("none", "default", "host")


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended and what it printed.

    Attributes:
        exit_code: the command's exit status (128+N when killed by signal N).
        output: stdout and stderr interleaved in the order they arrived (what a terminal shows).
        stdout: stdout alone.
        stderr: stderr alone.
        canceled: the run was canceled and the command killed.
        duration: wall-clock seconds.
    """

    exit_code: int
    output: bytes
    stdout: bytes
    stderr: bytes
    canceled: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """Exit code 0 and not canceled."""
        return self.exit_code == 0 and not self.canceled

    @property
    def text(self) -> str:
        """The output decoded as UTF-8 (undecodable bytes replaced)."""
        return self.output.decode("utf-8", "replace")


def image_command(config: dict[str, Any], cmd: Sequence[str] = ()) -> tuple[str, ...]:
    """The argv Docker runs: ``Entrypoint`` + (``cmd`` if given, else the image's ``Cmd``).

    Raises:
        UsageError: the image has neither an entrypoint nor a command, and none was given.
    """
    inner = config.get("config") or {}
    entrypoint = tuple(inner.get("Entrypoint") or ())
    args = tuple(cmd) if cmd else tuple(inner.get("Cmd") or ())
    argv = entrypoint + args
    if not argv:
        raise UsageError("no command specified: the image has no CMD or ENTRYPOINT; give one")
    return argv


def _env(config: dict[str, Any], extra: Sequence[str]) -> tuple[str, ...]:
    env: dict[str, str] = {}
    for item in [*((config.get("config") or {}).get("Env") or ()), *extra]:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise UsageError(f"invalid environment variable {item!r}: expected KEY=VALUE")
        env[key] = value
    return tuple(f"{k}={v}" for k, v in env.items())


def run_image_at(root: Path, image: str, cmd: Sequence[str] = (), **options: Any) -> RunResult:
    """:func:`run_image` on the store at ``root`` (options as there, but ``executor``). For a
    normal user it runs in a helper inside a user namespace, as builds do: the image's
    snapshot files belong to the user's subordinate IDs."""
    from engine.userns.namespace import mode

    if mode() == "outside":
        from engine.userns.forward import forward

        result: RunResult = forward("engine.run:run_image_at", root, image, cmd, **options)
        return result
    from engine.store.store import Store

    with Store.open(root) as store:
        return run_image(store, image, cmd, **options)


def run_image(
    store: Store,
    image: str,
    cmd: Sequence[str] = (),
    *,
    network: str = "none",
    env: Sequence[str] = (),
    user: str | None = None,
    workdir: str | None = None,
    on_output: Callable[[int, bytes], None] | None = None,
    cancel: threading.Event | None = None,
    executor: Executor | None = None,
) -> RunResult:
    """Run ``cmd`` (default: the image's own command) in ``image``; keep nothing.

    Args:
        store: an open store holding the image.
        image: a name (``busybox``, ``app:1``), ``name@sha256:…`` or an image ID.
        cmd: the command; replaces the image's ``Cmd`` (its ``Entrypoint`` stays), as in
            ``docker run IMAGE CMD…``.
        network: ``none`` (default), ``default`` (the host's network, as a RUN step) or
            ``host``.
        env: extra ``KEY=VALUE`` variables, over the image's ``Env``.
        user: the user to run as (default: the image's ``User``, else root).
        workdir: the working directory (default: the image's ``WorkingDir``, else ``/``).
        on_output: called with (1 or 2, chunk) as the command prints.
        cancel: set it to stop the command (SIGINT, SIGTERM, then SIGKILL).
        executor: the sandbox (default: :class:`~engine.executor.oci.OciExecutor`).

    Returns:
        The exit code and the output.

    Raises:
        ImageError: no such image.
        UsageError: no command, a bad variable or network.
        CapabilityError: this host cannot run containers (see ``nbbuild doctor``).
        SandboxError: the sandbox did not start.
    """
    from engine.executor.process import ProcessSpec
    from engine.images.errors import ImageError
    from engine.images.store import ImageStore
    from engine.snapshot.overlay import OverlayMount
    from engine.snapshot.snapshotter import run_step

    if network not in _NETWORKS:
        raise UsageError(f"invalid network {network!r}: use none, default or host")
    found = ImageStore(store).get(image)
    if found is None:
        raise ImageError(f"no such image: {image} (build it with a tag, or import or load it)")
    config = found.config
    inner = config.get("config") or {}
    spec = ProcessSpec(
        args=image_command(config, cmd),
        env=_env(config, env),
        cwd=workdir or inner.get("WorkingDir") or "/",
        user=(inner.get("User") or "") if user is None else user,
        network=_network(network),
    )
    if executor is None:
        from engine.executor.oci import OciExecutor

        executor = OciExecutor()
    cancel = cancel or threading.Event()
    chunks: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def sink(fd: int) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            with lock:
                chunks.append((fd, data))
            if on_output is not None:
                on_output(fd, data)

        return write

    with store.lease(f"run {image}") as lease:
        # Both dirs belong to the lease: leaving it removes them, and a killed process's
        # lease is swept by the next open.
        upper = store.new_diff_dir(lease)
        work = store.new_diff_dir(lease)
        lowers = [store.diff_path(s) for s in found.layers]
        if not lowers:
            lowers = [store.new_diff_dir(lease)]  # scratch: an empty lower layer
        # overlayfs, or a copy of the layers where it is refused (nothing of it is kept)
        result = run_step(
            executor,
            spec,
            OverlayMount(tuple(lowers), upper, work),
            stdout=sink(1),
            stderr=sink(2),
            cancel=cancel,
            keep_diff=False,
        )
    return RunResult(
        exit_code=result.exit_code,
        output=b"".join(d for _, d in chunks),
        stdout=b"".join(d for fd, d in chunks if fd == 1),
        stderr=b"".join(d for fd, d in chunks if fd == 2),
        canceled=result.cancelled,
        duration=result.duration,
    )


def _network(value: str) -> Network:
    if value == "none":
        return "none"
    if value == "host":
        return "host"
    return "default"
