"""OCI image config and manifest assembly, like BuildKit's image exporter.

The frontend produces the runnable part of the config (:class:`engine.graph.image.ImageConfig`,
whose ``to_json`` has ``os``, ``architecture``, ``config`` and ``history``). Exporting adds what
only the layers can tell (``exporter/containerimage/writer.go`` ``patchImageConfig`` and
``normalizeLayersAndHistory``):

* ``rootfs`` = ``{"type": "layers", "diff_ids": [...]}``;
* ``history`` aligned with the layers: when it names more layers than there are, the extra
  entries (from the bottom) become ``empty_layer``; when it names fewer, entries are appended
  for the missing ones;
* times: a build stamps them first as BuildKit's exporter does (:func:`stamp_times`: each
  layer's entry its layer's creation time, entries without a layer the next or previous one's,
  the image the last entry's), so a fully cached rebuild is the same image; here an entry still
  without ``created`` gets the build time, or ``SOURCE_DATE_EPOCH`` when given; with an epoch
  every time newer than it is clamped to it; ``created`` of the image is the last history
  entry's time.

Encodings are fixed so equal inputs give equal digests: the config is compact JSON with sorted
keys and Go's escaping of ``<``, ``>``, ``&``, U+2028 and U+2029 (what ``encoding/json`` writes);
the manifest is indented with two spaces in the OCI struct order, as BuildKit's
``json.MarshalIndent`` writes it.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.graph.image import Healthcheck as ConfigHealthcheck
from engine.graph.image import HistoryEntry, ImageConfig
from engine.images.errors import ImageError

__all__ = [
    "MEDIA_TYPE_DOCKER_CONFIG",
    "MEDIA_TYPE_DOCKER_LAYER_GZIP",
    "MEDIA_TYPE_DOCKER_LAYER_TAR",
    "MEDIA_TYPE_DOCKER_MANIFEST",
    "MEDIA_TYPE_OCI_CONFIG",
    "MEDIA_TYPE_OCI_INDEX",
    "MEDIA_TYPE_OCI_MANIFEST",
    "Descriptor",
    "build_image_config",
    "build_manifest",
    "chain_id",
    "config_bytes",
    "config_from_json",
    "go_json",
    "rfc3339",
    "stamp_times",
]

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

# BuildKit's comment for history entries it adds for layers the config did not describe
_EXPORTER_COMMENT = "buildkit.exporter.image.v0"

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028"}
_GO_ESCAPES["\u2029"] = "\\u2029"
_GO_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")
_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def go_json(value: Any) -> bytes:
    """Compact JSON with sorted keys and Go ``encoding/json``'s HTML-safe escaping."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # these characters can only occur inside JSON strings, where Go writes them escaped
    return _GO_ESCAPE_RE.sub(lambda m: _GO_ESCAPES[m.group(0)], text).encode()


def chain_id(diff_ids: Sequence[str]) -> str | None:
    """The ChainID of a layer stack (OCI image spec, ``config.md`` "Layer ChainID").

    ``ChainID(L0) = DiffID(L0)``; ``ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))``.
    None for an image without layers.
    """
    current: str | None = None
    for diff_id in diff_ids:
        if current is None:
            current = diff_id
        else:
            current = "sha256:" + hashlib.sha256(f"{current} {diff_id}".encode()).hexdigest()
    return current


def rfc3339(ns: int) -> str:
    """A UTC time as Go's ``time.Time`` marshals it (RFC 3339, fraction without trailing 0s)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = _dt.datetime.fromtimestamp(seconds, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        stamp += "." + f"{frac:09d}".rstrip("0")
    return stamp + "Z"


def _parse_time_ns(text: str) -> int | None:
    match = _RFC3339_RE.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, frac, zone = match.groups()
    offset = _dt.timedelta(0)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * _dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        moment = _dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=_dt.UTC
        )
    except ValueError:
        return None
    base = int((moment - offset).timestamp())
    nanos = int((frac or "0")[:9].ljust(9, "0"))
    return base * 1_000_000_000 + nanos


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = field(default=())
    platform: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        # OCI struct order: mediaType, digest, size, ..., annotations, platform
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations))
        if self.platform:
            out["platform"] = dict(self.platform)
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Descriptor:
        """Parse a descriptor, checking the fields nbbuild relies on.

        Raises:
            ImageError: a field is missing or has the wrong type.
        """
        media_type, digest, size = doc.get("mediaType"), doc.get("digest"), doc.get("size")
        if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ImageError(f"descriptor has an invalid digest: {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageError(f"descriptor {digest} has an invalid size: {size!r}")
        annotations = doc.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise ImageError(f"descriptor {digest} has invalid annotations")
        platform = doc.get("platform")
        return cls(
            media_type=media_type if isinstance(media_type, str) else "",
            digest=digest,
            size=size,
            annotations=tuple(sorted((str(k), str(v)) for k, v in annotations.items())),
            platform=dict(platform) if isinstance(platform, dict) else None,
        )


def build_image_config(
    config: Mapping[str, Any],
    diff_ids: Sequence[str],
    *,
    source_date_epoch: int | None = None,
    now_ns: int | None = None,
) -> dict[str, Any]:
    """The final image config for ``diff_ids`` (see the module docstring).

    Args:
        config: the build's config (``ImageConfig.to_json()``), or a full image config.
        diff_ids: the layers' diff IDs, bottom first.
        source_date_epoch: fixes and clamps every time (seconds since 1970).
        now_ns: the build time (defaults to the current time).

    Raises:
        ImageError: the config has no ``os`` or ``architecture``.
    """
    out = copy.deepcopy(dict(config))
    if not out.get("os") or not out.get("architecture"):
        raise ImageError("invalid image config for export: missing os or architecture")
    time_ns = (
        source_date_epoch * 1_000_000_000
        if source_date_epoch is not None
        else (time.time_ns() if now_ns is None else now_ns)
    )
    stamp = rfc3339(time_ns)
    history = [dict(h) for h in out.get("history") or [] if isinstance(h, Mapping)]
    layered = sum(1 for h in history if not h.get("empty_layer"))
    if layered > len(diff_ids):
        seen = 0
        for h in history:
            if seen >= len(diff_ids):
                h["empty_layer"] = True
            if not h.get("empty_layer"):
                seen += 1
    for _ in range(len(diff_ids) - layered):
        history.append({"created_by": "created by nbbuild", "comment": _EXPORTER_COMMENT})
    for h in history:
        created = h.get("created")
        # Entries with a time come from the base image: BuildKit keeps them as they are
        # (moby/buildkit#4614); entries this build made get the build's (or the epoch's) time.
        if not isinstance(created, str) or not created:
            h["created"] = stamp
    out["history"] = history
    created = out.get("created")
    if source_date_epoch is not None and isinstance(created, str):
        parsed = _parse_time_ns(created)
        if parsed is None or parsed > time_ns:
            out["created"] = stamp
    if not isinstance(out.get("created"), str):
        out["created"] = history[-1]["created"] if history else stamp
    out["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    return out


def stamp_times(
    config: Mapping[str, Any], layer_created_ns: Sequence[int | None], now_ns: int
) -> dict[str, Any]:
    """``config`` with the times BuildKit's image exporter gives a build without
    ``SOURCE_DATE_EPOCH`` (``normalizeLayersAndHistory``, ``patchImageConfig``):

    * an entry that has a time keeps it (the base image's history);
    * a layer's entry gets its layer's creation time (``layer_created_ns``, bottom first, the
      base image's layers included): a layer a build took from the cache keeps the time it was
      first made;
    * an entry without a time (a metadata command: ENV, CMD, …) gets the first new layer's time
      after the first such entry, then that of the layer before it (``now_ns`` when there is no
      time at all);
    * the image's ``created`` is the last entry's time.

    So a fully cached rebuild makes the same config - the same image ID - as BuildKit's does, and
    ``--no-cache`` a new one.
    """
    out = dict(config)
    history = [dict(h) for h in out.get("history") or [] if isinstance(h, Mapping)]
    layer = 0
    for h in history:
        if not h.get("empty_layer"):
            if not h.get("created") and layer < len(layer_created_ns):
                made = layer_created_ns[layer]
                if made is not None:
                    h["created"] = rfc3339(made)
            layer += 1
    # The first time after the first entry without one: a metadata command at the top must not
    # get the base image's time.
    created: str | None = None
    missing = False
    for h in history:
        if h.get("created"):
            created = h["created"]
            if missing:
                break
        else:
            missing = True
    if created is None:
        created = rfc3339(now_ns)
    missing = False
    for h in history:
        if h.get("created"):
            if missing:
                created = h["created"]
        else:
            missing = True
            h["created"] = created
    out["history"] = history
    if not out.get("created"):
        out["created"] = history[-1]["created"] if history else rfc3339(now_ns)
    return out


def config_bytes(config: Mapping[str, Any]) -> bytes:
    """The canonical bytes of an image config (its digest is the image ID)."""
    return go_json(config)


def build_manifest(
    config: Descriptor,
    layers: Sequence[Descriptor],
    *,
    media_type: str = MEDIA_TYPE_OCI_MANIFEST,
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """An image manifest, indented like Go's ``json.MarshalIndent(m, "", "  ")``."""
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    doc["config"] = config.to_json()
    doc["layers"] = [layer.to_json() for layer in layers]
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    return _GO_ESCAPE_RE.sub(lambda m: _GO_ESCAPES[m.group(0)], text).encode()


# ----------------------------------------------------------------------------- reading


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return ()


def _keys(value: Any) -> tuple[str, ...]:
    if isinstance(value, dict):
        return tuple(str(k) for k in value)
    return ()


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def config_from_json(doc: Mapping[str, Any]) -> ImageConfig:
    """Map an OCI/Docker image config document to the frontend's :class:`ImageConfig`.

    Unknown or ill-typed fields are ignored rather than rejected: a base image's config is
    data someone else wrote, and BuildKit is equally lenient with it.
    """
    cfg = doc.get("config")
    if not isinstance(cfg, dict):
        cfg = {}
    labels = cfg.get("Labels")
    health = cfg.get("Healthcheck")
    healthcheck = None
    if isinstance(health, dict) and isinstance(health.get("Test"), list):
        healthcheck = ConfigHealthcheck(
            test=_strings(health.get("Test")),
            interval_ns=_int(health.get("Interval")),
            timeout_ns=_int(health.get("Timeout")),
            start_period_ns=_int(health.get("StartPeriod")),
            start_interval_ns=_int(health.get("StartInterval")),
            retries=_int(health.get("Retries")),
        )
    history: list[HistoryEntry] = []
    for h in doc.get("history") or []:
        if isinstance(h, dict):
            history.append(
                HistoryEntry(
                    created_by=str(h.get("created_by") or ""),
                    comment=str(h.get("comment") or ""),
                    empty_layer=bool(h.get("empty_layer")),
                    created=str(h.get("created") or ""),
                    author=str(h.get("author") or ""),
                )
            )
    cmd = cfg.get("Cmd")
    entrypoint = cfg.get("Entrypoint")
    shell = cfg.get("Shell")
    return ImageConfig(
        env=_strings(cfg.get("Env")),
        cmd=_strings(cmd) if isinstance(cmd, list) else None,
        entrypoint=_strings(entrypoint) if isinstance(entrypoint, list) else None,
        working_dir=str(cfg.get("WorkingDir") or ""),
        user=str(cfg.get("User") or ""),
        labels=tuple((str(k), str(v)) for k, v in labels.items())
        if isinstance(labels, dict)
        else (),
        exposed_ports=_keys(cfg.get("ExposedPorts")),
        volumes=_keys(cfg.get("Volumes")),
        stop_signal=str(cfg.get("StopSignal") or ""),
        healthcheck=healthcheck,
        onbuild=_strings(cfg.get("OnBuild")),
        shell=_strings(shell) if isinstance(shell, list) else None,
        os=str(doc.get("os") or "linux"),
        architecture=str(doc.get("architecture") or "amd64"),
        variant=str(doc.get("variant") or ""),
        history=tuple(history),
    )
