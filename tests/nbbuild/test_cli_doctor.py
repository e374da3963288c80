"""``nbbuild doctor``: text and JSON output, the exit code, and real probes as a normal user.

As root (CI), the unprivileged runs use a user ``nbbuild-doc`` (created here when missing,
with a subordinate ID range as Debian's useradd gives one) through ``runuser`` and Debian's
``/usr/bin/python3`` (the venv's interpreter lives under root's mode-700 home), and a uid with
no passwd entry and no range through ``setpriv``. Run as a normal user (the rootless test
run), those same tests run the command as that user itself.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.doctor import Finding, Report, Status
from nbbuild._cli_doctor import register
from nbbuild.cli import main

REPO = Path(__file__).resolve().parents[2]
USER = "nbbuild-doc"
NO_ENTRY_UID = 54321  # a uid without a passwd entry (and so without a subordinate range)
ROOT = os.geteuid() == 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nbbuild")
    sub = p.add_subparsers(dest="command")
    sub.required = True
    register(sub)
    return p


# -- in-process -----------------------------------------------------------------------------


def _fake_report(*statuses: Status) -> Report:
    return Report(
        (
            Finding("user", "ok", "root (uid 0)", "fine"),
            Finding("sandbox", "ok", "crun", "fine"),
            *(Finding(f"t{i}", s, "x", "y", "z") for i, s in enumerate(statuses)),
        )
    )


@pytest.mark.parametrize(
    ("statuses", "code"),
    [((), 0), (("info",), 0), (("warn", "info"), 0), (("warn", "fail"), 1)],
)
def test_exit_code_is_1_only_when_something_fails(
    statuses: tuple[Status, ...],
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    seen: dict[str, Any] = {}

    def fake_probe(root: Path, *, root_source: str = "") -> Report:
        seen.update(root=root, source=root_source)
        return _fake_report(*statuses)

    monkeypatch.setattr("engine.doctor.probe", fake_probe)
    args = parser().parse_args(["doctor", "--root", str(tmp_path / "s")])
    assert args.run(args) == code
    assert seen == {"root": tmp_path / "s", "source": "--root"}
    out = capsys.readouterr().out
    assert out == _fake_report(*statuses).text()
    args = parser().parse_args(["doctor", "--format", "json"])
    monkeypatch.setenv("NBBUILD_ROOT", str(tmp_path / "env"))
    assert args.run(args) == code
    assert seen == {"root": tmp_path / "env", "source": "NBBUILD_ROOT"}
    doc = json.loads(capsys.readouterr().out)
    assert doc["findings"] == _fake_report(*statuses).to_json()
    assert doc["can_run"] is True
    assert doc["verdict"] == _fake_report(*statuses).verdict()
    monkeypatch.delenv("NBBUILD_ROOT")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    args.run(args)
    assert seen == {"root": tmp_path / "home" / ".cache" / "nbbuild", "source": "the default"}


def test_registered_in_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    code = main(["doctor", "--format", "json", "--root", str(root)])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, doc
    assert [f["topic"] for f in doc["findings"]][:3] == ["user", "user namespaces", "ID mapping"]
    assert doc["can_run"] is True
    store = next(f for f in doc["findings"] if f["topic"] == "store")
    assert store["found"].startswith(f"{root} (from --root): not created yet, ")
    assert not root.exists()


def test_help_and_lazy_imports() -> None:
    """``nbbuild --help`` lists doctor; building the parser imports no doctor code."""
    done = subprocess.run(
        [sys.executable, "-m", "nbbuild", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "doctor" in done.stdout
    script = (
        "import sys\nfrom nbbuild.cli import _parser\n_parser()\n"
        "print(sorted(m for m in sys.modules if m in ('engine.doctor', 'engine.executor')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- real probes as a normal user -----------------------------------------------------------


def _subids(path: str, name: str, uid: int) -> list[tuple[int, int]]:
    out = []
    for line in Path(path).read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 3 and fields[0] in (name, str(uid)):
            out.append((int(fields[1]), int(fields[2])))
    return out


def _ensure_user() -> pwd.struct_passwd:
    """``nbbuild-doc`` with a subordinate range in /etc/subuid and /etc/subgid."""
    if shutil.which("newuidmap") is None:
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "uidmap"],
            capture_output=True,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        assert done.returncode == 0, done.stderr
    try:
        pwd.getpwnam(USER)
    except KeyError:
        done = subprocess.run(["useradd", "-m", USER], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    user = pwd.getpwnam(USER)
    for kind, path in (("subuids", "/etc/subuid"), ("subgids", "/etc/subgid")):
        if not _subids(path, USER, user.pw_uid):
            # useradd gave none (another distribution's defaults): a range nobody has.
            ends = [s + c for f in ("/etc/subuid", "/etc/subgid") for s, c in _subids_all(f)]
            start = max([100000, *ends])
            done = subprocess.run(
                ["usermod", f"--add-{kind}", f"{start}-{start + 65535}", USER],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
    return user


def _subids_all(path: str) -> list[tuple[int, int]]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(int(f[1]), int(f[2])) for f in (ln.split(":") for ln in lines) if len(f) == 3]


class Who:
    """Who runs the command: ``uid`` and ``name`` (None: no passwd entry), and how."""

    def __init__(self, uid: int, name: str | None, prefix: list[str], home: str) -> None:
        self.uid, self.name, self.prefix, self.home = uid, name, prefix, home

    @property
    def ranges(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        label = self.name or str(self.uid)
        return (
            _subids("/etc/subuid", label, self.uid),
            _subids("/etc/subgid", label, self.uid),
        )

    def run(
        self, workdir: Path, *args: str, path: str | None = None, nnp: bool = False
    ) -> subprocess.CompletedProcess[str]:
        python = "/usr/bin/python3" if ROOT else sys.executable
        site = sysconfig.get_paths()["purelib"]
        env = [
            "env",
            "-i",
            f"HOME={self.home}",
            f"PATH={path or '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin'}",
            f"PYTHONPATH={REPO}{os.pathsep}{site}",
            "PYTHONDONTWRITEBYTECODE=1",
            "LANG=C.UTF-8",
            "NBBUILD_SERVER=0",  # a test user's warm server would outlive the test
        ]
        nnp_argv = ["setpriv", "--no-new-privs"] if nnp else []
        argv = [*self.prefix, *env, *nnp_argv, python, "-m", "nbbuild", "doctor"]
        argv += [*args, "--root", str(workdir / "store")]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")


@pytest.fixture(scope="module", params=["user", "no-entry"])
def who(request: pytest.FixtureRequest) -> Who:
    """As root: ``nbbuild-doc`` (a range), or a uid without passwd entry (no range). As a
    normal user: that user, both times."""
    if not ROOT:
        me = pwd.getpwuid(os.geteuid())
        return Who(me.pw_uid, me.pw_name, [], me.pw_dir)
    if request.param == "user":
        user = _ensure_user()
        return Who(user.pw_uid, user.pw_name, ["runuser", "-u", USER, "--"], user.pw_dir)
    setpriv = ["setpriv", f"--reuid={NO_ENTRY_UID}", f"--regid={NO_ENTRY_UID}", "--clear-groups"]
    return Who(NO_ENTRY_UID, None, setpriv, "/nonexistent")


@pytest.fixture
def workdir(who: Who, tmp_path: Path) -> Iterator[Path]:
    """An empty directory the user owns (tmp_path is under root's mode-700 directory)."""
    if not ROOT:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="nbbuild-doctor-test-", dir="/tmp"))
    try:
        path.chmod(0o755)
        os.chown(path, who.uid, who.uid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _findings(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    doc = json.loads(done.stdout)
    return {f["topic"]: f for f in doc["findings"]}


def test_a_normal_user_builds_rootless(who: Who, workdir: Path) -> None:
    done = who.run(workdir, "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    found = _findings(done)
    assert found["user"]["status"] == "info"
    label = f"uid {who.uid}" + (f", {who.name}" if who.name else "")
    assert found["user"]["found"] == f"not root ({label})"
    assert found["user namespaces"] == {
        "topic": "user namespaces",
        "status": "ok",
        "found": "available",
        "meaning": "builds run as root of a user namespace (rootless)",
        "fix": "",
    }
    mapping = found["ID mapping"]
    sub_u, sub_g = who.ranges
    if sub_u and sub_g:  # tried for real: the user's own uid as 0, its range from 1
        start, count = sub_u[0]
        assert mapping["status"] == "ok", mapping
        assert mapping["found"].startswith(f"0→{who.uid}, 1-{count}→{start}-{start + count - 1}")
        assert "not tried" not in mapping["found"]
    else:
        assert mapping["status"] == "warn", mapping
        assert mapping["found"].startswith(f"only uid {who.uid} (")
        assert "single-ID mapping" in mapping["meaning"]
        if who.name is None:
            assert mapping["fix"].startswith(f"echo {who.uid}:")
            assert mapping["fix"].endswith("| sudo tee -a /etc/subuid /etc/subgid")
        else:
            assert mapping["fix"].startswith("sudo usermod --add-subuids ")
    overlay = found["overlayfs"]
    assert overlay["status"] == "ok", overlay
    assert overlay["found"] == f"mounts over {workdir} on {_fs(workdir)} (rootless, userxattr)"
    # the runtime the executor picks (engine.executor.runtime: crun first in every mode)
    assert found["runtimes"]["meaning"].startswith("RUN steps use crun ")
    sandbox = found["sandbox"]
    assert sandbox["status"] == "ok"
    assert sandbox["found"].startswith("OCI executor: crun as root of a user namespace (rootless)")
    assert found["store"]["found"].startswith(f"{workdir / 'store'} (from --root): not created")
    # Nothing was left behind: no store, no trial directories (overlayfs's mode-000 work dir
    # included), no cache files.
    assert list(workdir.iterdir()) == []


def _fs(path: Path) -> str:
    from engine.doctor import mount_of

    where = mount_of(path)
    assert where is not None
    return where[1]


def test_without_uidmap_a_build_maps_one_id(who: Who, workdir: Path) -> None:
    """PATH without newuidmap/newgidmap: a single-ID mapping, and the fix installs uidmap."""
    bin_dir = Path(tempfile.mkdtemp(prefix="nbbuild-doctor-bin-", dir="/tmp"))
    try:
        bin_dir.chmod(0o755)
        for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
            if not os.path.isdir(directory):
                continue
            for name in os.listdir(directory):
                if name not in ("newuidmap", "newgidmap") and not (bin_dir / name).exists():
                    (bin_dir / name).symlink_to(Path(directory) / name)
        done = who.run(workdir, "--format", "json", path=str(bin_dir))
    finally:
        shutil.rmtree(bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr  # a limit, not a failure
    found = _findings(done)
    mapping = found["ID mapping"]
    assert mapping["status"] == "warn"
    assert mapping["found"].endswith("; newuidmap and newgidmap not found)")
    assert mapping["fix"].startswith("apt-get install uidmap")
    assert "chown, USER app, COPY --chown" in mapping["meaning"]
    assert found["sandbox"]["status"] == "ok"
    assert list(workdir.iterdir()) == []


def test_no_new_privs_stops_the_range(who: Who, workdir: Path) -> None:
    """Under no_new_privs the setuid newuidmap cannot map a range: with one, builds would
    fail to enter their namespace, so the doctor fails (exit 1) and says why; without one,
    nothing needs the helper."""
    done = who.run(workdir, nnp=True)
    text = done.stdout
    sub_u, sub_g = who.ranges
    if sub_u and sub_g:
        assert done.returncode == 1, text + done.stderr
        assert "[fail] ID mapping" in text and "but no_new_privs is set" in text
        assert "fix: run without no_new_privs" in text
        assert "[fail] sandbox          refused: the ID mapping cannot be entered" in text
        assert text.rstrip().endswith(
            "RUN steps cannot execute here; plan, cache keys, explain and what-if still work."
        )
    else:
        assert done.returncode == 0, text + done.stderr
        assert "[warn] ID mapping" in text and "single-ID mapping" in text
    assert list(workdir.iterdir()) == []
