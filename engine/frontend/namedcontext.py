"""Named build contexts: buildx's ``--build-context NAME=VALUE``, BuildKit's ``context:NAME``.

A named context replaces what a name in the Dockerfile would otherwise mean: a stage of that
name (``FROM … AS NAME`` is not run), an image (``FROM alpine`` / ``COPY --from=alpine``) or a
``RUN --mount from=NAME`` source. Values (buildx's ``build/opt.go`` ``LoadInputs``):

* ``DIR`` (any other value): a local directory, sent like the main context but filtered by its
  own ``DIR/.dockerignore`` (not the Dockerfile's); ``FROM NAME`` uses it as a root filesystem
  with an empty image config (BuildKit's ``emptyImage``);
* ``docker-image://REF``: an image (``docker-image://scratch`` is the empty filesystem);
* ``oci-layout://DIR[:TAG][@sha256:…]``: an image in an OCI image layout directory (see
  :mod:`engine.images.layout` for how the manifest is chosen).

Lookups follow BuildKit's ``dockerui.Client.NamedContext``: the Dockerfile name is normalised
to its familiar form without ``:latest`` (``docker.io/library/alpine:latest`` → ``alpine``),
``NAME::<platform>`` wins over ``NAME``, and ``scratch`` and ``context`` are never looked up.

:func:`prepare_contexts` is the client half (buildx): it checks every value before the build
and makes local paths absolute. :func:`lookup` is the frontend half, used by the converter.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.errors import ContextError, DockerfileError
from engine.frontend.imageref import normalize_ref
from engine.graph.ops import Platform

if TYPE_CHECKING:
    from engine.frontend.convert import ResolvedImage

__all__ = [
    "ContextResolver",
    "NamedContext",
    "context_key",
    "lookup",
    "parse_context",
    "parse_oci_layout",
    "prepare_contexts",
]

DOCKER_IMAGE = "docker-image://"
OCI_LAYOUT = "oci-layout://"
_EMPTY_IMAGE = "scratch"
# reference.TagRegexp and reference.DigestRegexp (distribution/reference)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_REMOTE = re.compile(r"^(?:https?://|git://|ssh://|git@)")

Kind = Literal["local", "image", "scratch", "oci-layout"]


@dataclass(frozen=True, slots=True)
class NamedContext:
    """One named context, parsed.

    Attributes:
        key: the option key that matched (``base`` or ``base::linux/amd64``): BuildKit names
            the context's vertices ``[context <key>] …``.
        value: the value as given.
        kind: ``local``, ``image``, ``scratch`` or ``oci-layout``.
        path: the directory (local, oci-layout).
        ref: the image reference as written (image).
        tag: the tag to select in an OCI layout, "" when none was given.
        digest: the manifest (or index) digest to select in an OCI layout, "" when none was
            given.
    """

    key: str
    value: str
    kind: Kind
    path: str = ""
    ref: str = ""
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The context name without a ``::platform`` suffix."""
        return self.key.split("::", 1)[0]


# Resolves an ``image`` or ``oci-layout`` context for a platform: finds the image (loading an
# OCI layout into the image store) and returns it; raises ContextError when the image is absent
# or the layout, tag or digest is not usable.
ContextResolver = Callable[[NamedContext, Platform], "ResolvedImage"]


def parse_oci_layout(spec: str) -> tuple[str, str, str]:
    """``DIR[:TAG][@DIGEST]`` → (dir, tag, digest), as buildx's ``parseOCILayoutPath``.

    The ``@`` and ``:`` parts count only when what follows is a valid digest / tag, so paths
    that contain those characters still work. Tag and digest are "" when not given.
    """
    path, digest, tag = spec, "", ""
    at = path.rfind("@")
    if at >= 0 and _DIGEST.fullmatch(path[at + 1 :]):
        path, digest = path[:at], path[at + 1 :]
    colon = path.rfind(":")
    if colon >= 0 and _TAG.fullmatch(path[colon + 1 :]):
        path, tag = path[:colon], path[colon + 1 :]
    return path, tag, digest


def parse_context(key: str, value: str) -> NamedContext:
    """Parse a context value (already checked by :func:`prepare_contexts` or not).

    Raises:
        ContextError: a source nbbuild does not support (git, http, bake targets).
    """
    if value.startswith(DOCKER_IMAGE):
        ref = value[len(DOCKER_IMAGE) :]
        if ref == _EMPTY_IMAGE:
            return NamedContext(key, value, "scratch")
        return NamedContext(key, value, "image", ref=ref)
    if value.startswith(OCI_LAYOUT):
        path, tag, digest = parse_oci_layout(value[len(OCI_LAYOUT) :])
        return NamedContext(key, value, "oci-layout", path=path, tag=tag, digest=digest)
    if _REMOTE.match(value):
        raise ContextError(
            f"build context {key!r}: remote contexts ({value}) are not supported yet: "
            "use a local directory, docker-image:// or oci-layout://"
        )
    if value.startswith("target:"):
        raise ContextError(f"build context {key!r}: {value!r}: bake targets are not supported")
    return NamedContext(key, value, "local", path=value)


def prepare_contexts(contexts: Mapping[str, str], *, cwd: Path | None = None) -> dict[str, str]:
    """Check every named context before the build, as buildx does; local and layout paths
    become absolute (relative ones are relative to ``cwd``, default the process's).

    Raises:
        ContextError: an empty name, a missing or non-directory local context, a missing
            layout directory, an invalid image reference, an unsupported source.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    out: dict[str, str] = {}
    for key, value in contexts.items():
        if not key:
            raise ContextError(f"invalid build context {key}={value}: the name is empty")
        nc = parse_context(key, value)
        if nc.kind == "image":
            try:
                normalize_ref(nc.ref)
            except DockerfileError:
                raise ContextError(
                    f"build context {key!r}: invalid image reference {nc.ref!r}"
                ) from None
            out[key] = value
        elif nc.kind == "scratch":
            out[key] = value
        elif nc.kind == "oci-layout":
            path = _absolute(base, nc.path)
            if not os.path.isdir(path):
                raise ContextError(
                    f"build context {key!r}: oci-layout directory {nc.path!r} "
                    + ("is not a directory" if os.path.exists(path) else "does not exist")
                )
            tail = (f":{nc.tag}" if nc.tag else "") + (f"@{nc.digest}" if nc.digest else "")
            out[key] = OCI_LAYOUT + path + tail
        else:
            path = _absolute(base, nc.path)
            try:
                is_dir = os.path.isdir(path)
                exists = is_dir or os.path.lexists(path)
            except OSError:  # pragma: no cover - isdir/lexists do not raise on Linux
                is_dir = exists = False
            if not is_dir:
                reason = "is not a directory" if exists else "no such file or directory"
                raise ContextError(f"failed to get build context {key}: {value}: {reason}")
            out[key] = path
    return out


def _absolute(base: Path, path: str) -> str:
    if not path:
        return str(base)
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def familiar(normalized: str) -> str:
    """Docker's ``FamiliarString`` of a normalised reference."""
    name = normalized
    if name.startswith("docker.io/"):
        name = name[len("docker.io/") :]
        if name.startswith("library/") and "/" not in name[len("library/") :].split("@")[0]:
            name = name[len("library/") :]
    return name


def context_key(name: str) -> str | None:
    """The key a Dockerfile name is looked up under: BuildKit parses it as a reference and
    uses its familiar form without ``:latest`` (None: not a valid reference)."""
    try:
        normalized = normalize_ref(name)
    except DockerfileError:
        return None
    return familiar(normalized).removesuffix(":latest")


def lookup(
    contexts: Mapping[str, str], name: str, platform: Platform, *, stage: bool = False
) -> NamedContext | None:
    """The named context a Dockerfile name refers to, if any: ``KEY::<platform>`` first, then
    ``KEY``.

    ``stage``: ``name`` is a stage's own name (``FROM … AS name``); stages named ``scratch`` or
    ``context`` are never replaced (BuildKit's ``namedContextFunc``). An image name (``FROM``,
    ``--from``) is looked up whatever it is: ``FROM scratch`` never gets here.

    Raises:
        ContextError: the matching value is a source nbbuild does not support.
    """
    if not contexts:
        return None
    if stage and name.lower() in ("scratch", "context"):
        return None
    key = context_key(name)
    if key is None:
        return None
    for candidate in (f"{key}::{_format_platform(platform)}", key):
        value = contexts.get(candidate)
        if value is not None:
            return parse_context(candidate, value)
    return None


def _format_platform(p: Platform) -> str:
    # platforms.FormatAll(platforms.Normalize(p)): arm64 always carries its variant
    variant = p.variant or ("v8" if p.architecture == "arm64" else "")
    return f"{p.os}/{p.architecture}" + (f"/{variant}" if variant else "")
