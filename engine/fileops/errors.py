"""The error of the file operations (COPY, ADD, WORKDIR and inline files)."""

from __future__ import annotations

import errno as _errno
import os

from engine.errors import NbbuildError

__all__ = ["FileOpError", "os_error"]


class FileOpError(NbbuildError):
    """A file operation failed: a missing source, an impossible destination, a bad archive.

    Messages follow BuildKit's (Go's ``*PathError`` text with in-image paths:
    ``lstat /missing: no such file or directory``), so users can search for them.
    """


def _go_text(code: int | None) -> str:
    # Go prints syscall errors as the C library's text, lower-cased at the start.
    if code is None:
        return "unknown error"
    if code == _errno.ELOOP:
        return "too many levels of symbolic links"
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


def os_error(op: str, path: str, exc: OSError | int) -> FileOpError:
    """A :class:`FileOpError` worded like Go's ``*PathError`` (``op path: reason``).

    Args:
        op: the failed operation (``lstat``, ``mkdir``, ``open``, ``link``...).
        path: the path as the image sees it (``/etc/x``), never a host path.
        exc: the OS error, or an errno.
    """
    code = exc if isinstance(exc, int) else exc.errno
    return FileOpError(f"{op} {path}: {_go_text(code)}")
