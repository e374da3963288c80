"""BuildKit's sandbox contract, checked through real builds: what a RUN sees (PATH, HOME,
hostname, /etc/hosts, users, cwd, shell) and that COPY/ADD/WORKDIR path tricks stay inside the
image's root filesystem (fixtures in tests/buildkit_base.py). Run by a normal user the builds
are rootless; with a single ID mapping what needs another user or group (``USER``, ``chown``)
must fail with the clear error (``bk.single_refuses``)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from engine.errors import NbbuildError
from engine.exporters.merged import walk_merged
from engine.graph.image import DEFAULT_PATH


def _load_base() -> ModuleType:
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


base = _load_base()
busybox_archive = base.busybox_archive
bk = base.bk


def _log(result: object, prefix: str) -> str:
    return result.step(prefix).logs.decode()  # type: ignore[attr-defined,no-any-return]


def _files(bk: object, result: object) -> dict[str, object]:
    """Every path of the result's merged filesystem (``etc/passwd`` → entry)."""
    layers = base.layer_files(bk.root, result)  # type: ignore[attr-defined]
    return {e.rel.decode(): e for e in walk_merged(layers)}


# -- environment ------------------------------------------------------------------------------


def test_default_path_when_the_base_image_has_none(bk: object) -> None:
    result = bk.build('FROM busybox\nRUN echo "$PATH"\n', tags=("p:1",))
    assert _log(result, "[2/2]") == DEFAULT_PATH + "\n"
    assert DEFAULT_PATH == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert result.config["config"]["Env"] == [f"PATH={DEFAULT_PATH}"]
    inspect = bk.cli("image", "inspect", "p:1")
    assert f"PATH={DEFAULT_PATH}" in inspect.stdout


def test_env_path_of_the_dockerfile_wins(bk: object) -> None:
    result = bk.build('FROM busybox\nENV PATH=/opt/bin:/bin\nRUN echo "$PATH"\n')
    assert _log(result, "[2/2]") == "/opt/bin:/bin\n"
    assert result.config["config"]["Env"] == ["PATH=/opt/bin:/bin"]


def test_hostname_is_buildkitsandbox(bk: object) -> None:
    result = bk.build("FROM busybox\nRUN hostname && cat /proc/sys/kernel/hostname\n")
    assert _log(result, "[2/2]") == "buildkitsandbox\nbuildkitsandbox\n"


def test_etc_hosts_and_resolv_conf_are_readable_but_not_committed(bk: object) -> None:
    result = bk.build(
        "FROM busybox\n"
        "RUN cat /etc/hosts && test -r /etc/resolv.conf && echo resolv-ok && "
        "echo written > /etc/made-by-run\n",
        outputs=[f"type=local,dest={bk.tmp / 'out'}"],
    )
    log = _log(result, "[2/2]")
    assert "127.0.0.1\tlocalhost buildkitsandbox" in log
    assert "::1\tlocalhost ip6-localhost ip6-loopback" in log
    assert "resolv-ok" in log
    out = bk.tmp / "out"
    assert (out / "etc" / "made-by-run").read_text() == "written\n"
    assert not (out / "etc" / "hosts").exists()
    assert not (out / "etc" / "resolv.conf").exists()
    files = _files(bk, result)
    assert "etc/hosts" not in files and "etc/resolv.conf" not in files
    assert "etc/made-by-run" in files


def test_etc_hosts_and_resolv_conf_are_read_only_and_not_committed(bk: object) -> None:
    # BuildKit bind-mounts both read-only (executor/oci/spec_linux.go withROBind)
    result = bk.build(
        "FROM busybox\n"
        "RUN for f in /etc/hosts /etc/resolv.conf; do "
        "if (echo '10.0.0.1 extra' >> $f) 2>/dev/null; then echo \"$f writable\"; "
        'else echo "$f read-only"; fi; done\n',
        outputs=[f"type=local,dest={bk.tmp / 'out'}"],
    )
    assert _log(result, "[2/2]") == "/etc/hosts read-only\n/etc/resolv.conf read-only\n"
    assert not (bk.tmp / "out" / "etc" / "hosts").exists()
    assert not (bk.tmp / "out" / "etc" / "resolv.conf").exists()


def test_etc_hosts_of_the_image_is_kept_in_the_image_but_hidden_during_run(bk: object) -> None:
    bk.write({"hosts": "1.2.3.4 from-image\n"})
    result = bk.build(
        "FROM busybox\nCOPY hosts /etc/hosts\nRUN cat /etc/hosts\n",
        outputs=[f"type=local,dest={bk.tmp / 'out'}"],
    )
    assert "buildkitsandbox" in _log(result, "[3/3]")
    assert "from-image" not in _log(result, "[3/3]")
    assert (bk.tmp / "out" / "etc" / "hosts").read_text() == "1.2.3.4 from-image\n"


def test_home_comes_from_passwd_else_slash(bk: object) -> None:
    dockerfile = (
        "FROM busybox\n"
        'RUN echo "root=$HOME"\n'
        "USER nobody\n"
        'RUN echo "nobody=$HOME"\n'
        "USER 4321\n"
        'RUN echo "unknown=$HOME"\n'
    )
    if bk.single_refuses(dockerfile):  # USER nobody, USER 4321
        return
    result = bk.build(dockerfile)
    assert _log(result, "[2/4]") == "root=/root\n"
    assert _log(result, "[3/4]") == "nobody=/nonexistent\n"
    assert _log(result, "[4/4]") == "unknown=/\n"
    assert "HOME" not in str(result.config["config"].get("Env"))


def test_env_home_of_the_dockerfile_wins(bk: object) -> None:
    result = bk.build('FROM busybox\nENV HOME=/custom\nRUN echo "$HOME"\n')
    assert _log(result, "[2/2]") == "/custom\n"


# -- users ------------------------------------------------------------------------------------

ADD_USER = (
    "RUN echo 'app:x:1001:1002:App:/home/app:/bin/sh' >> /etc/passwd && "
    "echo 'app:x:1002:' >> /etc/group && echo 'extra:x:1500:app' >> /etc/group && "
    "mkdir -p /home/app && chown 1001:1002 /home/app\n"
)


def test_user_name_is_resolved_through_the_images_passwd_and_group(bk: object) -> None:
    dockerfile = (
        "FROM busybox\n"
        + ADD_USER
        + "USER app\n"
        + 'RUN id -u && id -g && id -G && echo "$HOME" && touch /home/app/mine && '
        "stat -c '%u:%g' /home/app/mine\n"
    )
    if bk.single_refuses(dockerfile):  # chown 1001:1002, USER app
        return
    result = bk.build(dockerfile)
    uid, gid, groups, home, owner = _log(result, "[3/3]").split("\n")[:5]
    assert (uid, gid, home, owner) == ("1001", "1002", "/home/app", "1001:1002")
    assert set(groups.split()) == {"1002", "1500"}  # primary plus supplementary from /etc/group
    assert result.config["config"]["User"] == "app"


def test_user_name_with_group_name(bk: object) -> None:
    dockerfile = "FROM busybox\n" + ADD_USER + "USER app:extra\nRUN id -u && id -g\n"
    if bk.single_refuses(dockerfile):
        return
    result = bk.build(dockerfile)
    assert _log(result, "[3/3]") == "1001\n1500\n"


def test_numeric_user_and_group_need_no_passwd_entry(bk: object) -> None:
    dockerfile = (
        "FROM busybox\nUSER 1234:5678\nRUN id -u && id -g && touch /tmp/f && stat -c '%u:%g' /tmp/f\n"
    )
    if bk.single_refuses(dockerfile):
        return
    result = bk.build(dockerfile, outputs=[f"type=local,dest={bk.tmp / 'out'}"])
    assert _log(result, "[2/2]") == "1234\n5678\n1234:5678\n"
    assert base.owner(bk.tmp / "out" / "tmp" / "f") == (1234, 5678)
    assert result.config["config"]["User"] == "1234:5678"


def test_unknown_user_name_fails_the_step_clearly(bk: object) -> None:
    with pytest.raises(Exception) as info:
        bk.build("FROM busybox\nUSER ghost\nRUN id\n")
    assert "ghost" in str(info.value)
    assert not isinstance(info.value, AssertionError)


def test_user_resolves_against_the_current_stage_not_the_base(bk: object) -> None:
    # the user is added by the image's own RUN: USER must see the layer it is in
    dockerfile = "FROM busybox AS base\n" + ADD_USER + "FROM base\nUSER app\nRUN id -un\n"
    if bk.single_refuses(dockerfile):
        return
    result = bk.build(dockerfile)
    assert _log(result, "[stage-1 1/1]") == "app\n"  # FROM <stage> is not a step


# -- WORKDIR and SHELL ------------------------------------------------------------------------


def test_workdir_is_created_and_used_as_cwd(bk: object) -> None:
    result = bk.build(
        "FROM busybox\nWORKDIR /a/b\nWORKDIR c\nRUN pwd && touch here\n",
        outputs=[f"type=local,dest={bk.tmp / 'out'}"],
    )
    assert _log(result, "[4/4]") == "/a/b/c\n"
    out = bk.tmp / "out"
    assert (out / "a" / "b" / "c" / "here").is_file()
    assert (out / "a" / "b" / "c").stat().st_mode & 0o7777 == 0o755
    assert result.config["config"]["WorkingDir"] == "/a/b/c"


def test_workdir_is_owned_by_the_current_user(bk: object) -> None:
    dockerfile = "FROM busybox\nUSER 1234:5678\nWORKDIR /data/w\nRUN touch made && pwd\n"
    if bk.single_refuses(dockerfile):  # the WORKDIR is made as 1234:5678
        return
    result = bk.build(dockerfile, outputs=[f"type=local,dest={bk.tmp / 'out'}"])
    assert _log(result, "[3/3]") == "/data/w\n"
    assert base.owner(bk.tmp / "out" / "data" / "w") == (1234, 5678)


def test_shell_changes_the_shell_form(bk: object) -> None:
    result = bk.build(
        'FROM busybox\nRUN echo "$0"\nSHELL ["/bin/busybox", "ash", "-euc"]\n'
        'RUN echo "$0 $-"\nRUN ["echo", "exec form $0"]\n'
    )
    assert _log(result, "[2/4]") == "/bin/sh\n"
    shell_line = _log(result, "[3/4]")
    assert shell_line.startswith("ash ")
    assert "e" in shell_line.split()[1] and "u" in shell_line.split()[1]
    assert _log(result, "[4/4]") == "exec form $0\n"  # exec form: no shell at all
    assert result.config["config"]["Shell"] == ["/bin/busybox", "ash", "-euc"]


def test_shell_is_part_of_the_run_key(bk: object) -> None:
    a = bk.build("FROM busybox\nRUN echo same\n")
    b = bk.build('FROM busybox\nSHELL ["/bin/sh", "-xc"]\nRUN echo same\n')
    assert a.step("[2/2]").key != b.step("[2/2]").key
    assert b.step("[2/2]").status == "executed"


# -- staying inside the root filesystem -------------------------------------------------------


def test_copy_through_an_absolute_symlink_to_root_lands_inside_the_image(bk: object) -> None:
    marker = f"nbbuild-escape-{os.getpid()}"
    bk.write({marker: "inside\n"})
    assert not Path("/etc", marker).exists()
    result = bk.build(
        f"FROM busybox\nRUN ln -s / /x\nCOPY {marker} /x/etc/\nRUN cat /etc/{marker}\n",
        outputs=[f"type=local,dest={bk.tmp / 'out'}"],
    )
    assert _log(result, "[4/4]") == "inside\n"
    assert not Path("/etc", marker).exists()
    out = bk.tmp / "out"
    assert (out / "etc" / marker).read_text() == "inside\n"
    assert (out / "x").is_symlink() and os.readlink(out / "x") == "/"


def test_copy_through_a_relative_escaping_symlink_lands_inside_the_image(bk: object) -> None:
    marker = f"nbbuild-escape-rel-{os.getpid()}"
    bk.write({"f": "inside\n"})
    result = bk.build(
        f"FROM busybox\nRUN mkdir /d && ln -s ../../../../../tmp/{marker} /d/up\n"
        "COPY f /d/up/\nRUN cat /tmp/" + marker + "/f\n",
    )
    assert _log(result, "[4/4]") == "inside\n"
    assert not Path("/tmp", marker).exists()


def test_workdir_through_a_symlink_out_of_the_root_stays_inside(bk: object) -> None:
    marker = f"nbbuild-escape-wd-{os.getpid()}"
    result = bk.build(
        f"FROM busybox\nRUN ln -s /../../../../var/tmp/{marker} /link\n"
        "WORKDIR /link/sub\nRUN pwd -P && touch made\n",
        outputs=[f"type=local,dest={bk.tmp / 'out'}"],
    )
    assert _log(result, "[4/4]") == f"/var/tmp/{marker}/sub\n"
    assert not Path("/var/tmp", marker).exists()
    assert (bk.tmp / "out" / "var" / "tmp" / marker / "sub" / "made").is_file()


def test_workdir_proc_self_fd_cannot_reach_the_host(bk: object) -> None:
    # CVE-2024-21626 ("Leaky Vessels"): a cwd of /proc/self/fd/N must not resolve to a file
    # descriptor the runtime leaked from the host.
    secret = bk.tmp / "host-secret.txt"
    secret.write_text("host secret value\n")
    up = "../" * 12
    for fd in range(3, 9):
        try:
            result = bk.build(
                f"FROM busybox\nWORKDIR /proc/self/fd/{fd}\n"
                f"RUN cat {up}{str(secret).lstrip('/')} 2>&1; ls {up} 2>&1; echo end\n"
            )
        except NbbuildError as exc:
            # crun refuses the cwd (it is not a directory inside the container): safe
            text = str(exc) + "\n".join(getattr(exc, "logs", ()))
            assert "host secret value" not in text
            assert f"/proc/self/fd/{fd}" in text
            continue
        log = _log(result, "[3/3]")
        assert "host secret value" not in log
        assert log.endswith("end\n")


def _tar(*members: tuple[str, str, bytes]) -> bytes:
    """A tar of (name, symlink target or "", data) members."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, target, data in members:
            info = tarfile.TarInfo(name)
            if target:
                info.type = tarfile.SYMTYPE
                info.linkname = target
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_add_archive_through_an_absolute_symlink_of_the_image_lands_inside(bk: object) -> None:
    # BuildKit's testDockerfileAddArchiveThroughAbsoluteSymlink: var/run -> /run in the image
    marker = f"nbbuild-escape-tar-{os.getpid()}"
    bk.write({"a.tar": _tar((f"var/run/{marker}/file", "", b"through the link\n"))})
    result = bk.build(
        "FROM busybox\nRUN mkdir -p /run /var && ln -s /run /var/run\n"
        f"ADD a.tar /\nRUN cat /run/{marker}/file\n",
        outputs=[f"type=local,dest={bk.tmp / 'out'}"],
    )
    assert _log(result, "[4/4]") == "through the link\n"
    assert not Path("/run", marker).exists()
    assert (bk.tmp / "out" / "run" / marker / "file").is_file()


def test_add_archive_with_its_own_escaping_symlink_stays_inside(bk: object) -> None:
    marker = f"nbbuild-escape-tar2-{os.getpid()}"
    bk.write({"a.tar": _tar(("escape", "/tmp", b""), (f"escape/{marker}", "", b"x\n"))})
    try:
        bk.build(
            "FROM busybox\nADD a.tar /unpacked/\n",
            outputs=[f"type=local,dest={bk.tmp / 'out'}"],
        )
    except NbbuildError as exc:
        assert marker in str(exc)  # refused, naming the member
    else:
        found = [p for p in (bk.tmp / "out").rglob(marker)]
        assert found, "the member went nowhere"
    assert not Path("/tmp", marker).exists()


def test_run_cannot_see_the_host_filesystem_or_processes(bk: object) -> None:
    marker = bk.tmp / "host-only.txt"
    marker.write_text("host\n")
    result = bk.build(
        f"FROM busybox\nRUN test ! -e {marker} && echo no-host-file && "
        "ls /proc | grep -c '^[0-9]'\n"
    )
    lines = _log(result, "[2/2]").split()
    assert lines[0] == "no-host-file"
    assert int(lines[1]) <= 3  # sh, ls, grep: a PID namespace of its own
