"""Faster CLI start-up: the code ``@dataclass`` generates is compiled once, then reused.

Importing the engine creates about a hundred dataclasses, and for each of them the standard
library builds ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, … as source text and
``exec``s it: compiling those ~600 small functions is about half of ``nbbuild build``'s import
time. Python caches the bytecode of modules (``.pyc``), not of this generated code.

While :func:`compiled_dataclasses` is active, the ``dataclasses`` module's ``exec`` (its global
name, looked up before the builtin) compiles a source text only the first time it is seen and
afterwards runs the remembered code object. Same text, same compile flags (none: the
``dataclasses`` module has no ``__future__`` imports, hence ``dont_inherit``), same
``"<string>"`` file name: the functions are exactly the ones ``dataclasses`` would make. The
code objects are kept, ``marshal``-ed, in a per-interpreter-version file under the user's cache
directory, written atomically and only where bytecode may be written
(``PYTHONDONTWRITEBYTECODE`` is honoured). Any problem with the file means no cache, never an
error. Only the CLI uses it, and it restores ``dataclasses`` when it returns, so code outside
nbbuild's own process start-up never sees it.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import importlib.util
import marshal
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import CodeType
from typing import Any

__all__ = ["cache_file", "compiled_dataclasses"]

_MAX_ENTRIES = 8000  # generated functions kept (the CLI's build path makes ~600)


def cache_file() -> Path:
    """``$XDG_CACHE_HOME/nbbuild/python/dataclasses-<tag>-<magic>.marshal``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = sys.implementation.cache_tag or "python"
    magic = importlib.util.MAGIC_NUMBER.hex()
    return Path(base) / "nbbuild" / "python" / f"dataclasses-{tag}-{magic}.marshal"


def _load(path: Path) -> dict[str, CodeType]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = marshal.loads(raw)  # marshal.load(f) reads piecemeal: ~10x slower
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, CodeType)}


def _save(path: Path, codes: dict[str, CodeType]) -> None:
    if len(codes) > _MAX_ENTRIES:
        codes = dict(list(codes.items())[-_MAX_ENTRIES:])
    with contextlib.suppress(OSError, ValueError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            with open(temp, "wb") as f:
                f.write(marshal.dumps(codes))
            os.replace(temp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)


@contextlib.contextmanager
def compiled_dataclasses(path: Path | None = None) -> Iterator[None]:
    """Reuse the code ``@dataclass`` generates, across processes, while active."""
    if "exec" in vars(dataclasses):  # someone else's hook (or ours, nested): leave it alone
        yield
        return
    path = path or cache_file()
    # Read on the first dataclass made: a process that has imported everything already (a
    # child of nbbuild.server) makes none and reads nothing.
    loaded: list[dict[str, CodeType]] = []
    fresh: dict[str, CodeType] = {}

    def cached_exec(source: Any, globals: Any = None, locals: Any = None, /) -> None:
        if isinstance(source, str):
            if not loaded:
                loaded.append(_load(path))
            codes = loaded[0]
            code = codes.get(source)
            if code is None:
                code = compile(source, "<string>", "exec", dont_inherit=True)
                fresh[source] = code
                codes[source] = code
            source = code
        builtins.exec(source, globals, locals)

    dataclasses.exec = cached_exec  # type: ignore[attr-defined]
    try:
        yield
    finally:
        with contextlib.suppress(AttributeError):
            del dataclasses.exec  # type: ignore[attr-defined]
        if fresh and not sys.dont_write_bytecode:
            _save(path, loaded[0])
