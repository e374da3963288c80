"""Images: layer tars, the local image store, image archives and image config assembly.

* :mod:`engine.images.layer` — diff dir (overlay upper format) ⇄ deterministic layer tar;
  safe unpacking of untrusted tars.
* :mod:`engine.images.tarwriter` — the deterministic USTAR/PAX writer every tar goes through.
* :mod:`engine.images.config` — OCI config and manifest like BuildKit's exporter; ChainID.
* :mod:`engine.images.store` — :class:`~engine.images.store.ImageStore` (named images over the
  store's snapshots and blobs) and the ``FROM`` resolver.
* :mod:`engine.images.archive` — ``docker import``, ``docker load``/``save`` (docker-archive and
  OCI layout).

Nothing is imported here, so ``import engine.images.layer`` stays cheap.
"""
