"""Dockerfile → build graph, following BuildKit's ``dockerfile2llb``.

The converter walks the stages reachable from the target, expands words with each stage's
variables, and emits ops (:mod:`engine.graph.ops`) in dependency order, together with the
target's image config. Steps are numbered and named as BuildKit's progress output names them
(``[builder 2/4] WORKDIR /app``).

This module holds what other parts of the engine name on every run (the options, a resolved
image, the host platform); the converter itself (:mod:`engine.frontend._convert`, with the
parser, the instructions and the shell expansion) loads with the first :func:`convert`.
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.graph.image import ImageConfig
from engine.graph.ops import Platform

if TYPE_CHECKING:
    from engine.frontend.namedcontext import ContextResolver
    from engine.frontend.parser import Dockerfile
    from engine.graph.vertex import Definition

__all__ = ["BuildOptions", "ImageResolver", "ResolvedImage", "convert", "host_platform"]


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """An image the resolver found: its layers' ChainID and its config."""

    ref: str
    chain_id: str | None  # None: an image without layers (behaves as scratch)
    config: ImageConfig


ImageResolver = Callable[[str, Platform], "ResolvedImage | None"]


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Frontend options (BuildKit's ``dockerui.Config`` subset)."""

    target: str = ""
    build_args: Mapping[str, str] = field(default_factory=dict)
    build_contexts: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    no_cache_filter: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    context_dir: str = "."
    platform: Platform | None = None


def host_platform() -> Platform:
    """The platform of this machine, in OCI terms."""
    machine = _platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )
    return Platform("linux", arch, "v8" if arch == "arm64" else "")


def convert(
    dockerfile: Dockerfile,
    options: BuildOptions | None = None,
    *,
    resolve_image: ImageResolver | None = None,
    resolve_context: ContextResolver | None = None,
) -> Definition:
    """Convert a parsed Dockerfile into the build graph of its target.

    ``resolve_image`` finds images (``FROM``, ``--from``); without it, or when it finds
    nothing, they are provisional. ``resolve_context`` resolves ``docker-image://`` and
    ``oci-layout://`` named contexts and raises when it cannot; without it they are looked up
    with ``resolve_image`` (layouts: provisional).

    Raises:
        DockerfileError: any instruction error, in any stage (BuildKit parses them all).
        ContextError: a named context that cannot be used.
    """
    from engine.frontend._convert import convert as _convert

    return _convert(
        dockerfile, options, resolve_image=resolve_image, resolve_context=resolve_context
    )
