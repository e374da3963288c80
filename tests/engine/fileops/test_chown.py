"""``--chown``: ids as they are, names from the destination's /etc/passwd and /etc/group."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.context.tree import ContextTree
from engine.fileops import FileOpError
from engine.fileops.chown import Owner, resolve_owner
from engine.fileops.tree import LayerTree
from engine.graph.ops import ChownSpec, MkdirAction

from .conftest import Runner, copy, write

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
user:x:1000:1001::/home/user:/bin/sh
  spaced:x:1500:1500::/:/bin/sh
broken:x:notanumber:77::/:/bin/sh
dup:x:2000:2000::/:/bin/sh
dup:x:3000:3000::/:/bin/sh
"""
GROUP = b"""root:x:0:
#commented:x:9:
nogroup:x:65534:
staff:x:50:user
"""


def reader(path: str) -> bytes | None:
    return {"/etc/passwd": PASSWD, "/etc/group": GROUP}.get(path)


@pytest.mark.parametrize(
    ("user", "group", "want"),
    [
        ("1000", "", Owner(1000, 1000)),  # an id alone is uid and gid
        ("1000", "50", Owner(1000, 50)),
        ("root", "", Owner(0, 0)),
        ("root", "staff", Owner(0, 50)),
        ("user", "", Owner(1000, 1001)),  # a name: uid and primary gid
        ("user", "nogroup", Owner(1000, 65534)),
        ("user", "7", Owner(1000, 7)),
        ("daemon", "", Owner(1, 1)),
        ("spaced", "", Owner(1500, 1500)),  # lines are trimmed
        ("broken", "", Owner(0, 77)),  # unparsable numbers are 0
        ("dup", "", Owner(2000, 2000)),  # first entry wins
        ("nosuchuser", "", Owner(0, 0)),  # BuildKit: unknown names are silently 0
        ("user", "nosuchgroup", Owner(1000, 1001)),
        ("1000", "commented", Owner(1000, 1000)),  # /etc/group comments are skipped
        ("-1", "", Owner(2**32 - 1, 2**32 - 1)),  # llb sends ids as uint32
        ("", "staff", Owner(0, 50)),  # --chown=:staff
        ("1000:50", "", Owner(1000, 50)),  # "user:group" in one field (WORKDIR's USER)
    ],
)
def test_resolve_owner_table(user: str, group: str, want: Owner) -> None:
    assert resolve_owner(ChownSpec(user, group), reader) == want


def test_ids_need_no_user_database() -> None:
    assert resolve_owner(ChownSpec("42", "43"), None) == Owner(42, 43)
    assert resolve_owner(ChownSpec("root", "root"), None) == Owner(0, 0)


def test_names_without_a_filesystem_fail_as_buildkit() -> None:
    with pytest.raises(FileOpError, match="invalid user index: -1"):
        resolve_owner(ChownSpec("user"), None)
    with pytest.raises(FileOpError, match="invalid user index: -1"):
        resolve_owner(ChownSpec("1", "staff"), None)


def test_missing_user_files_mean_root() -> None:
    assert resolve_owner(ChownSpec("user", "staff"), lambda p: None) == Owner(0, 0)


@pytest.fixture
def base(runner: Runner) -> Path:
    root = write(runner.new_dir("base"), {"etc/passwd": PASSWD, "etc/group": GROUP})
    return root


@pytest.fixture
def ctx(tmp_path: Path) -> ContextTree:
    return ContextTree(write(tmp_path / "ctx", {"f": "f", "d/g": "g"}))


def test_copy_chown_by_name_from_destination(runner: Runner, base: Path, ctx: ContextTree) -> None:
    # testCopyChown / testCopyChownCreateDest: names come from the image's own files, and
    # every copied entry (and created parent) gets the owner.
    r = runner.run(
        [
            copy("/f", "/foo", chown=ChownSpec("daemon")),
            copy("/d", "/baz", chown=ChownSpec("1000", "nogroup")),
            copy("/", "/dest/deep/", chown=ChownSpec("user", "user")),
        ],
        dest=[base],
        sources={1: ctx},
    )
    owners = {p: (e[2], e[3]) for p, e in r.dump().items()}
    assert owners["/foo"] == (1, 1)
    assert owners["/baz"] == (1000, 65534) and owners["/baz/g"] == (1000, 65534)
    # group "user" does not exist in /etc/group: the user's primary gid stays.
    for path in ("/dest", "/dest/deep", "/dest/deep/f", "/dest/deep/d", "/dest/deep/d/g"):
        assert owners[path] == (1000, 1001), path
    assert owners["/etc"] == (0, 0)


def test_user_database_through_symlinks_in_the_image(runner: Runner, ctx: ContextTree) -> None:
    base = write(runner.new_dir("base"), {"real/passwd": PASSWD})
    os.symlink("/real", base / "etc")
    r = runner.run(copy("/f", "/f", chown=ChownSpec("user")), dest=[base], sources={1: ctx})
    assert r.entry("/f")[2:4] == (1000, 1001)  # type: ignore[index]


def test_user_database_that_is_not_a_file(runner: Runner, ctx: ContextTree) -> None:
    base = write(runner.new_dir("base"), {"etc/passwd/": None})
    with pytest.raises(FileOpError, match="/etc/passwd is not a regular file"):
        runner.run(copy("/f", "/f", chown=ChownSpec("user")), dest=[base], sources={1: ctx})


def test_huge_user_database_is_refused(runner: Runner, ctx: ContextTree) -> None:
    base = write(runner.new_dir("base"), {"etc/passwd": b"x" * ((10 << 20) + 1)})
    with pytest.raises(FileOpError, match="exceeds 10485760 bytes"):
        runner.run(copy("/f", "/f", chown=ChownSpec("user")), dest=[base], sources={1: ctx})


def test_chown_by_name_on_scratch(runner: Runner, ctx: ContextTree) -> None:
    # COPY --link --chown=name: the action's base is scratch, there is nothing to read.
    with pytest.raises(FileOpError, match="invalid user index: -1"):
        runner.run(copy("/f", "/f", chown=ChownSpec("user")), sources={1: ctx})
    r = runner.run(copy("/f", "/f", chown=ChownSpec("7", "8")), sources={1: ctx})
    assert r.entry("/f")[2:4] == (7, 8)  # type: ignore[index]


def test_user_database_from_another_input(runner: Runner, ctx: ContextTree, tmp_path: Path) -> None:
    users = write(tmp_path / "users", {"etc/passwd": b"app:x:4242:4343::/:/bin/sh\n"})
    r = runner.run(
        copy("/f", "/f", chown=ChownSpec("app")),
        dest=None,
        sources={1: ctx, 2: LayerTree([users])},
        user_db_input=2,
    )
    assert r.entry("/f")[2:4] == (4242, 4343)  # type: ignore[index]


def test_later_actions_read_users_written_by_earlier_ones(runner: Runner, tmp_path: Path) -> None:
    src = write(tmp_path / "src", {"etc/passwd": b"late:x:77:78::/:/bin/sh\n", "f": "f"})
    r = runner.run(
        [copy("/etc", "/etc"), copy("/f", "/f", chown=ChownSpec("late"))],
        sources={1: ContextTree(src)},
    )
    assert r.entry("/f")[2:4] == (77, 78)  # type: ignore[index]


def test_workdir_mkdir_with_chown(runner: Runner, base: Path) -> None:
    r = runner.run(MkdirAction("/home/user/app", chown=ChownSpec("user")), dest=[base])
    owners = {p: (e[2], e[3]) for p, e in r.dump().items()}
    assert owners["/home"] == (1000, 1001)
    assert owners["/home/user/app"] == (1000, 1001)
