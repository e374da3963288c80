"""The local image store: named images over the persistent store's snapshots and blobs.

An image is a name (normalised, ``docker.io/library/busybox:latest``), a chain of snapshots
(its layers as diff directories, bottom first), and three kinds of blobs in ``blobs/sha256``:
the OCI manifest, the config (whose digest is the image ID) and one tar per layer. Layer tars
are made lazily and remembered per snapshot (``layer_blobs``): an imported layer keeps the blob
it came in (so ``save`` gives back the same digests); a built layer that is only *named*
(``--tag``, :meth:`ImageStore.put`) is an uncompressed tar (``…layer.v1.tar``, digest = diff ID,
as Docker's own image store keeps layers) whose digest is computed by tarring the snapshot into
a hash, without writing or compressing anything, and remembered (variant ``tar;epoch=…``). Its
bytes are written to ``blobs/`` only when an archive needs them (:meth:`ImageStore.blob_path`,
``save``). Exporters (``type=oci|docker``) compress, as BuildKit's image exporter does.

Tables (added by :func:`migration_images`, appended to ``engine.store.metadb.MIGRATIONS``)::

    images(name, manifest_digest, config_digest, created_ns)
    image_layers(image_name, position, snapshot_id)   -- GC roots for snapshots
    layer_blobs(snapshot_id, variant, diff_id, diff_size, digest, size, media_type)

``variant`` is ``""`` for a layer's original blob, ``epoch=<n>`` / ``epoch=none`` for a gzip
tar nbbuild made and ``tar;epoch=<n>`` / ``tar;epoch=none`` for an uncompressed one (whose blob
file may not exist yet: it is made from the snapshot on demand). GC keeps every snapshot named in ``image_layers`` (the store reads that table) and
must keep the blobs :func:`blob_roots` names.

Imported layers are stored as results under the key :func:`layer_key` of their ChainID, so the
same base layers loaded twice, or shared by two images, are unpacked once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform as _platform
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import DockerfileError, StoreError
from engine.frontend.convert import ResolvedImage
from engine.frontend.imageref import normalize_ref
from engine.graph.ops import Platform
from engine.images.config import (
    MEDIA_TYPE_OCI_CONFIG,
    Descriptor,
    build_image_config,
    build_manifest,
    chain_id,
    config_bytes,
    config_from_json,
)
from engine.images.errors import ImageError
from engine.images.layer import (
    MEDIA_TYPE_LAYER_TAR,
    BlobInfo,
    layer_diff_id,
    write_layer_blob,
    write_layer_tar,
)
from engine.store.store import Store

__all__ = [
    "Assembled",
    "Image",
    "ImageStore",
    "LayerPrehasher",
    "blob_roots",
    "familiar_name",
    "layer_key",
    "migration_images",
    "normalize_name",
    "resolver",
]

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def migration_images(conn: sqlite3.Connection) -> None:
    """Schema step for the image store (append to ``engine.store.metadb.MIGRATIONS``)."""
    conn.execute(
        """
        CREATE TABLE images (
            name            TEXT PRIMARY KEY,
            manifest_digest TEXT NOT NULL,
            config_digest   TEXT NOT NULL,
            created_ns      INTEGER NOT NULL
        ) WITHOUT ROWID
        """
    )
    # No ON DELETE CASCADE towards snapshots: deleting an image's layer is a GC bug, and the
    # foreign key turns it into an error instead of a broken image.
    conn.execute(
        """
        CREATE TABLE image_layers (
            image_name  TEXT NOT NULL REFERENCES images(name) ON DELETE CASCADE,
            position    INTEGER NOT NULL,
            snapshot_id TEXT NOT NULL REFERENCES snapshots(id),
            PRIMARY KEY (image_name, position)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX image_layers_snapshot ON image_layers(snapshot_id)")
    conn.execute(
        """
        CREATE TABLE layer_blobs (
            snapshot_id TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
            variant     TEXT NOT NULL,
            diff_id     TEXT NOT NULL,
            diff_size   INTEGER NOT NULL,
            digest      TEXT NOT NULL,
            size        INTEGER NOT NULL,
            media_type  TEXT NOT NULL,
            PRIMARY KEY (snapshot_id, variant)
        ) WITHOUT ROWID
        """
    )


def blob_roots(conn: sqlite3.Connection) -> set[str]:
    """Blobs GC must keep: every image's manifest and config, every remembered layer blob.

    Layer blob rows go away with their snapshot (``ON DELETE CASCADE``); a pruned snapshot's
    blobs are then garbage.
    """
    roots: set[str] = set()
    for manifest, config in conn.execute("SELECT manifest_digest, config_digest FROM images"):
        roots.update((manifest, config))
    roots.update(r[0] for r in conn.execute("SELECT digest FROM layer_blobs"))
    return roots


def layer_key(chain: str) -> str:
    """The result key an imported layer chain is stored under (never a build's cache key)."""
    return "nbbuild.image.layers.v0:" + chain


def normalize_name(ref: str) -> str:
    """``busybox`` → ``docker.io/library/busybox:latest`` (Docker's normalisation).

    Raises:
        ImageError: not a valid image reference.
    """
    try:
        return normalize_ref(ref)
    except DockerfileError:
        raise ImageError(f"invalid image reference {ref!r}") from None


def familiar_name(name: str) -> str:
    """Docker's short form of a normalised name (``docker.io/library/x:t`` → ``x:t``)."""
    if name.startswith("docker.io/library/"):
        rest = name[len("docker.io/library/") :]
        if "/" not in rest.split("@")[0]:
            return rest
    if name.startswith("docker.io/"):
        return name[len("docker.io/") :]
    return name


def host_platform_json() -> dict[str, str]:
    """``{"os": "linux", "architecture": ...}`` of this machine, in OCI terms."""
    machine = _platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    out = {"os": "linux", "architecture": arch}
    if arch == "arm64":
        out["variant"] = "v8"
    return out


@dataclass(frozen=True, slots=True)
class Image:
    """A stored image.

    Attributes:
        name: the normalised reference it is stored under.
        layers: snapshot ids, bottom first.
        diff_ids: the layers' diff IDs (``rootfs.diff_ids``).
        chain_id: ChainID of ``diff_ids`` (None without layers): BuildKit's image cache key.
        config: the image config document.
        config_digest: the config blob's digest (Docker's image ID).
        manifest_digest: the OCI manifest blob's digest.
        created: the config's ``created`` time (RFC 3339), "" when absent.
    """

    name: str
    layers: tuple[str, ...]
    diff_ids: tuple[str, ...]
    chain_id: str | None
    config: dict[str, Any] = field(compare=False)
    config_digest: str
    manifest_digest: str
    created: str


@dataclass(frozen=True, slots=True)
class Assembled:
    """An image ready to be stored or exported: its config, manifest and layer blobs."""

    config: dict[str, Any]
    config_bytes: bytes
    config_digest: str
    manifest_bytes: bytes
    manifest_digest: str
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _variant(epoch: int | None) -> str:
    return "epoch=none" if epoch is None else f"epoch={epoch}"


class ImageStore:
    """Named images in a :class:`~engine.store.store.Store`.

    Raises:
        StoreError: the store's database has no image tables (:func:`migration_images` is not
            among its migrations).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.db.reading() as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'images'"
            ).fetchone()
        if not found:
            raise StoreError(
                f"{store.db.path} has no image tables: engine.images.store.migration_images "
                "is missing from engine.store.metadb.MIGRATIONS"
            )

    # -- layer blobs ------------------------------------------------------------------

    def known_blob(self, snapshot_id: str, *, source_date_epoch: int | None) -> BlobInfo | None:
        """The remembered blob of a snapshot: its original one, else the one for this epoch."""
        with self.store.db.reading() as conn:
            rows = conn.execute(
                "SELECT variant, diff_id, diff_size, digest, size, media_type FROM layer_blobs "
                "WHERE snapshot_id = ? AND variant IN ('', ?) ORDER BY variant",
                (snapshot_id, _variant(source_date_epoch)),
            ).fetchall()
        for _variant_name, diff_id, diff_size, digest, size, media_type in rows:
            if self.store.blobs.has(digest):
                return BlobInfo(digest, int(size), diff_id, int(diff_size), media_type)
        return None

    def remember_blob(self, snapshot_id: str, blob: BlobInfo, *, variant: str = "") -> None:
        """Record ``blob`` as the tar of ``snapshot_id`` (variant "": the layer's original)."""
        with self.store.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO layer_blobs (snapshot_id, variant, diff_id, diff_size, "
                "digest, size, media_type) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    snapshot_id,
                    variant,
                    blob.diff_id,
                    blob.diff_size,
                    blob.digest,
                    blob.size,
                    blob.media_type,
                ),
            )

    def layer_tar(
        self,
        snapshot_id: str,
        *,
        source_date_epoch: int | None = None,
        stop: threading.Event | None = None,
    ) -> BlobInfo:
        """The layer of a snapshot for an image that is only named: its original or an already
        made compressed blob when there is one, else the uncompressed tar, whose digest (the
        diff ID) is computed without writing anything and remembered per snapshot and epoch.
        One computation per snapshot and epoch at a time in this process: a second caller
        (the build's own :meth:`put` while a :class:`LayerPrehasher` is at it) waits for the
        first and takes its answer.

        Raises:
            ImageError: the snapshot does not exist.
            LayerHashStopped: ``stop`` was set first.
        """
        known = self.known_blob(snapshot_id, source_date_epoch=source_date_epoch)
        if known is not None:
            return known
        variant = "tar;" + _variant(source_date_epoch)
        remembered = self._remembered_tar(snapshot_id, variant)
        if remembered is not None:
            return remembered
        key = (str(self.store.db.path), snapshot_id, variant)
        with _hashing_lock:
            lock = _hashing.setdefault(key, threading.Lock())
        try:
            with lock:
                remembered = self._remembered_tar(snapshot_id, variant)
                if remembered is not None:
                    return remembered
                info = _computed.get(key)
                if info is None:
                    path = self.store.diff_path(snapshot_id)
                    if not path.is_dir():
                        raise ImageError(f"layer {snapshot_id} is missing from the store")
                    layer = layer_diff_id(path, source_date_epoch, stop=stop)
                    info = BlobInfo(
                        layer.diff_id, layer.size, layer.diff_id, layer.size, MEDIA_TYPE_LAYER_TAR
                    )
                try:
                    self.remember_blob(snapshot_id, info, variant=variant)
                    _computed.pop(key, None)
                except sqlite3.IntegrityError:
                    # No snapshot row yet (a prehasher started during the commit's flush):
                    # kept here for the next caller, who finds the row.
                    _computed[key] = info
                return info
        finally:
            with _hashing_lock:
                if _hashing.get(key) is lock and not lock.locked():
                    del _hashing[key]

    def _remembered_tar(self, snapshot_id: str, variant: str) -> BlobInfo | None:
        with self.store.db.reading() as conn:
            row = conn.execute(
                "SELECT diff_id, diff_size FROM layer_blobs WHERE snapshot_id = ? AND variant = ?",
                (snapshot_id, variant),
            ).fetchone()
        if row is None:
            return None
        return BlobInfo(row[0], int(row[1]), row[0], int(row[1]), MEDIA_TYPE_LAYER_TAR)

    def blob_path(self, digest: str) -> Path:
        """The file of a blob, made first when it is a remembered uncompressed layer tar that
        was never written (the snapshot is tarred again and must give the same digest).

        Raises:
            ImageError: the blob is neither stored nor a layer this store can make.
        """
        path = self.store.blobs.path(digest)
        if self.store.blobs.has(digest):
            return path
        with self.store.db.reading() as conn:
            rows = conn.execute(
                "SELECT snapshot_id, variant FROM layer_blobs WHERE digest = ? "
                "AND variant LIKE 'tar;%'",
                (digest,),
            ).fetchall()
        for snapshot_id, variant in rows:
            diff = self.store.diff_path(snapshot_id)
            if not diff.is_dir():
                continue
            epoch_text = variant.partition("epoch=")[2]
            epoch = None if epoch_text == "none" else int(epoch_text)
            with self.store.blobs.writer() as writer:
                info = write_layer_tar(diff, writer, source_date_epoch=epoch)
                if info.diff_id != digest:
                    raise ImageError(
                        f"layer {snapshot_id} no longer tars to {digest} (got {info.diff_id})"
                    )
                writer.commit()
            return path
        raise ImageError(f"blob {digest} is missing from the store")

    def layer_blob(self, snapshot_id: str, *, source_date_epoch: int | None = None) -> BlobInfo:
        """The compressed tar of a snapshot, made (and remembered) when first needed.

        Raises:
            ImageError: the snapshot does not exist.
        """
        known = self.known_blob(snapshot_id, source_date_epoch=source_date_epoch)
        if known is not None:
            return known
        path = self.store.diff_path(snapshot_id)
        if not path.is_dir():
            raise ImageError(f"layer {snapshot_id} is missing from the store")
        with self.store.blobs.writer() as writer:
            info = write_layer_blob(path, writer, source_date_epoch=source_date_epoch)
            writer.commit()
        # a directory that is not a committed snapshot has no row to remember the blob by
        with contextlib.suppress(sqlite3.IntegrityError):
            self.remember_blob(snapshot_id, info, variant=_variant(source_date_epoch))
        return info

    # -- assembling -------------------------------------------------------------------

    def assemble(
        self,
        *,
        layers: Sequence[str],
        config: dict[str, Any],
        source_date_epoch: int | None = None,
        diff_ids: Sequence[str] | None = None,
        now_ns: int | None = None,
        compress: bool = True,
    ) -> Assembled:
        """Config, manifest and layer blobs of an image made of ``layers`` and ``config``.

        Layer blobs are stored in the blob store; the config and manifest only returned. With
        ``compress=False`` layers without a blob yet are uncompressed tars made on demand
        (:meth:`layer_tar`): nothing is written, only their digests computed.

        Raises:
            ImageError: ``diff_ids`` were given and do not match the layers' tars.
        """
        layer = self.layer_blob if compress else self.layer_tar
        blobs = [layer(s, source_date_epoch=source_date_epoch) for s in layers]
        found = tuple(b.diff_id for b in blobs)
        if diff_ids is not None and tuple(diff_ids) != found:
            raise ImageError(f"diff IDs {list(diff_ids)} do not match the layers ({list(found)})")
        full = build_image_config(config, found, source_date_epoch=source_date_epoch, now_ns=now_ns)
        raw = config_bytes(full)
        config_desc = Descriptor(MEDIA_TYPE_OCI_CONFIG, _digest(raw), len(raw))
        layer_descs = tuple(Descriptor(b.media_type, b.digest, b.size) for b in blobs)
        manifest = build_manifest(config_desc, layer_descs)
        return Assembled(
            config=full,
            config_bytes=raw,
            config_digest=config_desc.digest,
            manifest_bytes=manifest,
            manifest_digest=_digest(manifest),
            layers=layer_descs,
            diff_ids=found,
        )

    # -- images -----------------------------------------------------------------------

    def put(
        self,
        name: str,
        *,
        layers: tuple[str, ...],
        config: dict[str, Any],
        diff_ids: tuple[str, ...] | None = None,
        source_date_epoch: int | None = None,
    ) -> Image:
        """Store (or replace) the image ``name`` made of ``layers`` and ``config``.

        ``config`` is the build's config (``ImageConfig.to_json()``) or a full image config;
        ``rootfs``, history times and ``created`` are completed like BuildKit's exporter.
        Layers are not compressed nor written (see the module doc): naming an image costs one
        hashing pass over each new layer, once.

        Raises:
            ImageError: invalid name, missing layer, or ``diff_ids`` that do not match.
        """
        assembled = self.assemble(
            layers=layers,
            config=config,
            source_date_epoch=source_date_epoch,
            diff_ids=diff_ids,
            compress=False,
        )
        return self.store_image(
            name,
            layers=layers,
            config=assembled.config_bytes,
            manifest=assembled.manifest_bytes,
        )

    def store_image(
        self, name: str, *, layers: Sequence[str], config: bytes, manifest: bytes
    ) -> Image:
        """Store an image from its exact config and manifest bytes (kept as they are).

        Raises:
            ImageError: invalid name or config, or the manifest's layers do not match.
        """
        normalized = normalize_name(name)
        if "@" in normalized:
            raise ImageError(f"cannot store an image under a digest reference: {name!r}")
        try:
            doc = json.loads(config)
        except ValueError as exc:
            raise ImageError(f"invalid image config: {exc}") from None
        diff_ids = _diff_ids(doc)
        if len(diff_ids) != len(layers):
            raise ImageError(
                f"image config names {len(diff_ids)} layers, but {len(layers)} were given"
            )
        config_digest = self.store.blobs.put_bytes(config)
        manifest_digest = self.store.blobs.put_bytes(manifest)
        now = time.time_ns()
        try:
            with self.store.db.transaction() as conn:
                conn.execute("DELETE FROM images WHERE name = ?", (normalized,))
                conn.execute(
                    "INSERT INTO images (name, manifest_digest, config_digest, created_ns) "
                    "VALUES (?, ?, ?, ?)",
                    (normalized, manifest_digest, config_digest, now),
                )
                conn.executemany(
                    "INSERT INTO image_layers (image_name, position, snapshot_id) VALUES (?, ?, ?)",
                    [(normalized, i, s) for i, s in enumerate(layers)],
                )
        except sqlite3.IntegrityError:
            raise ImageError(f"cannot store {normalized}: a layer is not in the store") from None
        return _image(normalized, tuple(layers), doc, config_digest, manifest_digest)

    def get(self, ref: str) -> Image | None:
        """The image ``ref`` names: ``name``, ``name:tag``, a normalised name, ``name@digest``
        (manifest digest) or ``sha256:<hex>`` (image ID or manifest digest). None if absent.

        Raises:
            ImageError: ``ref`` is not a valid reference.
        """
        if _DIGEST.fullmatch(ref):
            return self._find("config_digest = ? OR manifest_digest = ?", (ref, ref))
        normalized = normalize_name(ref)
        if "@" in normalized:
            repo_tag, _, digest = normalized.partition("@")
            by_name = self._find("name = ? AND manifest_digest = ?", (repo_tag, digest))
            return by_name or self._find("manifest_digest = ?", (digest,))
        return self._find("name = ?", (normalized,))

    def list(self) -> list[Image]:
        """Every stored image, sorted by name."""
        with self.store.db.reading() as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM images ORDER BY name")]
        out = [self._find("name = ?", (n,)) for n in names]
        return [i for i in out if i is not None]

    def remove(self, ref: str) -> Image:
        """Remove the name ``ref``; its layers become garbage unless something else holds them.

        Raises:
            ImageError: no such image.
        """
        image = self.get(ref)
        if image is None:
            raise ImageError(f"no such image: {ref}")
        with self.store.db.transaction() as conn:
            conn.execute("DELETE FROM images WHERE name = ?", (image.name,))
        return image

    def tag(self, src: str, dst: str) -> Image:
        """Give the image ``src`` the additional name ``dst`` (replacing what ``dst`` was).

        Raises:
            ImageError: ``src`` does not exist or ``dst`` is invalid.
        """
        image = self.get(src)
        if image is None:
            raise ImageError(f"no such image: {src}")
        return self.store_image(
            dst,
            layers=image.layers,
            config=self.read_blob(image.config_digest),
            manifest=self.read_blob(image.manifest_digest),
        )

    def read_blob(self, digest: str) -> bytes:
        """The bytes of a stored blob.

        Raises:
            ImageError: the blob is missing.
        """
        try:
            return self.store.blobs.path(digest).read_bytes()
        except OSError:
            raise ImageError(f"blob {digest} is missing from the store") from None

    def manifest(self, image: Image) -> dict[str, Any]:
        """The image's manifest document."""
        doc: dict[str, Any] = json.loads(self.read_blob(image.manifest_digest))
        return doc

    def _find(self, where: str, args: tuple[str, ...]) -> Image | None:
        with self.store.db.reading() as conn:
            row = conn.execute(
                f"SELECT name, manifest_digest, config_digest FROM images WHERE {where} "
                "ORDER BY name LIMIT 1",
                args,
            ).fetchone()
            if row is None:
                return None
            layers = tuple(
                r[0]
                for r in conn.execute(
                    "SELECT snapshot_id FROM image_layers WHERE image_name = ? ORDER BY position",
                    (row[0],),
                )
            )
        name, manifest_digest, config_digest = row
        try:
            doc = json.loads(self.read_blob(config_digest))
        except ValueError:
            raise ImageError(f"config of {name} is corrupt ({config_digest})") from None
        return _image(name, layers, doc, config_digest, manifest_digest)


def _diff_ids(doc: Any) -> tuple[str, ...]:
    rootfs = doc.get("rootfs") if isinstance(doc, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if ids is None:
        return ()
    if not isinstance(ids, list) or not all(
        isinstance(d, str) and _DIGEST.fullmatch(d) for d in ids
    ):
        raise ImageError("image config has invalid rootfs.diff_ids")
    return tuple(ids)


def _image(
    name: str, layers: tuple[str, ...], doc: dict[str, Any], config_digest: str, manifest: str
) -> Image:
    diff_ids = _diff_ids(doc)
    created = doc.get("created")
    return Image(
        name=name,
        layers=layers,
        diff_ids=diff_ids,
        chain_id=chain_id(diff_ids),
        config=doc,
        config_digest=config_digest,
        manifest_digest=manifest,
        created=created if isinstance(created, str) else "",
    )


def resolver(images: ImageStore) -> Callable[[str, Platform], ResolvedImage | None]:
    """An image resolver for the frontend: ``FROM name`` found in the local store, keyed by
    the ChainID of its layers (BuildKit's image source key)."""

    def resolve(ref: str, platform: Platform) -> ResolvedImage | None:
        image = images.get(ref)
        if image is None:
            return None
        return ResolvedImage(
            ref=image.name, chain_id=image.chain_id, config=config_from_json(image.config)
        )

    return resolve


# (store, snapshot, variant) -> the lock of the diff ID computation under way in this process
_hashing: dict[tuple[str, str, str], threading.Lock] = {}
_hashing_lock = threading.Lock()
# diff IDs computed before their snapshot's row existed (not remembered in the store yet)
_computed: dict[tuple[str, str, str], BlobInfo] = {}


class LayerPrehasher:
    """Computes the diff IDs of a build's new layers in one background thread while the build
    goes on, so that tagging it (:meth:`ImageStore.put`, which needs every layer's diff ID for
    the image config) finds most of them remembered: the COPY of a large context is hashed
    while the steps after it run and the build is recorded, not after.

    Layers are hashed in the order they are submitted (a build commits its layers bottom
    first), from the moment their diff is at its final path: during the commit's flush, which
    waits on the disk while this uses a core. :meth:`keep` drops what is still queued and is
    not a layer of the image (an earlier stage's); :meth:`close` drops the queue, stops a
    computation under way and waits for the thread. Nothing here is needed for correctness: a failed or stopped computation
    is left to whoever asks for the layer next.
    """

    def __init__(self, images: ImageStore, *, source_date_epoch: int | None) -> None:
        self._images = images
        self._epoch = source_date_epoch
        self._queue: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._sealed = False
        self._thread: threading.Thread | None = None

    def submit(self, snapshot_id: str) -> None:
        with self._cond:
            if self._stop.is_set() or self._sealed:
                return
            self._queue.append(snapshot_id)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="nbbuild-layer-hash", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def keep(self, snapshot_ids: Sequence[str]) -> None:
        """No more submissions: hash only the queued layers among ``snapshot_ids``, then end."""
        wanted = set(snapshot_ids)
        with self._cond:
            self._queue = [s for s in self._queue if s in wanted]
            self._sealed = True
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._queue.clear()
            self._stop.set()
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set() and not self._sealed:
                    self._cond.wait()
                if self._stop.is_set() or not self._queue:
                    return
                snapshot_id = self._queue.pop(0)
            # An error (the store closed, the layer gone) leaves the layer to its next caller.
            with contextlib.suppress(Exception):
                self._images.layer_tar(snapshot_id, source_date_epoch=self._epoch, stop=self._stop)
