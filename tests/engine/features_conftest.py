"""Helpers for tests/engine/test_features.py: exporting a build's filesystem, reading trees, a
loopback HTTP server and git repositories served over loopback HTTP.

Load it with :func:`load` (tests run with ``--import-mode=importlib``, so sibling modules are not
importable by name). Nothing is mocked: servers listen on 127.0.0.1, git is the real git.
"""

from __future__ import annotations

import dataclasses
import email.utils
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def load() -> ModuleType:
    """This module, imported once under a private name."""
    name = "nbbuild_tests_features_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_base() -> ModuleType:
    """tests/buildkit_base.py (the ``bk`` fixture), imported once under its shared name."""
    name = "nbbuild_tests_buildkit_base"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "buildkit_base.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# -- reading results --------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One entry of an exported tree: kind (``f``, ``d``, ``l``), permission bits, owner, data."""

    kind: str
    mode: int
    uid: int
    gid: int
    data: bytes = b""  # file bytes, or the symlink target

    @property
    def text(self) -> str:
        return self.data.decode()


def tree(root: Path) -> dict[str, Entry]:
    """Every entry below ``root`` by its relative path (``/``-separated), without following
    symlinks.

    Rootless, read where the builds run (``inside``: everything is readable, owners are
    container IDs, as root sees them), and in a local output (all the user's, as BuildKit's
    rootless export writes it) the owners are the build's, from the output's tar twin
    (see tests/buildkit_base.py, ``with_owner_twins``)."""
    base = load_base()
    if not base.rootless():
        return _walk(root)
    found: dict[str, Entry] = base.inside(_walk, root)
    for dest in (root, *root.parents):
        if dest.name and base.owners_tar(dest).is_file():
            owners = base.exported_owners(dest)
            prefix = root.relative_to(dest).as_posix()
            for rel, entry in found.items():
                assert (entry.uid, entry.gid) == (0, 0), (rel, entry)  # the user's
                uid, gid = owners[rel if prefix == "." else f"{prefix}/{rel}"]
                found[rel] = dataclasses.replace(entry, uid=uid, gid=gid)
            break
    return found


def _walk(root: Path) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = Entry("l", perm, st.st_uid, st.st_gid, os.readlink(path).encode())
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = Entry("d", perm, st.st_uid, st.st_gid)
            else:
                found[rel] = Entry("f", perm, st.st_uid, st.st_gid, path.read_bytes())
    return found


def files(root: Path) -> dict[str, str]:
    """``{relative path: text}`` of the regular files below ``root``."""
    return {rel: e.text for rel, e in tree(root).items() if e.kind == "f"}


def changed(result: Any) -> list[str]:
    """Names of the numbered steps that did not come from the cache."""
    return [s.name for s in result.steps if s.step is not None and s.status != "cached"]


# -- loopback HTTP ------------------------------------------------------------------------


@dataclass
class Route:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class HttpServer:
    """A stdlib HTTP server on 127.0.0.1 answering GET (and HEAD) from a route table, and
    serving ``static`` (a directory) under ``/static/`` for git's dumb HTTP protocol."""

    base_url: str
    routes: dict[str, Route]
    requests: list[str]

    def serve(self, path: str, body: bytes, *, last_modified: float | None = None) -> str:
        headers = {}
        if last_modified is not None:
            headers["Last-Modified"] = email.utils.formatdate(last_modified, usegmt=True)
        self.routes[path] = Route(body, headers)
        return self.base_url + path


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpServer]:
    # Loopback only: a proxy from the environment must not see these requests.
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    routes: dict[str, Route] = {}
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            requests.append(f"{self.command} {self.path}")
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_error(404)
                return
            self.send_response(200)
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            if body:
                self.wfile.write(route.body)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield HttpServer(base_url=f"http://{host!s}:{port}", routes=routes, requests=requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- git over loopback HTTP (dumb protocol, as BuildKit's own tests serve repositories) -----------


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with no user or system configuration; return stdout."""
    exe = shutil.which("git")
    if exe is None:
        pytest.fail("git is missing: apt-get install git")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(repo),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "GIT_AUTHOR_DATE": "2020-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2020-01-01T00:00:00Z",
    }
    proc = subprocess.run(
        [exe, *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


@dataclass
class GitServer:
    """A directory served over loopback HTTP; repositories below it are cloneable with git's
    smart HTTP protocol (``git http-backend`` run as a CGI per request, as a real git host
    serves them) and with the dumb protocol (``…/dumb/…``: plain files, after
    ``git update-server-info``, as BuildKit's tests serve them with http.FileServer)."""

    root: Path
    base_url: str

    def repo(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")
        return path

    def url(self, repo: Path, *, dumb: bool = False) -> str:
        """The URL of ``repo``'s ``.git`` directory (``…/name/.git``, as BuildKit's tests)."""
        prefix = "/dumb" if dumb else ""
        return f"{self.base_url}{prefix}/{repo.relative_to(self.root).as_posix()}/.git"


def _git_http_backend(root: Path) -> type[BaseHTTPRequestHandler]:
    found = shutil.which("git")
    if found is None:
        pytest.fail("git is missing: apt-get install git")
    exe: str = found

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, directory=str(root), **kw)

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _dumb(self) -> bool:
            if self.path.startswith("/dumb/"):
                self.path = self.path[len("/dumb") :]
                return True
            return False

        def do_HEAD(self) -> None:
            if self._dumb():
                super().do_HEAD()
            else:
                self.send_error(405)

        def do_GET(self) -> None:
            if self._dumb():
                super().do_GET()
            else:
                self._backend()

        def do_POST(self) -> None:
            self._backend()

        def _backend(self) -> None:
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": str(root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,
                "HOME": str(root),
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": "127.0.0.1",
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            }
            proc = subprocess.run(
                [exe, "http-backend"], input=body, env=env, capture_output=True, check=False
            )
            head, _, payload = proc.stdout.partition(b"\r\n\r\n")
            status, headers = 200, []
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def git_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GitServer]:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "git-served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _git_http_backend(root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield GitServer(root=root, base_url=f"http://{host!s}:{port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def commit(repo: Path, files: dict[str, str], message: str, *, tag: str = "") -> str:
    """Write ``files`` (``name: text``; a name ending in ``*`` is made executable), commit,
    optionally tag, refresh the dumb-HTTP info; return the commit sha."""
    for name, text in files.items():
        executable = name.endswith("*")
        path = repo / name.rstrip("*")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755 if executable else 0o644)
        git(repo, "add", name.rstrip("*"))
    git(repo, "commit", "-q", "-m", message)
    if tag:
        git(repo, "tag", tag)
    git(repo, "update-server-info")
    return git(repo, "rev-parse", "HEAD")
