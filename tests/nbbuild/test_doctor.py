"""The host probe (:mod:`engine.doctor`) and its notebook display (:mod:`nbbuild._doctor`).

On this host (root, crun, overlayfs) the real probe must say every check passed, with the
versions the tools themselves report. A locked-down host is described with a fake ``/proc``
(the sysctls, ``/proc/self/status`` and mount table of a Binder-like container) and a
non-root uid: each finding must then say what it means and how to fix it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.doctor import Report, mount_of, probe, probe_user_namespaces
from nbbuild._doctor import DoctorReport, doctor

TOPICS = [
    "user",
    "user namespaces",
    "overlayfs",
    "runtimes",
    "sandbox",
    "cgroups",
    "graphviz",
    "store",
]


def _version(tool: str, *args: str) -> str:
    """The word after "version" in what ``tool ARGS`` prints."""
    done = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
    words = (done.stdout + done.stderr).split()
    return words[words.index("version") + 1]


def test_this_host_can_build(tmp_path: Path) -> None:
    root = tmp_path / "store"
    report = probe(root, root_source="NBBUILD_ROOT")
    assert [f.topic for f in report.findings] == TOPICS
    assert report.can_run
    assert report["user"].status == "ok" and report["user"].found == "root (uid 0)"
    assert report["user namespaces"].status == "ok"
    assert report["overlayfs"].status == "ok"
    assert report["sandbox"].status == "ok"
    runtimes = report["runtimes"].found
    crun = shutil.which("crun")
    assert crun is not None
    assert f"crun {_version(crun, '--version')}" in runtimes
    assert report["runtimes"].meaning.startswith("RUN steps use crun")
    assert report["graphviz"].found.startswith(f"dot {_version('dot', '-V')} ")
    store = report["store"]
    fs = mount_of(tmp_path)
    assert fs is not None
    assert store.found.startswith(f"{root} (from NBBUILD_ROOT): not created yet, {fs[1]}, ")
    assert not root.exists()  # the doctor looked, and created nothing
    assert list(tmp_path.iterdir()) == []  # its trial overlay directories are gone
    text = report.text()
    assert text.splitlines()[0].startswith("[ok]   user")
    assert text.rstrip().endswith("This host can build: every check passed.") or (
        report.problems and "limit(s) above" in text
    )


def test_store_size_once_it_exists(tmp_path: Path) -> None:
    from engine.store.store import Store

    root = tmp_path / "store"
    Store.open(root).close()
    assert ": 0B, " in probe(root)["store"].found


def _fake_proc(tmp_path: Path, *, store: Path) -> Path:
    proc = tmp_path / "proc"
    for path, text in {
        "sys/user/max_user_namespaces": "0\n",
        "sys/kernel/unprivileged_userns_clone": "0\n",
        "sys/kernel/apparmor_restrict_unprivileged_userns": "1\n",
        "self/status": "Name:\tpython\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n",
        "filesystems": "nodev\tsysfs\nnodev\ttmpfs\n\text4\n",
        "self/mountinfo": (
            "1 0 0:1 / / rw - overlay overlay rw,lowerdir=/a,upperdir=/b,workdir=/c\n"
            "2 1 0:2 / /proc rw - proc proc rw\n"
            f"3 1 0:3 / {str(store.parent).replace(' ', chr(92) + '040')} rw - nfs4 srv:/x rw\n"
        ),
    }.items():
        (proc / path).parent.mkdir(parents=True, exist_ok=True)
        (proc / path).write_text(text)
    return proc


def test_a_locked_down_host_says_why_and_how_to_fix(tmp_path: Path) -> None:
    store = tmp_path / "shared dir" / "store"
    store.parent.mkdir()
    proc = _fake_proc(tmp_path, store=store)
    report = probe(store, proc=proc, euid=1000)
    assert not report.can_run
    user = report["user"]
    assert (user.status, user.found) == ("fail", "not root (uid 1000)")
    assert "need root" in user.meaning and user.fix
    userns = report["user namespaces"]
    assert userns.status == "warn"
    for why in (
        "user.max_user_namespaces is 0",
        "kernel.unprivileged_userns_clone is 0",
        "AppArmor restricts unprivileged user namespaces",
        "a seccomp filter is active",
        "no_new_privs is set",
    ):
        assert why in userns.found
    for fix in (
        "sysctl -w user.max_user_namespaces=15000",
        "sysctl -w kernel.unprivileged_userns_clone=1",
        "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        "seccomp=unconfined",
        "allowPrivilegeEscalation",
    ):
        assert fix in userns.fix
    overlay = report["overlayfs"]
    assert overlay.status == "fail" and "modprobe overlay" in overlay.fix
    assert report["sandbox"].status == "fail"
    assert report["cgroups"].found == "not mounted"
    store_line = report["store"]
    assert store_line.status == "warn"
    assert f"{store}: not created yet, nfs4" in store_line.found  # \040 decoded to a space
    assert "NBBUILD_ROOT" in store_line.fix
    text = report.text()
    assert "fix: sysctl -w user.max_user_namespaces=15000" in text
    assert text.rstrip().endswith(
        "RUN steps cannot execute here; plan, cache keys, explain and what-if still work."
    )


def test_user_namespaces_as_root_are_not_needed_yet(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = _fake_proc(tmp_path, store=store)
    finding = probe_user_namespaces(proc, euid=0)
    # root is not subject to the non-root switches; the limit and seccomp still apply
    assert "unprivileged_userns_clone" not in finding.found
    assert "user.max_user_namespaces is 0" in finding.found
    assert "not needed while RUN steps run as root" in finding.meaning


def test_without_dot_graphs_fall_back_to_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATH with every tool of this host but graphviz's ``dot``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            if name != "dot" and not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(Path(directory) / name)
    monkeypatch.setenv("PATH", str(bin_dir))
    report = probe(tmp_path / "store")
    graphviz = report["graphviz"]
    assert (graphviz.status, graphviz.found) == ("warn", "dot not found")
    assert "text and HTML" in graphviz.meaning and "apt-get install graphviz" in graphviz.fix
    assert report.can_run  # graphs are not builds


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
