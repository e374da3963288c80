"""Shared fixtures for the build integration tests: real builds, real containers, real stores.

Test modules load this file by path (the tests are not a package) and re-export the fixtures::

    base = load_base()          # see the six lines at the top of tests/engine/test_build.py
    busybox_archive = base.busybox_archive
    bk = base.bk

* ``busybox_archive`` (session): the busybox rootfs tar made once by ``scripts/busybox-rootfs.sh``,
  imported once and saved as a docker archive, so every store loads the *same* image (same
  config blob, same ID: what the reproducibility tests need).
* ``bk`` (function): a fresh store root with ``busybox:latest`` loaded, a context directory and
  helpers to build through the Python API and through the real ``nbbuild`` command.

These tests run as root (as ``make test`` does first) or as a normal user whose builds run
rootless, as root of a user namespace (``scripts/rootless-tests.sh`` runs them again as one):
``range`` (the user has a subordinate ID range: builds must give what root's give) or ``single``
(only the user's own ID is mapped: a build that needs another ID must fail with the clear error,
:func:`expect_unmapped`; everything else must pass unchanged). See :func:`mapping`. A rootless
test process stays outside the namespace, as a notebook kernel does (its builds are forwarded
to a helper process inside one); what it must do on snapshot files, which belong to the user's
subordinate IDs, it does through :func:`inside`, and a rootless local output's owners are
checked in its tar twin (:func:`with_owner_twins`). Missing packages are installed with apt-get
as root; anything that makes a build impossible fails the tests with a clear message (never a
skip).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from engine.build import BuildRequest, BuildResult, OutputSpec, build
from engine.errors import NbbuildError, StepFailed
from engine.events import ListReporter
from engine.images.archive import import_rootfs, load, save_docker
from engine.images.store import ImageStore
from engine.store.store import Store
from engine.userns.errors import IdMappingError

if TYPE_CHECKING:
    from engine.userns.helper import Helper

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "busybox-rootfs.sh"
BASE_IMAGE = "busybox:latest"

_cache: dict[str, Path] = {}
_cache_lock = threading.Lock()


# -- root or rootless -------------------------------------------------------------------------


@functools.cache
def _mapping() -> str:
    wanted = os.environ.get("NBBUILD_TEST_MAPPING", "")
    if os.geteuid() == 0:
        return "root"
    from engine.userns.idmap import current_mapping
    from engine.userns.namespace import userns_error

    error = userns_error()
    if error is not None:
        raise RuntimeError(
            f"build tests run by a normal user build rootless, but {error} "
            "(`nbbuild doctor` says why)"
        )
    ids = current_mapping()
    found = "single" if ids.single else "range"
    if wanted and wanted != found:
        raise RuntimeError(
            f"NBBUILD_TEST_MAPPING={wanted}, but this user's builds map {ids.describe()} "
            f"({found}): check /etc/subuid, /etc/subgid and newuidmap"
        )
    return found


def mapping() -> str:
    """How this test process's builds run: ``root`` (real root, as ``make test`` first runs
    the suite), ``range`` (a normal user with a subordinate ID range: container root is the
    user, container IDs 1.. its range) or ``single`` (a normal user without one: only
    container root is mapped). Fails, never skips, when a normal user cannot create a user
    namespace, or when ``NBBUILD_TEST_MAPPING`` (set by scripts/rootless-tests.sh) names
    another case than this user's /etc/subuid gives."""
    try:
        found = _mapping()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    if found != "root" and os.geteuid() == 0:
        # The rootless tests' process stays outside, as a notebook kernel does; nbbuild.cli.main
        # called in a process without threads (a %nbbuild magic in a test's shell) moves the
        # whole process into a user namespace for good, and every later test would run there.
        pytest.fail(
            "this test process has entered a user namespace: nbbuild.cli.main called in-process "
            "by a process without threads enters one (nbbuild.cli._rootless; e.g. %nbbuild "
            "images in tests/nbbuild/test_magics.py); the rootless tests must run outside one, "
            "as a notebook kernel does"
        )
    return found


def rootless() -> bool:
    """A normal user's run (``range`` or ``single``)."""
    return mapping() != "root"


def single() -> bool:
    """Only the user's own ID is mapped: a build that needs another ID must fail clearly."""
    return mapping() == "single"


def check_unmapped_message(text: str) -> None:
    """``text`` is the clear error of a step that needs an ID a single mapping lacks: it says
    a subordinate range is missing and how to get one (Debian's uidmap)."""
    assert "subordinate ID range" in text and "uidmap" in text, text


def expect_unmapped(run: Callable[[], object]) -> NbbuildError:
    """``run()`` (a build that needs IDs besides root's) fails with the clear error, as it
    must with a single mapping: an :class:`IdMappingError` where the engine sets an owner
    (``COPY --chown``, ``WORKDIR`` as a ``USER``, an archive's owners), the
    :class:`StepFailed` of the RUN step where a container needed the ID (``USER``, a
    ``chown`` in the step), saying the same. Returns the error."""
    with pytest.raises((IdMappingError, StepFailed)) as info:
        run()
    check_unmapped_message(str(info.value))
    return info.value


# Registers a test helper module (loaded by path under a private name, as this one) in the
# rootless helper process, under the same name, so its functions can be called there and what
# they return unpickles here.
_BOOT = """
import importlib.util, sys
if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
"""


class _Inside:
    """One helper process inside a user namespace with the user's mapping (the engine's own
    :class:`engine.userns.helper.Helper`, as a notebook kernel's builds use), for the test
    process's own work on snapshot files; one call at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.helper: Helper | None = None
        self.loaded: set[str] = set()

    def call(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        capture: bool = False,
    ) -> Any:
        from engine.userns.helper import Helper

        module = func.__module__
        with self.lock:
            if self.helper is None or not self.helper.alive:
                self.helper = Helper()
                self.loaded.clear()
            if module.startswith("nbbuild_tests_") and module not in self.loaded:
                path = sys.modules[module].__file__
                self.helper.call("builtins:exec", (_BOOT, {"name": module, "path": path}), {})
                self.loaded.add(module)
            return self.helper.call(
                f"{module}:{func.__qualname__}", args, kwargs, capture=capture
            )

    def close(self) -> None:
        if self.helper is not None:
            self.helper.close()
            self.helper = None


_inside = _Inside()
atexit.register(_inside.close)


def inside(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` where builds touch their files: here as root; in a rootless
    run in a helper process that is root of a user namespace with the user's mapping. There
    the files of snapshots (owned by the user's subordinate IDs) can be read and removed, and
    ``stat`` shows container IDs, as root sees them. ``func`` is a module-level function of a
    module the helper can import (the standard library, engine, or a test helper module
    loaded by path under an ``nbbuild_tests_`` name); arguments and result are pickled."""
    if not rootless():
        return func(*args, **kwargs)
    return _inside.call(func, args, kwargs)


def inside_printing(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """:func:`inside`, with what ``func`` prints there printed here (for ``capsys``)."""
    if not rootless():
        return func(*args, **kwargs)
    return _inside.call(func, args, kwargs, capture=True)


def image_diff_ids(root: Path, ref: str, count: int) -> tuple[list[str], list[str], list[str]]:
    """(layers, diff IDs the image store recorded, diff IDs computed now from the snapshots) of
    the top ``count`` layers of image ``ref`` in the store at ``root``; call through
    :func:`inside` (the snapshots' files)."""
    from engine.images.layer import layer_diff_id
    from engine.images.store import ImageStore
    from engine.store.store import Store

    with Store.open(root) as store:
        image = ImageStore(store).get(ref)
        assert image is not None, ref
        top = list(image.layers[-count:])
        computed = [layer_diff_id(store.diff_path(s)).diff_id for s in top]
        return list(image.layers), list(image.diff_ids[-count:]), computed


def cli_function(argv: list[str]) -> int:
    """``nbbuild ARGV`` by its command's function in this process: no user namespace is
    entered, errors are raised, not printed. Tests of the CLI's functions call it through
    :func:`inside_printing` (rootless, a store's files are the subordinate IDs')."""
    from nbbuild.cli import _parser

    args = _parser().parse_args(argv)
    code: int = args.run(args)
    return code


def _give_back(path: str) -> None:
    """In the namespace: everything under ``path`` to container root (the user outside), and
    writable by it, so the user can delete it."""
    import stat as stat_

    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if (st.st_uid, st.st_gid) != (0, 0):
                os.lchown(full, 0, 0)
            if stat_.S_ISDIR(st.st_mode) and st.st_mode & 0o700 != 0o700:
                os.chmod(full, stat_.S_IMODE(st.st_mode) | 0o700)  # before os.walk enters it


def release(path: Path) -> None:
    """After a rootless test: what its builds left under ``path`` (snapshots owned by
    subordinate IDs) is given back to the user, so pytest can remove its temporary directory
    as usual (the files stay for a look at a failure). Nothing to do as root."""
    if rootless() and path.exists():
        inside(_give_back, str(path))


# -- owners in local outputs -------------------------------------------------------------------

OWNERS_TAR = ".owners.tar"


def owners_tar(dest: Path) -> Path:
    """The ``type=tar`` twin :meth:`Bk.build` adds to a rootless ``type=local`` output."""
    return dest.with_name(dest.name + OWNERS_TAR)


def with_owner_twins(outputs: list[Any]) -> list[Any]:
    """Rootless, ``--output type=local`` writes every file as the user (as BuildKit's local
    exporter does: files of the subordinate IDs could not even be deleted by the user), while
    a tar output keeps the build's owners: each local output gets a tar twin, the owners
    :func:`owner` and the tree helpers report. Unchanged as root."""
    if not rootless():
        return outputs
    twins = []
    for output in outputs:
        try:
            spec = OutputSpec.parse(output) if isinstance(output, str) else output
        except Exception:
            continue  # the build itself says what is wrong with it
        if spec.type == "local" and spec.dest:
            twin = owners_tar(Path(spec.dest))
            twin.parent.mkdir(parents=True, exist_ok=True)
            twins.append(f"type=tar,dest={twin}")
    return [*outputs, *twins]


def _member_name(name: str) -> str:
    name = name[2:] if name.startswith("./") else name
    return name.rstrip("/") or "."


def tar_owners(tar: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (uid, gid)}`` of a filesystem tar (``.`` is the root)."""
    import tarfile

    with tarfile.open(tar) as archive:
        return {_member_name(m.name): (m.uid, m.gid) for m in archive.getmembers()}


def exported_owners(dest: Path) -> dict[str, tuple[int, int]] | None:
    """Rootless: the build's owners of the local output ``dest`` (from its tar twin), after
    checking that the export itself is all the user's; None as root (the export keeps them)."""
    if not rootless():
        return None
    twin = owners_tar(dest)
    assert twin.is_file(), f"{dest}: not a local output of Bk.build (no {twin.name})"
    me = (os.getuid(), os.getgid())
    paths = [dest]
    for dirpath, dirnames, filenames in os.walk(dest):
        paths += [Path(dirpath) / n for n in [*dirnames, *filenames]]
    for path in paths:
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == me, f"{path}: a rootless local export is the user's"
    owners = tar_owners(twin)
    owners.setdefault(".", (0, 0))
    return owners


def owner(path: Path) -> tuple[int, int]:
    """(uid, gid) of ``path`` in a ``type=local`` output, as the build made it: as root the
    export keeps owners; rootless they come from the output's tar twin
    (:func:`with_owner_twins`)."""
    path = Path(path)
    if not rootless():
        st = os.lstat(path)
        return st.st_uid, st.st_gid
    for dest in (path, *path.parents):
        if dest.name and owners_tar(dest).is_file():
            owners = exported_owners(dest)
            assert owners is not None
            return owners[path.relative_to(dest).as_posix()]
    raise AssertionError(f"{path} is not in a local output of Bk.build")


def ensure_packages(*packages: str) -> None:
    """apt-get install the Debian packages that are missing, or fail saying why not."""
    missing = [
        p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.fail(f"build tests need {' '.join(missing)}: as root, `make setup` installs them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            pytest.fail(
                f"cannot install {' '.join(missing)}: {' '.join(argv)}: {proc.stderr[-500:]}"
            )


def _make_archive(work: Path) -> Path:
    mapping()  # real root, or a user whose builds can run rootless (else: fail saying why)
    ensure_packages("busybox-static", "crun", "runc")
    archive: Path = inside(_busybox_archive, work)
    return archive


def rootfs_tar(work: Path) -> Path:
    """``work/rootfs.tar``: the busybox root filesystem of scripts/busybox-rootfs.sh (numeric
    owners: root's, so it is made where the builds run, :func:`inside`)."""
    made: Path = inside(_rootfs_tar, work)
    return made


def _rootfs_tar(work: Path) -> Path:
    tar = work / "rootfs.tar"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(work / "rootfs"), str(tar)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return tar


def _busybox_archive(work: Path) -> Path:
    """The rootfs (files of root, so made where the builds run) imported and saved."""
    rootfs_tar = _rootfs_tar(work)
    archive = work / "busybox-image.tar"
    store = Store.open(work / "template-root")
    try:
        images = ImageStore(store)
        import_rootfs(images, rootfs_tar, BASE_IMAGE)
        save_docker(images, [BASE_IMAGE], archive)
    finally:
        store.close()
    return archive


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A docker archive of ``busybox:latest`` (made once per session, shared by every module)."""
    with _cache_lock:
        if "archive" not in _cache:
            _cache["archive"] = _make_archive(tmp_path_factory.mktemp("busybox"))
        return _cache["archive"]


def fresh_root(path: Path, archive: Path) -> Path:
    """A new store at ``path`` with ``busybox:latest`` loaded from ``archive`` (unpacked where
    the builds run: see :func:`inside`)."""
    made: Path = inside(_load_into, path, archive)
    return made


def _load_into(path: Path, archive: Path) -> Path:
    store = Store.open(path)
    try:
        load(ImageStore(store), archive)
    finally:
        store.close()
    return path


@dataclass
class CliRun:
    """One run of the real ``nbbuild`` command."""

    code: int
    stdout: str
    stderr: str


@dataclass
class Bk:
    """A fresh store with busybox, a build context, and ways to build into them."""

    root: Path
    ctx: Path
    tmp: Path
    archive: Path
    reporters: list[ListReporter] = field(default_factory=list)

    def write(self, files: Mapping[str, str | bytes], *, ctx: Path | None = None) -> None:
        """Write files (relative paths) into the context (parents created)."""
        base = ctx or self.ctx
        for rel, content in files.items():
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)

    def request(self, dockerfile: str, **kw: Any) -> BuildRequest:
        outputs = kw.pop("outputs", ())
        kw["outputs"] = tuple(OutputSpec.parse(o) if isinstance(o, str) else o for o in outputs)
        if "tags" in kw and isinstance(kw["tags"], str):
            kw["tags"] = (kw["tags"],)
        kw.setdefault("context", self.ctx)
        return BuildRequest(dockerfile=dockerfile, **kw)

    def build(self, dockerfile: str, *, root: Path | None = None, **kw: Any) -> BuildResult:
        """Build through the Python API (events kept in ``self.reporters``); rootless, each
        ``type=local`` output gets a tar twin (:func:`with_owner_twins`)."""
        if kw.get("outputs"):
            kw["outputs"] = with_owner_twins(list(kw["outputs"]))
        reporter = ListReporter()
        self.reporters.append(reporter)
        return build(self.request(dockerfile, **kw), root=root or self.root, reporter=reporter)

    def single_refuses(self, dockerfile: str, **kw: Any) -> bool:
        """With a single ID mapping: True, after checking that building ``dockerfile``
        (which needs other IDs than root's: ``USER``, ``chown``, ``--chown``) fails with the
        clear error (:func:`expect_unmapped`); the test ends there. False otherwise."""
        if not single():
            return False
        expect_unmapped(lambda: self.build(dockerfile, **kw))
        return True

    def new_root(self, name: str) -> Path:
        """Another fresh store (with the same busybox image)."""
        return fresh_root(self.tmp / name, self.archive)

    def cli(
        self,
        *args: str,
        stdin: str | None = None,
        root: Path | None = None,
        cwd: Path | None = None,
        timeout: float = 300,
    ) -> CliRun:
        """Run ``python -m nbbuild ARGS`` in a real process with ``NBBUILD_ROOT`` set."""
        env = {**os.environ, "NBBUILD_ROOT": str(root or self.root)}
        env.pop("NO_COLOR", None)
        proc = subprocess.run(
            [sys.executable, "-m", "nbbuild", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=str(cwd or self.tmp),
            timeout=timeout,
        )
        return CliRun(proc.returncode, proc.stdout, proc.stderr)

    def plan_cli(self, dockerfile: str, *extra: str, ctx: Path | None = None) -> dict[str, Any]:
        """``nbbuild plan --format json`` of ``dockerfile`` (read from stdin) over the context."""
        run = self.cli(
            "plan", "--format", "json", "-f", "-", *extra, str(ctx or self.ctx), stdin=dockerfile
        )
        assert run.code == 0, run.stderr
        doc: dict[str, Any] = json.loads(run.stdout)
        return doc

    def plan_api(self, dockerfile: str, **kw: Any) -> dict[str, Any]:
        """``engine.plan.plan`` against this store (its images resolve ``FROM``), as JSON."""
        from engine.images.store import resolver
        from engine.plan import PlanRequest, plan

        kw.setdefault("context", self.ctx)
        store = Store.open(self.root)
        try:
            result = plan(
                PlanRequest(dockerfile=dockerfile, **kw),
                store_root=self.root,
                resolve_image=resolver(ImageStore(store)),
            )
        finally:
            store.close()
        doc: dict[str, Any] = json.loads(json.dumps(result.to_json()))
        return doc


@pytest.fixture
def bk(tmp_path: Path, busybox_archive: Path) -> Iterator[Bk]:
    """A fresh store root with ``busybox:latest`` and an empty context directory."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    root = fresh_root(tmp_path / "root", busybox_archive)
    yield Bk(root=root, ctx=ctx, tmp=tmp_path, archive=busybox_archive)
    release(tmp_path)


def statuses(result: BuildResult) -> dict[str, str]:
    """``{step name: status}`` for the numbered steps (FROM, WORKDIR, RUN, COPY, ADD)."""
    return {s.name: s.status for s in result.steps if s.step is not None}


def status_list(result: BuildResult) -> list[tuple[str, str]]:
    """``[(step name, status)]`` for the numbered steps, in definition order."""
    return [(s.name, s.status) for s in result.steps if s.step is not None]


def layer_files(store_root: Path, result: BuildResult) -> list[Path]:
    """The diff directories of the result's layers, bottom first."""
    store = Store.open(store_root)
    try:
        return [store.diff_path(s) for s in result.layers]
    finally:
        store.close()
