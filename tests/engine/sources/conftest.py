"""Fixtures for remote sources: a loopback HTTP server and local git repositories."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


@dataclass
class Route:
    """What the loopback server answers for one path."""

    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class LoopbackServer:
    """A stdlib HTTP server on 127.0.0.1 with a mutable route table."""

    base_url: str
    routes: dict[str, Route]

    def url(self, path: str) -> str:
        return self.base_url + path

    def serve(
        self, path: str, body: bytes, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> str:
        """Answer GET ``path`` with ``body``; return the full URL."""
        self.routes[path] = Route(body, status, dict(headers or {}))
        return self.url(path)


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    # Loopback only: a proxy from the environment must not see these requests.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    routes: dict[str, Route] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_error(404)
                return
            self.send_response(route.status)
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield LoopbackServer(base_url=f"http://{host!s}:{port}", routes=routes)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


GIT = shutil.which("git")


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a fixed identity and no user configuration."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(repo),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    }
    proc = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


GitRunner = Callable[..., str]


@pytest.fixture
def run_git() -> GitRunner:
    """``run_git(repo, *args)``: git with a fixed identity and no user configuration."""
    return git


@dataclass
class LocalRepo:
    """A local repository: ``main`` (2 commits), branch ``dev``, tags ``v1`` (light), ``v2``
    (annotated, on the first commit)."""

    path: Path
    first: str
    head: str
    dev: str


@pytest.fixture
def local_repo(tmp_path: Path) -> LocalRepo:
    if GIT is None:
        pytest.fail("git is required for these tests")
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "-c", "init.defaultBranch=main", "init", "-q")
    (repo / "README").write_text("first\n")
    (repo / "app").mkdir()
    (repo / "app" / "main.py").write_text("print('hi')\n")
    (repo / "app" / "lib").mkdir()
    (repo / "app" / "lib" / "util.py").write_text("X = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "-a", "v2", "-m", "annotated")
    # A symlink to a directory outside the repository, and one to a directory inside it.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    os.symlink(outside, repo / "escape")
    os.symlink("app", repo / "applink")
    (repo / "README").write_text("second\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    git(repo, "checkout", "-q", "-b", "dev")
    (repo / "dev.txt").write_text("dev\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "dev")
    dev = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    return LocalRepo(path=repo, first=first, head=head, dev=dev)
