"""The image config a build produces: OCI image config plus Docker's extensions."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["DEFAULT_PATH", "HistoryEntry", "ImageConfig"]

# BuildKit's default PATH (oci.DefaultPathEnvUnix), set when the base image has none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One ``history`` entry of the image config."""

    created_by: str
    comment: str = "buildkit.dockerfile.v0"
    empty_layer: bool = False
    created: str = ""  # RFC 3339; kept for a base image's entries, stamped at export otherwise
    author: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.created:
            out["created"] = self.created
        if self.author:
            out["author"] = self.author
        if self.created_by or not self.comment:
            out["created_by"] = self.created_by
        if self.comment:
            out["comment"] = self.comment
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass(frozen=True, slots=True)
class Healthcheck:
    """``HEALTHCHECK``: test is ``("NONE",)`` or ``("CMD", …)``/``("CMD-SHELL", cmd)``."""

    test: tuple[str, ...]
    interval_ns: int = 0
    timeout_ns: int = 0
    start_period_ns: int = 0
    start_interval_ns: int = 0
    retries: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Test": list(self.test)}
        for key, value in (
            ("Interval", self.interval_ns),
            ("Timeout", self.timeout_ns),
            ("StartPeriod", self.start_period_ns),
            ("StartInterval", self.start_interval_ns),
            ("Retries", self.retries),
        ):
            if value:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The runnable part of an image config, as the Dockerfile frontend builds it."""

    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str = ""
    healthcheck: Healthcheck | None = None
    onbuild: tuple[str, ...] = ()
    shell: tuple[str, ...] | None = None
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""
    author: str = ""  # MAINTAINER (deprecated, still honoured)
    history: tuple[HistoryEntry, ...] = field(default=())

    def get_env(self, name: str) -> str | None:
        for item in reversed(self.env):
            key, _, value = item.partition("=")
            if key == name:
                return value
        return None

    def with_env(self, name: str, value: str) -> ImageConfig:
        kept = tuple(e for e in self.env if e.partition("=")[0] != name)
        # Docker keeps the position of an existing variable; BuildKit does too (addEnv).
        for i, item in enumerate(self.env):
            if item.partition("=")[0] == name:
                updated = list(self.env)
                updated[i] = f"{name}={value}"
                return replace(self, env=tuple(updated))
        return replace(self, env=(*kept, f"{name}={value}"))

    def with_label(self, key: str, value: str) -> ImageConfig:
        labels = dict(self.labels)
        labels[key] = value
        return replace(self, labels=tuple(labels.items()))

    def to_json(self) -> dict[str, Any]:
        """The ``config`` object of an OCI image config (Docker's field names)."""
        config: dict[str, Any] = {}
        if self.user:
            config["User"] = self.user
        if self.exposed_ports:
            config["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.env:
            config["Env"] = list(self.env)
        if self.entrypoint is not None:
            config["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            config["Cmd"] = list(self.cmd)
        if self.volumes:
            config["Volumes"] = {v: {} for v in self.volumes}
        if self.working_dir:
            config["WorkingDir"] = self.working_dir
        if self.labels:
            config["Labels"] = dict(self.labels)
        if self.stop_signal:
            config["StopSignal"] = self.stop_signal
        if self.healthcheck is not None:
            config["Healthcheck"] = self.healthcheck.to_json()
        if self.onbuild:
            config["OnBuild"] = list(self.onbuild)
        if self.shell is not None:
            config["Shell"] = list(self.shell)
        out: dict[str, Any] = {
            "architecture": self.architecture,
            "os": self.os,
            "config": config,
            "history": [h.to_json() for h in self.history],
        }
        if self.variant:
            out["variant"] = self.variant
        if self.author:
            out["author"] = self.author
        return out
