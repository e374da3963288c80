"""Stub cleaning (CVE-2024-23652), USER resolution and the generated OCI config, without containers."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.executor import ProcessSpec, UserLookupError
from engine.executor.bundle import build_env, generate_config, hosts_file
from engine.executor.stubs import find_stubs, remove_stubs
from engine.executor.user import ResolvedUser, resolve_user
from engine.snapshot import LayerView


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        "app:x:1000:1000::/home/app:/bin/sh\n"
    )
    (r / "etc" / "group").write_text(
        "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nwheel:x:10:app,other\n"
    )
    return r


def test_find_stubs_only_missing_paths(root: Path) -> None:
    view = LayerView([root])
    assert find_stubs(view, ["/etc/hosts", "/etc/passwd", "/a/b/c"]) == ["/etc/hosts", "/a/b/c"]
    assert find_stubs(view, ["/a/b/c"], recursive=True) == ["/a/b/c", "/a/b", "/a"]


def test_remove_stubs_only_empty_ones(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("")
    (tmp_path / "etc" / "resolv.conf").write_text("written by the step")
    (tmp_path / "m" / "full").mkdir(parents=True)
    (tmp_path / "m" / "full" / "f").write_text("x")
    (tmp_path / "m" / "empty").mkdir()
    removed = remove_stubs(
        tmp_path, ["/etc/hosts", "/etc/resolv.conf", "/m/full", "/m/empty", "/gone"]
    )
    assert sorted(removed) == ["/etc/hosts", "/m/empty"]
    assert (tmp_path / "etc" / "resolv.conf").exists() and (tmp_path / "m" / "full" / "f").exists()


def test_remove_stubs_never_follows_symlinks_out_of_root(tmp_path: Path) -> None:
    # CVE-2024-23652: the step replaces the stub's parent with a symlink to a host dir
    host = tmp_path / "host"
    host.mkdir()
    (host / "hosts").write_text("")
    (host / "emptydir").mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to(host)
    (root / "link").symlink_to(host / "hosts")
    assert remove_stubs(root, ["/etc/hosts", "/etc/emptydir", "/link", "/../host/hosts"]) == []
    assert (host / "hosts").exists() and (host / "emptydir").exists()
    assert (root / "link").is_symlink()


def test_remove_stubs_keeps_parent_mtime(tmp_path: Path) -> None:
    import os

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("")
    os.utime(tmp_path / "etc", (1_000_000, 1_000_000))
    assert remove_stubs(tmp_path, ["/etc/hosts"]) == ["/etc/hosts"]
    assert os.stat(tmp_path / "etc").st_mtime == 1_000_000


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", ResolvedUser(0, 0, (0,), "/root")),
        ("root", ResolvedUser(0, 0, (0,), "/root")),
        ("nobody", ResolvedUser(65534, 65534, (65534,), "/nonexistent")),
        ("65534", ResolvedUser(65534, 65534, (65534,), "/nonexistent")),
        ("app", ResolvedUser(1000, 1000, (1000, 10), "/home/app")),
        ("app:wheel", ResolvedUser(1000, 10, (10,), "/home/app")),
        ("app:4242", ResolvedUser(1000, 4242, (4242,), "/home/app")),
        ("1234", ResolvedUser(1234, 0, (0,), "/")),
        ("1234:5678", ResolvedUser(1234, 5678, (5678,), "/")),
        ("1000:1000", ResolvedUser(1000, 1000, (1000,), "/home/app")),
    ],
)
def test_resolve_user(root: Path, user: str, expected: ResolvedUser) -> None:
    assert resolve_user(LayerView([root]), user) == expected


@pytest.mark.parametrize("user", ["ghost", "app:nogroupnamed"])
def test_resolve_user_unknown_names(root: Path, user: str) -> None:
    with pytest.raises(UserLookupError):
        resolve_user(LayerView([root]), user)


def test_resolve_user_without_passwd(tmp_path: Path) -> None:
    view = LayerView([tmp_path])
    assert resolve_user(view, "") == ResolvedUser(0, 0, (0,), "/")
    assert resolve_user(view, "5") == ResolvedUser(5, 0, (0,), "/")
    with pytest.raises(UserLookupError):
        resolve_user(view, "nobody")


def test_config_namespaces_follow_network_mode(tmp_path: Path) -> None:
    user = ResolvedUser(0, 0, (0,), "/root")
    none = generate_config(ProcessSpec(("true",), network="none"), user, tmp_path, tmp_path)
    default = generate_config(ProcessSpec(("true",)), user, tmp_path, tmp_path)
    assert {"type": "network"} in none["linux"]["namespaces"]
    assert {"type": "network"} not in default["linux"]["namespaces"]
    assert {n["type"] for n in default["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount"}
    assert default["hostname"] == "buildkitsandbox"
    mounts = {m["destination"]: m for m in default["mounts"]}
    assert "ro" in mounts["/etc/hosts"]["options"] and "ro" in mounts["/sys"]["options"]
    assert default["process"]["capabilities"]["effective"]


def test_config_non_root_has_no_effective_caps(tmp_path: Path) -> None:
    cfg = generate_config(ProcessSpec(("true",)), ResolvedUser(1, 1, (1,), "/"), tmp_path, tmp_path)
    assert cfg["process"]["capabilities"]["effective"] == []
    assert cfg["process"]["user"] == {"uid": 1, "gid": 1, "additionalGids": [1]}


def test_env_defaults() -> None:
    user = ResolvedUser(0, 0, (0,), "/root")
    env = build_env(ProcessSpec(("true",), env=("A=1",)), user)
    assert env[0].startswith("PATH=/usr/local/sbin") and "A=1" in env and env[-1] == "HOME=/root"
    assert hosts_file("h").startswith("127.0.0.1\tlocalhost h\n")


def test_rootless_config_binds_sys_with_the_hosts_network_and_drops_an_unmapped_tty_gid(
    tmp_path: Path,
) -> None:
    from engine.userns import IdMapping, IdRange

    user = ResolvedUser(0, 0, (0,), "/root")
    single = IdMapping((IdRange(0, 1001, 1),), (IdRange(0, 1001, 1),))
    ranged = IdMapping(
        (IdRange(0, 1001, 1), IdRange(1, 100000, 65536)),
        (IdRange(0, 1001, 1), IdRange(1, 100000, 65536)),
    )
    host = generate_config(ProcessSpec(("true",)), user, tmp_path, tmp_path, mapping=single)
    mounts = {m["destination"]: m for m in host["mounts"]}
    # sysfs may be mounted only in a network namespace of the user namespace: bound instead
    assert mounts["/sys"]["type"] == "bind" and mounts["/sys"]["source"] == "/sys"
    assert "ro" in mounts["/sys"]["options"] and "rbind" in mounts["/sys"]["options"]
    assert "gid=5" not in mounts["/dev/pts"]["options"]
    none = generate_config(
        ProcessSpec(("true",), network="none"), user, tmp_path, tmp_path, mapping=ranged
    )
    mounts = {m["destination"]: m for m in none["mounts"]}
    assert mounts["/sys"]["type"] == "sysfs"  # its own network namespace: a real sysfs
    assert "gid=5" in mounts["/dev/pts"]["options"]
    # as real root nothing changes
    root = generate_config(ProcessSpec(("true",)), user, tmp_path, tmp_path)
    assert {m["destination"]: m for m in root["mounts"]}["/sys"]["type"] == "sysfs"


def test_runtime_preference_and_state_dir_follow_the_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import engine.userns.namespace as namespace
    from engine.executor.oci import DEFAULT_STATE_DIR, default_state_dir
    from engine.executor.runtime import default_preference

    monkeypatch.setattr(namespace, "mode", lambda: "root")
    assert default_preference() == ("crun", "runc")
    assert default_state_dir() == DEFAULT_STATE_DIR
    monkeypatch.setattr(namespace, "mode", lambda: "inside")
    # crun first in a user namespace too (the executor hides a cgroup v1 "hybrid" v2 hierarchy
    # from it there with a tmpfs)
    assert default_preference() == ("crun", "runc")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_state_dir() == tmp_path / "nbbuild"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".cache" / "nbbuild-run"
