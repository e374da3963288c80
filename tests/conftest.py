"""Session-wide set-up for the whole suite.

The ``nbbuild`` commands the tests start (``python -m nbbuild``) run in children of warm
servers (:mod:`nbbuild.server`), as a user's commands do. The servers of this session live in
a directory of its own and are stopped when it ends: none outlives the suite, and none of an
earlier run (or of the machine's user) serves a test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _nbbuild_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from nbbuild import server

    directory = tmp_path_factory.mktemp("srv")
    directory.chmod(0o700)
    previous = os.environ.get("NBBUILD_SERVER_DIR")
    os.environ["NBBUILD_SERVER_DIR"] = str(directory)
    try:
        yield
    finally:
        server.stop(str(directory))
        if previous is None:
            os.environ.pop("NBBUILD_SERVER_DIR", None)
        else:
            os.environ["NBBUILD_SERVER_DIR"] = previous
