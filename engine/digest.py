"""Digests and canonical encodings shared by ops, keys and the store."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "sha256_digest", "sha256_of_json", "short"]


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` as JSON with sorted keys and no insignificant whitespace.

    This is the one encoding every digest in nbbuild is computed over, so the same value gives
    the same digest in every process and on every machine.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    """Return ``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_of_json(value: Any) -> str:
    """Return ``sha256:<hex>`` of the canonical JSON encoding of ``value``."""
    return sha256_digest(canonical_json(value))


def short(digest: str, length: int = 12) -> str:
    """Short form of a digest for display: the first ``length`` hex digits."""
    _, _, hexpart = digest.partition(":")
    return (hexpart or digest)[:length]
