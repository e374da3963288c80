"""Image archives: ``docker import`` of a rootfs tar, ``docker load``/``save`` of image tars.

Two archive formats are read and written, often both in one file (as ``docker save`` from
Docker 25 and BuildKit's ``docker`` exporter write them):

* **docker-archive**: ``manifest.json`` = ``[{"Config": path, "RepoTags": [...], "Layers":
  [path, ...]}]``; the config's ``rootfs.diff_ids`` say what each layer file must hash to
  once decompressed. Older ``docker save`` output (``<id>/layer.tar``, symlinks between layer
  dirs, a ``repositories`` file) reads the same way.
* **OCI image layout** (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``): every blob is
  verified against its digest; names come from the ``io.containerd.image.name`` annotation, or
  ``org.opencontainers.image.ref.name`` (a full reference, or a tag added to the name passed).

Layers may be gzip-compressed or plain tars. Each is unpacked safely
(:func:`engine.images.layer.unpack_layer`) into a new snapshot while the original bytes are
stored as a blob, so saving the image again gives the same digests. A layer chain already in
the store (same ChainID) is not unpacked again.

Written archives are deterministic: entries sorted, owner 0:0, fixed modes, time 0 (or
``SOURCE_DATE_EPOCH``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import posixpath
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast

from engine.errors import StoreError, UsageError
from engine.frontend import instructions as ins
from engine.frontend.parser import parse
from engine.frontend.shell import Lexer
from engine.graph.image import Healthcheck, ImageConfig
from engine.images.config import (
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    build_manifest,
    chain_id,
    config_bytes,
    rfc3339,
)
from engine.images.errors import ArchiveError, ImageError, LayerError
from engine.images.layer import (
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_TAR,
    BlobInfo,
    open_layer_stream,
    unpack_layer,
)
from engine.images.store import (
    Image,
    ImageStore,
    familiar_name,
    host_platform_json,
    layer_key,
    normalize_name,
)
from engine.images.tarwriter import HashingWriter, TarEntry, TarWriter, Writable
from engine.store.store import Lease

__all__ = [
    "ArchiveImage",
    "apply_changes",
    "import_rootfs",
    "load",
    "save_docker",
    "save_oci",
    "write_archive",
]

_CHUNK = 1 << 20
# what `docker import --change` accepts (moby's validCommitCommands)
_CHANGE_INSTRUCTIONS = frozenset(
    {
        "cmd",
        "entrypoint",
        "env",
        "expose",
        "healthcheck",
        "label",
        "onbuild",
        "stopsignal",
        "user",
        "volume",
        "workdir",
    }
)
_REF_NAME = "org.opencontainers.image.ref.name"
_CONTAINERD_NAME = "io.containerd.image.name"
_MANIFEST_TYPES = frozenset({MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST})
_INDEX_TYPES = frozenset(
    {MEDIA_TYPE_OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json"}
)


# ----------------------------------------------------------------------------- --change


def _ports(word: str) -> list[str]:
    port, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    low, sep, high = port.partition("-")
    if sep and low.isdigit() and high.isdigit() and int(low) <= int(high):
        return [f"{p}/{proto}" for p in range(int(low), int(high) + 1)]
    return [f"{port}/{proto}"]


def _expand_word(lexer: Lexer, env: dict[str, str], word: str) -> str:
    return lexer.process_word(word, env)


def apply_changes(config: ImageConfig, changes: Sequence[str]) -> ImageConfig:
    """Apply ``docker import --change`` instructions (``ENV K=V``, ``CMD ...``) to a config.

    Each change is parsed with the Dockerfile parser; variables expand against the config's
    environment as it is at that change.

    Raises:
        UsageError: an instruction ``--change`` does not allow.
        DockerfileError: a change that does not parse.
    """
    lexer = Lexer()
    for change in changes:
        document = parse(change + "\n", filename="--change")
        for node in document.nodes:
            if node.instruction not in _CHANGE_INSTRUCTIONS:
                raise UsageError(f"{node.instruction.upper()} is not a valid change command")
            command = ins.parse_instruction(node, "--change")
            env = {k: v for k, _, v in (e.partition("=") for e in config.env)}
            command = command.expand(functools.partial(_expand_word, lexer, env))
            config = _apply(config, command)
    return config


def _apply(config: ImageConfig, cmd: ins.Command) -> ImageConfig:
    if isinstance(cmd, ins.EnvCommand):
        for kv in cmd.env:
            config = config.with_env(kv.key, kv.value)
    elif isinstance(cmd, ins.LabelCommand):
        for kv in cmd.labels:
            config = config.with_label(kv.key, kv.value)
    elif isinstance(cmd, ins.CmdCommand):
        args = ("/bin/sh", "-c", *cmd.cmd_line) if cmd.prepend_shell else cmd.cmd_line
        config = replace(config, cmd=tuple(args))
    elif isinstance(cmd, ins.EntrypointCommand):
        args = ("/bin/sh", "-c", *cmd.cmd_line) if cmd.prepend_shell else cmd.cmd_line
        config = replace(config, entrypoint=tuple(args) if args else None)
    elif isinstance(cmd, ins.WorkdirCommand):
        joined = posixpath.join(config.working_dir or "/", cmd.path)
        config = replace(config, working_dir=posixpath.normpath(joined))
    elif isinstance(cmd, ins.UserCommand):
        config = replace(config, user=cmd.user)
    elif isinstance(cmd, ins.ExposeCommand):
        ports = [p for word in cmd.ports for p in _ports(word)]
        config = replace(config, exposed_ports=tuple(sorted({*config.exposed_ports, *ports})))
    elif isinstance(cmd, ins.VolumeCommand):
        config = replace(config, volumes=tuple(dict.fromkeys((*config.volumes, *cmd.volumes))))
    elif isinstance(cmd, ins.StopSignalCommand):
        config = replace(config, stop_signal=cmd.signal)
    elif isinstance(cmd, ins.OnbuildCommand):
        config = replace(config, onbuild=(*config.onbuild, cmd.expression))
    elif isinstance(cmd, ins.HealthcheckCommand):
        h = cmd.health
        config = replace(
            config,
            healthcheck=Healthcheck(
                test=h.test,
                interval_ns=h.interval,
                timeout_ns=h.timeout,
                start_period_ns=h.start_period,
                start_interval_ns=h.start_interval,
                retries=h.retries,
            ),
        )
    return config


# ----------------------------------------------------------------------------- one layer


class _TeeReader:
    """Reads ``src`` and copies every byte read into ``sink`` (the original blob)."""

    def __init__(self, src: IO[bytes], sink: Writable) -> None:
        self._src = src
        self._sink = sink
        self.head = b""

    def read(self, n: int = -1, /) -> bytes:
        data = self._src.read(n)
        if data:
            if len(self.head) < 2:
                self.head += data[: 2 - len(self.head)]
            self._sink.write(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def _import_layer(
    images: ImageStore,
    stream: IO[bytes],
    *,
    base: tuple[str, ...],
    base_diff_ids: tuple[str, ...],
    lease: Lease,
    expected_diff_id: str | None = None,
    expected_digest: str | None = None,
    description: str = "",
) -> tuple[tuple[str, ...], BlobInfo]:
    """Unpack one layer blob onto ``base``; returns the new chain and the stored blob."""
    store = images.store
    if expected_diff_id is not None:
        chain = chain_id((*base_diff_ids, expected_diff_id))
        assert chain is not None
        existing = store.lookup([layer_key(chain)], lease)
        if existing is not None and existing.layers[:-1] == base:
            known = images.known_blob(existing.layers[-1], source_date_epoch=None)
            if known is not None and known.diff_id == expected_diff_id:
                return existing.layers, known
    started = time.monotonic_ns()
    diff_dir = store.new_diff_dir(lease)
    try:
        with store.blobs.writer(expected_digest) as writer:
            tee = _TeeReader(stream, writer)
            info = unpack_layer(open_layer_stream(cast(BinaryIO, tee)), diff_dir)
            tee.drain()
            try:
                digest = writer.commit()
            except StoreError as exc:  # the blob does not match the digest the manifest names
                raise ArchiveError(f"layer {description}: {exc}") from None
            size = writer.size
        if expected_diff_id is not None and info.diff_id != expected_diff_id:
            raise ArchiveError(
                f"layer {description}: content has diff ID {info.diff_id}, "
                f"but the image config says {expected_diff_id}"
            )
    except BaseException:
        store.discard_diff_dir(lease, diff_dir)
        raise
    media_type = MEDIA_TYPE_LAYER_GZIP if tee.head == b"\x1f\x8b" else MEDIA_TYPE_LAYER_TAR
    blob = BlobInfo(digest, size, info.diff_id, info.size, media_type)
    chain = chain_id((*base_diff_ids, info.diff_id))
    assert chain is not None
    result = store.commit(
        keys=[layer_key(chain)],
        base=base,
        diff=diff_dir,
        exec_ns=time.monotonic_ns() - started,
        description=f"layer {info.diff_id}",
        lease=lease,
    )
    images.remember_blob(result.layers[-1], blob)
    return result.layers, blob


def _manifest_for(config: bytes, blobs: Sequence[BlobInfo]) -> bytes:
    config_desc = Descriptor(MEDIA_TYPE_OCI_CONFIG, _sha256(config), len(config))
    return build_manifest(config_desc, [Descriptor(b.media_type, b.digest, b.size) for b in blobs])


def _sha256(data: bytes) -> str:
    sink = HashingWriter(None)
    sink.write(data)
    return sink.digest


# ----------------------------------------------------------------------------- import


def import_rootfs(
    images: ImageStore,
    tar_path: Path,
    name: str,
    changes: Sequence[str] = (),
    *,
    platform: dict[str, str] | None = None,
) -> Image:
    """``docker import``: one layer from a filesystem tar (plain or gzip), config from changes.

    Raises:
        UsageError: a change that ``--change`` does not allow.
        DockerfileError: a change that does not parse.
        LayerError: the tar cannot be unpacked.
        ImageError: an invalid name.
    """
    normalize_name(name)  # fail before unpacking anything
    plat = platform or host_platform_json()
    config = apply_changes(
        ImageConfig(
            os=plat["os"], architecture=plat["architecture"], variant=plat.get("variant", "")
        ),
        changes,
    )
    created = rfc3339(time.time_ns())
    try:
        source = open(tar_path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read {tar_path}: {exc.strerror}") from None
    with source, images.store.lease("image import") as lease:
        layers, blob = _import_layer(
            images, source, base=(), base_diff_ids=(), lease=lease, description=str(tar_path)
        )
        doc = config.to_json()
        doc["created"] = created
        doc["history"] = [{"created": created, "comment": f"Imported from {tar_path}"}]
        doc["rootfs"] = {"type": "layers", "diff_ids": [blob.diff_id]}
        raw = config_bytes(doc)
        return images.store_image(
            name, layers=layers, config=raw, manifest=_manifest_for(raw, [blob])
        )


# ----------------------------------------------------------------------------- load


class _Archive:
    """Random access to the members of an image tar, by normalised name."""

    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        except (OSError, tarfile.TarError) as exc:
            raise ArchiveError(f"cannot read image archive {path}: {exc}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in self.tar.getmembers():
            self.members.setdefault(posixpath.normpath("/" + member.name).lstrip("/"), member)

    def close(self) -> None:
        self.tar.close()

    def has(self, name: str) -> bool:
        return posixpath.normpath("/" + name).lstrip("/") in self.members

    def open(self, name: str) -> IO[bytes]:
        key = posixpath.normpath("/" + name).lstrip("/")
        member = self.members.get(key)
        if member is None:
            raise ArchiveError(f"image archive has no {name!r}")
        try:
            data = self.tar.extractfile(member)
        except (KeyError, tarfile.TarError) as exc:
            raise ArchiveError(f"image archive member {name!r}: {exc}") from None
        if data is None:
            raise ArchiveError(f"image archive member {name!r} is not a file")
        return data

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ArchiveError(f"image archive member {name!r} is too large")
        return data

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except ValueError as exc:
            raise ArchiveError(f"{name} in image archive is not valid JSON: {exc}") from None

    def blob(self, digest: str) -> bytes:
        data = self.read(_blob_name(digest))
        if _sha256(data) != digest:
            raise ArchiveError(f"blob {digest} in image archive does not match its digest")
        return data


def _blob_name(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    if (
        algorithm != "sha256"
        or len(hexpart) != 64
        or not all(c in "0123456789abcdef" for c in hexpart)
    ):
        raise ArchiveError(f"unsupported or invalid digest {digest!r}")
    return f"blobs/sha256/{hexpart}"


def _config_diff_ids(doc: Any) -> tuple[str, ...]:
    rootfs = doc.get("rootfs") if isinstance(doc, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
        raise ArchiveError("image config has no valid rootfs.diff_ids")
    return tuple(ids)


def load(images: ImageStore, archive_path: Path, *, name: str | None = None) -> list[Image]:
    """``docker load``: store every image of a docker-archive or OCI layout tar.

    Args:
        images: the image store.
        archive_path: the tar (plain or gzip-compressed).
        name: the name for an image the archive does not name (or names by tag only).

    Returns:
        The stored images, one per name.

    Raises:
        ArchiveError: the archive is malformed, a blob or layer fails verification, or an
            image has no name.
        LayerError: a layer cannot be unpacked.
    """
    archive = _Archive(archive_path)
    try:
        with images.store.lease("image load") as lease:
            if archive.has("manifest.json"):
                return _load_docker(images, archive, lease, name)
            if archive.has("index.json"):
                return _load_oci(images, archive, lease, name)
            raise ArchiveError(
                f"{archive_path} is neither a docker-archive (manifest.json) nor an OCI layout "
                "(index.json)"
            )
    finally:
        archive.close()


def _names(candidates: Sequence[str], fallback: str | None) -> list[str]:
    names = [normalize_name(n) for n in candidates if n]
    if not names and fallback:
        names = [normalize_name(fallback)]
    if not names:
        raise ArchiveError("the archive does not name its image: pass a name")
    return names


def _load_docker(
    images: ImageStore, archive: _Archive, lease: Lease, name: str | None
) -> list[Image]:
    entries = archive.json("manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ArchiveError("manifest.json must be a non-empty list")
    out: list[Image] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise ArchiveError("manifest.json entry without Config")
        layer_files = entry.get("Layers") or []
        if not isinstance(layer_files, list) or not all(isinstance(x, str) for x in layer_files):
            raise ArchiveError("manifest.json entry has invalid Layers")
        config_name: str = entry["Config"]
        raw = archive.read(config_name)
        stem = posixpath.basename(config_name).removesuffix(".json")
        if len(stem) == 64 and _sha256(raw) != "sha256:" + stem:
            raise ArchiveError(f"config {config_name} does not match its digest")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise ArchiveError(f"config {config_name} is not valid JSON: {exc}") from None
        diff_ids = _config_diff_ids(doc)
        if len(diff_ids) != len(layer_files):
            raise ArchiveError(
                f"config {config_name} names {len(diff_ids)} layers, manifest.json {len(layer_files)}"
            )
        layers: tuple[str, ...] = ()
        blobs: list[BlobInfo] = []
        for i, layer_file in enumerate(layer_files):
            with archive.open(layer_file) as stream:
                layers, blob = _import_layer(
                    images,
                    stream,
                    base=layers,
                    base_diff_ids=diff_ids[:i],
                    lease=lease,
                    expected_diff_id=diff_ids[i],
                    description=layer_file,
                )
            blobs.append(blob)
        tags = entry.get("RepoTags") or []
        manifest = _manifest_for(raw, blobs)
        for n in _names([t for t in tags if isinstance(t, str)], name):
            out.append(images.store_image(n, layers=layers, config=raw, manifest=manifest))
    return out


def _pick_manifests(
    archive: _Archive, index: Any, depth: int = 0
) -> Iterator[tuple[Descriptor, list[str]]]:
    if depth > 4 or not isinstance(index, dict):
        raise ArchiveError("invalid or too deeply nested image index")
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise ArchiveError("image index has no manifests")
    host = host_platform_json()
    for raw_desc in manifests:
        if not isinstance(raw_desc, dict):
            raise ArchiveError("invalid descriptor in image index")
        try:
            desc = Descriptor.from_json(raw_desc)
        except ImageError as exc:
            raise ArchiveError(str(exc)) from None
        annotations = dict(desc.annotations)
        names = [annotations.get(_CONTAINERD_NAME) or "", annotations.get(_REF_NAME) or ""]
        if desc.media_type in _INDEX_TYPES:
            nested = json.loads(archive.blob(desc.digest))
            children = list(_pick_manifests(archive, nested, depth + 1))
            match = [
                c
                for c in children
                if c[0].platform is None
                or (
                    c[0].platform.get("os") == host["os"]
                    and c[0].platform.get("architecture") == host["architecture"]
                )
            ]
            if match:
                yield match[0][0], names
            continue
        if desc.media_type in _MANIFEST_TYPES or not desc.media_type:
            yield desc, names


def _oci_names(names: list[str], fallback: str | None) -> list[str]:
    full, ref_name = names
    if full:
        return _names([full], None)
    if ref_name and ("/" in ref_name or ":" in ref_name or "@" in ref_name):
        return _names([ref_name], None)
    if ref_name and fallback:
        base = normalize_name(fallback).split("@")[0]
        repo = base.rsplit(":", 1)[0] if ":" in base.rsplit("/", 1)[-1] else base
        return _names([f"{repo}:{ref_name}"], None)
    return _names([], fallback)


class BlobSource(Protocol):
    """Where :func:`_import_manifest` reads blobs: an image archive or a layout directory."""

    def open(self, name: str) -> IO[bytes]: ...

    def blob(self, digest: str) -> bytes: ...


def _import_manifest(
    images: ImageStore, source: BlobSource, lease: Lease, digest: str
) -> tuple[tuple[str, ...], bytes, bytes]:
    """Unpack the layers of the OCI/Docker manifest ``digest`` held by ``source`` (an archive
    or, in :mod:`engine.images.layout`, a layout directory); returns (snapshot chain, config
    bytes, manifest bytes), every blob verified against its digest."""
    manifest_raw = source.blob(digest)
    try:
        manifest = json.loads(manifest_raw)
        config_desc = Descriptor.from_json(manifest["config"])
        layer_descs = [Descriptor.from_json(d) for d in manifest.get("layers") or []]
    except (ValueError, KeyError, TypeError, ImageError) as exc:
        raise ArchiveError(f"manifest {digest} is invalid: {exc}") from None
    config_raw = source.blob(config_desc.digest)
    try:
        doc = json.loads(config_raw)
    except ValueError as exc:
        raise ArchiveError(f"config {config_desc.digest} is not valid JSON: {exc}") from None
    diff_ids = _config_diff_ids(doc)
    if len(diff_ids) != len(layer_descs):
        raise ArchiveError(
            f"config names {len(diff_ids)} layers, manifest {digest} {len(layer_descs)}"
        )
    layers: tuple[str, ...] = ()
    for i, layer_desc in enumerate(layer_descs):
        if "zstd" in layer_desc.media_type:
            raise LayerError("zstd-compressed layers are not supported yet")
        with source.open(_blob_name(layer_desc.digest)) as stream:
            layers, _blob = _import_layer(
                images,
                stream,
                base=layers,
                base_diff_ids=diff_ids[:i],
                lease=lease,
                expected_diff_id=diff_ids[i],
                expected_digest=layer_desc.digest,
                description=layer_desc.digest,
            )
    return layers, config_raw, manifest_raw


def _load_oci(images: ImageStore, archive: _Archive, lease: Lease, name: str | None) -> list[Image]:
    out: list[Image] = []
    for desc, names in _pick_manifests(archive, archive.json("index.json")):
        layers, config_raw, manifest_raw = _import_manifest(images, archive, lease, desc.digest)
        for n in _oci_names(names, name):
            out.append(
                images.store_image(n, layers=layers, config=config_raw, manifest=manifest_raw)
            )
    if not out:
        raise ArchiveError("the OCI layout holds no image for this platform")
    return out


# ----------------------------------------------------------------------------- save


@dataclass(frozen=True, slots=True)
class ArchiveImage:
    """One image to write into an archive: its names and exact manifest and config bytes."""

    names: tuple[str, ...]
    manifest: bytes
    config: bytes
    layers: tuple[Descriptor, ...]

    @property
    def manifest_digest(self) -> str:
        return _sha256(self.manifest)

    @property
    def config_digest(self) -> str:
        return _sha256(self.config)


def _oci_ref_name(name: str) -> str:
    # BuildKit and containerd write the tag (or the whole name if it has none) as ref.name
    base = name.split("@")[0]
    last = base.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else name


def write_archive(
    out: Writable,
    entries: Sequence[ArchiveImage],
    blob_path: Callable[[str], Path],
    *,
    docker: bool,
    mtime: int = 0,
) -> None:
    """Write an OCI layout tar (plus ``manifest.json`` for ``docker load`` when ``docker``).

    ``blob_path`` gives the file of a stored layer blob; manifests and configs come from the
    entries. Every file has owner 0:0, mode 0644 (dirs 0755) and time ``mtime``.
    """
    blobs: dict[str, bytes | Path] = {}
    index_manifests: list[dict[str, Any]] = []
    docker_manifest: list[dict[str, Any]] = []
    for entry in entries:
        blobs[entry.manifest_digest] = entry.manifest
        blobs[entry.config_digest] = entry.config
        for layer in entry.layers:
            blobs.setdefault(layer.digest, blob_path(layer.digest))
        names = entry.names or ("",)
        for name in names:
            annotations: dict[str, str] = {}
            if name:
                annotations = {_CONTAINERD_NAME: name, _REF_NAME: _oci_ref_name(name)}
            desc = Descriptor(
                MEDIA_TYPE_OCI_MANIFEST,
                entry.manifest_digest,
                len(entry.manifest),
                tuple(annotations.items()),
            )
            index_manifests.append(desc.to_json())
        if docker:
            docker_manifest.append(
                {
                    "Config": _blob_name(entry.config_digest),
                    "RepoTags": [familiar_name(n) for n in entry.names] or None,
                    "Layers": [_blob_name(layer.digest) for layer in entry.layers],
                }
            )
    files: dict[str, bytes | Path] = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": json.dumps(
            {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": index_manifests},
            separators=(",", ":"),
        ).encode(),
    }
    if docker:
        files["manifest.json"] = json.dumps(docker_manifest, separators=(",", ":")).encode()
    for digest, content in blobs.items():
        files[_blob_name(digest)] = content
    writer = TarWriter(out)
    for directory in (b"blobs/", b"blobs/sha256/"):
        writer.add(TarEntry(directory, b"5", 0o755, mtime=mtime))
    for file_name in sorted(files):
        content = files[file_name]
        entry_name = file_name.encode()
        if isinstance(content, bytes):
            writer.add(
                TarEntry(entry_name, b"0", 0o644, size=len(content), mtime=mtime),
                io.BytesIO(content),
            )
        else:
            try:
                with open(content, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    writer.add(TarEntry(entry_name, b"0", 0o644, size=size, mtime=mtime), f)
            except OSError as exc:
                raise ImageError(f"blob {file_name} cannot be read: {exc.strerror}") from None
    writer.close()


@contextlib.contextmanager
def open_output(dest: Path | str) -> Iterator[Writable]:
    """A file to write an archive to: ``-`` is stdout, a path is written atomically."""
    if str(dest) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    path = Path(dest)
    directory = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _entries(images: ImageStore, refs: Sequence[str]) -> list[ArchiveImage]:
    by_manifest: dict[str, ArchiveImage] = {}
    for ref in refs:
        image = images.get(ref)
        if image is None:
            raise ImageError(f"no such image: {ref}")
        manifest = images.read_blob(image.manifest_digest)
        try:
            layers = tuple(Descriptor.from_json(d) for d in json.loads(manifest)["layers"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ImageError(f"manifest of {image.name} is invalid: {exc}") from None
        previous = by_manifest.get(image.manifest_digest)
        names = (*(previous.names if previous else ()), image.name)
        by_manifest[image.manifest_digest] = ArchiveImage(
            names=tuple(dict.fromkeys(names)),
            manifest=manifest,
            config=images.read_blob(image.config_digest),
            layers=layers,
        )
    return list(by_manifest.values())


def save_docker(images: ImageStore, refs: Sequence[str], dest: Path | str) -> None:
    """``docker save``: a tar that ``docker load`` (and OCI tools) can read.

    Raises:
        ImageError: an image or blob is missing.
    """
    entries = _entries(images, refs)
    with open_output(dest) as out:
        write_archive(out, entries, images.blob_path, docker=True)


def save_oci(images: ImageStore, refs: Sequence[str], dest: Path | str) -> None:
    """An OCI image layout tar of the images.

    Raises:
        ImageError: an image or blob is missing.
    """
    entries = _entries(images, refs)
    with open_output(dest) as out:
        write_archive(out, entries, images.blob_path, docker=False)
