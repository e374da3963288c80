"""The host probe (:mod:`engine.doctor`) and its notebook display (:mod:`nbbuild._doctor`).

On this host (crun, runc, bwrap 0.8, overlayfs, a cgroup v1 hybrid layout) the real probe
must say every check passed, with the versions the tools themselves report: as root, builds
use crun as real root; as a normal user (the rootless test run), runc in a user namespace
with the user's subordinate range. Other hosts are described with a fake ``/proc`` (sysctls,
``/proc/self/status``, the mount table, the kernel release), a fake ``/etc`` (subuid, subgid)
and another uid: each finding must then say what it means and how to fix it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.doctor import Finding, Report, mount_of, probe, probe_user_namespaces
from engine.executor.runtime import Runtime, find_runtime
from nbbuild._doctor import DoctorReport, doctor

TOPICS = [
    "user",
    "user namespaces",
    "ID mapping",
    "overlayfs",
    "runtimes",
    "sandbox",
    "cgroups",
    "graphviz",
    "store",
]
# A uid this host's passwd does not know, judged as another user would be.
NOBODY_KNOWS = 4_242_424


def _version(tool: str, *args: str) -> str:
    """The number after "version" in what ``tool ARGS`` prints (``1.1.5`` of ``1.1.5+ds1``)."""
    done = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
    words = (done.stdout + done.stderr).split()
    match = re.match(r"\d+(\.\d+)*", words[words.index("version") + 1])
    assert match is not None
    return match.group()


def _subids(name: str, uid: int) -> list[tuple[int, int]]:
    out = []
    for line in Path("/etc/subuid").read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 3 and fields[0] in (name, str(uid)):
            out.append((int(fields[1]), int(fields[2])))
    return out


# -- this host, for real ------------------------------------------------------------------------


def test_this_host_can_build(tmp_path: Path) -> None:
    root = tmp_path / "store"
    report = probe(root, root_source="NBBUILD_ROOT")
    assert [f.topic for f in report.findings] == TOPICS
    assert report.can_run and not report.failed
    runtimes = report["runtimes"]
    for tool in ("crun", "runc"):
        path = shutil.which(tool, path=os.environ["PATH"] + ":/usr/sbin:/sbin")
        assert path is not None
        assert f"{tool} {_version(path, '--version')}" in runtimes.found
    assert "bwrap 0.8.0 is not used (bubblewrap < 0.9 lacks overlay options)" in runtimes.meaning
    # The runtime named is the one the executor picks in this process's mode.
    assert runtimes.meaning.startswith(f"RUN steps use {find_runtime().name} ")
    if os.geteuid() == 0:
        assert (report["user"].status, report["user"].found) == ("ok", "root (uid 0)")
        assert report["user namespaces"].meaning.startswith("not needed")
        assert report["ID mapping"].found == "not needed (root)"
        assert report["sandbox"].found.startswith("OCI executor: crun as root")
        assert "hides the unified hierarchy" in report["cgroups"].meaning
    else:
        name = pwd.getpwuid(os.geteuid()).pw_name
        assert report["user"].found == f"not root (uid {os.geteuid()}, {name})"
        assert "rootless" in report["user"].meaning
        assert report["overlayfs"].found.endswith("(rootless, userxattr)")
        assert report["sandbox"].found.startswith("OCI executor: crun as root of a user namespace")
        assert "rootless steps run without cgroup limits" in report["cgroups"].meaning
        ranges = _subids(name, os.geteuid())
        mapping = report["ID mapping"]
        if ranges:
            start, count = ranges[0]
            assert mapping.status == "ok"
            assert mapping.found.startswith(
                f"0→{os.geteuid()}, 1-{count}→{start}-{start + count - 1} "
            )
        else:
            assert mapping.status == "warn" and "single-ID mapping" in mapping.meaning
    assert report["user namespaces"].status == "ok"
    assert report["overlayfs"].status == "ok"
    assert report["sandbox"].status == "ok"
    assert report["graphviz"].found.startswith(f"dot {_version('dot', '-V')} ")
    store = report["store"]
    fs = mount_of(tmp_path)
    assert fs is not None
    assert store.found.startswith(f"{root} (from NBBUILD_ROOT): not created yet, {fs[1]}, ")
    assert not root.exists()  # the doctor looked, and created nothing
    assert list(tmp_path.iterdir()) == []  # its trial overlay directories are gone
    text = report.text()
    assert text.splitlines()[0].startswith("[ok]   user" if os.geteuid() == 0 else "[info] user")
    assert text.rstrip().endswith("This host can build: every check passed.") or (
        report.problems and "limit(s) above" in text
    )


def test_store_size_once_it_exists(tmp_path: Path) -> None:
    from engine.store.store import Store

    root = tmp_path / "store"
    Store.open(root).close()
    assert ": 0B, " in probe(root)["store"].found


# -- other hosts, described ---------------------------------------------------------------------


def _fake_proc(
    tmp_path: Path,
    *,
    store: Path,
    store_fs: str = "ext4",
    locked: bool = False,
    files: dict[str, str] | None = None,
    **overrides: str,
) -> Path:
    """A ``/proc`` of a host with overlayfs, Linux 6.1, cgroup v2: ``locked`` adds every
    reason a normal user may not create a user namespace; ``files`` and ``overrides``
    (``self__status`` for ``self/status``) replace files."""
    proc = tmp_path / "proc"
    content = {
        "sys/user/max_user_namespaces": "15000\n",
        "sys/kernel/unprivileged_userns_clone": "1\n",
        "sys/kernel/apparmor_restrict_unprivileged_userns": "0\n",
        "sys/kernel/osrelease": "6.1.0-18-amd64\n",
        "self/status": "Name:\tpython\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\n",
        "filesystems": "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n",
        "self/mountinfo": (
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
            "2 1 0:2 / /proc rw - proc proc rw\n"
            "4 1 0:4 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
            f"3 1 0:3 / {str(store.parent).replace(' ', chr(92) + '040')} rw - {store_fs} "
            "srv:/x rw\n"
        ),
    }
    if locked:
        content.update(
            {
                "sys/user/max_user_namespaces": "0\n",
                "sys/kernel/unprivileged_userns_clone": "0\n",
                "sys/kernel/apparmor_restrict_unprivileged_userns": "1\n",
                "self/status": "Name:\tpython\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n",
                "filesystems": "nodev\tsysfs\nnodev\ttmpfs\n\text4\n",
                "self/mountinfo": (
                    "1 0 0:1 / / rw - overlay overlay rw,lowerdir=/a,upperdir=/b,workdir=/c\n"
                    "2 1 0:2 / /proc rw - proc proc rw\n"
                    f"3 1 0:3 / {str(store.parent).replace(' ', chr(92) + '040')} rw - nfs4 "
                    "srv:/x rw\n"
                ),
            }
        )
    content.update({k.replace("__", "/"): v for k, v in {**(files or {}), **overrides}.items()})
    for path, text in content.items():
        (proc / path).parent.mkdir(parents=True, exist_ok=True)
        (proc / path).write_text(text)
    return proc


def _fake_etc(tmp_path: Path, subuid: str, subgid: str | None = None) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "subuid").write_text(subuid)
    (etc / "subgid").write_text(subuid if subgid is None else subgid)
    return etc


def _store_for_anyone(tmp_path: Path, fs_dir: str = "home") -> Path:
    """A store path whose parent another user may write (the simulated user is not us)."""
    parent = tmp_path / fs_dir
    parent.mkdir()
    parent.chmod(0o777)
    return parent / "store"


def _other_uid() -> int:
    """A normal uid that is not this process's (the simulated user)."""
    return NOBODY_KNOWS if os.geteuid() != NOBODY_KNOWS else NOBODY_KNOWS + 1


def test_a_locked_down_host_says_why_and_how_to_fix(tmp_path: Path) -> None:
    store = tmp_path / "shared dir" / "store"
    store.parent.mkdir()
    store.parent.chmod(0o777)
    proc = _fake_proc(tmp_path, store=store, locked=True)
    uid = _other_uid()
    report = probe(store, proc=proc, etc=_fake_etc(tmp_path, ""), euid=uid)
    assert not report.can_run and report.failed
    user = report["user"]
    assert (user.status, user.found) == ("info", f"not root (uid {uid})")
    assert "rootless" in user.meaning and "need root" not in user.meaning
    userns = report["user namespaces"]
    assert userns.status == "fail"
    assert "builds are refused" in userns.meaning and "explain" in userns.meaning
    for why in (
        "user.max_user_namespaces is 0",
        "kernel.unprivileged_userns_clone is 0",
        "AppArmor restricts unprivileged user namespaces",
        "a seccomp filter is active",
    ):
        assert why in userns.found
    for fix in (
        "sysctl -w user.max_user_namespaces=15000",
        "sysctl -w kernel.unprivileged_userns_clone=1",
        "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        "seccomp=unconfined",
    ):
        assert fix in userns.fix
    overlay = report["overlayfs"]
    assert overlay.status == "warn" and "modprobe overlay" in overlay.fix
    assert "copy snapshotter" in overlay.meaning  # RUN steps still run, over copies
    sandbox = report["sandbox"]
    assert sandbox.status == "fail" and sandbox.found.startswith("refused: no user namespace")
    assert report["cgroups"].found == "not mounted"
    store_line = report["store"]
    assert store_line.status == "fail"
    assert f"{store}: not created yet, nfs4" in store_line.found  # \040 decoded to a space
    assert "SQLite's WAL" in store_line.meaning and "upper dirs" in store_line.meaning
    assert "NBBUILD_ROOT" in store_line.fix
    text = report.text()
    assert "fix: sysctl -w user.max_user_namespaces=15000" in text
    assert text.rstrip().endswith(
        "RUN steps cannot execute here; plan, cache keys, explain and what-if still work."
    )


@pytest.mark.parametrize(
    ("files", "why", "fix"),
    [
        (
            {"sys__user__max_user_namespaces": "0\n"},
            "user.max_user_namespaces is 0",
            "sysctl -w user.max_user_namespaces=15000",
        ),
        (
            {"sys__kernel__unprivileged_userns_clone": "0\n"},
            "kernel.unprivileged_userns_clone is 0 (Debian's switch for non-root users)",
            "sysctl -w kernel.unprivileged_userns_clone=1",
        ),
        (
            {"sys__kernel__apparmor_restrict_unprivileged_userns": "1\n"},
            "AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10+)",
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        ),
        (
            {"self__status": "Name:\tpython\nNoNewPrivs:\t0\nSeccomp:\t2\n"},
            "a seccomp filter is active (a container's default profile blocks unshare)",
            "--security-opt seccomp=unconfined",
        ),
    ],
    ids=["max_user_namespaces", "debian-clone-switch", "ubuntu-apparmor", "seccomp"],
)
def test_one_reason_for_no_user_namespace(
    tmp_path: Path, files: dict[str, str], why: str, fix: str
) -> None:
    """Each cause alone: builds of a normal user are refused; nothing else is blamed."""
    store = _store_for_anyone(tmp_path)
    proc = _fake_proc(tmp_path, store=store, files=files)
    etc = _fake_etc(tmp_path, f"{_other_uid()}:100000:65536\n")
    report = probe(store, proc=proc, etc=etc, euid=_other_uid())
    userns = report["user namespaces"]
    assert (userns.status, userns.found) == ("fail", f"unavailable: {why}")
    assert fix in userns.fix
    assert report["overlayfs"].status == "info"  # not tried: it needs the namespace
    assert report["sandbox"].status == "fail" and not report.can_run
    assert report.failed
    others = {f.topic for f in report.problems}
    assert others == {"user namespaces", "sandbox"}
    # As root the same host builds: user namespaces are not needed.
    as_root = probe(store, proc=proc, etc=etc, euid=0)
    assert as_root["user namespaces"].status in ("info", "ok")
    assert as_root["sandbox"].status == "ok" and as_root.can_run


def test_user_namespaces_as_root_are_not_needed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = _fake_proc(tmp_path, store=store, locked=True)
    finding = probe_user_namespaces(proc, euid=0)
    # root is not subject to the non-root switches; the limit and seccomp still apply
    assert "unprivileged_userns_clone" not in finding.found
    assert "user.max_user_namespaces is 0" in finding.found
    assert finding.status == "info"
    assert finding.meaning.startswith("not needed: RUN steps run as root")


def test_a_rootless_host_with_a_range_builds(tmp_path: Path) -> None:
    """A normal user with a subuid/subgid range on a good host: runc in a user namespace."""
    store = _store_for_anyone(tmp_path)
    uid = _other_uid()
    proc = _fake_proc(tmp_path, store=store)
    etc = _fake_etc(tmp_path, f"someone:100000:65536\n{uid}:165536:65536\n")
    report = probe(store, proc=proc, etc=etc, euid=uid)
    assert not report.problems, report.text()
    mapping = report["ID mapping"]
    assert mapping.found.startswith(f"0→{uid}, 1-65536→165536-231071 (subuid 165536-231071")
    assert "IDs 0-65536" in mapping.meaning and "USER app" in mapping.meaning
    assert report["runtimes"].meaning.startswith("RUN steps use crun ")
    assert report["runtimes"].meaning.endswith(
        "bwrap 0.8.0 is not used (bubblewrap < 0.9 lacks overlay options)"
    )
    assert report["sandbox"].found.startswith("OCI executor: crun as root of a user namespace")
    assert report["cgroups"].meaning == "rootless steps run without cgroup limits"
    assert report.verdict() == "This host can build: every check passed."


def test_without_a_range_builds_use_one_id(tmp_path: Path) -> None:
    store = _store_for_anyone(tmp_path)
    proc = _fake_proc(tmp_path, store=store)
    etc = _fake_etc(tmp_path, "alice:100000:65536\n")
    # A user the host knows by name (the fix names it): nobody, or whoever is not us.
    user = next(p for p in pwd.getpwall() if p.pw_uid not in (0, os.geteuid()))
    report = probe(store, proc=proc, etc=etc, euid=user.pw_uid)
    mapping = report["ID mapping"]
    assert mapping.status == "warn" and report.can_run and not report.failed
    assert mapping.found.startswith(f"only uid {user.pw_uid} (subuid none, subgid none for ")
    assert "single-ID mapping" in mapping.meaning and "chown, USER app" in mapping.meaning
    # A range nobody has yet (alice has 100000-165535), for both files, by login name.
    assert mapping.fix == (
        f"sudo usermod --add-subuids 165536-231071 --add-subgids 165536-231071 {user.pw_name}"
    )
    # A uid without a passwd entry: usermod needs a name, the files take the uid.
    uid = _other_uid()
    only_gids_missing = _fake_etc(tmp_path, f"{uid}:300000:65536\n", "alice:100000:65536\n")
    mapping = probe(store, proc=proc, etc=only_gids_missing, euid=uid)["ID mapping"]
    assert mapping.status == "warn"
    assert mapping.fix == f"echo {uid}:365536:65536 | sudo tee -a /etc/subgid"


def _bin_without(tmp_path: Path, *missing: str, fakes: tuple[str, ...] = ()) -> Path:
    """A directory with every tool of this host but ``missing``; ``fakes`` are plain
    (not setuid) scripts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            if name not in missing and name not in fakes and not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(Path(directory) / name)
    for name in fakes:
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_without_uidmap_builds_use_one_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store_for_anyone(tmp_path)
    uid = _other_uid()
    proc = _fake_proc(tmp_path, store=store)
    etc = _fake_etc(tmp_path, f"{uid}:100000:65536\n")
    monkeypatch.setenv("PATH", str(_bin_without(tmp_path, "newuidmap", "newgidmap")))
    mapping = probe(store, proc=proc, etc=etc, euid=uid)["ID mapping"]
    assert mapping.status == "warn"
    assert mapping.found == (
        f"only uid {uid} (subuid 100000-165535, subgid 100000-165535 for {uid}; "
        "newuidmap and newgidmap not found)"
    )
    assert mapping.fix == "apt-get install uidmap (newuidmap and newgidmap)"


def test_a_helper_that_is_not_setuid_refuses_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store_for_anyone(tmp_path)
    uid = _other_uid()
    proc = _fake_proc(tmp_path, store=store)
    etc = _fake_etc(tmp_path, f"{uid}:100000:65536\n")
    bin_dir = _bin_without(tmp_path, fakes=("newuidmap", "newgidmap"))
    monkeypatch.setenv("PATH", str(bin_dir))
    report = probe(store, proc=proc, etc=etc, euid=uid)
    mapping = report["ID mapping"]
    assert mapping.status == "fail" and "not setuid root" in mapping.found
    assert mapping.fix.startswith(f"chmod u+s {bin_dir}/newuidmap {bin_dir}/newgidmap")
    assert report["sandbox"].found == "refused: the ID mapping cannot be entered"
    assert not report.can_run


def test_no_new_privs_refuses_builds_with_a_range(tmp_path: Path) -> None:
    store = _store_for_anyone(tmp_path)
    uid = _other_uid()
    proc = _fake_proc(tmp_path, store=store, self__status="NoNewPrivs:\t1\nSeccomp:\t0\n")
    report = probe(store, proc=proc, etc=_fake_etc(tmp_path, f"{uid}:100000:65536\n"), euid=uid)
    mapping = report["ID mapping"]
    assert mapping.status == "fail" and mapping.found.endswith("but no_new_privs is set")
    assert "allowPrivilegeEscalation: true" in mapping.fix
    assert not report.can_run
    # Without a range no helper is needed: one ID, and builds run.
    single = probe(store, proc=proc, etc=_fake_etc(tmp_path, ""), euid=uid)
    assert single["ID mapping"].status == "warn" and single.can_run


@pytest.mark.parametrize(
    ("uid_map", "status", "found"),
    [
        ("0 1000 1\n", "warn", "this namespace maps 0→1000"),
        ("0 1000 1\n1 100000 65536\n", "ok", "this namespace maps 0→1000, 1-65536→100000-165535"),
    ],
    ids=["single", "range"],
)
def test_root_of_a_user_namespace(tmp_path: Path, uid_map: str, status: str, found: str) -> None:
    """uid 0 in a container that is itself a user namespace (rootless Podman, Docker with
    userns-remap): builds run rootless right there."""
    store = tmp_path / "store"
    proc = _fake_proc(tmp_path, store=store, self__uid_map=uid_map, self__gid_map=uid_map)
    report = probe(store, proc=proc, euid=0)
    assert report["user"].found == "root of a user namespace (uid_map 0 1000 1)"
    assert (report["ID mapping"].status, report["ID mapping"].found) == (status, found)
    assert report["runtimes"].meaning.startswith("RUN steps use crun ")
    assert report["sandbox"].found.startswith("OCI executor: crun as root of this user namespace")


def test_rootless_overlayfs_needs_linux_5_11(tmp_path: Path) -> None:
    store = _store_for_anyone(tmp_path)
    uid = _other_uid()
    proc = _fake_proc(tmp_path, store=store, sys__kernel__osrelease="5.10.0-28-amd64\n")
    etc = _fake_etc(tmp_path, f"{uid}:100000:65536\n")
    overlay = probe(store, proc=proc, etc=etc, euid=uid)["overlayfs"]
    assert overlay.status == "warn"  # rootless RUN steps copy the layers instead
    assert "copy snapshotter" in overlay.meaning
    assert overlay.found == "Linux 5.10.0-28-amd64: overlayfs in a user namespace needs 5.11+"
    assert "5.11 or later" in overlay.fix
    # Root mounts overlayfs on any kernel that has it.
    assert probe(store, proc=proc, etc=etc, euid=0)["overlayfs"].status == "ok"


def test_runtimes_line() -> None:
    from engine.doctor import _runtimes

    crun = Runtime("crun", Path("/usr/bin/crun"), "1.8.1")
    runc = Runtime("runc", Path("/usr/sbin/runc"), "1.1.5")
    old = Runtime("bwrap", Path("/usr/bin/bwrap"), "0.8.0")
    new = Runtime("bwrap", Path("/usr/bin/bwrap"), "0.9.0")
    line = _runtimes([crun, runc, old], runc, "outside", "hybrid")
    assert (line.status, line.found) == ("ok", "crun 1.8.1, runc 1.1.5, bwrap 0.8.0")
    assert line.meaning == (
        "RUN steps use runc (/usr/sbin/runc) in a user namespace; "
        "bwrap 0.8.0 is not used (bubblewrap < 0.9 lacks overlay options)"
    )
    assert _runtimes([crun, new], crun, "root", "v2").meaning.endswith("; bwrap is not used")
    # crun runs rootless on a hybrid host too (the executor hides the v2 tree from it)
    assert _runtimes([crun], crun, "outside", "hybrid").status == "ok"
    assert _runtimes([crun], crun, "outside", "v2").status == "ok"
    none = _runtimes([old], None, "root", "v2")
    assert none.status == "fail" and "bubblewrap < 0.9" in none.meaning
    assert _runtimes([], None, "root", "v2").found == "none of crun, runc, bwrap"


@pytest.mark.parametrize(
    ("fs", "status", "words"),
    [
        ("nfs", "fail", ("network filesystem", "SQLite's WAL", "upper dirs")),
        ("cifs", "fail", ("network filesystem", "SQLite's WAL", "upper dirs")),
        ("fuse.sshfs", "warn", ("upper dirs",)),
        ("overlay", "warn", ("upper dirs",)),
        ("tmpfs", "info", ("lost at reboot",)),
    ],
)
def test_store_filesystem(tmp_path: Path, fs: str, status: str, words: tuple[str, ...]) -> None:
    store = tmp_path / "mnt" / "store"
    store.parent.mkdir()
    proc = _fake_proc(tmp_path, store=store, store_fs=fs)
    line = probe(store, proc=proc, euid=0)["store"]
    assert line.status == status and f", {fs}, " in line.found
    for word in words:
        assert word in line.meaning
    if status != "info":
        assert "NBBUILD_ROOT" in line.fix


def test_store_permissions(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, store=tmp_path / "x" / "store")
    uid = _other_uid()
    etc = _fake_etc(tmp_path, f"{uid}:100000:65536\n")
    # Someone else's store (ours, seen by another user).
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o777)
    mine.chmod(0o777)
    line = probe(mine, proc=proc, etc=etc, euid=uid)["store"]
    assert line.status == "fail"
    assert line.found.startswith(f"{mine} belongs to ") and line.found.endswith("not to you")
    assert "a store is used by the user who made it" in line.meaning
    assert "NBBUILD_ROOT" in line.fix
    # A store that does not exist yet under a directory the user cannot write.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    line = probe(locked / "store", proc=proc, etc=etc, euid=uid)["store"]
    assert line.status == "fail"
    assert line.found == f"{locked / 'store'} does not exist and {locked} is not writable"
    assert line.meaning == "builds cannot create the store"
    # The owner without write permission.
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    line = probe(ro, proc=proc, etc=etc, euid=os.geteuid() or uid)["store"]
    if os.geteuid() == 0:  # judged as another user: that user's store is someone else's
        assert line.found.endswith("not to you")
    else:
        assert (line.status, line.found) == ("fail", f"{ro} is not writable")
        assert line.fix.startswith(f"chmod u+rwx {ro}")
    ro.chmod(0o755)


def test_without_dot_graphs_fall_back_to_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATH with every tool of this host but graphviz's ``dot``."""
    monkeypatch.setenv("PATH", str(_bin_without(tmp_path, "dot")))
    report = probe(tmp_path / "store")
    graphviz = report["graphviz"]
    assert (graphviz.status, graphviz.found) == ("warn", "dot not found")
    assert "text and HTML" in graphviz.meaning and "apt-get install graphviz" in graphviz.fix
    assert report.can_run  # graphs are not builds


def test_report_verdict_and_json() -> None:
    report = Report(
        (
            Finding("user", "ok", "root (uid 0)", "fine"),
            Finding("sandbox", "ok", "crun", "fine"),
            Finding("store", "warn", "/x", "little space", "prune"),
        )
    )
    assert report.can_run and not report.failed
    assert report.verdict() == "This host can build; 1 limit(s) above."
    assert report.to_json()[2] == {
        "topic": "store",
        "status": "warn",
        "found": "/x",
        "meaning": "little space",
        "fix": "prune",
    }
    assert "         fix: prune" in report.text()


def test_doctor_display(tmp_path: Path) -> None:
    shown = doctor(tmp_path / "store", root_source="the default")
    assert isinstance(shown, DoctorReport) and isinstance(shown.report, Report)
    bundle = shown._repr_mimebundle_()
    assert bundle["text/plain"] == shown.report.text()
    html = bundle["text/html"]
    assert html.count("<tr>") == len(TOPICS)
    assert "<script" not in html and "<style" not in html
    assert "(from the default)" in html
    assert set(shown._repr_mimebundle_(include=["text/plain"])) == {"text/plain"}
    assert repr(shown) == shown.report.text().rstrip("\n")
