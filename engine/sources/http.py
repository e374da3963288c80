"""HTTP(S) sources for ``ADD https://…``.

Mirrors BuildKit's http source (``source/http/source.go``) and the Dockerfile frontend's use of
it (``dockerfile2llb/convert_copy.go``):

* a string is an HTTP source when it starts with ``http://`` or ``https://`` and is not a git
  URL (``https://host/repo.git`` is git);
* the file name is the URL path's last element (the frontend passes it explicitly, so a
  ``Content-Disposition`` header only matters when no name was given), sanitised like
  BuildKit 0.28.1's ``SafeFileName``;
* the cache key covers ``Filename, Perm, UID, GID, Checksum`` (sha256 of the content) and, for
  an unpinned download, the server's ``Last-Modified``;
* ``--checksum`` must be a valid ``sha256:`` digest and is verified against the download.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import re
import tempfile
import unicodedata
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import SourceError
from engine.sources.git import is_git_url

if TYPE_CHECKING:
    import urllib.request

__all__ = [
    "DEFAULT_FILENAME",
    "DEFAULT_PERM",
    "FetchedFile",
    "HttpSource",
    "fetch",
    "filename_from_url",
    "is_http_url",
    "key_preimage",
    "parse_checksum",
    "resolve_filename",
    "safe_file_name",
]

#: BuildKit's fallback name when nothing usable can be derived.
DEFAULT_FILENAME = "download"
#: The frontend's name for a URL whose path has no last element (``https://host/``).
UNNAMED_FILENAME = "__unnamed__"
#: Mode of a downloaded file when the source sets none (BuildKit: 0600).
DEFAULT_PERM = 0o600

# Hex length of each algorithm go-digest knows.
_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}
_LOWER_HEX = re.compile(r"^[a-f0-9]+$")
# go-digest's DigestRegexp: tells "unsupported algorithm" apart from "garbage".
_DIGEST_SHAPE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_CHUNK = 1 << 16


def is_http_url(s: str) -> bool:
    """Tell whether ``ADD`` treats ``s`` as an HTTP download, as the Dockerfile frontend does.

    The prefix test is case-sensitive (as in BuildKit), and git URLs such as
    ``https://host/org/repo.git`` are git sources, not HTTP downloads.

    Args:
        s: an ``ADD`` source string.

    Returns:
        True for an ``http://`` / ``https://`` URL that is not a git URL.
    """
    if not (s.startswith("http://") or s.startswith("https://")):
        return False
    return not is_git_url(s)


def parse_checksum(value: str) -> str:
    """Validate an ``ADD --checksum`` value for an HTTP source.

    The checks and messages follow go-digest's ``digest.Parse``, which BuildKit uses. Only
    ``sha256`` is accepted: BuildKit hashes downloads with sha256, so any other algorithm could
    never match.

    Args:
        value: the flag's value, e.g. ``sha256:e3b0…``.

    Returns:
        The digest, unchanged.

    Raises:
        SourceError: ``invalid checksum digest format``, ``invalid checksum digest length`` or
            ``unsupported digest algorithm``.
    """
    algo, sep, encoded = value.partition(":")
    if not sep or not algo or not encoded:
        raise SourceError(f"invalid checksum digest format: {value!r}")
    expected_len = _HEX_LEN.get(algo)
    if expected_len is None:
        if not _DIGEST_SHAPE.match(value):
            raise SourceError(f"invalid checksum digest format: {value!r}")
        raise SourceError(f"unsupported digest algorithm: {value!r}")
    if len(encoded) != expected_len:
        raise SourceError(f"invalid checksum digest length: {value!r}")
    if not _LOWER_HEX.match(encoded):
        raise SourceError(f"invalid checksum digest format: {value!r}")
    if algo != "sha256":
        raise SourceError(
            f"unsupported digest algorithm: {value!r} (downloads are verified with sha256)"
        )
    return value


def safe_file_name(name: str) -> str:
    """Sanitise a server- or user-supplied file name, like BuildKit's ``SafeFileName``.

    Keeps only the last path element (``a/b/c.txt`` → ``c.txt``) after trimming outer
    whitespace. Empty names, ``.``, ``..`` and names with NUL or control characters become
    ``download``. Backslashes are ordinary characters, as on Linux.

    Args:
        name: the candidate name.

    Returns:
        A single, safe path element.
    """
    stripped = name.strip()
    base = _go_filepath_base(stripped)
    if base in ("", ".", "..", "/"):
        return DEFAULT_FILENAME
    if any(ch == "\x00" or unicodedata.category(ch) == "Cc" for ch in base):
        return DEFAULT_FILENAME
    return base


def _go_filepath_base(s: str) -> str:
    # Go's filepath.Base: "" -> ".", trailing slashes dropped, all-slashes -> "/".
    if s == "":
        return "."
    trimmed = s.rstrip("/")
    if trimmed == "":
        return "/"
    return trimmed.rsplit("/", 1)[-1]


def filename_from_url(url: str) -> str:
    """The file name the Dockerfile frontend gives an ``ADD <url>`` download.

    It is the last element of the URL's (percent-decoded) path, or ``__unnamed__`` when the
    path has none; the source then sanitises it with :func:`safe_file_name`.

    Args:
        url: the ``http(s)://`` URL.

    Returns:
        The sanitised file name.
    """
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    base = _go_path_base(path)
    name = base if base not in (".", "/") else UNNAMED_FILENAME
    return safe_file_name(name)


def _go_path_base(p: str) -> str:
    if p == "":
        return "."
    trimmed = p.rstrip("/")
    if trimmed == "":
        return "/"
    return posixpath.basename(trimmed)


@dataclass(frozen=True, slots=True)
class HttpSource:
    """An HTTP(S) download, as BuildKit's ``HTTPIdentifier`` describes it.

    Attributes:
        url: the URL to download.
        checksum: the pinned ``sha256:<hex>`` digest (``ADD --checksum``), if any.
        filename: the explicit file name, if any. ``ADD`` always sets one (see
            :meth:`for_add`); without one the name comes from ``Content-Disposition`` or the URL.
        perm: the file mode; None means BuildKit's default (0600 on disk, 0 in the key).
        uid: owner of the downloaded file.
        gid: group of the downloaded file.
    """

    url: str
    checksum: str | None = None
    filename: str | None = None
    perm: int | None = None
    uid: int = 0
    gid: int = 0

    def __post_init__(self) -> None:
        if not (self.url.startswith("http://") or self.url.startswith("https://")):
            raise SourceError(f"not an http(s) URL: {self.url!r}")
        if self.checksum is not None:
            parse_checksum(self.checksum)

    @classmethod
    def for_add(cls, url: str, *, checksum: str | None = None) -> HttpSource:
        """The source the Dockerfile frontend builds for ``ADD [--checksum=…] <url> …``.

        Args:
            url: the ``http(s)://`` URL (not a git URL).
            checksum: the ``--checksum`` value, if given.

        Returns:
            An :class:`HttpSource` whose file name is derived from the URL path.

        Raises:
            SourceError: the checksum is malformed.
        """
        return cls(url=url, checksum=checksum, filename=filename_from_url(url))

    @property
    def mode(self) -> int:
        """The mode the downloaded file gets on disk."""
        return self.perm if self.perm else DEFAULT_PERM


def resolve_filename(source: HttpSource, content_disposition: str | None = None) -> str:
    """The name BuildKit stores the download under (``getFileName``).

    Order: the source's explicit name, else a ``Content-Disposition`` ``filename`` parameter
    (ignored when it ends in ``/``), else the URL path's last element; always sanitised.

    Args:
        source: the HTTP source.
        content_disposition: the response's ``Content-Disposition`` header, if any.

    Returns:
        A single, safe path element.
    """
    if source.filename:
        return safe_file_name(source.filename)
    if content_disposition:
        param = _disposition_filename(content_disposition)
        if param and not param.endswith("/"):
            base = _go_filepath_base(param)
            if base:
                return safe_file_name(base)
    path = urllib.parse.unquote(urllib.parse.urlsplit(source.url).path)
    base = _go_path_base(path)
    if base not in (".", "/"):
        return safe_file_name(base)
    return safe_file_name("")


def _disposition_filename(header: str) -> str | None:
    import email.message
    import email.utils

    msg = email.message.Message()
    msg["content-disposition"] = header
    value = msg.get_param("filename", header="content-disposition")
    if value is None:
        return None
    if isinstance(value, tuple):
        # RFC 2231 encoded parameter: (charset, language, value).
        return email.utils.collapse_rfc2231_value(value)
    return str(value)


def _http_time(t: datetime) -> str:
    # Go's http.TimeFormat: "Mon, 02 Jan 2006 15:04:05 GMT", always in UTC.
    import email.utils

    return email.utils.format_datetime(t.astimezone(UTC), usegmt=True)


def key_preimage(
    source: HttpSource,
    content_digest: str,
    *,
    filename: str | None = None,
    last_modified: datetime | None = None,
) -> dict[str, Any]:
    """The fields BuildKit's http ``CacheKey`` hashes (``formatCacheKey``).

    With ``--checksum`` the planner passes the pinned digest and no ``last_modified``: BuildKit
    then keys the source without contacting the server. After an unpinned download BuildKit
    also keys the server's ``Last-Modified`` time; pass it as ``last_modified`` to match.

    Args:
        source: the HTTP source.
        content_digest: ``sha256:<hex>`` of the content (or the pinned checksum).
        filename: the resolved file name; defaults to :func:`resolve_filename` without headers.
        last_modified: the response's ``Last-Modified`` time, for unpinned downloads.

    Returns:
        A JSON-able dict with BuildKit's field names.
    """
    preimage: dict[str, Any] = {
        "Filename": filename if filename is not None else resolve_filename(source),
        # BuildKit keys the identifier's Perm, which is 0 when unset (the file still gets 0600).
        "Perm": source.perm or 0,
        "UID": source.uid,
        "GID": source.gid,
        "Checksum": content_digest,
    }
    if last_modified is not None:
        preimage["LastModTime"] = _http_time(last_modified)
    return preimage


@dataclass(frozen=True, slots=True)
class FetchedFile:
    """A completed, verified download.

    Attributes:
        path: where the file is, directly inside the destination directory.
        digest: ``sha256:<hex>`` of its content.
        filename: its sanitised name (``path.name``).
        last_modified: the server's ``Last-Modified`` time, if it sent a parsable one.
    """

    path: Path
    digest: str
    filename: str
    last_modified: datetime | None


def fetch(source: HttpSource, dest_dir: Path | str, *, timeout: float = 60.0) -> FetchedFile:
    """Download ``source`` into ``dest_dir``, verifying its ``--checksum``.

    The body is streamed into a temporary file inside ``dest_dir`` while it is hashed, then
    renamed to its sanitised name, so a failed or mismatching download leaves nothing behind
    and no server-supplied name can place the file outside ``dest_dir``. The file gets the
    source's mode (0600 by default) and the server's ``Last-Modified`` as its mtime (the epoch
    when absent), as in BuildKit.

    Args:
        source: the HTTP source.
        dest_dir: an existing directory.
        timeout: socket timeout in seconds.

    Returns:
        The fetched file.

    Raises:
        SourceError: the request fails, the status is not 2xx/3xx, or the digest mismatches.
    """
    dest = Path(dest_dir)
    if not dest.is_dir():
        raise SourceError(f"download destination {dest} is not a directory")
    # urllib.request (http.client, ssl, email) is imported by a download only: planning or
    # building without one must not pay for it.
    import urllib.error
    import urllib.request

    request = urllib.request.Request(source.url, method="GET")
    try:
        # Built per call: the proxy handler reads *_proxy from the environment when created.
        opener = urllib.request.build_opener(_http_only_redirects())
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise SourceError(
            f"failed to download {source.url}: invalid response status {exc.code}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"failed to download {source.url}: {reason}") from None

    with response:
        status = int(getattr(response, "status", 200))
        if status < 200 or status >= 400:
            raise SourceError(f"failed to download {source.url}: invalid response status {status}")
        filename = resolve_filename(source, response.headers.get("Content-Disposition"))
        last_modified = _parse_http_time(response.headers.get("Last-Modified"))
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=dest)
        tmp = Path(tmp_name)
        try:
            hasher = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    hasher.update(chunk)
                    out.write(chunk)
            digest = "sha256:" + hasher.hexdigest()
            if source.checksum is not None and digest != source.checksum:
                raise SourceError(
                    f"digest mismatch for {source.url}: {digest} (expected: {source.checksum})"
                )
            os.chmod(tmp, source.mode)
            if source.uid or source.gid:
                from engine.userns import ownership

                ownership.chown(
                    tmp,
                    source.uid,
                    source.gid,
                    follow_symlinks=True,
                    what=f"ADD --chown={source.uid}:{source.gid} needs {{id}} ({source.url})",
                )
            mtime = last_modified.timestamp() if last_modified is not None else 0.0
            os.utime(tmp, (mtime, mtime))
            final = dest / filename
            # safe_file_name returns one path element, so this holds; checked anyway because
            # it is the one thing that must never go wrong.
            if final.parent != dest:
                raise SourceError(f"refusing to write {filename!r} outside {dest}")
            # os.replace swaps a directory entry: an existing symlink named `filename` is
            # replaced, never followed.
            os.replace(tmp, final)
        except SourceError:
            tmp.unlink(missing_ok=True)
            raise
        except (OSError, TimeoutError) as exc:
            tmp.unlink(missing_ok=True)
            raise SourceError(f"failed to download {source.url}: {exc}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
    return FetchedFile(path=final, digest=digest, filename=filename, last_modified=last_modified)


@functools.cache
def _http_only_redirects() -> type[urllib.request.HTTPRedirectHandler]:
    import urllib.request

    class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
        """Follow redirects to http(s) only, as Go's client does (urllib would also follow
        ftp)."""

        def redirect_request(
            self,
            req: urllib.request.Request,
            fp: Any,
            code: int,
            msg: str,
            headers: Any,
            newurl: str,
        ) -> urllib.request.Request | None:
            scheme = urllib.parse.urlsplit(newurl).scheme.lower()
            if scheme not in ("http", "https"):
                raise SourceError(
                    f"failed to download {req.full_url}: redirect to unsupported URL {newurl!r}"
                )
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return _HttpOnlyRedirects


def _parse_http_time(value: str | None) -> datetime | None:
    if not value:
        return None
    import email.utils

    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
