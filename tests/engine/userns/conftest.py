"""Rootless test fixtures: unprivileged users, and Python code run as one of them inside a
user namespace, the way a rootless build runs.

The suite runs as root (``make test``), so rootless behaviour is tested through two users this
module creates (idempotently, once per machine):

``nbbuild-rl``
    has a subordinate ID range in ``/etc/subuid`` and ``/etc/subgid`` (Debian's ``useradd``
    grants 65536 IDs; one is added when it did not): its namespace maps container root to the
    user and container IDs 1..65536 to the range.
``nbbuild-single``
    has no range (its lines are removed): only container root can be mapped.

``/work/main/.venv/bin/python`` points into root's pyenv (mode 0700), which these users cannot
run, so their code runs under Debian's ``/usr/bin/python3`` (the same minor version, hence the
same ABI) with the repository and the venv's site-packages on ``PYTHONPATH``, started by
``runuser``. A test hands :meth:`Rootless.run` a piece of code; it runs after
``engine.userns.enter(current_mapping())`` (unless ``enter=False``), reads its inputs from
``ARGS`` and sets ``result`` to something JSON can carry; an exception comes back described
(class names along its MRO, message).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
SYSTEM_PYTHON = "/usr/bin/python3"
RANGED_USER = "nbbuild-rl"
SINGLE_USER = "nbbuild-single"
SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
_LOCK = Path("/tmp/.nbbuild-userns-test-users.lock")
_RANGE = 65536

_HARNESS = r"""
import json, os, sys, traceback
ctl = sys.argv[1]
with open(os.path.join(ctl, "args.json"), encoding="utf-8") as f:
    spec = json.load(f)
with open(os.path.join(ctl, "code.py"), encoding="utf-8") as f:
    code = f.read()
def finish(payload):
    path = os.path.join(spec["out"], "result.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f)
try:
    if spec["enter"]:
        from engine.userns import current_mapping, enter
        enter(current_mapping())
    scope = {"ARGS": spec["args"], "__name__": "__rootless_test__"}
    exec(compile(code, "<rootless test code>", "exec"), scope)
    finish({"result": scope.get("result")})
except BaseException as exc:
    finish({"error": {
        "type": type(exc).__module__ + "." + type(exc).__qualname__,
        "mro": [c.__name__ for c in type(exc).__mro__],
        "message": str(exc),
        "traceback": traceback.format_exc(),
    }})
"""


@dataclass(frozen=True)
class RootlessUser:
    """A test user and the ID ranges its rootless namespace maps (first subordinate range)."""

    name: str
    uid: int
    gid: int
    home: str
    subuid: tuple[int, int] | None  # (start, count)
    subgid: tuple[int, int] | None

    def host_uid(self, inside: int) -> int:
        """The host uid that container uid ``inside`` is (as ``current_mapping`` maps it)."""
        return _outside(inside, self.uid, self.subuid)

    def host_gid(self, inside: int) -> int:
        return _outside(inside, self.gid, self.subgid)


def _outside(inside: int, own: int, sub: tuple[int, int] | None) -> int:
    if inside == 0:
        return own
    assert sub is not None and 1 <= inside <= sub[1], f"container id {inside} is not mapped"
    return sub[0] + inside - 1


@dataclass
class UserRun:
    """What :meth:`Rootless.run` saw."""

    returncode: int
    stdout: str
    stderr: str
    result: Any = None
    error: dict[str, Any] | None = None

    def value(self) -> Any:
        """The code's ``result``; fails the test with the user's traceback if it raised."""
        assert self.error is None, (
            f"the code raised {self.error['type']}: {self.error['message']}\n"
            f"{self.error['traceback']}\nstderr:\n{self.stderr}"
        )
        return self.result

    def raised(self, name: str) -> str:
        """The message of the exception the code raised, which must be a ``name``."""
        assert self.error is not None, f"expected {name}, the code returned {self.result!r}"
        assert name in self.error["mro"], (
            f"expected {name}, got {self.error['type']}: {self.error['message']}\n"
            f"{self.error['traceback']}"
        )
        return str(self.error["message"])


@dataclass
class Rootless:
    """The test users, and a way to run code as them (see the module doc)."""

    ranged: RootlessUser
    single: RootlessUser
    _dirs: list[Path] = field(default_factory=list)

    def dir(self, user: RootlessUser, name: str = "work") -> Path:
        """A fresh directory in /tmp owned by ``user`` (container root inside its namespace);
        removed (as root) after the test."""
        path = Path(tempfile.mkdtemp(prefix=f"nbbuild-{name}-", dir="/tmp"))
        os.chown(path, user.uid, user.gid)
        os.chmod(path, 0o755)
        self._dirs.append(path)
        return path

    def run(
        self,
        user: RootlessUser,
        code: str,
        args: Any = None,
        *,
        enter: bool = True,
        timeout: float = 180,
    ) -> UserRun:
        """Run ``code`` as ``user`` (inside its user namespace unless ``enter`` is False)."""
        ctl = Path(tempfile.mkdtemp(prefix="nbbuild-ctl-", dir="/tmp"))
        self._dirs.append(ctl)
        out = self.dir(user, "result")
        os.chmod(ctl, 0o755)
        (ctl / "harness.py").write_text(_HARNESS, encoding="utf-8")
        (ctl / "code.py").write_text(code, encoding="utf-8")
        spec = {"args": args, "enter": enter, "out": str(out)}
        (ctl / "args.json").write_text(json.dumps(spec), encoding="utf-8")
        for name in ("harness.py", "code.py", "args.json"):
            os.chmod(ctl / name, 0o644)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": user.home,
            "USER": user.name,
            "LOGNAME": user.name,
            "LANG": "C.UTF-8",
            "PYTHONPATH": f"{REPO}:{sysconfig.get_path('purelib')}",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        argv = [
            "runuser", "-u", user.name, "--",
            "env", "-i", *(f"{k}={v}" for k, v in env.items()),
            SYSTEM_PYTHON, "-s", str(ctl / "harness.py"), str(ctl),
        ]  # fmt: skip
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=out, check=False
        )
        run = UserRun(proc.returncode, proc.stdout, proc.stderr)
        result_file = out / "result.json"
        assert result_file.exists(), (
            f"the code run as {user.name} wrote no result (exit {proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
        payload = json.loads(result_file.read_text(encoding="utf-8"))
        run.result = payload.get("result")
        run.error = payload.get("error")
        return run

    def cleanup(self) -> None:
        for path in reversed(self._dirs):
            shutil.rmtree(path, ignore_errors=True)
        self._dirs.clear()


# -- the users ------------------------------------------------------------------------------


def _ranges(path: Path, name: str, uid: int) -> list[tuple[int, int]]:
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (name, str(uid)):
            found.append((int(fields[1]), int(fields[2])))
    return found


def _drop_ranges(path: Path, name: str, uid: int) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [ln for ln in lines if ln.split(":", 1)[0] not in (name, str(uid))]
    if kept == lines:
        return
    tmp = path.with_name(path.name + ".nbbuild-test")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)


def _free_start() -> int:
    end = 100000
    for path in (SUBUID, SUBGID):
        for line in path.read_text(encoding="utf-8").splitlines():
            fields = line.strip().split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                end = max(end, int(fields[1]) + int(fields[2]))
    return end


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def _user(entry: pwd.struct_passwd) -> RootlessUser:
    uids = _ranges(SUBUID, entry.pw_name, entry.pw_uid)
    gids = _ranges(SUBGID, entry.pw_name, entry.pw_uid)
    return RootlessUser(
        entry.pw_name,
        entry.pw_uid,
        entry.pw_gid,
        entry.pw_dir,
        uids[0] if uids else None,
        gids[0] if gids else None,
    )


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(_LOCK, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def rootless_users() -> tuple[RootlessUser, RootlessUser]:
    """``(nbbuild-rl, nbbuild-single)``, created and set up as the module doc says."""
    if os.geteuid() != 0:
        pytest.fail("the rootless tests create users: run the suite as root (make test)")
    for tool in ("newuidmap", "newgidmap", "runuser", "useradd", "usermod"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `make setup` installs uidmap")
    version = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if version != str(sys.version_info[:2]):
        pytest.fail(f"{SYSTEM_PYTHON} is {version}, the venv {sys.version_info[:2]}: no shared ABI")
    with _locked():
        ranged = _ensure_user(RANGED_USER)
        for path, flag in ((SUBUID, "--add-subuids"), (SUBGID, "--add-subgids")):
            if not _ranges(path, ranged.pw_name, ranged.pw_uid):
                start = _free_start()
                subprocess.run(
                    ["usermod", flag, f"{start}-{start + _RANGE - 1}", ranged.pw_name],
                    check=True,
                    capture_output=True,
                )
        single = _ensure_user(SINGLE_USER)
        for path in (SUBUID, SUBGID):
            _drop_ranges(path, single.pw_name, single.pw_uid)
        users = _user(ranged), _user(single)
    assert users[0].subuid is not None and users[0].subuid[1] >= _RANGE
    assert users[0].subgid is not None and users[0].subgid[1] >= _RANGE
    assert users[1].subuid is None and users[1].subgid is None
    return users


@pytest.fixture
def rootless(rootless_users: tuple[RootlessUser, RootlessUser]) -> Iterator[Rootless]:
    """Run code as the test users inside their user namespaces (see :class:`Rootless`)."""
    helper = Rootless(*rootless_users)
    try:
        yield helper
    finally:
        helper.cleanup()
