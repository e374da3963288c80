"""Executes single ops for the solver: RUN in a container, file ops, downloads, checksums.

The runner is the solver's only contact with the OS: containers (:mod:`engine.executor`), layer
directories (:mod:`engine.snapshot`, :mod:`engine.fileops`) and remote sources. Every path it
writes is a fresh diff directory handed out by the store.
"""

from __future__ import annotations

import collections
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.context.tree import ContextTree
from engine.digest import sha256_of_json
from engine.errors import BuildCanceled, BuildError, EntitlementError, StepFailed
from engine.executor.errors import ExecutorError
from engine.executor.process import Mount as ProcessMount
from engine.executor.process import ProcessSpec
from engine.graph.ops import (
    CacheMap,
    ContentSpec,
    ExecOp,
    FileOp,
    GitSource,
    HttpSource,
    ImageSource,
)
from engine.graph.vertex import Vertex
from engine.snapshot.layers import chain_view
from engine.snapshot.overlay import OverlayMount
from engine.snapshot.snapshotter import run_step
from engine.store.store import Lease, Store
from engine.store.trees import remove_later

if TYPE_CHECKING:
    from engine.executor.process import Executor
    from engine.images.store import ImageStore
    from engine.solver.solver import Loaded

__all__ = ["LOG_TAIL_LINES", "OpRunner", "Output"]

LOG_TAIL_LINES = 20


@dataclass(frozen=True, slots=True)
class Output:
    """What executing an op produced: the base layers and the new diff (None: no new layer)."""

    base: tuple[str, ...]
    diff: Path | None


class OpRunner:
    """Runs ops against a store.

    Args:
        store: the store (diff directories, layer paths, remembered checksums).
        images: the local image store (``FROM`` layers).
        executor: runs RUN steps; None where containers are unavailable (RUN is then refused).
            A callable is called once, when the first RUN needs it (so a build that runs no
            container never probes the host for a runtime); it returns the executor or None.
        allow: granted entitlements (``network.host``, ``security.insecure``).
        filename: the Dockerfile's name, for error messages.
        on_log: called with (vertex, stream, data) for every chunk a step prints.
        workdir: where downloads and checkouts live during the build.
    """

    def __init__(
        self,
        store: Store,
        images: ImageStore,
        executor: Executor | Callable[[], Executor | None] | None,
        *,
        allow: frozenset[str] = frozenset(),
        filename: str = "Dockerfile",
        on_log: Callable[[Vertex, int, bytes], None] = lambda v, s, d: None,
        workdir: Path,
    ) -> None:
        self.store = store
        self.images = images
        self._executor: Executor | None = None
        self._executor_factory: Callable[[], Executor | None] | None = None
        if executor is None or hasattr(executor, "run"):
            self._executor = executor
        else:
            self._executor_factory = executor
        self.allow = allow
        self.filename = filename
        self.on_log = on_log
        self.workdir = workdir
        self._lock = threading.Lock()
        self._executor_lock = threading.Lock()

    @property
    def executor(self) -> Executor | None:
        """The executor, made on first use when it was given as a factory."""
        with self._executor_lock:
            if self._executor_factory is not None:
                self._executor = self._executor_factory()
                self._executor_factory = None
            return self._executor

    # -- sources ----------------------------------------------------------------------

    def image_layers(self, op: ImageSource) -> tuple[str, ...]:
        image = self.images.get(op.ref)
        if image is None:
            raise BuildError(
                f"image {op.ref!r} is not in the local image store: import or load it first "
                "(nbbuild image import|load); registries arrive later"
            )
        return tuple(image.layers)

    def has_image(self, op: ImageSource) -> bool:
        return self.images.get(op.ref) is not None

    def fetch(self, op: HttpSource | GitSource) -> tuple[Path, CacheMap]:
        import tempfile  # (with random): only for a download or a checkout

        from engine.sources import git as gitsrc
        from engine.sources import http as httpsrc

        dest = Path(tempfile.mkdtemp(prefix="src-", dir=self.workdir))
        if isinstance(op, HttpSource):
            source = httpsrc.HttpSource.for_add(op.url, checksum=op.checksum)
            fetched = httpsrc.fetch(source, dest)
            return dest, op.cache_map(fetched.digest)
        ref = gitsrc.GitRef(remote=op.remote, ref=op.ref or None, subdir=op.subdir)
        # resolve_ref validates and verifies --checksum with BuildKit's words ("invalid checksum
        # … expected hex commit hash", "expected checksum to match …", against the ref's sha or
        # the commit it peels to); a full commit sha as the ref needs no network.
        checked = gitsrc.GitRef(
            remote=op.remote, ref=op.ref or None, subdir=op.subdir, checksum=op.checksum or None
        )
        commit = op.commit if op.commit and not op.checksum else gitsrc.resolve_ref(checked).commit
        gitsrc.checkout(ref, commit, dest, op.keep_git_dir)
        return dest, op.cache_map(commit)

    # -- checksums --------------------------------------------------------------------

    def checksum(self, loaded: Loaded, spec: ContentSpec) -> str | None:
        """Content checksum of selected paths of a loaded input (memoised in the store)."""
        from engine.fileops import result_checksum
        from engine.fileops.tree import DirTree

        if loaded.directory is not None:
            return result_checksum(DirTree(loaded.directory), spec)
        if not loaded.layers:
            return None
        spec_digest = sha256_of_json(spec.to_json())
        result = loaded.result
        if result is not None:
            found = self.store.get_checksum(result, spec_digest)
            if found is not None:
                return found
        from engine.fileops.tree import LayerTree

        value = result_checksum(LayerTree(self._paths(loaded.layers)), spec)
        if result is not None:
            self.store.set_checksum(result, spec_digest, value)
        return value

    def _paths(self, layers: Sequence[str]) -> list[Path]:
        return [self.store.diff_path(s) for s in layers]

    # -- exec -------------------------------------------------------------------------

    def run_exec(
        self,
        vertex: Vertex,
        op: ExecOp,
        inputs: Sequence[Loaded],
        lease: Lease,
        sink: Callable[[int, bytes], None],
        cancel: threading.Event,
    ) -> Output:
        name = vertex.meta.name
        if op.network == "host" and "network.host" not in self.allow:
            raise EntitlementError(
                f"{name}: network.host is not allowed: pass --allow network.host to grant it"
            )
        if op.security == "insecure" and "security.insecure" not in self.allow:
            raise EntitlementError(
                f"{name}: security.insecure is not allowed: pass --allow security.insecure"
            )
        extra: list[ProcessMount] = []
        for mount in op.mounts:
            if mount.output:
                continue
            if mount.dest == "/dev/pipes/" and mount.input >= 0:
                # The inline script of a heredoc RUN with a shebang (an internal mount).
                script = inputs[mount.input]
                extra.append(ProcessMount("/dev/pipes", self.store.diff_path(script.layers[-1])))
                continue
            raise BuildError(
                f"{name}: RUN --mount=type={mount.type} is not supported yet "
                "(mounts arrive in a later release); remove the --mount flag to build"
            )
        executor = self.executor
        if executor is None:
            raise BuildError(f"{name}: this host cannot run containers (see nbbuild doctor)")
        root = inputs[0] if inputs and op.mounts and op.mounts[0].input == 0 else None
        base = root.layers if root is not None else ()
        lowers = self._paths(base)
        # the upper dir, overlayfs's work dir, and the empty lower of a scratch RUN
        upper, work, *scratch = self.store.new_diff_dirs(lease, 2 if lowers else 3)
        _premake_mountpoints(lowers, upper)
        empty: Path | None = None
        if not lowers:
            empty = scratch[0]
            lowers = [empty]
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        partial = {1: b"", 2: b""}

        def stream(fd: int) -> Callable[[bytes], None]:
            def write(data: bytes) -> None:
                sink(fd, data)
                buf = partial[fd] + data
                *lines, partial[fd] = buf.split(b"\n")
                for line in lines:
                    tail.append(line.decode("utf-8", "replace"))

            return write

        spec = ProcessSpec(
            args=op.args,
            env=op.env + op.proxy_env,
            cwd=op.cwd,
            user=op.user,
            network=op.network,
            mounts=tuple(extra),
            privileged=op.security == "insecure",
        )
        try:
            # overlayfs, or a copy of the layers where it is refused (engine.snapshot.snapshotter)
            result = run_step(
                executor,
                spec,
                OverlayMount(tuple(lowers), upper, work),
                stdout=stream(1),
                stderr=stream(2),
                cancel=cancel,
            )
        except ExecutorError as exc:
            # The container did not start (unknown user, bad working directory, missing
            # executable): say which step, like a failing RUN.
            shutil.rmtree(upper, ignore_errors=True)
            raise StepFailed(
                name,
                str(exc),
                line=vertex.meta.line,
                logs=tuple(tail),
                filename=self.filename,
            ) from None
        finally:
            # overlayfs's scratch dir (and the empty lower of a scratch RUN): nothing reads
            # them now, their removal need not delay the step (the lease's end removes what is
            # still there, synchronously)
            remove_later(work)
            if empty is not None:
                remove_later(empty)
        for fd in (1, 2):
            if partial[fd]:
                tail.append(partial[fd].decode("utf-8", "replace"))
        if result.cancelled or cancel.is_set():
            shutil.rmtree(upper, ignore_errors=True)
            raise BuildCanceled(f"{name}: canceled")
        if result.exit_code != 0:
            shutil.rmtree(upper, ignore_errors=True)
            command = " ".join(op.args)
            raise StepFailed(
                name,
                f'process "{command}" did not complete successfully: exit code: {result.exit_code}'
                + _single_id_hint(tail),
                line=vertex.meta.line,
                exit_code=result.exit_code,
                logs=tuple(tail),
                filename=self.filename,
            )
        return Output(base=base, diff=upper)

    # -- file -------------------------------------------------------------------------


    def run_file(self, vertex: Vertex, op: FileOp, inputs: Sequence[Loaded], lease: Lease) -> Output:
        from engine.fileops import apply_file_op
        from engine.fileops.tree import DirTree, LayerTree, ReadTree

        base: tuple[str, ...] = ()
        dest: list[Path] | None = None
        if op.dest_input >= 0:
            base = inputs[op.dest_input].layers
            dest = self._paths(base) if base else None
        sources: dict[int, ReadTree] = {}
        for index, loaded in enumerate(inputs):
            if index == op.dest_input:
                continue
            if loaded.local is not None:
                sources[index] = self._context_tree(loaded)
            elif loaded.directory is not None:
                sources[index] = DirTree(loaded.directory)
            elif loaded.layers:
                sources[index] = LayerTree(self._paths(loaded.layers))
        out = self.store.new_diff_dir(lease)
        try:
            apply_file_op(op, dest=dest, sources=sources, out=out)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        return Output(base=base, diff=out)

    def _context_tree(self, loaded: Loaded) -> ContextTree:
        from engine.context.dockerignore import load_ignore_rules

        assert loaded.local is not None
        root = Path(loaded.local.path)
        dockerfile = self.dockerfile_path if loaded.local.name == "context" else None
        extra = self.context_excludes if loaded.local.name == "context" else ()
        return ContextTree(root, load_ignore_rules(root, dockerfile, extra))

    dockerfile_path: Path | None = None
    context_excludes: tuple[str, ...] = ()


# The runtime creates mount points for /dev, /proc and /sys when the image has none; crun makes
# /dev with mode 01755, where BuildKit's runc leaves 0755. Making them first, as runc would, keeps
# the committed layer identical to BuildKit's.
_MOUNTPOINTS = ("dev", "proc", "sys")


def _premake_mountpoints(lowers: Sequence[Path], upper: Path) -> None:
    import os

    present = chain_view(lowers) if lowers else None  # the executor's view of this chain
    for name in _MOUNTPOINTS:
        if present is not None and present.lookup("/" + name) is not None:
            continue
        path = upper / name
        path.mkdir(mode=0o755)
        os.chmod(path, 0o755)


def _single_id_hint(tail: Sequence[str]) -> str:
    """In a rootless build that maps only the user's own ID, ``chown 1000 f`` or apt dropping
    to ``_apt`` fails with a bare EINVAL ("Invalid argument"): say what is missing."""
    from engine.userns.namespace import current

    mapping = current()
    if mapping is None or not mapping.single:
        return ""
    if not any("Invalid argument" in line or "Operation not permitted" in line for line in tail):
        return ""
    from engine.userns.errors import SETUP_HINT

    return (
        " (this rootless build maps only your own ID, so the step cannot use other users or "
        f"groups: {SETUP_HINT})"
    )
