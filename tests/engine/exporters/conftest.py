"""Fixtures for exporter tests: a real store with the image tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.images.store import ImageStore
from engine.store.store import Store


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
