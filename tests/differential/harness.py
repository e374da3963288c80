"""Differential harness: build the same Dockerfile with real BuildKit and with nbbuild, compare.

BuildKit is Debian's Docker 20.10 daemon with its embedded BuildKit 0.8 (Dockerfile frontend
1.2), started by ``scripts/buildkit-oracle.sh`` on a private socket. Its results (files, image
config, which steps ran) are cached on disk under ``$NBBUILD_ORACLE_STATE/results`` keyed by
the case's content hash, so a rerun only builds with nbbuild.

Everything nbbuild-specific (command lines, where its outputs and statuses come from) is in
:class:`NbbuildSide`; everything BuildKit-specific in :class:`Oracle`.

What is compared:

* **files**: the target's final filesystem as a manifest (path → type, permission bits
  including setuid/setgid/sticky, uid/gid, size, sha256, symlink target, hardlink group, xattrs
  other than system.* and security.* except security.capability), once
  from ``--output type=local`` and once from ``--output type=tar``. The local exporter writes
  every file as the *client's* user (BuildKit's ``filesync`` receiver resets uid/gid to the
  receiving process; both 0.8 and current), so ownership is only meaningful in the tar output,
  which keeps the snapshot's owners. Mtimes are not compared.
* **image config**: the fields of the OCI config BuildKit writes (:data:`CONFIG_FIELDS`),
  read from ``docker save`` (the exact JSON BuildKit's exporter wrote, not ``docker image
  inspect``'s re-marshalled view).
* **steps that ran**: from ``--progress=plain`` (``#N [stage k/n] INSTR`` then ``#N CACHED`` or
  ``#N DONE``), compared by stage and instruction.

Run as a normal user (``scripts/rootless-tests.sh``, after the root run filled the result cache),
the BuildKit side only reads cached results (dockerd needs root; a missing result is an error,
never a reason to start it) and nbbuild builds rootless. ``NBBUILD_TEST_MAPPING=single`` says the
user has no subordinate ID range: a case whose BuildKit result needs other IDs than root
(:func:`needs_other_ids`) must then fail with nbbuild's clear message (:func:`idmap_error_problem`).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CASES_DIR = HERE / "cases"
SCENARIOS_DIR = HERE / "scenarios"
SCRIPT = REPO / "scripts" / "buildkit-oracle.sh"
STATE = Path(os.environ.get("NBBUILD_ORACLE_STATE", "/var/tmp/nbbuild-oracle"))
RESULTS = STATE / "results"
ROOTFS_TAR = STATE / "busybox-rootfs.tar"
DOCKER = "/usr/bin/docker"  # Debian's client matching the 20.10 daemon (the one on PATH has no BuildKit)
DOCKER_HOST = f"unix://{STATE / 'docker.sock'}"
BASE_IMAGE = "busybox"
TAG_PREFIX = "nbbuild-diff/"
# The oracle runs as root only (dockerd), so its client — the owner of BuildKit's local output — is root.
ORACLE_CLIENT = (0, 0)
# "" as root; "range" or "single" as the unprivileged user of scripts/rootless-tests.sh.
MAPPING = os.environ.get("NBBUILD_TEST_MAPPING", "")

# Bump when what is recorded for a case changes, so cached oracle results are recomputed.
HARNESS_VERSION = 7

# Image config fields BuildKit 0.8's Dockerfile frontend sets (dockerfile2llb's Image type).
# Not compared: Hostname, Domainname, Attach*, Tty, OpenStdin, StdinOnce, Image, NetworkDisabled,
# MacAddress, OnBuild of the *base* (cleared), ArgsEscaped (Windows only), which BuildKit never
# sets on Linux; "created" and "history" timestamps and "rootfs.diff_ids" (they hash layer tars
# whose mtimes differ from run to run).
CONFIG_FIELDS = (
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Healthcheck",
    "Shell",
    "OnBuild",
)
TOP_FIELDS = ("architecture", "os", "author")

# Names that only mark a mountpoint: BuildKit (0.8 and current, executor/stubs.go) removes the
# /etc/hosts and /etc/resolv.conf stubs it created; runc's /proc, /dev and /sys mountpoint dirs
# stay in the layer when the base lacks them. They are compared like any other path; this list
# is only used to explain a difference.
STUB_PATHS = ("dev", "proc", "sys", "etc/hosts", "etc/resolv.conf", "etc/hostname")


class HarnessError(AssertionError):
    """A build or tool failed; the message carries the command and the end of its output."""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600,
        cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, env=dict(env) if env is not None else None,
            timeout=timeout, cwd=cwd, errors="replace",
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        raise HarnessError(
            f"command failed ({proc.returncode}): {' '.join(argv)}\n"
            f"--- stdout ---\n{_tail(proc.stdout)}\n--- stderr ---\n{_tail(proc.stderr)}"
        )
    return proc


# --------------------------------------------------------------------------------------------
# Corpus


def _hash_tree(root: Path, h: Any) -> None:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in rel:
            continue
        st = path.lstat()
        h.update(rel.encode() + b"\0")
        if stat.S_ISLNK(st.st_mode):
            h.update(b"L" + os.readlink(path).encode() + b"\0")
        elif stat.S_ISREG(st.st_mode):
            h.update(b"F" + (b"x" if st.st_mode & 0o111 else b"-") + path.read_bytes() + b"\0")
        elif stat.S_ISDIR(st.st_mode):
            h.update(b"D\0")


def _base_digest() -> str:
    """sha256 of the rootfs tar both sides import (part of every oracle cache key)."""
    if not ROOTFS_TAR.exists():
        return "missing"
    return hashlib.sha256(ROOTFS_TAR.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Case:
    """One corpus entry: ``cases/<name>/`` = Dockerfile + context files + optional case.toml.

    case.toml keys: ``description``; ``build_args`` (table); ``target``; ``dockerfile`` (path
    in the context, passed as ``-f``; default ``Dockerfile``); ``prepare`` (shell run
    in the context copy before building: symlinks, hardlinks, modes, archives, odd names — what
    git cannot hold); ``buildkit08`` (why BuildKit 0.8 is not the reference for this case) with
    ``[current]`` overrides applied to the BuildKit result: ``config`` (fields replaced) and
    ``files`` (per-path fields replaced, ``content`` for new bytes, or ``{}`` to drop the path)
    and ``steps`` (old step name → current step name); ``[images]`` (tag → subdirectory): base
    images each side builds first with its own builder (the subdirectories are not context).
    """

    name: str
    path: Path
    description: str = ""
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str = ""
    dockerfile: str = ""
    prepare: str = ""
    buildkit08: str = ""
    current: Mapping[str, Any] = field(default_factory=dict)
    images: Mapping[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return TAG_PREFIX + self.name

    def image_contexts(self, dest: Path) -> list[tuple[str, Path]]:
        """(tag, context) of the base images to build first, each side with its own builder."""
        out = []
        for tag, sub in sorted(self.images.items()):
            ctx = dest / f"image-{sub}"
            _copy_context(self.path / sub, ctx, skip=set())
            out.append((tag, ctx))
        return out

    def key(self) -> str:
        h = hashlib.sha256(f"case v{HARNESS_VERSION} {_base_digest()}\0".encode())
        _hash_tree(self.path, h)
        return h.hexdigest()[:24]

    def materialize(self, dest: Path) -> Path:
        """Copy the context to ``dest`` (without case.toml and image dirs), run ``prepare`` there."""
        _copy_context(self.path, dest, skip={"case.toml", *self.images.values()})
        if self.prepare:
            run(["sh", "-euc", self.prepare], cwd=dest)
        return dest


def _copy_context(src: Path, dest: Path, skip: set[str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.iterdir()):
        if item.name in skip or item.name == "__pycache__":
            continue
        target = dest / item.name
        if item.is_dir() and not item.is_symlink():
            shutil.copytree(item, target, symlinks=True)
        else:
            shutil.copy2(item, target, follow_symlinks=False)


def load_cases() -> list[Case]:
    cases = []
    for d in sorted(p for p in CASES_DIR.iterdir() if p.is_dir()):
        meta: dict[str, Any] = {}
        if (d / "case.toml").exists():
            meta = tomllib.loads((d / "case.toml").read_text())
        cases.append(
            Case(
                name=d.name,
                path=d,
                description=meta.get("description", ""),
                build_args=dict(meta.get("build_args", {})),
                target=meta.get("target", ""),
                dockerfile=meta.get("dockerfile", ""),
                prepare=meta.get("prepare", ""),
                buildkit08=meta.get("buildkit08", ""),
                current=dict(meta.get("current", {})),
                images=dict(meta.get("images", {})),
            )
        )
    return cases


@dataclass(frozen=True)
class BuildOpts:
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str = ""
    no_cache: bool = False
    dockerfile: str = ""  # relative to the context; "" = CONTEXT/Dockerfile


@dataclass(frozen=True)
class Scenario:
    """An edit scenario: ``scenarios/<name>/`` = Dockerfile + files + scenario.toml.

    scenario.toml: ``description``; ``expect_ran`` (the steps BuildKit re-runs, as
    :meth:`Step.ident`; pinned so a harness or oracle change shows); ``buildkit_quirk`` (a BuildKit
    behaviour the scenario steers around); ``[first]`` and ``[second]`` build options (``build_args``,
    ``target``, ``no_cache``); ``[[edit]]`` operations applied between the builds: ``write``
    (path, content), ``touch`` (path), ``chmod`` (path, mode as octal string), ``chown`` (path,
    uid, gid), ``rename`` (path, to), ``remove`` (path), ``replace`` (path, old, new),
    ``setxattr`` (path, name, value).
    """

    name: str
    path: Path
    description: str
    first: BuildOpts
    second: BuildOpts
    edits: tuple[Mapping[str, Any], ...]
    expect_ran: tuple[str, ...] = ()
    buildkit_quirk: str = ""

    @property
    def tag(self) -> str:
        return TAG_PREFIX + "edit-" + self.name

    def key(self) -> str:
        h = hashlib.sha256(f"scenario v{HARNESS_VERSION} {_base_digest()}\0".encode())
        _hash_tree(self.path, h)
        return h.hexdigest()[:24]

    def materialize(self, dest: Path) -> Path:
        _copy_context(self.path, dest, skip={"scenario.toml"})
        return dest

    def apply_edits(self, ctx: Path) -> None:
        for edit in self.edits:
            apply_edit(ctx, edit)


def _opts(table: Mapping[str, Any]) -> BuildOpts:
    return BuildOpts(
        build_args=dict(table.get("build_args", {})),
        target=table.get("target", ""),
        no_cache=bool(table.get("no_cache", False)),
        dockerfile=table.get("dockerfile", ""),
    )


def load_scenarios() -> list[Scenario]:
    out = []
    for d in sorted(p for p in SCENARIOS_DIR.iterdir() if p.is_dir()):
        meta = tomllib.loads((d / "scenario.toml").read_text())
        out.append(
            Scenario(
                name=d.name,
                path=d,
                description=meta.get("description", ""),
                first=_opts(meta.get("first", {})),
                second=_opts(meta.get("second", {})),
                edits=tuple(meta.get("edit", [])),
                expect_ran=tuple(meta.get("expect_ran", ())),
                buildkit_quirk=meta.get("buildkit_quirk", ""),
            )
        )
    return out


def apply_edit(ctx: Path, edit: Mapping[str, Any]) -> None:
    op = edit["op"]
    path = ctx / edit["path"]
    if op == "write":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(edit["content"])
    elif op == "touch":
        later = path.lstat().st_mtime + 3600
        os.utime(path, (later, later), follow_symlinks=False)
    elif op == "chmod":
        path.chmod(int(edit["mode"], 8))
    elif op == "chown":
        chown_as_user(path, int(edit["uid"]), int(edit["gid"]))
    elif op == "rename":
        path.rename(ctx / edit["to"])
    elif op == "remove":
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    elif op == "replace":
        text = path.read_text()
        if edit["old"] not in text:
            raise HarnessError(f"edit {edit}: {edit['old']!r} not in {path.name}")
        path.write_text(text.replace(edit["old"], edit["new"], 1))
    elif op == "setxattr":
        os.setxattr(path, edit["name"], edit["value"].encode(), follow_symlinks=False)
    else:
        raise HarnessError(f"unknown edit op {op!r}")


_CHOWN_IN_NAMESPACE = """
import os, sys
from engine.userns.idmap import current_mapping
from engine.userns.namespace import enter
enter(current_mapping())
os.lchown(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
"""


def chown_as_user(path: Path, uid: int, gid: int) -> None:
    """``lchown`` with the IDs a build of this user sees (container IDs).

    As root: plainly. As a normal user with a subordinate range: inside a user namespace with
    the mapping nbbuild's builds get, so the file belongs to what the build sees as ``uid:gid``.
    With only the user's own ID mapped (``NBBUILD_TEST_MAPPING=single``) no other owner can
    exist: the file is chowned to the user itself (what the build sees as 0:0; the call still
    changes the file's ctime).
    """
    if os.geteuid() == 0:
        os.lchown(path, uid, gid)
        return
    from engine.userns.idmap import current_mapping

    mapping = current_mapping()
    if mapping.single:
        if MAPPING != "single":
            raise HarnessError(f"chown {path} to {uid}:{gid}: this user has no subordinate ID range")
        os.lchown(path, os.getuid(), os.getgid())
        return
    if not (mapping.maps_uid(uid) and mapping.maps_gid(gid)):
        raise HarnessError(f"chown {path} to {uid}:{gid}: outside this user's mapping {mapping.describe()}")
    run([sys.executable, "-c", _CHOWN_IN_NAMESPACE, str(path), str(uid), str(gid)], cwd=REPO)


# --------------------------------------------------------------------------------------------
# Manifests


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "unknown"


def _add_link_groups(entries: dict[str, dict[str, Any]], groups: Mapping[Any, list[str]]) -> None:
    for members in groups.values():
        if len(members) > 1:
            first = min(members)
            for m in members:
                entries[m]["hardlink_group"] = first


def _kept_xattr(name: str) -> bool:
    # what BuildKit's checksums count: not system.* (ACLs), not security.* except capabilities
    if name.startswith("system."):
        return False
    return not name.startswith("security.") or name == "security.capability"


def _xattrs_of(path: Path) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        if _kept_xattr(name):
            try:
                out[name] = os.getxattr(path, name, follow_symlinks=False).decode("utf-8", "replace")
            except OSError:
                continue
    return out


def manifest_dir(root: Path) -> dict[str, dict[str, Any]]:
    """Manifest of a directory tree; the root itself is ``.`` (mode and owner only: BuildKit's
    local exporter creates a missing destination 0700, filesync.syncTargetDiffCopy)."""
    rst = root.lstat()
    entries: dict[str, dict[str, Any]] = {
        ".": {"type": "dir", "mode": oct(stat.S_IMODE(rst.st_mode)), "uid": rst.st_uid, "gid": rst.st_gid}
    }
    groups: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            kind = _kind(st.st_mode)
            entry: dict[str, Any] = {
                "type": kind,
                "mode": oct(stat.S_IMODE(st.st_mode)) if kind != "symlink" else "0o777",
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
            if kind == "file":
                entry["size"] = st.st_size
                entry["sha256"] = _sha256_file(full)
                if st.st_nlink > 1:
                    groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif kind == "symlink":
                entry["target"] = os.readlink(full)
            elif kind in ("char", "block"):
                entry["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
            xattrs = _xattrs_of(full)
            if xattrs:
                entry["xattrs"] = xattrs
            entries[rel] = entry
    _add_link_groups(entries, groups)
    return dict(sorted(entries.items()))


def manifest_tar(path: Path) -> dict[str, dict[str, Any]]:
    """Manifest of a filesystem tar (as ``--output type=tar`` writes it; no whiteouts)."""
    entries: dict[str, dict[str, Any]] = {}
    links: list[tuple[str, str]] = []
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            rel = m.name
            while rel.startswith("./"):
                rel = rel[2:]
            rel = rel.strip("/")
            if rel in ("", "."):
                continue
            entry: dict[str, Any] = {"uid": m.uid, "gid": m.gid}
            if m.isdir():
                entry.update(type="dir", mode=oct(m.mode & 0o7777))
            elif m.issym():
                entry.update(type="symlink", mode="0o777", target=m.linkname)
            elif m.islnk():
                target = m.linkname.lstrip("./") if m.linkname.startswith("./") else m.linkname
                target = target.strip("/")
                links.append((rel, target))
                entry.update(type="file", mode=oct(m.mode & 0o7777))
            elif m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                h = hashlib.sha256()
                for chunk in iter(lambda f=f: f.read(1 << 20), b""):  # type: ignore[misc]
                    h.update(chunk)
                entry.update(type="file", mode=oct(m.mode & 0o7777), size=m.size, sha256=h.hexdigest())
            elif m.ischr() or m.isblk():
                entry.update(type="char" if m.ischr() else "block", mode=oct(m.mode & 0o7777),
                             rdev=[m.devmajor, m.devminor])
            elif m.isfifo():
                entry.update(type="fifo", mode=oct(m.mode & 0o7777))
            else:
                entry.update(type="unknown")
            xattrs = {
                k[len("SCHILY.xattr."):]: v
                for k, v in m.pax_headers.items()
                if k.startswith("SCHILY.xattr.") and _kept_xattr(k[len("SCHILY.xattr."):])
            }
            if xattrs:
                entry["xattrs"] = dict(sorted(xattrs.items()))
            entries[rel] = entry
    groups: dict[str, list[str]] = {}
    for rel, target in links:
        src = entries.get(target)
        if src is None:
            raise HarnessError(f"tar hardlink {rel} -> {target}: target not in the tar")
        entries[rel].update(size=src.get("size"), sha256=src.get("sha256"))
        groups.setdefault(target, [target]).append(rel)
    _add_link_groups(entries, groups)
    return dict(sorted(entries.items()))


def _is_root_name(name: str) -> bool:
    return name in ("", "0", "root")


def needs_other_ids(tar: Mapping[str, Mapping[str, Any]], raw_config: Mapping[str, Any]) -> list[str]:
    """Why BuildKit's build of a case needed user or group IDs other than root (empty: it did
    not), which a rootless build with only the user's own ID mapped cannot have: files owned by
    another uid/gid in its ``--output type=tar`` manifest, or a RUN of the image's history that
    ran under a non-root ``USER``. (A ``USER`` in the config that no step ran as needs no ID at
    build time: such an image builds, e.g. ``env_in_paths``.)"""
    reasons = []
    owners = sorted({(int(e["uid"]), int(e["gid"])) for e in tar.values()} - {(0, 0)})
    if owners:
        shown = ", ".join(f"{u}:{g}" for u, g in owners[:6])
        reasons.append(f"files owned by {shown}{' ...' if len(owners) > 6 else ''}")
    user = ""
    for entry in raw_config.get("history") or []:
        created_by = str(entry.get("created_by") or "")
        if created_by.startswith("USER "):
            user = created_by[len("USER "):].strip()
        elif created_by.startswith("RUN "):
            name, _, group = user.partition(":")
            if not (_is_root_name(name) and _is_root_name(group)):
                reasons.append(f"RUN as USER {user}: {created_by[:60]}")
    return reasons


# What every rootless error about unmapped IDs says (engine/userns/errors.py SETUP_HINT).
IDMAP_ERROR_WORDS = ("subordinate ID range", "uidmap")


def idmap_error_problem(failure: str) -> str | None:
    """None when ``failure`` (a failed nbbuild command's message) is the clear rootless error
    about unmapped IDs; else what is wrong with it."""
    missing = [w for w in IDMAP_ERROR_WORDS if w not in failure]
    if missing:
        return f"the error does not say {missing}:\n{failure}"
    return None


def without_ownership(manifest: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p: {k: v for k, v in e.items() if k not in ("uid", "gid")} for p, e in manifest.items()}


def diff_manifests(expected: Mapping[str, Mapping[str, Any]], actual: Mapping[str, Mapping[str, Any]],
                   limit: int = 60) -> list[str]:
    """Human-readable differences (empty when equal)."""
    out: list[str] = []
    for path in sorted(set(expected) | set(actual)):
        e, a = expected.get(path), actual.get(path)
        note = "  (mountpoint stub)" if path in STUB_PATHS else ""
        if e is None:
            out.append(f"+ {path}: only in nbbuild {dict(a or {})}{note}")
        elif a is None:
            out.append(f"- {path}: only in BuildKit {dict(e)}{note}")
        elif e != a:
            fields = sorted(k for k in set(e) | set(a) if e.get(k) != a.get(k))
            detail = ", ".join(f"{k}: buildkit={e.get(k)!r} nbbuild={a.get(k)!r}" for k in fields)
            out.append(f"~ {path}: {detail}{note}")
    if len(out) > limit:
        out = [*out[:limit], f"... and {len(out) - limit} more"]
    return out


# --------------------------------------------------------------------------------------------
# Image config


def normalize_config(image_config: Mapping[str, Any]) -> dict[str, Any]:
    """The compared part of an OCI image config: absent and null are the same."""
    cfg = image_config.get("config") or {}
    out: dict[str, Any] = {}
    for k in TOP_FIELDS:
        if image_config.get(k) not in (None, ""):
            out[k] = image_config[k]
    conf: dict[str, Any] = {}
    for k in CONFIG_FIELDS:
        v = cfg.get(k)
        if v is not None and v != "":
            conf[k] = v
    out["config"] = conf
    return out


def apply_current_overrides(case: Case, result: Mapping[str, Any]) -> dict[str, Any]:
    """The BuildKit result with the case's ``[current]`` overrides (0.8 → current BuildKit)."""
    res = copy.deepcopy(dict(result))
    over = case.current
    if "config" in over:
        for k, v in over["config"].items():
            if k in TOP_FIELDS:
                res["config"][k] = v
            elif v == {} or v is None:
                res["config"]["config"].pop(k, None)
            else:
                res["config"]["config"][k] = v
    if "files" in over:
        for path, fields in over["files"].items():
            for which in ("local", "tar"):
                manifest = res[which]
                if fields == {}:
                    manifest.pop(path, None)
                    continue
                entry = manifest.setdefault(path, {})
                for k, v in fields.items():
                    if k == "content":
                        data = v.encode()
                        entry["size"] = len(data)
                        entry["sha256"] = hashlib.sha256(data).hexdigest()
                    elif which == "local" and k in ("uid", "gid"):
                        continue
                    else:
                        entry[k] = v
    if "steps" in over:
        renamed = dict(over["steps"])
        res["steps"] = [
            step_to_json(_step_named(renamed[s["name"]], s["cached"])) if s["name"] in renamed else s
            for s in res["steps"]
        ]
    return res


def _step_named(name: str, cached: bool) -> Step:
    sm = _STEP_RE.match(name)
    if not sm:
        raise HarnessError(f"not a step name: {name!r}")
    return Step(name, sm.group("stage") or "", int(sm.group("k")), int(sm.group("n")),
                re.sub(r"\s+", " ", sm.group("instr").strip()), cached)


# --------------------------------------------------------------------------------------------
# Progress


@dataclass(frozen=True)
class Step:
    """A Dockerfile step from progress output: ``[stage k/n] INSTRUCTION``."""

    name: str
    stage: str
    index: int
    total: int
    instruction: str
    cached: bool

    @property
    def ident(self) -> str:
        """What edit tests compare: stage and instruction (numbering is checked separately)."""
        return f"[{self.stage}] {self.instruction}" if self.stage else self.instruction

    @property
    def is_from(self) -> bool:
        return self.instruction.upper().startswith("FROM ")


_STEP_RE = re.compile(r"^\[(?:(?P<stage>[^\s\d][^\s]*) )?\s*(?P<k>\d+)/(?P<n>\d+)\] (?P<instr>.*)$")
_LINE_RE = re.compile(r"^#(\d+) (.*)$")


def parse_plain_progress(text: str) -> list[Step]:
    """Steps of a ``--progress=plain`` log, in first-seen order.

    BuildKit prints ``#N <vertex name>`` when vertex N starts, then log lines, then ``#N CACHED``
    or ``#N DONE 0.1s`` / ``#N ERROR ...``. A step is *cached* when its vertex says CACHED and
    never DONE (0.8 prints a reused vertex as CACHED only).
    """
    names: dict[int, str] = {}
    cached: set[int] = set()
    done: set[int] = set()
    order: list[int] = []
    for raw in text.splitlines():
        m = _LINE_RE.match(raw.rstrip("\r"))
        if not m:
            continue
        n, rest = int(m.group(1)), m.group(2).strip()
        if n not in names:
            if rest.startswith("["):
                names[n] = rest
                order.append(n)
            continue
        if rest == "CACHED":
            cached.add(n)
        elif rest.startswith("DONE") or rest.startswith("ERROR"):
            done.add(n)
    steps = []
    for n in order:
        sm = _STEP_RE.match(names[n])
        if not sm:
            continue  # [internal] ..., exporting, ...
        steps.append(
            Step(
                name=names[n],
                stage=sm.group("stage") or "",
                index=int(sm.group("k")),
                total=int(sm.group("n")),
                instruction=re.sub(r"\s+", " ", sm.group("instr").strip()),
                cached=n in cached and n not in done,
            )
        )
    return steps


def steps_from_metadata(meta: Mapping[str, Any]) -> list[Step] | None:
    """nbbuild's ``--metadata-file`` per-step statuses (``nbbuild.steps``), if present."""
    items = meta.get("nbbuild.steps")
    if not isinstance(items, list):
        return None
    steps = []
    for item in items:
        sm = _STEP_RE.match(str(item.get("name", "")))
        if not sm or item.get("status") == "skipped":
            continue
        steps.append(
            Step(
                name=item["name"],
                stage=sm.group("stage") or "",
                index=int(sm.group("k")),
                total=int(sm.group("n")),
                instruction=re.sub(r"\s+", " ", sm.group("instr").strip()),
                cached=item.get("status") == "cached",
            )
        )
    return steps


def step_to_json(s: Step) -> dict[str, Any]:
    return {"name": s.name, "stage": s.stage, "index": s.index, "total": s.total,
            "instruction": s.instruction, "cached": s.cached}


def step_from_json(d: Mapping[str, Any]) -> Step:
    return Step(d["name"], d["stage"], d["index"], d["total"], d["instruction"], d["cached"])


def ran(steps: Sequence[Step]) -> list[str]:
    """Sorted idents of the steps that ran (FROM excluded: resolving a local image is not work)."""
    return sorted(s.ident for s in steps if not s.cached and not s.is_from)


# --------------------------------------------------------------------------------------------
# Oracle (BuildKit)


@contextlib.contextmanager
def _locked(path: Path, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if not blocking:
            flags |= fcntl.LOCK_NB
        try:
            fcntl.flock(f, flags)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        os.fchmod(f.fileno(), 0o644)  # the runs as a normal user read the root run's results
    os.replace(tmp, path)


class Oracle:
    """The BuildKit side. Started lazily: a rerun with every result cached needs no daemon."""

    def __init__(self) -> None:
        self.started_by_us = False
        self.ready = False
        self._users: Any = None
        self.build_seconds = 0.0

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": DOCKER_HOST, "DOCKER_BUILDKIT": "1",
                "BUILDKIT_PROGRESS": "plain"}

    def ensure(self, why: str = "") -> None:
        if self.ready:
            return
        if os.geteuid() != 0:
            raise HarnessError(
                f"{why or 'the BuildKit oracle is needed'}, but the oracle (dockerd, apt-get) needs "
                f"root: run the differential suite as root first (`make test` does), which fills "
                f"{RESULTS} (and {ROOTFS_TAR}) for the runs as a normal user"
            )
        # A shared lock held for the session tells other sessions the daemon is in use.
        self._users = (STATE / "users.lock").open("a") if STATE.exists() else None
        was_running = run(["bash", str(SCRIPT), "status"], check=False).returncode == 0
        run(["bash", str(SCRIPT), "start"], timeout=900)
        if self._users is None:
            self._users = (STATE / "users.lock").open("a")
        fcntl.flock(self._users, fcntl.LOCK_SH)
        self.started_by_us = not was_running
        self.ready = True

    def close(self) -> None:
        """Stop the daemon if this session started it and no other session uses it."""
        if self._users is not None:
            fcntl.flock(self._users, fcntl.LOCK_UN)
            self._users.close()
            self._users = None
        if self.started_by_us:
            with _locked(STATE / "users.lock", blocking=False) as alone:
                if alone:
                    run(["bash", str(SCRIPT), "stop"], check=False)
        self.ready = False

    def docker(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.ensure()
        return run([DOCKER, *args], env=self.env, timeout=timeout, check=check)

    def build(self, context: Path, *, tag: str | None = None, output: str | None = None,
              opts: BuildOpts = BuildOpts()) -> str:
        """One ``docker build``; returns the plain progress log."""
        argv = ["build", "--network=none", "--progress=plain"]
        if tag:
            argv += ["-t", tag]
        if output:
            argv += ["--output", output]
        for k, v in sorted(opts.build_args.items()):
            argv += ["--build-arg", f"{k}={v}"]
        if opts.target:
            argv += ["--target", opts.target]
        if opts.no_cache:
            argv.append("--no-cache")
        if opts.dockerfile:
            argv += ["-f", str(context / opts.dockerfile)]
        argv.append(str(context))
        t0 = time.monotonic()
        proc = self.docker(*argv)
        self.build_seconds += time.monotonic() - t0
        return proc.stderr + proc.stdout

    def image_config(self, tag: str) -> dict[str, Any]:
        """The image config JSON exactly as BuildKit's exporter wrote it (via ``docker save``)."""
        self.ensure()
        with tempfile.TemporaryDirectory(prefix="nbbuild-oracle-save.") as tmp:
            tarpath = Path(tmp) / "image.tar"
            run([DOCKER, "save", "-o", str(tarpath), tag], env=self.env)
            with tarfile.open(tarpath) as tar:
                manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
                config = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        return dict(config)

    def case_result(self, case: Case) -> dict[str, Any]:
        """Build ``case`` three times (image, local, tar; the last two fully cached); cached."""
        cache = RESULTS / f"case-{case.name}-{case.key()}.json"
        if cache.exists():
            return dict(json.loads(cache.read_text()))
        self.ensure(f"BuildKit's result for case {case.name} is not cached ({cache})")
        with _locked(STATE / "build.lock"), tempfile.TemporaryDirectory(prefix="nbbuild-oracle.") as tmp:
            tmpd = Path(tmp)
            ctx = case.materialize(tmpd / "context")
            opts = BuildOpts(build_args=case.build_args, target=case.target, dockerfile=case.dockerfile)
            t0 = time.monotonic()
            for tag, image_ctx in case.image_contexts(tmpd):
                self.build(image_ctx, tag=tag)
            log = self.build(ctx, tag=case.tag, opts=opts)
            config = self.image_config(case.tag)
            self.build(ctx, output=f"type=local,dest={tmpd / 'local'}", opts=opts)
            self.build(ctx, output=f"type=tar,dest={tmpd / 'fs.tar'}", opts=opts)
            result = {
                "case": case.name,
                "key": case.key(),
                "steps": [step_to_json(s) for s in parse_plain_progress(log)],
                "raw_config": config,
                "config": normalize_config(config),
                "local": manifest_dir(tmpd / "local"),
                "tar": manifest_tar(tmpd / "fs.tar"),
                "seconds": round(time.monotonic() - t0, 3),
                "log": log,
            }
        _write_json_atomic(cache, result)
        return result

    def _outputs(self, ctx: Path, tag: str, opts: BuildOpts, tarpath: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """The tar manifest and image config (as written, with history) of the build just made (the tar export is a
        fully cached rebuild: same options without --no-cache, so no step re-runs)."""
        config = self.image_config(tag)
        cached = BuildOpts(build_args=opts.build_args, target=opts.target, dockerfile=opts.dockerfile)
        self.build(ctx, output=f"type=tar,dest={tarpath}", opts=cached)
        return manifest_tar(tarpath), config

    def scenario_result(self, sc: Scenario) -> dict[str, Any]:
        """Build, edit, rebuild from an empty build cache; the steps of both builds; cached."""
        cache = RESULTS / f"scenario-{sc.name}-{sc.key()}.json"
        if cache.exists():
            return dict(json.loads(cache.read_text()))
        self.ensure(f"BuildKit's result for scenario {sc.name} is not cached ({cache})")
        with _locked(STATE / "build.lock"), tempfile.TemporaryDirectory(prefix="nbbuild-oracle.") as tmp:
            ctx = sc.materialize(Path(tmp) / "context")
            t0 = time.monotonic()
            # the daemon is private to these tests: an empty build cache costs nobody anything
            self.docker("builder", "prune", "-af")
            log1 = self.build(ctx, tag=sc.tag, opts=sc.first)
            first = self._outputs(ctx, sc.tag, sc.first, Path(tmp) / "first.tar")
            sc.apply_edits(ctx)
            log2 = self.build(ctx, tag=sc.tag, opts=sc.second)
            second = self._outputs(ctx, sc.tag, sc.second, Path(tmp) / "second.tar")
            result = {
                "scenario": sc.name,
                "key": sc.key(),
                "first": [step_to_json(s) for s in parse_plain_progress(log1)],
                "second": [step_to_json(s) for s in parse_plain_progress(log2)],
                "first_tar": first[0],
                "first_config": first[1],
                "second_tar": second[0],
                "second_config": second[1],
                "seconds": round(time.monotonic() - t0, 3),
                "log1": log1,
                "log2": log2,
            }
        _write_json_atomic(cache, result)
        return result


# --------------------------------------------------------------------------------------------
# nbbuild


class NbbuildSide:
    """The nbbuild side, behind the CLI (``python -m nbbuild``) with buildx's flag names.

    One store per instance (``--root`` for ``build``, ``$NBBUILD_ROOT`` for every command); the
    busybox rootfs tar the oracle imported is imported as ``busybox`` on first use
    (``nbbuild image import TAR NAME``, like ``docker import``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.imported = False
        self.build_seconds = 0.0

    def cli(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "NBBUILD_ROOT": str(self.root)}
        return run([sys.executable, "-m", "nbbuild", *args], env=env, timeout=timeout, check=check,
                   cwd=REPO)

    def ensure_base(self) -> None:
        if self.imported:
            return
        if not ROOTFS_TAR.exists():
            raise HarnessError(f"{ROOTFS_TAR} is missing: run scripts/buildkit-oracle.sh (as root)")
        self.cli("image", "import", str(ROOTFS_TAR), BASE_IMAGE)
        self.imported = True

    def build(self, context: Path, *, tag: str, outputs: Sequence[str] = (), opts: BuildOpts = BuildOpts(),
              metadata: Path | None = None) -> tuple[str, dict[str, Any]]:
        """One ``nbbuild build``; returns (plain progress log, metadata JSON or {})."""
        self.ensure_base()
        argv = ["build", "--root", str(self.root), "--progress=plain", "--network=none", "-t", tag]
        for o in outputs:
            argv += ["--output", o]
        for k, v in sorted(opts.build_args.items()):
            argv += ["--build-arg", f"{k}={v}"]
        if opts.target:
            argv += ["--target", opts.target]
        if opts.no_cache:
            argv.append("--no-cache")
        if opts.dockerfile:
            argv += ["-f", str(context / opts.dockerfile)]
        if metadata is not None:
            argv += ["--metadata-file", str(metadata)]
        argv.append(str(context))
        t0 = time.monotonic()
        proc = self.cli(*argv)
        self.build_seconds += time.monotonic() - t0
        meta: dict[str, Any] = {}
        if metadata is not None and metadata.exists():
            meta = json.loads(metadata.read_text())
        return proc.stderr + proc.stdout, meta

    def steps(self, log: str, meta: Mapping[str, Any]) -> list[Step]:
        from_meta = steps_from_metadata(meta)
        return from_meta if from_meta is not None else parse_plain_progress(log)

    def image_config(self, tag: str) -> dict[str, Any]:
        """``nbbuild image inspect NAME``: the OCI image config JSON."""
        proc = self.cli("image", "inspect", tag)
        data = json.loads(proc.stdout)
        if isinstance(data, list) and data:
            data = data[0]
        if isinstance(data, dict) and "config" not in data and "Config" in data:
            # docker-inspect-like shape
            data = {"config": data["Config"], "architecture": data.get("Architecture"),
                    "os": data.get("Os"), "author": data.get("Author")}
        return dict(data)

    def case_result(self, case: Case, workdir: Path) -> dict[str, Any]:
        ctx = case.materialize(workdir / "context")
        opts = BuildOpts(build_args=case.build_args, target=case.target, dockerfile=case.dockerfile)
        t0 = time.monotonic()
        for tag, image_ctx in case.image_contexts(workdir):
            self.build(image_ctx, tag=tag)
        planned = self.plan(ctx, opts)  # before the build: the keys it promises to look up
        log, meta = self.build(ctx, tag=case.tag, outputs=[f"type=local,dest={workdir / 'local'}"],
                               opts=opts, metadata=workdir / "metadata.json")
        config = self.image_config(case.tag)
        self.build(ctx, tag=case.tag, outputs=[f"type=tar,dest={workdir / 'fs.tar'}"], opts=opts)
        return {
            "case": case.name,
            "steps": [step_to_json(s) for s in self.steps(log, meta)],
            "raw_config": config,
            "config": normalize_config(config),
            "local": manifest_dir(workdir / "local"),
            "tar": manifest_tar(workdir / "fs.tar"),
            "seconds": round(time.monotonic() - t0, 3),
            "log": log,
            "planned_keys": planned,
            "built_keys": {
                str(item["name"]): item.get("key")
                for item in meta.get("nbbuild.steps", [])
                if item.get("step") is not None
            },
        }

    def plan(self, context: Path, opts: BuildOpts) -> dict[str, Any]:
        """``nbbuild plan --format json``: step name → (cache key, provisional)."""
        self.ensure_base()
        argv = ["plan", "--root", str(self.root), "--format", "json", "--network=none"]
        for k, v in sorted(opts.build_args.items()):
            argv += ["--build-arg", f"{k}={v}"]
        if opts.target:
            argv += ["--target", opts.target]
        if opts.dockerfile:
            argv += ["-f", str(context / opts.dockerfile)]
        argv.append(str(context))
        doc = json.loads(self.cli(*argv).stdout)
        return {
            v["name"]: {"key": v["cache_key"], "provisional": v["provisional"]}
            for v in doc["vertices"]
            if v["step"] is not None
        }

    def scenario_result(self, sc: Scenario, workdir: Path) -> dict[str, Any]:
        ctx = sc.materialize(workdir / "context")
        t0 = time.monotonic()
        log1, meta1 = self.build(ctx, tag=sc.tag, opts=sc.first, metadata=workdir / "meta1.json")
        sc.apply_edits(ctx)
        log2, meta2 = self.build(ctx, tag=sc.tag, opts=sc.second, metadata=workdir / "meta2.json")
        return {
            "scenario": sc.name,
            "first": [step_to_json(s) for s in self.steps(log1, meta1)],
            "second": [step_to_json(s) for s in self.steps(log2, meta2)],
            "seconds": round(time.monotonic() - t0, 3),
            "log1": log1,
            "log2": log2,
        }
