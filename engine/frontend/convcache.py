"""Conversions remembered in the store, so a CLI build of an unchanged Dockerfile need not load
the parser and converter at all.

An entry is what :func:`engine.frontend.convert.convert` made for one Dockerfile text, name and
set of options on this host, with the ARG names explain needs and every image lookup the
conversion made with its answer. Its file name is a digest of all that plus the format and a
fingerprint of the converter's own code (size and mtime of every module it is made of, as
Python checks its bytecode caches), so an upgraded nbbuild never reads an entry an older one
wrote. The caller uses an entry only when each image it looked up still resolves the same.

Entries are pickles read with an unpickler that makes nothing but the build graph's own
dataclasses (no other global, hence no code, can come out of a file). The directory lives in
the store, with the store's permissions; files are written whole (temporary name, then
rename) and without fsync: a lost or damaged entry is only a conversion to make again. The
oldest entries go when there are more than :data:`MAX_ENTRIES`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import sys
from pathlib import Path
from typing import Any

try:  # the C pickler without the pickle module's own imports (~1 ms of every CLI run)
    import _pickle as pickle
except ImportError:  # pragma: no cover - CPython has it
    import pickle  # type: ignore[no-redef]

__all__ = ["DIRNAME", "MAX_ENTRIES", "entry_key", "load", "save"]

DIRNAME = "conversions"
MAX_ENTRIES = 256
_FORMAT = b"nbbuild-conversion-1"
# What a conversion is made of (its result classes included): any change to these files
# changes every key.
_CODE_PACKAGES = ("frontend", "graph", "sources")
_CODE_MODULES = ("explain.py", "digest.py", "errors.py")
_ALLOWED_MODULES = frozenset(
    {"engine.graph.ops", "engine.graph.vertex", "engine.graph.image", "engine.frontend.convert"}
)
_code: bytes | None = None


def _code_fingerprint() -> bytes:
    global _code
    if _code is None:
        engine = Path(__file__).resolve().parents[1]
        h = hashlib.sha256(_FORMAT)
        h.update(sys.version.encode())
        paths = [engine / name for name in _CODE_MODULES]
        for package in _CODE_PACKAGES:
            with contextlib.suppress(OSError):
                paths += sorted(p for p in (engine / package).iterdir() if p.suffix == ".py")
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        _code = h.digest()
    return _code


def entry_key(parts: tuple[Any, ...]) -> str:
    """The entry name for a conversion's inputs (``parts``: text, name, options, platform…:
    plain values whose ``repr`` is stable)."""
    h = hashlib.sha256(_code_fingerprint())
    h.update(repr(parts).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _ALLOWED_MODULES:
            obj = super().find_class(module, name)
            if isinstance(obj, type) and dataclasses.is_dataclass(obj):
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a conversion")


def load(root: Path, key: str) -> Any | None:
    """The entry ``key`` of the store at ``root``, None when there is none or it is unusable."""
    try:
        data = (root / DIRNAME / key).read_bytes()
    except OSError:
        return None
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except Exception:  # a damaged or foreign file is a miss
        return None


def save(root: Path, key: str, entry: Any) -> None:
    """Remember ``entry`` under ``key`` (best effort: a store that cannot take it is skipped)."""
    directory = root / DIRNAME
    try:
        data = pickle.dumps(entry, protocol=5)
        _Unpickler(io.BytesIO(data)).load()  # only what load() will accept is worth a file
    except Exception:
        return
    temp = directory / f".{key}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        temp.write_bytes(data)
        os.replace(temp, directory / key)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        return
    _trim(directory)


def _trim(directory: Path) -> None:
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError:
        return
    if len(entries) <= MAX_ENTRIES:
        return

    def age(entry: os.DirEntry[str]) -> int:
        try:
            return entry.stat(follow_symlinks=False).st_mtime_ns
        except OSError:
            return 0

    entries.sort(key=age)
    for entry in entries[: len(entries) - MAX_ENTRIES]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
