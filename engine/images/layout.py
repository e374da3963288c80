"""OCI image layout directories (``oci-layout``, ``index.json``, ``blobs/``) as named contexts.

``--build-context NAME=oci-layout://DIR[:TAG][@DIGEST]`` selects one image of the layout, as
buildx does (``build/opt.go`` ``resolveDigest``, ``client/ociindex``):

1. ``@DIGEST`` names the manifest (or index) blob directly; ``index.json`` is not consulted;
2. else the ``index.json`` entry whose ``io.containerd.image.name``, then whose
   ``org.opencontainers.image.ref.name``, equals ``TAG`` (``latest`` when none is given);
3. else, with no ``TAG`` given, the only entry, or the only entry for the build's platform.
   (buildx also falls back to the only entry for a ``TAG`` it does not find; nbbuild says the
   tag is unknown instead.)

An index (or Docker manifest list) is then narrowed to the manifest for the platform. The image
is loaded into the local image store under ``nbbuild.internal/oci-layout:<manifest hex>`` so
its layers stay while the build (and later builds) use them; every blob is verified against its
digest and layers are unpacked once per ChainID (:mod:`engine.images.archive`).

:func:`context_resolver` is the frontend's hook for ``docker-image://`` and ``oci-layout://``
named contexts (:data:`engine.frontend.namedcontext.ContextResolver`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from engine.errors import ContextError
from engine.frontend.convert import ResolvedImage
from engine.frontend.namedcontext import ContextResolver, NamedContext
from engine.graph.ops import Platform
from engine.images.archive import _blob_name, _import_manifest, _sha256
from engine.images.config import config_from_json
from engine.images.errors import ArchiveError, ImageError
from engine.images.store import Image, ImageStore

__all__ = ["INTERNAL_REPO", "context_resolver", "load_layout", "select_manifest"]

INTERNAL_REPO = "nbbuild.internal/oci-layout"
_REF_NAME = "org.opencontainers.image.ref.name"
_CONTAINERD_NAME = "io.containerd.image.name"
_INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
_MAX_JSON = 64 << 20


class _LayoutDir:
    """Blobs and files of a layout directory (the :class:`~engine.images.archive.BlobSource`
    the archive loader reads)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, name: str) -> IO[bytes]:
        path = self.root / name
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise ArchiveError(f"{name} is missing from the layout") from None
        except OSError as exc:
            raise ArchiveError(f"cannot read {name}: {exc.strerror or exc}") from None

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            data = f.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise ArchiveError(f"{name} is too large")
        return data

    def blob(self, digest: str) -> bytes:
        data = self.read(_blob_name(digest))
        if _sha256(data) != digest:
            raise ArchiveError(f"blob {digest} does not match its digest")
        return data

    def json(self, name: str, data: bytes | None = None) -> Any:
        raw = self.read(name) if data is None else data
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ArchiveError(f"{name} is not valid JSON: {exc}") from None


def _descriptors(doc: Any, where: str) -> list[dict[str, Any]]:
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(manifests, list) or not all(
        isinstance(m, dict) and isinstance(m.get("digest"), str) for m in manifests
    ):
        raise ArchiveError(f"{where} has no valid manifests list")
    return manifests


def _annotation(desc: dict[str, Any], key: str) -> str:
    annotations = desc.get("annotations")
    value = annotations.get(key) if isinstance(annotations, dict) else None
    return value if isinstance(value, str) else ""


def _matches(desc: dict[str, Any], platform: Platform) -> bool:
    p = desc.get("platform")
    if not isinstance(p, dict):
        return False
    if p.get("os") != platform.os or p.get("architecture") != platform.architecture:
        return False
    want = platform.variant or ("v8" if platform.architecture == "arm64" else "")
    have = p.get("variant") or ("v8" if platform.architecture == "arm64" else "")
    return not want or not have or want == have


def _platform_name(desc: dict[str, Any]) -> str:
    p = desc.get("platform")
    if not isinstance(p, dict):
        return "(no platform)"
    parts = [str(p.get("os", "")), str(p.get("architecture", ""))]
    if p.get("variant"):
        parts.append(str(p["variant"]))
    return "/".join(parts)


def select_manifest(root: Path, tag: str, digest: str, platform: Platform) -> str:
    """The digest of the image manifest ``tag`` / ``digest`` selects in the layout at ``root``.

    Raises:
        ArchiveError: not a layout, no such tag or digest, no manifest for ``platform``.
    """
    layout = _LayoutDir(root)
    selected = digest or _from_index(layout, tag, platform)
    return _for_platform(layout, selected, platform)


def _from_index(layout: _LayoutDir, tag: str, platform: Platform) -> str:
    if not (layout.root / "index.json").is_file():
        raise ArchiveError(f"{layout.root} is not an OCI image layout: it has no index.json")
    manifests = _descriptors(layout.json("index.json"), "index.json")
    if not manifests:
        raise ArchiveError("index.json lists no images")
    wanted = tag or "latest"
    for key in (_CONTAINERD_NAME, _REF_NAME):
        named = [m for m in manifests if _annotation(m, key) == wanted]
        if named:
            # the first one, unless another of the same name is for this platform
            return str(next((m for m in named if _matches(m, platform)), named[0])["digest"])
    if not tag:
        if len(manifests) == 1:
            return str(manifests[0]["digest"])
        mine = [m for m in manifests if _matches(m, platform)]
        if len(mine) == 1:
            return str(mine[0]["digest"])
    names = sorted(
        {_annotation(m, _REF_NAME) or _annotation(m, _CONTAINERD_NAME) for m in manifests} - {""}
    )
    listed = ", ".join(names) if names else "none"
    if tag:
        raise ArchiveError(f'no image tagged "{tag}" in index.json (tags: {listed})')
    raise ArchiveError(
        f'index.json holds {len(manifests)} images and none is tagged "latest" (tags: {listed}): '
        "add :TAG or @DIGEST"
    )


def _for_platform(layout: _LayoutDir, digest: str, platform: Platform, depth: int = 0) -> str:
    if depth > 4:
        raise ArchiveError("image index nested too deeply")
    raw = layout.blob(digest)
    doc = layout.json(f"blob {digest}", raw)
    if not isinstance(doc, dict):
        raise ArchiveError(f"blob {digest} is not a manifest or an index")
    if doc.get("mediaType") not in _INDEX_TYPES and "manifests" not in doc:
        return digest  # an image manifest
    children = _descriptors(doc, f"index {digest}")
    mine = [c for c in children if _matches(c, platform)]
    if not mine:
        mine = [c for c in children if not isinstance(c.get("platform"), dict)]
    if not mine:
        found = ", ".join(sorted({_platform_name(c) for c in children})) or "none"
        raise ArchiveError(f"index {digest} has no image for {platform} (platforms: {found})")
    return _for_platform(layout, str(mine[0]["digest"]), platform, depth + 1)


def load_layout(
    images: ImageStore, root: Path, *, tag: str = "", digest: str = "", platform: Platform
) -> Image:
    """Load the image ``tag`` / ``digest`` selects in the layout directory ``root`` (for
    ``platform``) into the image store, under :data:`INTERNAL_REPO` and its manifest digest.

    Raises:
        ArchiveError: not a layout, no such tag or digest, a missing or corrupt blob.
        LayerError: a layer cannot be unpacked.
    """
    if not root.is_dir():
        raise ArchiveError(f"{root} is not a directory")
    manifest_digest = select_manifest(root, tag, digest, platform)
    name = f"{INTERNAL_REPO}:{manifest_digest.partition(':')[2]}"
    existing = images.get(name)
    if existing is not None and existing.manifest_digest == manifest_digest:
        return existing
    with images.store.lease("oci-layout context") as lease:
        layers, config, manifest = _import_manifest(
            images, _LayoutDir(root), lease, manifest_digest
        )
        return images.store_image(name, layers=layers, config=config, manifest=manifest)


def context_resolver(images: ImageStore) -> ContextResolver:
    """The converter's hook for ``docker-image://`` and ``oci-layout://`` named contexts:
    images come from the local image store (an absent one is an error, not a provisional
    source), layouts are loaded into it (once per build and layout)."""
    loaded: dict[tuple[str, str, str, Platform], Image] = {}

    def resolve(named: NamedContext, platform: Platform) -> ResolvedImage:
        where = f"build context {named.key!r} ({named.value})"
        if named.kind == "image":
            try:
                image = images.get(named.ref)
            except ImageError as exc:
                raise ContextError(f"{where}: {exc}") from None
            if image is None:
                raise ContextError(
                    f"{where}: image {named.ref!r} is not in the local image store: load or "
                    "import it first (nbbuild image load|import); pulling from registries is "
                    "not supported yet"
                )
        elif named.kind == "oci-layout":
            key = (os.path.abspath(named.path), named.tag, named.digest, platform)
            found = loaded.get(key)
            if found is None:
                try:
                    found = load_layout(
                        images,
                        Path(key[0]),
                        tag=named.tag,
                        digest=named.digest,
                        platform=platform,
                    )
                except ImageError as exc:
                    raise ContextError(f"{where}: {exc}") from None
                loaded[key] = found
            image = found
        else:
            raise ContextError(f"{where}: not an image context")
        return ResolvedImage(
            ref=image.name, chain_id=image.chain_id, config=config_from_json(image.config)
        )

    return resolve
