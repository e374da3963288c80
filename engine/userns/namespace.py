"""Where this process stands, and entering a user namespace in-process.

:func:`mode` tells the engine how to behave:

``root``
    root in the initial user namespace (as CI runs): the classic path.
``inside``
    root of a user namespace that maps more than root alone or was made by nbbuild (our
    helper, or a CLI that entered one): builds run here, overlayfs uses ``userxattr``, the
    runtime runs without cgroups, files may belong only to mapped IDs.
``outside``
    an unprivileged process (a notebook kernel, the CLI before it enters): nothing that
    touches snapshot files may run here; builds are forwarded to a helper process inside a
    namespace (:mod:`engine.userns.helper`).

:func:`enter` moves a *single-threaded* process into a new user and mount namespace with the
given mapping: a forked child writes the maps (``newuidmap``/``newgidmap`` for a range, plain
writes for the user's own ID) while the parent waits, so no ``exec`` is needed and the
capabilities the namespace grants are kept.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import subprocess
import threading
from typing import Literal, TypeAlias

from engine.userns.errors import UsernsUnavailable
from engine.userns.idmap import IdMapping, IdRange

__all__ = ["ENV", "Mode", "current", "enter", "mode", "userns_error"]

Mode: TypeAlias = Literal["root", "inside", "outside"]
ENV = "NBBUILD_USERNS"  # set (to the mapping) in a namespace nbbuild made, for its children

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18


_IDENTITY = IdRange(0, 0, 4294967295)  # the initial user namespace's map of all IDs


def _id_map(kind: str) -> list[IdRange]:
    """This process's ``/proc/self/{uid,gid}_map`` (``kind``: ``uid`` or ``gid``)."""
    try:
        with open(f"/proc/self/{kind}_map", encoding="ascii") as f:
            lines = f.read().split("\n")
    except OSError:
        return [_IDENTITY]
    return [IdRange(*(int(x) for x in ln.split())) for ln in lines if len(ln.split()) == 3]


def _initial() -> bool:
    """This process is in the initial user namespace (the identity map of all IDs)."""
    return _id_map("uid") == [_IDENTITY]


def mode() -> Mode:
    """``root``, ``inside`` or ``outside`` (see the module doc); cheap (one /proc read)."""
    if os.geteuid() != 0:
        return "outside"
    return "root" if _initial() else "inside"


def current() -> IdMapping | None:
    """The mapping of the user namespace this process is root of (None: the initial one)."""
    if mode() != "inside":
        return None
    return IdMapping(tuple(_id_map("uid")), tuple(_id_map("gid")))


@functools.cache
def userns_error() -> str | None:
    """Why this process may not create a user namespace (None: it may). Tried for real, in a
    short-lived child (a threaded parent must not unshare itself)."""
    probe = (
        "import ctypes,sys\n"
        "libc=ctypes.CDLL(None,use_errno=True)\n"
        f"sys.exit(0 if libc.unshare({_CLONE_NEWUSER | _CLONE_NEWNS})==0 else ctypes.get_errno())\n"
    )
    import sys

    try:
        proc = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not probe user namespaces: {exc}"
    if proc.returncode == 0:
        return None
    code = proc.returncode
    name = errno.errorcode.get(code, str(code))
    return f"creating a user namespace fails with {name} ({os.strerror(code)})"


def _write_maps(pid: int, mapping: IdMapping) -> None:
    """In the forked child: write ``pid``'s uid and gid maps (exits non-zero on failure)."""
    if mapping.single:
        # Mapping one's own ID needs no helper; gid_map needs setgroups denied first.
        with open(f"/proc/{pid}/uid_map", "w", encoding="ascii") as f:
            f.write(mapping.uids[0].line())
        with open(f"/proc/{pid}/setgroups", "w", encoding="ascii") as f:
            f.write("deny")
        with open(f"/proc/{pid}/gid_map", "w", encoding="ascii") as f:
            f.write(mapping.gids[0].line())
        return
    for tool, ranges in (("newuidmap", mapping.uids), ("newgidmap", mapping.gids)):
        argv = [tool, str(pid)]
        for r in ranges:
            argv += [str(r.inside), str(r.outside), str(r.count)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"{tool} failed: {proc.stderr.strip() or proc.returncode}")


def enter(mapping: IdMapping) -> None:
    """Make this process root of a new user namespace (and a private mount namespace) mapped
    by ``mapping``.

    Raises:
        UsernsUnavailable: the process has threads, the kernel refuses, or the maps could not
            be written (the message says which, with the helper's own words).
    """
    if threading.active_count() > 1:
        raise UsernsUnavailable("a process with threads cannot enter a user namespace")
    libc = ctypes.CDLL(None, use_errno=True)
    ready_r, ready_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends with _exit
        os.close(ready_w)
        os.close(err_r)
        code = 0
        try:
            if os.read(ready_r, 1) == b"1":
                _write_maps(os.getppid(), mapping)
        except BaseException as exc:
            os.write(err_w, str(exc).encode()[:4000])
            code = 1
        os._exit(code)
    os.close(ready_r)
    os.close(err_w)
    ok = libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) == 0
    failure = "" if ok else os.strerror(ctypes.get_errno())
    os.write(ready_w, b"1" if ok else b"0")
    os.close(ready_w)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(err_r, "rb") as f:
        detail = f.read().decode("utf-8", "replace")
    if not ok:
        raise UsernsUnavailable(f"creating a user namespace failed: {failure}")
    if os.waitstatus_to_exitcode(status) != 0:
        raise UsernsUnavailable(f"could not map IDs into the user namespace: {detail}")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    if not mapping.single:
        os.setgroups([])
    # Nothing mounted here may leak anywhere (it could not reach the parent anyway: its
    # mounts are locked, but sibling namespaces made from here must not share ours).
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise UsernsUnavailable(f"could not make mounts private: {os.strerror(ctypes.get_errno())}")
    os.environ[ENV] = mapping.encode()
