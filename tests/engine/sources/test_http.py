"""HTTP sources: URL classification, SafeFileName, checksums, keys, loopback downloads."""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from engine.errors import SourceError
from engine.sources.http import (
    HttpSource,
    fetch,
    filename_from_url,
    is_http_url,
    key_preimage,
    parse_checksum,
    resolve_filename,
    safe_file_name,
)

if TYPE_CHECKING:
    from conftest import LoopbackServer


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- classification ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("https://example.com/file.tar.gz", True),
        ("http://example.com/file", True),
        ("https://example.com/", True),
        ("https://example.com", True),
        ("https://example.com/foo.git.bar", True),
        ("https://example.com/foo.git/", True),
        ("https://example.com/get?x=1", True),
        # git URLs are not HTTP downloads
        ("https://github.com/moby/buildkit.git", False),
        ("https://github.com/moby/buildkit.git#main:dir", False),
        ("http://example.com/repo.git", False),
        ("https://example.com/repo.git?ref=v1", False),
        ("https://example.com/repo.git?bogus=1", False),  # an invalid git URL is still git
        ("git@github.com:moby/buildkit.git", False),
        ("git://example.com/repo", False),
        # the frontend's prefix test is case-sensitive
        ("HTTPS://example.com/file", False),
        ("ftp://example.com/file", False),
        ("file.txt", False),
        ("./http://x", False),
        ("dir/https://x", False),
        ("", False),
    ],
)
def test_is_http_url(src: str, expected: bool) -> None:
    assert is_http_url(src) is expected


# --- SafeFileName (BuildKit source/util/pathutil TestSafeFileName, Linux rows) ------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("foo", "foo"),
        ("foo.txt", "foo.txt"),
        ("資料.txt", "資料.txt"),
        ("тест-файл", "тест-файл"),
        ("name with spaces.txt", "name with spaces.txt"),
        ("  foo.txt  ", "foo.txt"),
        ("a/b/c.txt", "c.txt"),
        ("", "download"),
        (".", "download"),
        ("..", "download"),
        ("../", "download"),
        ("a\x00b", "download"),
        ("a\nb", "download"),
        ("..\\", "..\\"),
        ("a\\b\\c.txt", "a\\b\\c.txt"),
        # ours, beyond the upstream table
        ("/", "download"),
        ("../../etc/passwd", "passwd"),
        ("a\x7fb", "download"),
        ("dir/", "dir"),
    ],
)
def test_safe_file_name(name: str, expected: str) -> None:
    assert safe_file_name(name) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/releases/tool-1.2.tar.gz", "tool-1.2.tar.gz"),
        ("https://example.com/a/b/", "b"),
        ("https://example.com/", "__unnamed__"),
        ("https://example.com", "__unnamed__"),
        ("https://example.com/file?x=1#frag", "file"),
        ("https://example.com/a%20b.txt", "a b.txt"),
        ("https://example.com/a/..%2F..%2Fetc", "etc"),
        ("https://example.com/..", "download"),
        ("https://example.com/x%0Ay", "download"),
    ],
)
def test_filename_from_url(url: str, expected: str) -> None:
    assert filename_from_url(url) == expected


def test_content_disposition_used_only_without_explicit_name() -> None:
    bare = HttpSource(url="https://example.com/get")
    assert resolve_filename(bare) == "get"
    assert resolve_filename(bare, 'attachment; filename="report.csv"') == "report.csv"
    assert resolve_filename(bare, 'attachment; filename="../../x/evil.sh"') == "evil.sh"
    assert resolve_filename(bare, 'attachment; filename=".."') == "download"
    assert resolve_filename(bare, 'attachment; filename="dir/"') == "get"
    assert resolve_filename(bare, "attachment") == "get"
    # ADD always names the file after the URL, so the header is ignored.
    added = HttpSource.for_add("https://example.com/get")
    assert resolve_filename(added, 'attachment; filename="report.csv"') == "get"


# --- checksum syntax ---------------------------------------------------------------------------

GOOD = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a" * 64, "invalid checksum digest format"),
        ("sha256:", "invalid checksum digest format"),
        (":" + "a" * 64, "invalid checksum digest format"),
        ("sha256:" + "a" * 63, "invalid checksum digest length"),
        ("sha256:" + "A" * 64, "invalid checksum digest format"),
        ("sha256:" + "g" * 64, "invalid checksum digest format"),
        ("md5:" + "a" * 32, "unsupported digest algorithm"),
        ("sha512:" + "a" * 128, "unsupported digest algorithm"),
        ("SHA256:" + "a" * 64, "invalid checksum digest format"),
        ("sha256:" + "a" * 64 + " ", "invalid checksum digest length"),
    ],
)
def test_bad_checksum_rejected(value: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_checksum(value)
    with pytest.raises(SourceError, match=message):
        HttpSource.for_add("https://example.com/f", checksum=value)


def test_good_checksum_accepted() -> None:
    assert parse_checksum(GOOD) == GOOD
    assert HttpSource.for_add("https://example.com/f", checksum=GOOD).checksum == GOOD


def test_source_requires_http_url() -> None:
    with pytest.raises(SourceError):
        HttpSource(url="ftp://example.com/f")


# --- key preimage ------------------------------------------------------------------------------


def test_key_preimage_fields() -> None:
    src = HttpSource.for_add("https://example.com/dl/tool.tgz", checksum=GOOD)
    assert key_preimage(src, GOOD) == {
        "Filename": "tool.tgz",
        "Perm": 0,
        "UID": 0,
        "GID": 0,
        "Checksum": GOOD,
    }


def test_key_preimage_depends_on_content_name_and_owner_not_url() -> None:
    a = HttpSource.for_add("https://mirror-a.example/tool.tgz")
    b = HttpSource.for_add("https://mirror-b.example/tool.tgz")
    # Same bytes and name from another host: same key (BuildKit keys content, not the URL).
    assert key_preimage(a, GOOD) == key_preimage(b, GOOD)
    other = "sha256:" + "b" * 64
    assert key_preimage(a, GOOD) != key_preimage(a, other)
    renamed = HttpSource.for_add("https://mirror-a.example/tool-2.tgz")
    assert key_preimage(a, GOOD) != key_preimage(renamed, GOOD)
    owned = HttpSource(url=a.url, filename=a.filename, uid=1000, gid=1000)
    assert key_preimage(owned, GOOD)["UID"] == 1000
    assert key_preimage(owned, GOOD) != key_preimage(a, GOOD)


def test_key_preimage_last_modified_only_when_given() -> None:
    src = HttpSource.for_add("https://example.com/f")
    assert "LastModTime" not in key_preimage(src, GOOD)
    when = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    assert key_preimage(src, GOOD, last_modified=when)["LastModTime"] == (
        "Wed, 21 Oct 2015 07:28:00 GMT"
    )


# --- downloads ---------------------------------------------------------------------------------


def test_fetch_matching_checksum(http_server: LoopbackServer, tmp_path: Path) -> None:
    body = b"hello world\n" * 10000
    http_server.serve(
        "/files/data.bin", body, headers={"Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"}
    )
    src = HttpSource.for_add(http_server.url("/files/data.bin"), checksum=sha(body))
    got = fetch(src, tmp_path, timeout=10)
    assert got.path == tmp_path / "data.bin"
    assert got.path.read_bytes() == body
    assert got.digest == sha(body)
    assert got.filename == "data.bin"
    assert got.last_modified == datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    st = got.path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_mtime == got.last_modified.timestamp()
    assert sorted(os.listdir(tmp_path)) == ["data.bin"]


def test_fetch_without_last_modified_uses_epoch(
    http_server: LoopbackServer, tmp_path: Path
) -> None:
    http_server.serve("/f", b"x")
    got = fetch(HttpSource.for_add(http_server.url("/f")), tmp_path, timeout=10)
    assert got.last_modified is None
    assert got.path.stat().st_mtime == 0


def test_fetch_mismatching_checksum(http_server: LoopbackServer, tmp_path: Path) -> None:
    body = b"the real content"
    http_server.serve("/f.txt", body)
    wrong = sha(b"something else")
    src = HttpSource.for_add(http_server.url("/f.txt"), checksum=wrong)
    with pytest.raises(SourceError) as info:
        fetch(src, tmp_path, timeout=10)
    message = str(info.value)
    assert "digest mismatch" in message
    assert sha(body) in message
    assert f"(expected: {wrong})" in message
    assert os.listdir(tmp_path) == []  # no partial file left behind


def test_fetch_content_disposition_traversal_stays_inside(
    http_server: LoopbackServer, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    http_server.serve(
        "/get",
        b"payload",
        headers={"Content-Disposition": 'attachment; filename="../../escaped.txt"'},
    )
    got = fetch(HttpSource(url=http_server.url("/get")), dest, timeout=10)
    assert got.path == dest / "escaped.txt"
    assert got.path.read_bytes() == b"payload"
    assert not (tmp_path / "escaped.txt").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dest", "escaped.txt"]


@pytest.mark.parametrize("header", ['attachment; filename=".."', 'attachment; filename="/"'])
def test_fetch_degenerate_disposition_name(
    http_server: LoopbackServer, tmp_path: Path, header: str
) -> None:
    http_server.serve("/", b"p", headers={"Content-Disposition": header})
    got = fetch(HttpSource(url=http_server.url("/")), tmp_path, timeout=10)
    assert got.path.parent == tmp_path
    assert got.filename == "download"


def test_fetch_replaces_symlink_instead_of_following(
    http_server: LoopbackServer, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    os.symlink(victim, dest / "f")
    http_server.serve("/f", b"new")
    got = fetch(HttpSource.for_add(http_server.url("/f")), dest, timeout=10)
    assert not got.path.is_symlink()
    assert got.path.read_bytes() == b"new"
    assert victim.read_text() == "untouched"


def test_fetch_custom_perm(http_server: LoopbackServer, tmp_path: Path) -> None:
    http_server.serve("/run.sh", b"#!/bin/sh\n")
    src = HttpSource(url=http_server.url("/run.sh"), filename="run.sh", perm=0o755)
    got = fetch(src, tmp_path, timeout=10)
    assert stat.S_IMODE(got.path.stat().st_mode) == 0o755


def test_fetch_http_error_status(http_server: LoopbackServer, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="invalid response status 404"):
        fetch(HttpSource.for_add(http_server.url("/missing")), tmp_path, timeout=10)
    assert os.listdir(tmp_path) == []


def test_fetch_connection_refused(tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens there in the test environment.
    with pytest.raises(SourceError, match="failed to download"):
        fetch(HttpSource.for_add("http://127.0.0.1:1/x"), tmp_path, timeout=5)


def test_fetch_missing_dest(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a directory"):
        fetch(HttpSource.for_add("http://127.0.0.1:1/x"), tmp_path / "nope", timeout=5)


def test_fetch_follows_http_redirect(http_server: LoopbackServer, tmp_path: Path) -> None:
    target = http_server.serve("/real/file.txt", b"moved")
    http_server.serve("/old", b"", status=302, headers={"Location": target})
    got = fetch(HttpSource.for_add(http_server.url("/old")), tmp_path, timeout=10)
    # ADD names the file after the URL it was given, not the redirect target.
    assert got.filename == "old"
    assert got.path.read_bytes() == b"moved"


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("ftp://127.0.0.1:1/x", "redirect to unsupported URL"),
        # urllib refuses this one itself, before asking the handler
        ("file:///etc/passwd", "invalid response status 302"),
    ],
)
def test_fetch_refuses_redirect_off_http(
    http_server: LoopbackServer, tmp_path: Path, location: str, message: str
) -> None:
    http_server.serve("/r", b"", status=302, headers={"Location": location})
    with pytest.raises(SourceError, match=message):
        fetch(HttpSource.for_add(http_server.url("/r")), tmp_path, timeout=10)
    assert os.listdir(tmp_path) == []
