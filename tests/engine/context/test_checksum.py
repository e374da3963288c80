"""Content checksum equalities (BuildKit's contenthash) and the stat cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import engine.context.checksum as checksum_mod
from engine.context.checksum import checksum_path, checksum_paths, header_fields
from engine.context.dockerignore import IgnoreRules
from engine.context.statcache import StatCache
from engine.errors import ContextError
from engine.store.metadb import open_meta_db

Sum = Callable[..., str]


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "x.txt").write_text("same bytes\n")
    (root / "b" / "x.txt").write_text("same bytes\n")
    (root / "file1").write_text("one\n")
    (root / "other").write_text("other\n")
    return root


def cs(root: Path, path: str, **kw: object) -> str:
    return checksum_path(root, path, **kw)  # type: ignore[arg-type]


def test_digest_format_and_determinism(ctx: Path) -> None:
    d = cs(ctx, ".")
    assert d.startswith("sha256:") and len(d) == 71
    assert cs(ctx, ".") == d
    assert cs(ctx, "/") == d


def test_touch_only_is_same(ctx: Path) -> None:
    before = (cs(ctx, "a/x.txt"), cs(ctx, "."))
    os.utime(ctx / "a" / "x.txt", ns=(1, 1))
    os.utime(ctx / "a", ns=(5, 5))
    assert (cs(ctx, "a/x.txt"), cs(ctx, ".")) == before


def test_content_change_differs(ctx: Path) -> None:
    before = (cs(ctx, "a/x.txt"), cs(ctx, "a"), cs(ctx, "."))
    (ctx / "a" / "x.txt").write_text("same bytez\n")  # same size
    after = (cs(ctx, "a/x.txt"), cs(ctx, "a"), cs(ctx, "."))
    assert all(b != a for b, a in zip(before, after, strict=True))


def test_chmod_x_differs(ctx: Path) -> None:
    before = cs(ctx, "a")
    os.chmod(ctx / "a" / "x.txt", 0o755)
    assert cs(ctx, "a") != before


def test_setuid_and_dir_mode_count(ctx: Path) -> None:
    f = ctx / "a" / "x.txt"
    mode = f.stat().st_mode & 0o7777
    before = cs(ctx, "a/x.txt")
    os.chmod(f, mode | 0o4000)
    assert cs(ctx, "a/x.txt") != before
    before_dir = cs(ctx, ".")
    os.chmod(ctx / "b", 0o700)
    assert cs(ctx, ".") != before_dir


def test_root_dir_mode_does_not_count(ctx: Path) -> None:
    # The local source fakes the root header: the context directory's own metadata is not hashed.
    before = cs(ctx, ".")
    os.chmod(ctx, 0o700)
    assert cs(ctx, ".") == before


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_chown_normalized_same_else_differs(ctx: Path) -> None:
    before = cs(ctx, "a")
    raw_before = cs(ctx, "a", normalize_owner=False)
    os.chown(ctx / "a" / "x.txt", 1234, 1234)
    assert cs(ctx, "a") == before
    assert cs(ctx, "a", normalize_owner=False) != raw_before


def test_user_xattr_differs(ctx: Path) -> None:
    f = ctx / "a" / "x.txt"
    plain = cs(ctx, "a/x.txt")
    os.setxattr(f, "user.foo", b"1")
    one = cs(ctx, "a/x.txt")
    assert one != plain
    os.setxattr(f, "user.foo", b"2")
    assert cs(ctx, "a/x.txt") != one
    os.removexattr(f, "user.foo")
    assert cs(ctx, "a/x.txt") == plain


def test_security_selinux_ignored(ctx: Path) -> None:
    f = ctx / "a" / "x.txt"
    before = cs(ctx, "a/x.txt")
    try:
        os.setxattr(f, "security.selinux", b"system_u:object_r:foo_t:s0")
    except OSError:
        # Kernel refused: assert the selection rule directly.
        st = f.stat()
        plain = header_fields(st, xattrs={})
        assert header_fields(st, xattrs={"security.selinux": b"x", "system.posix_acl_access": b"y"}) == plain
        return
    assert cs(ctx, "a/x.txt") == before


def test_header_selection_rules(ctx: Path) -> None:
    st = (ctx / "a" / "x.txt").stat()
    plain = header_fields(st, xattrs={})
    assert header_fields(st, xattrs={"security.selinux": b"a", "system.posix_acl_access": b"b"}) == plain
    assert header_fields(st, xattrs={"security.capability": b"c"}) != plain
    assert header_fields(st, xattrs={"user.z": b"1", "user.a": b"2"})[-2:] == [
        ("user.a", b"2"),
        ("user.z", b"1"),
    ]
    names = [k for k, _ in plain]
    assert "mtime" not in names and ("uname", b"") in plain


def test_symlink_target_change_differs(ctx: Path) -> None:
    os.symlink("file1", ctx / "link")
    before = cs(ctx, "link")
    before_root = cs(ctx, ".")
    os.remove(ctx / "link")
    os.symlink("other", ctx / "link")
    assert cs(ctx, "link") != before
    assert cs(ctx, ".") != before_root


def test_follow_links_uses_target(ctx: Path) -> None:
    os.symlink("a/x.txt", ctx / "link")
    assert cs(ctx, "link", follow_links=True) == cs(ctx, "a/x.txt")
    assert cs(ctx, "link") != cs(ctx, "a/x.txt")
    # A symlinked parent is always resolved.
    os.symlink("a", ctx / "alink")
    assert cs(ctx, "alink/x.txt") == cs(ctx, "a/x.txt")


def test_same_bytes_different_dirs_equal(ctx: Path) -> None:
    assert cs(ctx, "a/x.txt") == cs(ctx, "b/x.txt")
    assert cs(ctx, "a") == cs(ctx, "b")


def test_child_name_counts_in_dir(ctx: Path) -> None:
    before = cs(ctx, "a")
    os.rename(ctx / "a" / "x.txt", ctx / "a" / "y.txt")
    assert cs(ctx, "a") != before


def test_wildcard_rename_differs(ctx: Path) -> None:
    before = cs(ctx, "file*", wildcard=True)
    os.rename(ctx / "file1", ctx / "file2")
    after = cs(ctx, "file*", wildcard=True)
    assert after != before
    # Renaming it back restores the digest: only the matched name made the difference.
    os.rename(ctx / "file2", ctx / "file1")
    assert cs(ctx, "file*", wildcard=True) == before


def test_wildcard_matches_and_no_match(ctx: Path) -> None:
    one = cs(ctx, "file*", wildcard=True)
    (ctx / "file3").write_text("three\n")
    assert cs(ctx, "file*", wildcard=True) != one
    assert cs(ctx, "nomatch*", wildcard=True) == checksum_mod.EMPTY_DIGEST
    # Wildcards in a middle component, and a match that is a directory.
    assert cs(ctx, "*/x.txt", wildcard=True) != checksum_mod.EMPTY_DIGEST
    d = cs(ctx, "[a]", wildcard=True)
    (ctx / "a" / "new").write_text("n")
    assert cs(ctx, "[a]", wildcard=True) != d


def test_exclude_and_include_patterns(ctx: Path) -> None:
    (ctx / "a" / "notes.md").write_text("v1")
    with_md = cs(ctx, "a")
    excl = cs(ctx, "a", exclude=["*.md"])
    assert excl != with_md
    (ctx / "a" / "notes.md").write_text("v2")
    assert cs(ctx, "a", exclude=["*.md"]) == excl
    assert cs(ctx, "a") != with_md
    incl = cs(ctx, "a", include=["*.md"])
    (ctx / "a" / "x.txt").write_text("changed")
    assert cs(ctx, "a", include=["*.md"]) == incl
    assert cs(ctx, "a", exclude=["*.md"]) != excl


def test_ignored_file_change_is_same(ctx: Path) -> None:
    rules = IgnoreRules.from_text("a/x.txt\nsecret/\n")
    (ctx / "secret").mkdir()
    (ctx / "secret" / "k").write_text("1")
    before = cs(ctx, ".", ignore=rules)
    (ctx / "a" / "x.txt").write_text("changed!")
    (ctx / "secret" / "k").write_text("2")
    assert cs(ctx, ".", ignore=rules) == before
    assert cs(ctx, ".") != before
    with pytest.raises(ContextError, match="not found"):
        cs(ctx, "a/x.txt", ignore=rules)


def test_ignore_reinclude_below_excluded_dir(ctx: Path) -> None:
    rules = IgnoreRules.from_text("a\n!a/keep\n")
    before = cs(ctx, ".", ignore=rules)
    (ctx / "a" / "x.txt").write_text("changed")
    assert cs(ctx, ".", ignore=rules) == before
    (ctx / "a" / "keep").write_text("k")
    after = cs(ctx, ".", ignore=rules)
    assert after != before
    assert cs(ctx, "a/keep", ignore=rules) == cs(ctx, "a/keep")


def test_missing_path_buildkit_wording(ctx: Path) -> None:
    with pytest.raises(ContextError, match=r'failed to compute cache key: .*"/x": not found'):
        cs(ctx, "x")
    with pytest.raises(ContextError, match=r'"/nope/deeper": not found'):
        cs(ctx, "nope/deeper", exclude=["*.md"])


def test_dangling_symlink_followed_is_not_found(ctx: Path) -> None:
    os.symlink("nowhere", ctx / "dangling")
    cs(ctx, "dangling")  # the link itself is fine
    with pytest.raises(ContextError, match="not found"):
        cs(ctx, "dangling", follow_links=True)


def test_symlink_escape_never_reads_outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("top secret")
    root = tmp_path / "deep" / "ctx"
    root.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("inside passwd\n")
    os.symlink("/etc/passwd", root / "link")
    os.symlink("../../..", root / "up")
    os.symlink(str(outside), root / "abs")

    read: list[str] = []
    real_read = checksum_mod._read_content_digest

    def spy(path: str, st: os.stat_result) -> str:
        read.append(os.path.realpath(path))
        return real_read(path, st)

    monkeypatch.setattr(checksum_mod, "_read_content_digest", spy)

    # /etc/passwd resolves to <ctx>/etc/passwd.
    assert cs(root, "link", follow_links=True) == cs(root, "etc/passwd")
    # ../../.. is clamped at the root, so up/etc/passwd is <ctx>/etc/passwd again.
    assert cs(root, "up/etc/passwd") == cs(root, "etc/passwd")
    assert cs(root, "up", follow_links=True) == cs(root, ".")
    # An absolute link to a host directory resolves inside the root, where it does not exist.
    with pytest.raises(ContextError, match="not found"):
        cs(root, "abs/secret")
    cs(root, ".")
    cs(root, "*", wildcard=True)
    with pytest.raises(ContextError, match='"/abs": not found'):
        cs(root, "*", wildcard=True, follow_links=True)  # "abs" is dangling inside the root
    assert read, "the spy saw no reads at all"
    root_real = os.path.realpath(root)
    assert all(p.startswith(root_real + os.sep) for p in read), read


def test_symlink_loop_is_context_error(ctx: Path) -> None:
    os.symlink("loop2", ctx / "loop1")
    os.symlink("loop1", ctx / "loop2")
    with pytest.raises(ContextError, match="too many links"):
        cs(ctx, "loop1", follow_links=True)


def test_hardlink_same_digest(ctx: Path) -> None:
    os.link(ctx / "a" / "x.txt", ctx / "hl")
    assert cs(ctx, "hl") == cs(ctx, "a/x.txt")


def test_checksum_paths_order_matters(ctx: Path) -> None:
    ab = checksum_paths(ctx, ["file1", "other"], wildcard=False, follow_links=False)
    ba = checksum_paths(ctx, ["other", "file1"], wildcard=False, follow_links=False)
    assert ab != ba
    assert ab == checksum_paths(ctx, ["file1", "other"], wildcard=False, follow_links=False)


def test_invalid_exclude_pattern_is_context_error(ctx: Path) -> None:
    with pytest.raises(ContextError):
        cs(ctx, "a", exclude=["["])


def test_large_file_streams(ctx: Path) -> None:
    big = ctx / "big.bin"
    with open(big, "wb") as fh:
        for i in range(40):
            fh.write(bytes([i]) * (1 << 20))
    d = cs(ctx, "big.bin")
    with open(big, "r+b") as fh:
        fh.seek(39 << 20)
        fh.write(b"\xff")
    assert cs(ctx, "big.bin") != d


# --- stat cache -----------------------------------------------------------------------------


def test_stat_cache_no_reread(ctx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = open_meta_db(tmp_path / "state")
    cache = StatCache(db, racy_window_ns=0)
    uncached = cs(ctx, ".")
    first = cs(ctx, ".", stat_cache=cache)
    assert first == uncached

    def boom(path: str, st: os.stat_result) -> str:
        raise AssertionError(f"re-read {path}")

    monkeypatch.setattr(checksum_mod, "_read_content_digest", boom)
    # A fresh StatCache on the same DB: entries come from meta.db, not from memory.
    assert cs(ctx, ".", stat_cache=StatCache(db, racy_window_ns=0)) == first

    # Touch: the stat tuple changed, so the file is read again, but the digest is unchanged.
    reads: list[str] = []
    monkeypatch.setattr(checksum_mod, "_read_content_digest", _recording(reads))
    os.utime(ctx / "file1", ns=(10**18, 10**18))
    assert cs(ctx, ".", stat_cache=cache) == first
    assert reads == [str(ctx / "file1")]
    db.close()


def _real_read_digest(path: str, st: os.stat_result) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return "sha256:" + hashlib.sha256(fh.read()).hexdigest()


def _recording(reads: list[str]) -> Callable[[str, os.stat_result], str]:
    def read(path: str, st: os.stat_result) -> str:
        reads.append(path)
        return _real_read_digest(path, st)

    return read


def test_warm_process_reads_nothing_of_unchanged_files_and_sees_changes(
    ctx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.context.tree import ContextTree

    monkeypatch.setattr(checksum_mod, "_FILE_DIGESTS", {})
    monkeypatch.setattr(checksum_mod, "_RACY_NS", 0)
    db = open_meta_db(tmp_path / "state")
    cache = StatCache(db, racy_window_ns=0)
    first = cs(ctx, ".", stat_cache=cache)
    with monkeypatch.context() as m:
        xattr_reads: list[str] = []

        def no_read(path: str, st: os.stat_result) -> str:
            raise AssertionError(f"re-read {path}")

        def xattrs(self: ContextTree, rel: str) -> dict[str, bytes]:
            xattr_reads.append(rel)
            return {}

        m.setattr(checksum_mod, "_read_content_digest", no_read)
        m.setattr(ContextTree, "xattrs", xattrs)
        assert cs(ctx, ".", stat_cache=cache) == first
        assert set(xattr_reads) <= {"", "a", "b"}  # directories' headers only: no file's
    # Same size, same mtime, new bytes: the ctime moved, so the file is hashed again.
    st = os.stat(ctx / "file1")
    data = (ctx / "file1").read_bytes()
    (ctx / "file1").write_bytes(bytes(255 - b for b in data))
    os.utime(ctx / "file1", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cs(ctx, ".", stat_cache=cache) != first
    assert cs(ctx, ".", stat_cache=cache) == cs(ctx, ".")
    db.close()


def test_stat_cache_detects_content_change(ctx: Path, tmp_path: Path) -> None:
    db = open_meta_db(tmp_path / "state")
    cache = StatCache(db, racy_window_ns=0)
    first = cs(ctx, "file1", stat_cache=cache)
    (ctx / "file1").write_text("two\n")  # same size, new mtime/ctime
    assert cs(ctx, "file1", stat_cache=cache) != first
    assert cs(ctx, "file1", stat_cache=cache) == cs(ctx, "file1")
    db.close()


def test_stat_cache_racy_entries_are_reread(
    ctx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_meta_db(tmp_path / "state")
    cache = StatCache(db, racy_window_ns=3600 * 10**9)  # everything just written is racy
    cs(ctx, "file1", stat_cache=cache)
    reads: list[str] = []
    monkeypatch.setattr(checksum_mod, "_read_content_digest", _recording(reads))
    cs(ctx, "file1", stat_cache=cache)
    assert reads == [str(ctx / "file1")]
    db.close()


def test_stat_cache_one_write_transaction_per_run(ctx: Path, tmp_path: Path) -> None:
    db = open_meta_db(tmp_path / "state")
    cache = StatCache(db, racy_window_ns=0)
    calls: list[int] = []
    real = db.transaction

    def counting():  # type: ignore[no-untyped-def]
        calls.append(1)
        return real()

    db.transaction = counting  # type: ignore[method-assign]
    checksum_paths(ctx, [".", "a", "file1"], wildcard=False, follow_links=False, stat_cache=cache)
    assert calls == [1]
    with db.reading() as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM stat_cache").fetchone()
    assert n == 4  # a/x.txt, b/x.txt, file1, other
    db.close()
