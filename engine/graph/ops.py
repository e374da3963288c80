"""The build graph's operations: frozen value objects, modelled on BuildKit's LLB ops.

An op says *what* a vertex does; its inputs are other vertices' outputs. Every op knows two
encodings:

* ``definition()`` — everything that makes the op what it is; hashed together with the input
  digests it gives the *op digest*, which dedups identical work inside one build (BuildKit's
  vertex digest);
* ``cache_map()`` — what enters the op's *cache key* (BuildKit's ``CacheMap``): the op's cache
  preimage plus, per input, a selector and an optional content-checksum spec. The cache preimage
  leaves out what BuildKit leaves out (cache-mount ids, proxy env, host IPs, copy source
  directories, ...), so two ops can differ in definition yet share a key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from engine.digest import sha256_digest, sha256_of_json

__all__ = [
    "CacheMap",
    "ContentSpec",
    "CopyAction",
    "Dep",
    "ExecOp",
    "FileOp",
    "GitSource",
    "HttpSource",
    "ImageSource",
    "LocalSource",
    "MergeOp",
    "MkdirAction",
    "MkfileAction",
    "Mount",
    "Op",
    "PathSelector",
    "Platform",
]

# The proxy variables BuildKit keeps out of RUN keys unless the Dockerfile declares them as ARG.
PROXY_ENV_NAMES = frozenset(
    n.lower() for n in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
)


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform (``linux/amd64``)."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    def to_json(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass(frozen=True, slots=True)
class PathSelector:
    """One selected path of an input: what a COPY source or a mount reads."""

    path: str
    wildcard: bool = False
    follow_links: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.wildcard:
            out["wildcard"] = True
        if self.follow_links:
            out["follow_links"] = True
        if self.include:
            out["include"] = list(self.include)
        if self.exclude:
            out["exclude"] = list(self.exclude)
        return out


@dataclass(frozen=True, slots=True)
class ContentSpec:
    """How to compute the content checksum of an input's result for one dependency.

    Mirrors BuildKit's ``ComputeDigestFunc``: the checksum covers the selected paths only
    (wildcards, include/exclude patterns and follow-links honoured); several selectors on one
    input combine into one digest.
    """

    selectors: tuple[PathSelector, ...]

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(s.path for s in self.selectors)

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.selectors]


@dataclass(frozen=True, slots=True)
class Dep:
    """One input's part in a cache key: a selector, and optionally a content checksum."""

    selector: str | None = None  # digest of the selected paths, merged with the input's key
    selector_paths: tuple[str, ...] = ()
    content: ContentSpec | None = None  # None: this input matches by definition key only


@dataclass(frozen=True, slots=True)
class CacheMap:
    """What an op contributes to its vertex's cache key."""

    preimage: dict[str, Any]  # the op's cache preimage (type + fields), kept for "why re-ran"
    deps: tuple[Dep, ...]

    @property
    def digest(self) -> str:
        return sha256_of_json(self.preimage)


def selector_digest(paths: tuple[str, ...]) -> str:
    """BuildKit's FileOp/ExecOp selector: sha256 over the paths joined by NUL."""
    return sha256_digest("\0".join(paths).encode())


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True, slots=True)
class ImageSource:
    """``FROM image``: an image, keyed by the ChainID of its layers once resolved.

    ``chain_id`` is None while the reference is not resolvable (no local image, no registry):
    the source is then *provisional*, keyed by its normalised reference only so the plan can
    still show keys, and marked so.
    """

    ref: str  # normalised reference, e.g. docker.io/library/alpine:latest
    chain_id: str | None = None
    platform: Platform = field(default_factory=Platform)
    kind: Literal["source"] = "source"

    @property
    def provisional(self) -> bool:
        return self.chain_id is None

    def definition(self) -> dict[str, Any]:
        return {
            "type": "source",
            "identifier": f"docker-image://{self.ref}",
            "chain_id": self.chain_id,
            "platform": self.platform.to_json(),
        }

    def cache_map(self) -> CacheMap:
        if self.chain_id is not None:
            # Tag, manifest and config digest do not matter: same layers, same key.
            key = self.chain_id
        else:
            key = f"provisional:docker-image://{self.ref}"
        return CacheMap(preimage={"type": "buildkit.source.v0", "image": key}, deps=())


@dataclass(frozen=True, slots=True)
class LocalSource:
    """The build context (or a named local context). Never matches across builds by itself."""

    name: str  # "context" or the named context's name
    path: str  # absolute directory on this host
    follow_paths: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    kind: Literal["source"] = "source"

    def definition(self) -> dict[str, Any]:
        return {
            "type": "source",
            "identifier": f"local://{self.name}",
            "follow_paths": list(self.follow_paths),
            "exclude_patterns": list(self.exclude_patterns),
        }

    def cache_map(self) -> CacheMap:
        # BuildKit turns a local source's key into random:…, so consumers only ever match via
        # the content checksum of what they select from it.
        return CacheMap(preimage={"type": "buildkit.source.local", "name": self.name}, deps=())


@dataclass(frozen=True, slots=True)
class HttpSource:
    """``ADD https://…``: keyed by the downloaded content (known early with ``--checksum``)."""

    url: str
    filename: str
    checksum: str | None = None  # sha256:… from --checksum: the content digest, known up front
    perm: int = 0o600
    uid: int = 0
    gid: int = 0
    kind: Literal["source"] = "source"

    def definition(self) -> dict[str, Any]:
        return {
            "type": "source",
            "identifier": self.url,
            "filename": self.filename,
            "checksum": self.checksum,
            "perm": self.perm,
            "uid": self.uid,
            "gid": self.gid,
        }

    def cache_map(self, content_digest: str | None = None) -> CacheMap:
        from engine.sources import http as httpsrc

        digest = content_digest or self.checksum
        source = httpsrc.HttpSource.for_add(self.url, checksum=self.checksum)
        fields = httpsrc.key_preimage(source, digest or "", filename=self.filename)
        return CacheMap(preimage={"type": "buildkit.source.http", **fields}, deps=())


@dataclass(frozen=True, slots=True)
class GitSource:
    """``ADD <git url>``: keyed by the resolved commit (known early with a full sha)."""

    remote: str
    ref: str
    subdir: str = ""
    keep_git_dir: bool = False
    commit: str | None = None
    checksum: str | None = None
    kind: Literal["source"] = "source"

    def definition(self) -> dict[str, Any]:
        return {
            "type": "source",
            "identifier": f"git://{self.remote}#{self.ref}:{self.subdir}",
            "keep_git_dir": self.keep_git_dir,
            "checksum": self.checksum,
        }

    def cache_map(self, commit: str | None = None) -> CacheMap:
        from engine.sources import git as gitsrc

        sha = commit or self.commit
        if sha is None:
            # Unresolved (a branch or tag): the key is known only after ls-remote.
            return CacheMap(preimage={"type": "buildkit.source.git", "key": None}, deps=())
        gitref = gitsrc.GitRef(remote=self.remote, ref=self.ref or None, subdir=self.subdir)
        fields = gitsrc.key_preimage(gitref, sha, self.keep_git_dir, self.checksum)
        return CacheMap(preimage={"type": "buildkit.source.git", **fields}, deps=())


# --------------------------------------------------------------------------- exec


@dataclass(frozen=True, slots=True)
class Mount:
    """A mount of a RUN step. ``input`` indexes the op's inputs; -1 means none (scratch)."""

    dest: str
    input: int = -1
    selector: str = ""  # path inside the input to mount (bind source=)
    readonly: bool = False
    type: Literal["bind", "cache", "tmpfs", "secret", "ssh"] = "bind"
    output: bool = False  # True for the root mount: its changes become the step's result
    cache_id: str = ""
    cache_sharing: str = ""
    secret_id: str = ""
    required: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None

    def definition(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dest": self.dest, "input": self.input, "type": self.type}
        for name in ("selector", "cache_id", "cache_sharing", "secret_id"):
            value = getattr(self, name)
            if value:
                out[name] = value
        for name in ("readonly", "output", "required"):
            if getattr(self, name):
                out[name] = True
        for name in ("mode", "uid", "gid", "size"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def cache_definition(self) -> dict[str, Any]:
        out = self.definition()
        out.pop("selector", None)  # selectors go to the per-input Dep, as in BuildKit
        if self.type == "cache" and not self._default_cache_opts():
            # BuildKit (PR #4585) drops a non-default cache id/sharing from the key.
            out.pop("cache_id", None)
            out.pop("cache_sharing", None)
        return out

    def _default_cache_opts(self) -> bool:
        return (self.cache_id in ("", self.dest) or self.cache_id.endswith("/" + self.dest)) and (
            self.cache_sharing in ("", "shared")
        )


@dataclass(frozen=True, slots=True)
class ExecOp:
    """``RUN``: a process in a container over the root mount (input 0)."""

    args: tuple[str, ...]
    env: tuple[str, ...]  # KEY=VALUE in order
    cwd: str
    user: str = ""
    network: Literal["default", "none", "host"] = "default"
    security: Literal["sandbox", "insecure"] = "sandbox"
    mounts: tuple[Mount, ...] = ()
    proxy_env: tuple[str, ...] = ()  # undeclared proxy build-args: in the run, never in the key
    hostname: str = ""
    platform: Platform = field(default_factory=Platform)
    kind: Literal["exec"] = "exec"

    def definition(self) -> dict[str, Any]:
        return {
            "type": "exec",
            "meta": self._meta(),
            "proxy_env": list(self.proxy_env),
            "mounts": [m.definition() for m in self.mounts],
            "platform": self.platform.to_json(),
        }

    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "args": list(self.args),
            "env": list(self.env),
            "cwd": self.cwd,
            "user": self.user,
            "network": self.network,
            "security": self.security,
        }
        if self.hostname:
            meta["hostname"] = self.hostname
        return meta

    def cache_map(self, n_inputs: int) -> CacheMap:
        preimage = {
            "type": "buildkit.exec.v0",
            "meta": self._meta(),  # no proxy env: BuildKit clears Meta.ProxyEnv
            "mounts": [m.cache_definition() for m in self.mounts],
            "platform": self.platform.to_json(),
        }
        deps: list[Dep] = []
        for index in range(n_inputs):
            using = [m for m in self.mounts if m.input == index]
            paths = tuple("/" + m.selector.lstrip("/") for m in using if m.selector)
            selector = selector_digest(paths) if paths else None
            content = None
            # Content checksums only for inputs mounted read-only (and never the root mount):
            # what a RUN reads from a bind mount is what matters, not how it was made.
            if using and all(m.readonly and not m.output for m in using):
                content = ContentSpec(
                    tuple(PathSelector(p, follow_links=True) for p in (paths or ("/",)))
                )
            deps.append(Dep(selector=selector, selector_paths=paths, content=content))
        return CacheMap(preimage=preimage, deps=tuple(deps))


# --------------------------------------------------------------------------- file


@dataclass(frozen=True, slots=True)
class ChownSpec:
    """``--chown`` as written: ids, or names resolved from the image's user database."""

    user: str
    group: str = ""

    def to_json(self) -> dict[str, str]:
        return {"user": self.user, "group": self.group}

    @property
    def by_name(self) -> bool:
        return not (self.user.isdigit() and (not self.group or self.group.isdigit()))


@dataclass(frozen=True, slots=True)
class CopyAction:
    """Copy ``src`` paths of input ``src_input`` to ``dest`` on the action's base."""

    src_input: int
    src: tuple[str, ...]
    dest: str
    chown: ChownSpec | None = None
    chmod: str = ""  # octal or symbolic, as written
    wildcard: bool = True
    follow_symlinks: bool = True
    dir_copy_contents: bool = True
    create_dest_path: bool = True
    allow_empty_wildcard: bool = False
    attempt_unpack: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    parents: bool = False
    always_replace_existing: bool = False
    kind: Literal["copy"] = "copy"

    def definition(self) -> dict[str, Any]:
        return {
            "action": "copy",
            "src_input": self.src_input,
            "src": list(self.src),
            "dest": self.dest,
            "chown": self.chown.to_json() if self.chown else None,
            "chmod": self.chmod,
            "flags": self._flags(),
            "include": list(self.include),
            "exclude": list(self.exclude),
        }

    def _flags(self) -> dict[str, bool]:
        return {
            "wildcard": self.wildcard,
            "follow_symlinks": self.follow_symlinks,
            "dir_copy_contents": self.dir_copy_contents,
            "create_dest_path": self.create_dest_path,
            "allow_empty_wildcard": self.allow_empty_wildcard,
            "attempt_unpack": self.attempt_unpack,
            "parents": self.parents,
            "always_replace_existing": self.always_replace_existing,
        }

    def cache_definition(self) -> dict[str, Any]:
        out = self.definition()
        # BuildKit keeps only path.Base(src) in the op's key: the directory part goes to the
        # selector, so the same bytes selected from two places give the same content key.
        out["src"] = [_base(s) for s in self.src]
        return out


@dataclass(frozen=True, slots=True)
class MkdirAction:
    """Create a directory (``WORKDIR``, the destination of a COPY)."""

    path: str
    mode: int = 0o755
    make_parents: bool = True
    chown: ChownSpec | None = None
    kind: Literal["mkdir"] = "mkdir"

    def definition(self) -> dict[str, Any]:
        return {
            "action": "mkdir",
            "path": self.path,
            "mode": self.mode,
            "make_parents": self.make_parents,
            "chown": self.chown.to_json() if self.chown else None,
        }

    def cache_definition(self) -> dict[str, Any]:
        return self.definition()


@dataclass(frozen=True, slots=True)
class MkfileAction:
    """Write a file with given content (``COPY <<EOF /path``)."""

    path: str
    data: str
    mode: int = 0o644
    chown: ChownSpec | None = None
    chmod: str = ""
    kind: Literal["mkfile"] = "mkfile"

    def definition(self) -> dict[str, Any]:
        return {
            "action": "mkfile",
            "path": self.path,
            "data_digest": sha256_digest(self.data.encode()),
            "mode": self.mode,
            "chmod": self.chmod,
            "chown": self.chown.to_json() if self.chown else None,
        }

    def cache_definition(self) -> dict[str, Any]:
        return self.definition()


FileAction = CopyAction | MkdirAction | MkfileAction


@dataclass(frozen=True, slots=True)
class FileOp:
    """COPY/ADD/WORKDIR: file actions on input 0 (the destination; -1 for scratch)."""

    actions: tuple[FileAction, ...]
    dest_input: int = 0
    user_db_input: int | None = None  # input supplying /etc/passwd, /etc/group for a chown by name
    kind: Literal["file"] = "file"

    def definition(self) -> dict[str, Any]:
        return {
            "type": "file",
            "dest_input": self.dest_input,
            "user_db_input": self.user_db_input,
            "actions": [a.definition() for a in self.actions],
        }

    def cache_map(self, n_inputs: int) -> CacheMap:
        preimage = {
            "type": "buildkit.file.v0",
            "dest_input": self.dest_input,
            "actions": [a.cache_definition() for a in self.actions],
        }
        deps: list[Dep] = []
        for index in range(n_inputs):
            paths: list[str] = []
            selectors: list[PathSelector] = []
            for action in self.actions:
                if isinstance(action, CopyAction) and action.src_input == index:
                    paths.extend(action.src)
                    selectors.extend(
                        PathSelector(
                            src,
                            wildcard=action.wildcard,
                            follow_links=action.follow_symlinks,
                            include=action.include,
                            exclude=action.exclude,
                        )
                        for src in action.src
                    )
            if self.user_db_input == index and index != self.dest_input:
                # A chown by name reads the user database of this input; when that input is
                # the destination, its definition key must match anyway.
                paths.extend(("/etc/passwd", "/etc/group"))
                selectors.extend(PathSelector(p) for p in ("/etc/passwd", "/etc/group"))
            # The destination must match by its definition key: never by content.
            content = (
                ContentSpec(tuple(selectors)) if selectors and index != self.dest_input else None
            )
            ordered = tuple(sorted(paths, reverse=True))
            selector = selector_digest(ordered) if ordered else None
            deps.append(Dep(selector=selector, selector_paths=ordered, content=content))
        return CacheMap(preimage=preimage, deps=tuple(deps))


@dataclass(frozen=True, slots=True)
class MergeOp:
    """Layer inputs on top of each other (``COPY --link``)."""

    kind: Literal["merge"] = "merge"

    def definition(self) -> dict[str, Any]:
        return {"type": "merge"}

    def cache_map(self, n_inputs: int) -> CacheMap:
        return CacheMap(
            preimage={"type": "buildkit.merge.v0"}, deps=tuple(Dep() for _ in range(n_inputs))
        )


Op = ImageSource | LocalSource | HttpSource | GitSource | ExecOp | FileOp | MergeOp


def _base(path: str) -> str:
    # Go's path.Base: trailing slashes dropped, "" -> ".", "/" -> "/".
    if not path:
        return "."
    stripped = path.rstrip("/")
    if not stripped:
        return "/"
    return stripped.rsplit("/", 1)[-1]
