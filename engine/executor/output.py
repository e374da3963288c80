"""What every executor does with a sandboxed process's pipes and spec: pump its output to the
sinks, keep the end of its stderr for an error message, and check the spec before starting."""

from __future__ import annotations

import os
from collections import deque
from typing import IO

from engine.executor.errors import SandboxError
from engine.executor.process import OutputSink, ProcessSpec

__all__ = ["StderrTail", "pump", "validate"]


class StderrTail:
    """A sink that passes chunks on to ``sink`` and keeps about the last ``limit`` bytes (what
    a runtime or PRoot said when it failed to start the step)."""

    def __init__(self, sink: OutputSink | None, limit: int = 8192) -> None:
        self._sink = sink
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def __call__(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size > self._limit and len(self._chunks) > 1:
            self._size -= len(self._chunks.popleft())
        if self._sink is not None:
            self._sink(chunk)

    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")


def pump(pipe: IO[bytes], sink: OutputSink | None) -> None:
    """Read ``pipe`` to its end, chunk by chunk, into ``sink``; then close it."""
    fd = pipe.fileno()
    try:
        while chunk := os.read(fd, 1 << 16):
            if sink is not None:
                sink(chunk)
    finally:
        pipe.close()


def validate(spec: ProcessSpec) -> None:
    """Refuse a spec no executor can run (before anything is started)."""
    if not spec.args:
        raise SandboxError("a process needs at least one argument")
    if not spec.cwd.startswith("/"):
        raise SandboxError(f"working directory must be absolute: {spec.cwd}")
    for m in spec.mounts:
        if not m.destination.startswith("/"):
            raise SandboxError(f"mount destination must be absolute: {m.destination}")
    if spec.network not in ("default", "none", "host"):
        raise SandboxError(f"unknown network mode: {spec.network}")
