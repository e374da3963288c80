"""Where user namespaces are refused (Docker's default seccomp profile, some hosted notebooks).

Without root, every build step runs as root of a user namespace; where the process may not
create one, nbbuild runs no step on the host as it is. With ``proot`` installed, builds run
under the *degraded* PRoot worker (``engine.userns.degraded``): each step in its own root
filesystem (a view, not a security boundary), owners squashed to root, labelled as such in
the result, the progress and ``nbbuild doctor``; ``--network=none`` is refused. With
``NBBUILD_DEGRADED=0`` or without ``proot`` on ``PATH``, a build (CLI, Python API,
``%%dockerfile``) is refused with one clear message. Either way ``nbbuild plan``, cache keys,
what-if and explain keep working and ``nbbuild doctor`` says why (a seccomp filter) and how to
fix it.

Every command runs as an unprivileged user under the filter of ``no_userns.py`` (``unshare``
and ``clone`` with namespace flags fail with EPERM, ``clone3`` with ENOSYS). As root (CI), the
user is ``nbbuild-nons`` (created here) and root installs the filter before ``runuser``, as
Docker installs its profile (no ``no_new_privs``); it runs Debian's ``/usr/bin/python3`` on
this checkout and the root venv's site-packages (the venv's own python lives in root's
pyenv, which other users cannot read). Run as a normal user (``scripts/rootless-tests.sh``),
the tests use that user and its interpreter, and the filter sets ``no_new_privs``.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
TOOL = HERE / "no_userns.py"
BUSYBOX_SCRIPT = REPO / "scripts" / "busybox-rootfs.sh"
USER = "nbbuild-nons"
SYSTEM_PYTHON = "/usr/bin/python3"
TIMEOUT = 180.0

HINT_PARTS = (
    "creating a user namespace failed: Operation not permitted",
    "without root, nbbuild runs build steps as root of a user namespace",
    "this host does not allow one",
    "`nbbuild plan`, what-if and explain work without it",
    "`nbbuild doctor` says why and how to fix it",
)
# What the refusal adds, by variant: why the degraded PRoot worker did not build.
VARIANT_HINTS = {
    "off": "; NBBUILD_DEGRADED=0 turned off the degraded PRoot worker (filesystem view only, "
    "not a security boundary)",
    "no-proot": "; installing proot (apt-get install proot) would let builds run degraded "
    "(filesystem view only, not a security boundary)",
}
WORKER = (
    "proot (degraded: filesystem view only, not a security boundary; owners squashed to root; "
    "no network isolation)"
)
WARNING = "nbbuild: warning: degraded worker: this host refuses user namespaces"

WITH_RUN = """\
FROM scratch
COPY a.txt /a.txt
RUN ["/bin/true"]
"""
ONLY_COPY = """\
FROM scratch
COPY a.txt /a.txt
COPY b.txt /b.txt
"""


# -- running as the user, under the filter ----------------------------------------------------


@dataclass(frozen=True)
class Account:
    """Who the commands run as, and with which interpreter."""

    name: str
    uid: int
    gid: int
    python: str
    pythonpath: str
    as_root: bool  # this test process is root: commands go through runuser


@dataclass
class Work:
    """One test's directory, the user's: a HOME, a build context and a store.

    ``variant``: ``on`` (proot on PATH: builds run degraded), ``off`` (``NBBUILD_DEGRADED=0``)
    or ``no-proot`` (a PATH whose directories hold everything of /usr/bin but proot).
    """

    account: Account
    dir: Path
    variant: str = "on"
    shadow: Path | None = None  # the no-proot PATH directory

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def ctx(self) -> Path:
        return self.dir / "ctx"

    @property
    def store(self) -> Path:
        return self.dir / "store"

    def give(self) -> None:
        """Hand what the test wrote under the directory to the user."""
        if not self.account.as_root:
            return
        for dirpath, dirnames, filenames in os.walk(self.dir):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                os.lchown(name, self.account.uid, self.account.gid)
            if dirpath == str(self.dir):
                # The store and HOME are the user's own making (the store of a rootless
                # build holds files of its subordinate IDs): only their top directories.
                dirnames[:] = [n for n in dirnames if n not in ("store", "home")]

    def env(self) -> dict[str, str]:
        a = self.account
        env = {
            "HOME": str(self.home),
            "USER": a.name,
            "LOGNAME": a.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": a.pythonpath,
            "PYTHONDONTWRITEBYTECODE": "1",
            "NBBUILD_ROOT": str(self.store),
            "IPYTHONDIR": str(self.home / ".ipython"),
            # in the command's own process: a test user's warm server would outlive the test
            # (the server path is tested in tests/nbbuild/test_server.py, root and rootless)
            "NBBUILD_SERVER": "0",
        }
        if self.variant == "off":
            env["NBBUILD_DEGRADED"] = "0"
        elif self.variant == "no-proot":
            assert self.shadow is not None
            env["PATH"] = f"/usr/local/bin:{self.shadow}:/usr/sbin:/sbin"
        return env

    def argv(self, command: Sequence[str], *, filtered: bool) -> list[str]:
        a = self.account
        user = ["runuser", "-u", a.name, "--"] if a.as_root else []
        env = ["env", "-i", *(f"{k}={v}" for k, v in self.env().items())]
        # Root installs the filter before it becomes the user (as Docker does).
        seccomp = [sys.executable, str(TOOL)] if filtered else []
        return [*seccomp, *user, *env, *command]

    def run(
        self, *command: str, filtered: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``command`` as the user, in ``ctx``, under the filter unless ``filtered`` is False."""
        self.give()
        return subprocess.run(
            self.argv(command, filtered=filtered),
            cwd=self.ctx,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"},
        )

    def nbbuild(self, *args: str, filtered: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(self.account.python, "-m", "nbbuild", *args, filtered=filtered)

    def python(self, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.account.python, "-c", textwrap.dedent(code), *args)


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pass
    done = subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/bash", USER], capture_output=True, text=True
    )
    assert done.returncode == 0, f"useradd {USER} failed: {done.stderr}"
    return pwd.getpwnam(USER)


@pytest.fixture(scope="module")
def account() -> Account:
    """The unprivileged user the commands run as, checked able to import this checkout."""
    if shutil.which("unshare") is None:
        pytest.fail("util-linux's unshare is missing (apt-get install util-linux)")
    site = sysconfig.get_path("purelib")
    if os.geteuid() == 0:
        entry = _ensure_user()
        found = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        mine = "{}.{}".format(*sys.version_info[:2])
        assert found.stdout.strip() == mine, (
            f"{SYSTEM_PYTHON} is {found.stdout.strip() or found.stderr}, the venv is {mine}: "
            "the test user runs Debian's python on the venv's site-packages, which must match"
        )
        acct = Account(USER, entry.pw_uid, entry.pw_gid, SYSTEM_PYTHON, f"{REPO}:{site}", True)
    else:
        entry = pwd.getpwuid(os.getuid())
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        acct = Account(entry.pw_name, os.getuid(), os.getgid(), sys.executable, path, False)
    probe = subprocess.run(
        [
            *(["runuser", "-u", acct.name, "--"] if acct.as_root else []),
            "env",
            f"PYTHONPATH={acct.pythonpath}",
            acct.python,
            "-c",
            "import engine.build, nbbuild.cli, IPython",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"},
    )
    assert probe.returncode == 0, (
        f"{acct.name} cannot import this checkout ({REPO}) with {acct.python}: it must be "
        f"readable by that user: {probe.stderr[-1000:]}"
    )
    return acct


@pytest.fixture(scope="module")
def base(account: Account, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the tests' directories live: pytest's own as a normal user; as root a directory
    in /tmp (pytest's is root's, mode 0700, which the user cannot enter)."""
    if not account.as_root:
        yield tmp_path_factory.mktemp("no-userns")
        return
    path = Path(tempfile.mkdtemp(prefix="nbbuild-no-userns-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def shadow(base: Path) -> Path:
    """A PATH directory with everything of /usr/bin but proot (and /bin, /usr/local/bin and
    the sbin directories hold no proot)."""
    if shutil.which("proot") is None:
        pytest.fail("proot is not installed (apt-get install proot; the Makefile installs it)")
    path = base / "no-proot-bin"
    path.mkdir()
    for name in os.listdir("/usr/bin"):
        if name != "proot":
            os.symlink(f"/usr/bin/{name}", path / name)
    path.chmod(0o755)
    for other in ("/usr/local/bin", "/usr/sbin", "/sbin"):
        assert not os.path.exists(f"{other}/proot"), other
    return path


def _make_work(account: Account, base: Path, variant: str, shadow: Path) -> Iterator[Work]:
    w = Work(account, Path(tempfile.mkdtemp(dir=base)), variant, shadow)
    w.dir.chmod(0o755)
    w.home.mkdir()
    w.ctx.mkdir()
    (w.ctx / "Dockerfile").write_text(WITH_RUN)
    (w.ctx / "a.txt").write_text("a\n")
    (w.ctx / "b.txt").write_text("b\n")
    w.give()
    yield w
    assert not _processes(w), "processes of the test are still running"
    # The directory itself is in root's (as root); what is in it must all be the user's to delete.
    removed = w.run("find", str(w.dir), "-mindepth", "1", "-delete", filtered=False)
    assert removed.returncode == 0 and not os.listdir(w.dir), (
        f"{account.name} cannot delete what the test left: {removed.stderr[-2000:]}"
    )
    w.dir.rmdir()


@pytest.fixture
def work(account: Account, base: Path, shadow: Path) -> Iterator[Work]:
    """A fresh directory of the user's: HOME, a context (Dockerfile, a.txt, b.txt), a store
    path (not created); proot is on PATH. At the end the user must be able to delete all of
    it."""
    yield from _make_work(account, base, "on", shadow)


@pytest.fixture(params=["on", "off", "no-proot"])
def each(
    request: pytest.FixtureRequest, account: Account, base: Path, shadow: Path
) -> Iterator[Work]:
    """The same in each variant: degraded builds, ``NBBUILD_DEGRADED=0``, no proot."""
    yield from _make_work(account, base, request.param, shadow)


@pytest.fixture(params=["off", "no-proot"])
def refused(
    request: pytest.FixtureRequest, account: Account, base: Path, shadow: Path
) -> Iterator[Work]:
    """The same, where builds are refused: ``NBBUILD_DEGRADED=0``, or no proot on PATH."""
    yield from _make_work(account, base, request.param, shadow)


# -- what must not be left behind -------------------------------------------------------------


def _processes(work: Work) -> list[str]:
    """Live processes of the test: any whose command line, environment (HOME, NBBUILD_ROOT),
    working directory or mounts name the test's directory (a step's process under PRoot runs
    in its rootfs copy, in the store). Other processes of the same user are not this test's:
    other test runs may use the user at the same time."""
    needle = str(work.dir).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            mounts = Path(f"/proc/{name}/mountinfo").read_bytes()
        except OSError:
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
            cwd = os.fsencode(os.readlink(f"/proc/{name}/cwd"))
        except OSError:
            environ = cwd = b""
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith(("Z", "X")):
            continue
        if any(needle in part for part in (cmdline, mounts, environ, cwd)):
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{name}: {argv}")
    return found


def _store_entries(store: Path) -> list[str]:
    """What a store holds besides its empty skeleton (meta.db, snapshots/tmp, blobs/…)."""
    skeleton = {"snapshots", "snapshots/tmp", "blobs", "blobs/sha256", "blobs/ingest"}
    out = []
    for dirpath, dirnames, filenames in os.walk(store):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), store)
            if rel in skeleton or rel.startswith("meta.db"):
                continue
            out.append(rel)
    return sorted(out)


def _assert_nothing_ran(work: Work) -> None:
    """No step ran: no snapshot or blob in the store, no bundle or runtime state in the
    user's state dir, no process left, and nothing in the store the user does not own."""
    assert _store_entries(work.store) == [], "a refused build left results in the store"
    for state in (work.home / ".cache" / "nbbuild-run", work.home / ".cache" / "nbbuild"):
        assert not state.exists(), f"{state} was created"
    assert not _processes(work), _processes(work)
    if work.store.exists():
        owners = {
            os.lstat(os.path.join(d, n)).st_uid
            for d, ds, fs in os.walk(work.store)
            for n in ds + fs
        } | {work.store.stat().st_uid}
        assert owners == {work.account.uid}, f"store entries owned by {owners}"


def _assert_clear_refusal(text: str, action: str = "cannot build", variant: str = "") -> None:
    assert f"{action}: " in text, text
    for part in HINT_PARTS:
        assert part in text, (part, text)
    if variant in VARIANT_HINTS:
        assert VARIANT_HINTS[variant] in text, (variant, text)
    assert "Traceback" not in text, text


# -- the filter itself ------------------------------------------------------------------------


def test_the_filter_refuses_namespaces_as_dockers_profile_does(work: Work) -> None:
    done = work.run("unshare", "--user", "true")
    assert done.returncode != 0
    assert "Operation not permitted" in done.stderr, done.stderr
    probe = """
        import ctypes, errno, os, sys, threading
        libc = ctypes.CDLL(None, use_errno=True)
        def err(rc):
            return "ok" if rc == 0 else errno.errorcode[ctypes.get_errno()]
        user = err(libc.unshare(0x10000000))
        mount = err(libc.unshare(0x00020000))
        clone3 = err(libc.syscall(435 if os.uname().machine in ("x86_64", "aarch64") else -1, 0, 0))
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        forked = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        t = threading.Thread(target=lambda: None); t.start(); t.join()
        status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines())
        print(user, mount, clone3, forked, status["Seccomp"].strip(), os.getuid())
    """
    done = work.python(probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["EPERM", "EPERM", "ENOSYS", "7", "2", str(work.account.uid)]


# -- builds are refused, clearly ----------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [WITH_RUN, ONLY_COPY], ids=["run", "copy-only"])
def test_cli_build_is_refused_with_the_clear_message(refused: Work, dockerfile: str) -> None:
    work = refused
    (work.ctx / "Dockerfile").write_text(dockerfile)
    done = work.nbbuild("build", "--progress", "plain", "-t", "app", str(work.ctx))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: cannot build: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    _assert_clear_refusal(done.stderr, variant=work.variant)
    assert "DONE" not in done.stdout and "CACHED" not in done.stdout, done.stdout
    _assert_nothing_ran(work)


def test_cli_build_from_stdin_is_refused_too(refused: Work) -> None:
    work = refused
    work.give()
    done = work.run(
        work.account.python,
        "-m",
        "nbbuild",
        "build",
        "-q",
        "-f",
        "-",
        str(work.ctx),
        stdin=WITH_RUN,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    _assert_clear_refusal(done.stderr, variant=work.variant)
    assert done.stdout == ""
    _assert_nothing_ran(work)


def test_python_api_build_raises_userns_unavailable(refused: Work) -> None:
    work = refused
    done = work.python(
        """
        import json, sys
        from pathlib import Path
        from engine.build import BuildRequest, build
        ctx = Path(sys.argv[1])
        request = BuildRequest(dockerfile=(ctx / "Dockerfile").read_text(), context=ctx)
        try:
            build(request, root=Path(sys.argv[2]))
        except Exception as exc:
            names = [c.__name__ for c in type(exc).__mro__]
            print(json.dumps({"classes": names, "message": str(exc)}))
        else:
            print(json.dumps({"classes": [], "message": "built"}))
        """,
        str(work.ctx),
        str(work.store),
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["classes"][:4] == [
        "UsernsUnavailable",
        "CapabilityError",
        "ExecutorError",
        "NbbuildError",
    ], outcome
    assert outcome["message"].startswith("cannot build: "), outcome
    _assert_clear_refusal(outcome["message"], variant=work.variant)
    _assert_nothing_ran(work)


NOTEBOOK = """
    import json, os, sys
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "nbbuild")
    shell.run_line_magic("config", "DockerfileMagics.progress = 'none'")
    out = []
    for source in json.loads(sys.argv[1]):
        with capture_output() as cap:
            result = shell.run_cell(source)
        error = result.error_before_exec or result.error_in_exec
        out.append({
            "stdout": cap.stdout,
            "stderr": cap.stderr,
            "error": type(error).__name__ if error is not None else None,
            "message": str(error) if error is not None else None,
        })
    print(json.dumps(out))
"""


def _notebook(work: Work, *cells: str) -> list[dict[str, Any]]:
    """Run ``cells`` in a real IPython shell (as a kernel does) as the user, under the
    filter, in the context directory; each cell's output and error."""
    done = work.python(NOTEBOOK, json.dumps(cells))
    assert done.returncode == 0, (done.stdout, done.stderr)
    outcome: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome


def test_notebook_cell_shows_the_error_and_what_if_still_works(refused: Work) -> None:
    work = refused
    build, whatif, explain, history, run = _notebook(
        work,
        "%%dockerfile\n" + WITH_RUN,
        "%nbbuild whatif --changed a.txt",
        "%nbbuild explain",
        "%nbbuild history",
        "%nbbuild run busybox true",
    )
    # The cell fails with the message alone (IPython shows nbbuild's errors without a
    # traceback), not a crash of the kernel's worker thread.
    assert build["error"] == "UsernsUnavailable", build
    _assert_clear_refusal(build["message"], variant=work.variant)
    assert build["stdout"].strip() == f"UsernsUnavailable: {build['message']}", build
    assert "Traceback" not in build["stderr"], build
    # What-if plans the cell's build without a namespace: nothing is in the store.
    assert whatif["error"] is None, whatif
    lines = whatif["stdout"].splitlines()
    assert [ln.split("  ")[0] for ln in lines] == [
        "[1/2] COPY a.txt /a.txt",
        '[2/2] RUN ["/bin/true"]',
    ]
    assert all("will run" in ln for ln in lines), lines
    # Explain: there is no build to explain, and it says so.
    assert explain["error"] is None, explain
    assert explain["stdout"].strip() == "no build named 'ctx' in the history", explain
    assert history["stdout"].strip() == "no builds yet", history  # the refusal recorded nothing
    # Running an image is refused the same way, in its own words.
    assert run["error"] == "UsernsUnavailable", run
    _assert_clear_refusal(run["message"], action="cannot run the image", variant=work.variant)
    _assert_nothing_ran(work)


# -- what works without a namespace -----------------------------------------------------------


def _keys(plan_json: str) -> dict[str, str | None]:
    doc = json.loads(plan_json)
    return {v["name"]: v["cache_key"] for v in doc["vertices"]}


def test_plan_text_and_json_show_the_steps_and_their_keys(each: Work) -> None:
    work = each
    text = work.nbbuild("plan", str(work.ctx))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "target: (default)", text.stdout
    copy = next(ln for ln in lines if "[1/2] COPY a.txt /a.txt" in ln)
    run = next(ln for ln in lines if '[2/2] RUN ["/bin/true"]' in ln)
    as_json = work.nbbuild("plan", "--format", "json", str(work.ctx))
    assert as_json.returncode == 0, as_json.stderr
    keys = _keys(as_json.stdout)
    copy_key, run_key = keys["[1/2] COPY a.txt /a.txt"], keys['[2/2] RUN ["/bin/true"]']
    assert copy_key and run_key and copy_key != run_key
    # The text shows each key's short form.
    assert copy_key.removeprefix("sha256:")[:12] in copy
    assert run_key.removeprefix("sha256:")[:12] in run
    # The keys are the ones this process computes without the filter (root's keys in CI):
    # nothing about the refused namespace changes a key.
    other = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbbuild",
            "plan",
            "--format",
            "json",
            "--root",
            str(work.dir / "other-store"),
            str(work.ctx),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
    )
    assert other.returncode == 0, other.stderr
    assert _keys(other.stdout) == keys
    _assert_nothing_ran(work)


def test_doctor_says_a_seccomp_filter_refuses_user_namespaces(refused: Work) -> None:
    work = refused
    text = work.nbbuild("doctor")
    assert text.returncode == 1, (text.stdout, text.stderr)  # a finding fails
    assert "Traceback" not in text.stderr, text.stderr
    lines = text.stdout.splitlines()
    userns = next((ln for ln in lines if ln.startswith("[fail] user namespaces")), None)
    assert userns is not None, text.stdout
    assert "seccomp" in userns, userns
    fix = lines[lines.index(userns) + 1].strip()
    assert fix.startswith("fix:") and "seccomp" in fix, fix
    as_json = work.nbbuild("doctor", "--format", "json")
    assert as_json.returncode == 1, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["can_run"] is False, doc
    finding = next(f for f in doc["findings"] if f["topic"] == "user namespaces")
    assert finding["status"] == "fail", finding
    assert "seccomp" in finding["found"], finding
    assert "seccomp" in finding["fix"], finding
    # The verdict keeps what still works in view.
    for what in ("plan", "explain", "what-if"):
        assert what in doc["verdict"], doc["verdict"]
    # The sandbox line says why the degraded PRoot worker does not build, and how it could.
    sandbox = next(f for f in doc["findings"] if f["topic"] == "sandbox")
    assert sandbox["status"] == "fail", sandbox
    if work.variant == "off":
        assert "NBBUILD_DEGRADED=0" in sandbox["found"], sandbox
        assert "unset NBBUILD_DEGRADED" in sandbox["fix"], sandbox
    else:
        assert "proot is not installed" in sandbox["found"], sandbox
        assert "apt-get install proot" in sandbox["fix"], sandbox
    # The doctor probes; it builds nothing and leaves no namespace, bundle or process.
    _assert_nothing_ran(work)


# -- a store of earlier rootless builds, once namespaces are refused ----------------------------


def _snapshot_tree(store: Path) -> dict[str, tuple[Any, ...]]:
    """Kind, mode, owner and size of everything under snapshots/ and blobs/."""
    out: dict[str, tuple[Any, ...]] = {}
    for part in ("snapshots", "blobs"):
        for dirpath, dirnames, filenames in os.walk(store / part):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                size = st.st_size if stat.S_ISREG(st.st_mode) else 0
                out[os.path.relpath(path, store)] = (st.st_mode, st.st_uid, st.st_gid, size)
    return out


def test_an_earlier_rootless_store_still_plans_explains_and_predicts(each: Work) -> None:
    """The user built with user namespaces allowed; now they are refused (the same user in a
    container under Docker's profile): the store's keys, history and what-if stay usable, a
    build (even a fully cached one) is refused (the degraded PRoot worker never writes into a
    rootless store: the store says so), and nothing in the store changes."""
    work = each
    (work.ctx / "Dockerfile").write_text("FROM busybox\nCOPY a.txt /a.txt\nRUN echo hi > /hi\n")
    tar = work.dir / "busybox.tar"
    made = subprocess.run(
        ["bash", str(BUSYBOX_SCRIPT), str(work.dir / "rootfs"), str(tar)],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    shutil.rmtree(work.dir / "rootfs")
    # Before: a rootless build, without the filter.
    loaded = work.nbbuild("image", "import", str(tar), "busybox", filtered=False)
    assert loaded.returncode == 0, loaded.stderr
    built = work.nbbuild("build", "--progress", "plain", str(work.ctx), filtered=False)
    assert built.returncode == 0, built.stderr
    before_keys = work.nbbuild("plan", "--format", "json", str(work.ctx), filtered=False)
    assert before_keys.returncode == 0, before_keys.stderr
    before = _snapshot_tree(work.store)
    assert before, "the rootless build stored nothing"

    # After: the same user under the filter.
    after_keys = work.nbbuild("plan", "--format", "json", str(work.ctx))
    assert after_keys.returncode == 0, after_keys.stderr
    assert _keys(after_keys.stdout) == _keys(before_keys.stdout)
    refused = work.nbbuild("build", "--progress", "plain", str(work.ctx))
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    _assert_refused_here(work, refused.stderr)
    explain, cell, unchanged, changed = _notebook(
        work,
        "%nbbuild explain",
        "%%dockerfile\nFROM busybox\nCOPY a.txt /a.txt\nRUN echo hi > /hi\n",
        "%nbbuild whatif",
        "%nbbuild whatif --changed a.txt",
    )
    assert explain["error"] is None, explain
    out = explain["stdout"]
    assert "[2/3] COPY a.txt /a.txt" in out and "[3/3] RUN echo hi > /hi" in out, out
    if work.variant == "on":
        assert cell["error"] == "StoreError", cell
    else:
        assert cell["error"] == "UsernsUnavailable", cell
    _assert_refused_here(work, cell["message"])
    # `whatif` without a change is a usage error; with one, the prediction uses the store.
    assert unchanged["error"] == "UsageError", unchanged
    assert changed["error"] is None, changed
    verdicts = {ln.split("  ")[0]: ln for ln in changed["stdout"].splitlines()}
    assert "cached" in verdicts["[1/3] FROM docker.io/library/busybox:latest"], verdicts
    assert "will run" in verdicts["[2/3] COPY a.txt /a.txt"], verdicts
    assert "will run" in verdicts["[3/3] RUN echo hi > /hi"], verdicts
    # Nothing in the store changed, nothing ran.
    assert _snapshot_tree(work.store) == before
    bundles = work.home / ".cache" / "nbbuild-run" / "bundles"
    assert not bundles.exists() or not os.listdir(bundles)
    assert not _processes(work), _processes(work)


def _assert_refused_here(work: Work, text: str) -> None:
    """A build on a rootless store where namespaces are refused: the degraded worker's store
    error, or the refusal of the variant."""
    if work.variant != "on":
        _assert_clear_refusal(text, variant=work.variant)
        return
    assert "was made by a rootless build (a user namespace)" in text, text
    assert "cannot be used by the degraded PRoot worker" in text, text
    assert "point NBBUILD_ROOT (or --root) at another directory" in text, text
    assert "Traceback" not in text, text


# -- the degraded PRoot worker ----------------------------------------------------------------

DEGRADED = """\
FROM busybox
COPY --chown=1000:1000 a.txt /app/a.txt
RUN echo made > /made && chmod 4755 /made && id -u > /root-uid && ls -ln /app/a.txt > /seen \\
    && rm /etc/group && mkdir -p /gone/deep && rm -rf /gone
USER 1000:1000
RUN id -u > /tmp/uid && id -g > /tmp/gid
"""


def _import_busybox(work: Work) -> None:
    tar = work.dir / "busybox.tar"
    made = subprocess.run(
        ["bash", str(BUSYBOX_SCRIPT), str(work.dir / "rootfs"), str(tar)],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    shutil.rmtree(work.dir / "rootfs")
    loaded = work.nbbuild("image", "import", str(tar), "busybox")
    assert loaded.returncode == 0, loaded.stderr


def _tar_members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name.removeprefix("./"): m for m in tar.getmembers()}


def _tar_text(path: Path, name: str) -> str:
    with tarfile.open(path) as tar:
        member = tar.extractfile(name)
        assert member is not None, name
        return member.read().decode()


def test_degraded_build_runs_each_step_in_its_own_root_and_says_so(work: Work) -> None:
    """proot installed, user namespaces refused: the build runs (RUN, COPY --chown, USER),
    labelled in the progress, the result and the doctor; its tar has a root-owned tree with
    the RUN's effects; a rebuild is all cached; the user can delete everything it made."""
    _import_busybox(work)
    (work.ctx / "Dockerfile").write_text(DEGRADED)
    out = work.dir / "out.tar"
    done = work.nbbuild(
        "build", "--progress", "plain", "-t", "app", "--output", f"type=tar,dest={out}",
        str(work.ctx),
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    text = done.stdout + done.stderr
    assert "Traceback" not in text
    # the warning, once, at the first step that ran under PRoot
    warned = [ln for ln in text.splitlines() if WARNING in ln]
    assert len(warned) == 1, text
    assert warned[0].startswith("#4 "), warned  # [3/4] RUN (after context, FROM, COPY)
    assert "not a security boundary" in warned[0] and "owners squashed to root" in warned[0]
    assert text.count(" DONE ") >= 3, text

    members = _tar_members(out)
    # owners squashed to root: everything is 0:0, COPY --chown's file and USER's files too
    assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}, {
        n: (m.uid, m.gid) for n, m in members.items() if (m.uid, m.gid) != (0, 0)
    }
    assert members["app/a.txt"].isfile()
    # the RUN steps' effects, modes (set-uid kept) and the identities they saw
    assert _tar_text(out, "made") == "made\n"
    assert members["made"].mode == 0o4755
    assert _tar_text(out, "root-uid") == "0\n"
    assert _tar_text(out, "seen").split()[2:4] == ["0", "0"]  # proot -0: the user's = root's
    assert _tar_text(out, "tmp/uid") == "1000\n" and _tar_text(out, "tmp/gid") == "1000\n"
    assert "etc/group" not in members and "gone" not in members  # deletions applied
    assert "etc/passwd" in members and "bin/busybox" in members

    # a rebuild: every step from the cache, nothing runs (so nothing to warn about)
    again = work.nbbuild("build", "--progress", "plain", "-t", "app", str(work.ctx))
    assert again.returncode == 0, again.stderr
    shown = again.stdout + again.stderr
    steps = [ln for ln in shown.splitlines() if re.match(r"#\d+ \[\d/4\]", ln)]
    assert len(steps) == 4, shown
    assert shown.count("CACHED") == 4 and " DONE " not in shown and WARNING not in shown, shown

    # the Python API's result names the worker
    api = work.python(
        """
        import json, sys
        from pathlib import Path
        from engine.build import BuildRequest, build
        from engine.events import ListReporter
        ctx = Path(sys.argv[1])
        request = BuildRequest(dockerfile=(ctx / "Dockerfile").read_text(), context=ctx)
        result = build(request, root=Path(sys.argv[2]), reporter=ListReporter())
        print(json.dumps({"worker": result.worker, "status": [s.status for s in result.steps]}))
        """,
        str(work.ctx),
        str(work.store),
    )
    assert api.returncode == 0, api.stderr
    outcome = json.loads(api.stdout)
    assert outcome["worker"] == WORKER, outcome
    assert set(outcome["status"]) <= {"cached", "skipped"}, outcome  # nothing ran
    # the store is the degraded worker's, and all of it is the user's
    owners = {
        os.lstat(os.path.join(d, n)).st_uid for d, ds, fs in os.walk(work.store) for n in ds + fs
    }
    assert owners == {work.account.uid}, owners
    assert not _processes(work), _processes(work)


def test_degraded_notebook_build_shows_the_warning_and_the_worker(work: Work) -> None:
    _import_busybox(work)
    build, worker, whatif = _notebook(
        work,
        "%%dockerfile --out r --progress plain\nFROM busybox\nRUN echo hi > /hi\n",
        "print(r.engine_result.worker); print('worker ' + r.engine_result.worker in r.to_html())",
        "%nbbuild whatif --changed a.txt",
    )
    assert build["error"] is None, build
    assert WARNING in build["stdout"], build
    assert worker["stdout"].splitlines() == [WORKER, "True"], worker  # in the result's HTML
    assert whatif["error"] is None, whatif
    assert not _processes(work), _processes(work)


def test_degraded_network_none_and_insecure_are_refused_before_anything_runs(work: Work) -> None:
    _import_busybox(work)
    before = _snapshot_tree(work.store)
    for flag, words in (
        ("--network=none", "RUN --network=none cannot be isolated by the degraded PRoot worker"),
        ("--security=insecure", "RUN --security=insecure cannot run under the degraded PRoot"),
    ):
        (work.ctx / "Dockerfile").write_text(f"FROM busybox\nRUN echo a > /a\nRUN {flag} true\n")
        allow = ["--allow", "security.insecure"] if "insecure" in flag else []
        done = work.nbbuild("build", "--progress", "plain", *allow, str(work.ctx))
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert done.stderr.startswith(f"error: [3/3] RUN {flag} true: {words}"), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert "[2/3] RUN echo a" not in done.stdout + done.stderr, done  # nothing ran
    # The whole build as --network=none too.
    (work.ctx / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    done = work.nbbuild("build", "--network", "none", str(work.ctx))
    assert done.returncode == 1 and "--network=none cannot be isolated" in done.stderr, done.stderr
    assert _snapshot_tree(work.store) == before
    # plan and what-if of such a build still work
    planned = work.nbbuild("plan", "--network", "none", str(work.ctx))
    assert planned.returncode == 0, planned.stderr
    assert not _processes(work), _processes(work)


def test_degraded_doctor_says_what_the_worker_is(work: Work) -> None:
    text = work.nbbuild("doctor")
    doc = json.loads(work.nbbuild("doctor", "--format", "json").stdout)
    assert doc["can_run"] is True, doc  # degraded, but able to build
    failed = {f["topic"] for f in doc["findings"] if f["status"] == "fail"}
    # (run as a normal user, the filter sets no_new_privs, which fails the ID mapping line)
    assert failed <= {"ID mapping"}, doc
    assert text.returncode == (1 if failed else 0), (text.stdout, text.stderr)
    lines = text.stdout.splitlines()
    sandbox = next(ln for ln in lines if ln.startswith("[warn] sandbox"))
    assert "degraded: proot" in sandbox and "not a security boundary" in sandbox, sandbox
    assert "owners are squashed to root" in sandbox and "--network=none is refused" in sandbox
    fix = lines[lines.index(sandbox) + 1].strip()
    assert fix.startswith("fix: allow user namespaces") and "NBBUILD_DEGRADED=0" in fix, fix
    userns = next(ln for ln in lines if ln.startswith("[warn] user namespaces"))
    assert "seccomp" in userns and "degraded under PRoot" in userns, userns
    assert lines[-1].startswith("This host can build, degraded: RUN steps run under PRoot")
    _assert_nothing_ran(work)
