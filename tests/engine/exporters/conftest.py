"""Fixtures for exporter tests: a real store with the image tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.images.store import ImageStore, migration_images
from engine.store import metadb
from engine.store.store import Store


@pytest.fixture(autouse=True)
def _image_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    # Until the integrator appends migration_images to MIGRATIONS, add it for these tests.
    if migration_images not in metadb.MIGRATIONS:
        monkeypatch.setattr(metadb, "MIGRATIONS", [*metadb.MIGRATIONS, migration_images])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "root")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def images(store: Store) -> ImageStore:
    return ImageStore(store)
