"""Where user namespaces are refused (Docker's default seccomp profile, some hosted notebooks).

Without root, every build step runs as root of a user namespace; where the process may not
create one, nbbuild runs no step on the host: a build (CLI, Python API, ``%%dockerfile``) is
refused with one clear message, while ``nbbuild plan``, cache keys, what-if and explain keep
working and ``nbbuild doctor`` says why (a seccomp filter) and how to fix it.

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
import shutil
import stat
import subprocess
import sys
import sysconfig
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
    """One test's directory, the user's: a HOME, a build context and a store."""

    account: Account
    dir: Path

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
        return {
            "HOME": str(self.home),
            "USER": a.name,
            "LOGNAME": a.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": a.pythonpath,
            "PYTHONDONTWRITEBYTECODE": "1",
            "NBBUILD_ROOT": str(self.store),
            "IPYTHONDIR": str(self.home / ".ipython"),
        }

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


@pytest.fixture
def work(account: Account, base: Path) -> Iterator[Work]:
    """A fresh directory of the user's: HOME, a context (Dockerfile, a.txt, b.txt), a store
    path (not created). At the end the user must be able to delete all of it."""
    w = Work(account, Path(tempfile.mkdtemp(dir=base)))
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


# -- what must not be left behind -------------------------------------------------------------


def _processes(work: Work) -> list[str]:
    """Live processes of the test: any of the user's (when the user is not this process's),
    or any whose command line or mounts name the test's directory."""
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
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith(("Z", "X")):
            continue
        uid = int(fields.get("Uid", "-1").split()[0])
        mine = work.account.as_root and uid == work.account.uid
        if mine or needle in cmdline or needle in mounts:
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


def _assert_clear_refusal(text: str, action: str = "cannot build") -> None:
    assert f"{action}: " in text, text
    for part in HINT_PARTS:
        assert part in text, (part, text)
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
def test_cli_build_is_refused_with_the_clear_message(work: Work, dockerfile: str) -> None:
    (work.ctx / "Dockerfile").write_text(dockerfile)
    done = work.nbbuild("build", "--progress", "plain", "-t", "app", str(work.ctx))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: cannot build: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    _assert_clear_refusal(done.stderr)
    assert "DONE" not in done.stdout and "CACHED" not in done.stdout, done.stdout
    _assert_nothing_ran(work)


def test_cli_build_from_stdin_is_refused_too(work: Work) -> None:
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
    _assert_clear_refusal(done.stderr)
    assert done.stdout == ""
    _assert_nothing_ran(work)


def test_python_api_build_raises_userns_unavailable(work: Work) -> None:
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
    _assert_clear_refusal(outcome["message"])
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


def test_notebook_cell_shows_the_error_and_what_if_still_works(work: Work) -> None:
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
    _assert_clear_refusal(build["message"])
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
    _assert_clear_refusal(run["message"], action="cannot run the image")
    _assert_nothing_ran(work)


# -- what works without a namespace -----------------------------------------------------------


def _keys(plan_json: str) -> dict[str, str | None]:
    doc = json.loads(plan_json)
    return {v["name"]: v["cache_key"] for v in doc["vertices"]}


def test_plan_text_and_json_show_the_steps_and_their_keys(work: Work) -> None:
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


def test_doctor_says_a_seccomp_filter_refuses_user_namespaces(work: Work) -> None:
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


def test_an_earlier_rootless_store_still_plans_explains_and_predicts(work: Work) -> None:
    """The user built with user namespaces allowed; now they are refused (the same user in a
    container under Docker's profile): the store's keys, history and what-if stay usable, a
    build (even a fully cached one) is refused, and nothing in the store changes."""
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
    _assert_clear_refusal(refused.stderr)
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
    assert cell["error"] == "UsernsUnavailable", cell
    _assert_clear_refusal(cell["message"])
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
