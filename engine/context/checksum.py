"""Content checksums of selected paths of a tree: BuildKit's ``cache/contenthash``.

One implementation serves every :class:`~engine.context.tree.ReadTree`: the build context
(owners normalised to 0, root header constant) and, through :mod:`engine.fileops`, the merged
layers of a step's result (owners and the root's header count) and downloaded directories.

What counts, per entry (``filehash.go``/``tarsum.go`` "tarsum v1" field selection): mode with
setuid/setgid/sticky (a symlink's mode forced to 0777), uid, gid, size, type, symlink target,
device numbers and the xattrs except ``security.*`` (``security.capability`` kept) and
``system.*``; then the bytes of a regular file. Not counted: mtime, user/group names, and the
entry's own name (a selected path hashes the same wherever it lives). A directory's digest covers
its own header and each child's ``(name, digest)`` in byte order; the context root's header is
a constant, as in BuildKit's local source (a result's root header counts). Hardlinks share an
inode, hence a digest.

We reproduce BuildKit's equalities, not its bytes: an unambiguous length-prefixed encoding is
hashed instead of tarsum's raw concatenation, and a file contributes the sha256 of its bytes
(which the stat cache can remember) instead of the bytes themselves.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.context.dockerignore import (
    IgnoreRules,
    Pattern,
    PatternError,
    PatternMatcher,
    go_clean,
)
from engine.context.statcache import StatCache, StatCacheSession
from engine.context.tree import ContextTree, ReadTree, read_xattrs
from engine.errors import ContextError

__all__ = [
    "EMPTY_DIGEST",
    "checksum_path",
    "checksum_paths",
    "combine_digests",
    "contains_wildcards",
    "go_path_pattern",
    "header_fields",
    "select_xattrs",
]

EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()
# Process-wide: (real path, normalize_owner) -> (stat fingerprint, entry digest); see
# _Hasher.file_digest. Bounded: cleared when full.
_FILE_DIGESTS: dict[tuple[str, bool], tuple[tuple[int, ...], str]] = {}
_FILE_DIGESTS_MAX = 1_000_000
_RACY_NS = 1_000_000_000
_CHUNK = 1 << 20
# os.fsencode's encoding, applied directly in the hot loop
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def select_xattrs(xattrs: Mapping[str, bytes]) -> list[tuple[str, bytes]]:
    """The xattrs that count, sorted by name (``v1TarHeaderSelect``)."""
    keep = [
        (k, v)
        for k, v in xattrs.items()
        if k == "security.capability" or not (k.startswith("security.") or k.startswith("system."))
    ]
    return sorted(keep, key=lambda kv: kv[0].encode("utf-8", "surrogateescape"))


def header_fields(
    st: os.stat_result,
    *,
    linkname: str = "",
    xattrs: Mapping[str, bytes] | None = None,
    normalize_owner: bool = True,
) -> list[tuple[str, bytes]]:
    """The header of one entry as ordered ``(field, value)`` pairs, tarsum v1 selection.

    Args:
        st: the entry's ``lstat``.
        linkname: the symlink target, for symlinks.
        xattrs: all extended attributes of the entry (filtered here).
        normalize_owner: report uid/gid 0, as the buildx client does for a local context.
    """
    mode = st.st_mode
    perm = stat.S_IMODE(mode)  # permission bits plus setuid/setgid/sticky
    size = 0
    major = minor = 0
    if stat.S_ISDIR(mode):
        flag = "5"
    elif stat.S_ISLNK(mode):
        flag = "2"
        perm |= 0o777
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        flag = "3" if stat.S_ISCHR(mode) else "4"
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        flag = "6"
    else:
        # Regular files; sockets too, since BuildKit clears the socket bit before taking the
        # header and they then look like empty regular files.
        flag = "0"
        size = st.st_size if stat.S_ISREG(mode) else 0
    uid, gid = (0, 0) if normalize_owner else (st.st_uid, st.st_gid)
    fields: list[tuple[str, bytes]] = [
        ("name", b""),
        ("mode", str(perm).encode()),
        ("uid", str(uid).encode()),
        ("gid", str(gid).encode()),
        ("size", str(size).encode()),
        ("typeflag", flag.encode()),
        ("linkname", os.fsencode(linkname)),
        ("uname", b""),
        ("gname", b""),
        ("devmajor", str(major).encode()),
        ("devminor", str(minor).encode()),
    ]
    fields.extend(select_xattrs(xattrs or {}))
    return fields


def _encode_header(fields: Sequence[tuple[str, bytes]]) -> bytes:
    out = bytearray()
    for key, value in fields:
        k = key.encode("utf-8", "surrogateescape")
        out += b"%d:%s%d:%s" % (len(k), k, len(value), value)
    return bytes(out)


_read_xattrs = read_xattrs  # the old private name, kept for callers of this module


def combine_digests(digests: Sequence[str]) -> str:
    """One input's content digest from its selectors' digests (``NewContentHashFunc``).

    A single selector is its own digest; several are joined with NUL and hashed.
    """
    if len(digests) == 1:
        return digests[0]
    return _sha("\0".join(digests).encode())


def _read_content_digest(path: str, st: os.stat_result) -> str:
    """sha256 of a regular file's bytes, streamed; refuses a file swapped since ``lstat``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ContextError(f"failed to open {path}: {exc.strerror or exc}") from None
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise ContextError(f"{path} changed while computing its checksum")
        h = hashlib.sha256()
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            h.update(chunk)
    except OSError as exc:
        raise ContextError(f"failed to read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest()


def contains_wildcards(name: str) -> bool:
    """Whether a path has an unescaped ``*``, ``?`` or ``[`` (BuildKit's ``containsWildcards``)."""
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "*?[":
            return True
        i += 1
    return False


def _split_wildcards(p: str) -> tuple[str, str]:
    parts = go_clean(p).split("/")
    head: list[str] = []
    tail: list[str] = []
    found = False
    for part in parts:
        if not found and contains_wildcards(part):
            found = True
        (tail if found else head).append(part or "/")
    return go_clean("/".join(head)) if head else "", "/".join(tail)


@dataclass(slots=True)
class _Included:
    path: str  # display path ("/a/b"), as the user named it
    rel: str  # real, resolved relative path
    digest: str = ""
    follow: bool = False
    included: bool = False


@dataclass(slots=True)
class _Hasher:
    tree: ReadTree
    normalize_owner: bool
    cache: StatCacheSession | None
    # When set, collects what was hashed: ``{rel: digest}`` for each non-directory entry and
    # ``{rel + "/": header digest}`` for each directory below the root (a manifest).
    record: dict[str, str] | None = None
    _memo: dict[str, str] = field(default_factory=dict)
    _headers: dict[tuple[object, ...], bytes] = field(default_factory=dict)

    def header_digest(self, rel: str, st: os.stat_result) -> str:
        if rel == "" and self.tree.fake_root_header:
            # The local source fakes the root's header as the digest of nothing: the context
            # directory's own mode and owner never matter.
            return EMPTY_DIGEST
        link = self.tree.readlink(rel) if stat.S_ISLNK(st.st_mode) else ""
        fields = header_fields(
            st, linkname=link, xattrs=self.tree.xattrs(rel), normalize_owner=self.normalize_owner
        )
        return _sha(_encode_header(fields))

    def entry_digest(self, rel: str) -> str:
        """Digest of the entry at resolved ``rel`` (a directory's digest covers its contents)."""
        memo = self._memo.get(rel)
        if memo is not None:
            return memo
        st = self.tree.lstat(rel)
        if st is None:
            raise ContextError(f"{rel}: not found")
        if stat.S_ISDIR(st.st_mode):
            header = self.header_digest(rel, st)
            record = self.record
            if record is not None and rel:
                record[rel + "/"] = header
            parts = [b"\0", header.encode()]
            listing = getattr(self.tree, "listing", None)
            if listing is None:
                for name in self.tree.children(rel):
                    child = f"{rel}/{name}" if rel else name
                    parts += [b"\0", os.fsencode(name), self.entry_digest(child).encode()]
            else:
                # The context: each child comes with its lstat, and a file's digest is taken
                # here without a second lookup (what entry_digest does for a non-directory).
                memos = self._memo
                for name, cst in listing(rel):
                    child = f"{rel}/{name}" if rel else name
                    if stat.S_ISDIR(cst.st_mode):
                        child_digest = self.entry_digest(child)
                    else:
                        found = memos.get(child)
                        if found is None:
                            found = self.file_digest(child, cst)
                            if record is not None:
                                record[child] = found
                            memos[child] = found
                        child_digest = found
                    parts += [b"\0", name.encode(_FS_ENCODING, _FS_ERRORS), child_digest.encode()]
            digest = _sha(b"".join(parts))
        else:
            digest = self.file_digest(rel, st)
            if self.record is not None:
                self.record[rel] = digest
        self._memo[rel] = digest
        return digest

    def dir_header_digest(self, rel: str) -> str:
        st = self.tree.lstat(rel)
        assert st is not None
        return self.header_digest(rel, st)

    def file_digest(self, rel: str, st: os.stat_result) -> str:
        if self.cache is None:
            return self._file_digest(rel, st)
        # A context file whose full stat is the one it had when its digest was computed (and
        # which had not changed for a racy window then) has the same digest: the stat cache's
        # trust, kept in this process for the whole entry (header, xattrs and content), so a
        # warm process re-hashing an unchanged context reads no xattr and no row.
        key = (self.tree.real(rel), self.normalize_owner)
        fp = (
            st.st_dev,
            st.st_ino,
            st.st_mode,
            st.st_nlink,
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )
        known = _FILE_DIGESTS.get(key)
        if known is not None and known[0] == fp:
            return known[1]
        digest = self._file_digest(rel, st)
        racy = max(_RACY_NS, self.cache.racy_window_ns)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= racy:
            if len(_FILE_DIGESTS) >= _FILE_DIGESTS_MAX:
                _FILE_DIGESTS.clear()
            _FILE_DIGESTS[key] = (fp, digest)
        return digest

    def _file_digest(self, rel: str, st: os.stat_result) -> str:
        linkname = self.tree.readlink(rel) if stat.S_ISLNK(st.st_mode) else ""
        xattrs = self.tree.xattrs(rel)
        # Many entries share a header (same type, mode, size, no xattrs): encode each once.
        memo_key = (
            st.st_mode,
            st.st_size,
            st.st_rdev,
            (0, 0) if self.normalize_owner else (st.st_uid, st.st_gid),
            linkname,
            tuple(sorted(xattrs.items())) if xattrs else (),
        )
        header = self._headers.get(memo_key)
        if header is None:
            header = _encode_header(
                header_fields(
                    st, linkname=linkname, xattrs=xattrs, normalize_owner=self.normalize_owner
                )
            )
            self._headers[memo_key] = header
        content = b""
        if stat.S_ISREG(st.st_mode) and st.st_size > 0:
            content = self.content_digest(rel, st).encode()
        return _sha(header + b"\0content\0" + content)

    def content_digest(self, rel: str, st: os.stat_result) -> str:
        real = self.tree.real(rel)
        if self.cache is not None:
            hit = self.cache.lookup(real, st)
            if hit is not None:
                return hit
        digest = _read_content_digest(real, st)
        if self.cache is not None:
            self.cache.record(real, st, digest)
        return digest

    def walk(self, rel: str, display: str) -> Iterator[tuple[str, str, os.stat_result]]:
        """Entries below and including ``rel`` in BuildKit's radix-key order.

        Yields ``(display_path, rel, lstat)``; a directory comes before its contents.
        """
        st = self.tree.lstat(rel)
        if st is None:
            return
        yield display, rel, st
        if stat.S_ISDIR(st.st_mode):
            for name in self.tree.children(rel):
                child = f"{rel}/{name}" if rel else name
                yield from self.walk(child, f"{display}/{name}" if display != "/" else "/" + name)


def _not_found(path: str, ref: str = "context") -> ContextError:
    return ContextError(
        f'failed to compute cache key: failed to calculate checksum of ref {ref}: "{path}": not found'
    )


def go_path_pattern(pattern: str) -> Pattern:
    """A matcher for Go's ``path.Match``: ``*``/``?`` stop at ``/``, and ``**`` is just ``*``."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        elif ch == "*" and not in_class and out and out[-1] == "*":
            i += 1  # collapse "**": path.Match has no globstar
            continue
        out.append(ch)
        i += 1
    try:
        return Pattern.compile("".join(out), exclusion=False)
    except PatternError as exc:
        raise ContextError(f"invalid wildcard {pattern!r}: {exc}") from None


_go_path_matcher = go_path_pattern


def checksum_path(
    root: Path | ContextTree,
    path: str,
    *,
    wildcard: bool = False,
    follow_links: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    ignore: IgnoreRules | None = None,
    normalize_owner: bool = True,
    stat_cache: StatCache | None = None,
) -> str:
    """The content checksum of one selected path of a context (``contenthash.Checksum``).

    Args:
        root: the context directory (or a prepared :class:`ContextTree`).
        path: the selected path, relative to the root (a leading ``/`` is allowed).
        wildcard: treat ``*``, ``?``, ``[`` in ``path`` as a pattern (``COPY file* /dst``).
        follow_links: follow a symlink in the final component (of each wildcard match).
        include: ``--include``-style patterns, relative to the selected path.
        exclude: ``COPY --exclude`` patterns, relative to the selected path.
        ignore: ``.dockerignore`` rules: ignored paths are not in the context.
        normalize_owner: count uid/gid as 0 (what a local context does).
        stat_cache: persistent stat cache; unchanged files are then not read again.

    Returns:
        ``sha256:<hex>``.

    Raises:
        ContextError: the path is missing (BuildKit's ``"/x": not found``), a pattern is
            invalid, or the context cannot be read.
    """
    tree = root if isinstance(root, ContextTree) else ContextTree(root, ignore)
    if stat_cache is None:
        return _checksum(
            tree, path, wildcard, follow_links, include, exclude, normalize_owner, None
        )
    with stat_cache.session(tree.root) as sess:
        return _checksum(
            tree, path, wildcard, follow_links, include, exclude, normalize_owner, sess
        )


def checksum_paths(
    root: Path,
    patterns: Sequence[str],
    *,
    wildcard: bool,
    follow_links: bool,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    ignore: IgnoreRules | None = None,
    normalize_owner: bool = True,
    stat_cache: StatCache | None = None,
) -> str:
    """Checksum several selected paths of one context, in the given order.

    The per-path digests are joined with NUL and hashed, as BuildKit's ``NewContentHashFunc``
    does for the selectors of one input (the caller orders and dedupes selectors). One stat
    cache session covers the whole run. Arguments are as for :func:`checksum_path`.
    """
    tree = ContextTree(root, ignore)

    def run(sess: StatCacheSession | None) -> str:
        digests = [
            _checksum(tree, p, wildcard, follow_links, include, exclude, normalize_owner, sess)
            for p in patterns
        ]
        return _sha(b"\0".join(d.encode() for d in digests))

    if stat_cache is None:
        return run(None)
    with stat_cache.session(tree.root) as sess:
        return run(sess)


def _checksum(
    tree: ReadTree,
    path: str,
    wildcard: bool,
    follow_links: bool,
    include: Sequence[str],
    exclude: Sequence[str],
    normalize_owner: bool,
    cache: StatCacheSession | None,
    *,
    ref: str = "context",
    manifest: dict[str, str] | None = None,
) -> str:
    """The checksum of one selector of ``tree`` (what :func:`checksum_path` computes).

    ``ref`` names the tree in a not-found error, as BuildKit names the ref it hashed. When
    ``manifest`` is given, the selection's entries are added to it while hashing (nothing is
    hashed twice): ``{relpath: digest}`` per file, symlink or other non-directory (relpath
    inside the tree, resolved), ``{relpath + "/": header digest}`` per directory below the
    tree's root.
    """
    p = go_clean("/" + path)
    hasher = _Hasher(tree, normalize_owner, cache, manifest)
    wildcard = wildcard and contains_wildcards(p)
    if not wildcard and not include and not exclude:
        res = tree.resolve(p, follow_links)
        if res.st is None:
            raise _not_found(p, ref)
        return hasher.entry_digest(res.rel)

    try:
        inc = PatternMatcher.from_patterns(include) if include else None
        exc = PatternMatcher.from_patterns(exclude) if exclude else None
    except PatternError as err:
        raise ContextError(f"invalid include/exclude patterns: {err}") from None

    if wildcard:
        prefix, rest = _split_wildcards(p)
        if prefix == "/":
            prefix = ""
        start = tree.resolve(prefix, bool(rest)) if prefix else tree.resolve("", False)
    else:
        prefix = p
        start = tree.resolve(p, False)
        if start.st is None:
            raise _not_found(p, ref)
        if not stat.S_ISDIR(start.st.st_mode):
            # Patterns filter what is inside a directory; a single file is itself.
            # (BuildKit's iteration would select nothing here and hash the empty list.)
            target = tree.resolve(p, follow_links)
            if target.st is None:
                raise _not_found(p, ref)
            return hasher.entry_digest(target.rel)

    included: list[_Included] = []
    if start.st is not None:
        glob = go_path_pattern(p) if wildcard else None
        included = _included_paths(hasher, start.rel, prefix or "/", glob, follow_links, inc, exc)

    for item in included:
        if item.follow and (st := tree.lstat(item.rel)) is not None and stat.S_ISLNK(st.st_mode):
            target = tree.resolve(item.rel, True)
            if target.st is None:
                raise _not_found(item.path, ref)
            item.digest = hasher.entry_digest(target.rel)

    if manifest is not None:
        for item in included:
            if item.rel and _is_dir(tree, item.rel):
                manifest[item.rel + "/"] = item.digest
    if not included:
        return EMPTY_DIGEST
    if len(included) == 1 and _base(p) == _base(included[0].path):
        return included[0].digest
    trim = "" if prefix in ("", "/") else prefix
    parts: list[bytes] = []
    for item in included:
        rel = item.path[len(trim) :] if item.path.startswith(trim) else item.path
        key = os.fsencode(rel).replace(b"/", b"\0") or b"\0"
        parts += [key, item.digest.encode()]
    return _sha(b"".join(parts))


def _is_dir(tree: ReadTree, rel: str) -> bool:
    st = tree.lstat(rel)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _base(p: str) -> str:
    p = p.rstrip("/")
    return p.rpartition("/")[2] if p else "/"


def _included_paths(
    hasher: _Hasher,
    start_rel: str,
    display_root: str,
    glob: Pattern | None,
    follow_links: bool,
    inc: PatternMatcher | None,
    exc: PatternMatcher | None,
) -> list[_Included]:
    """BuildKit's ``includedPaths``: dir headers and files selected, in radix order."""
    out: list[_Included] = []
    parents: list[_Included] = []
    last_matched = ""
    exclude_is_final = exc is not None and not exc.has_exclusions
    walker = hasher.walk(start_rel, display_root)
    skip_below: str | None = None
    for display, rel, st in walker:
        fn = "" if display == "/" else display
        if skip_below is not None and (fn + "/").startswith(skip_below):
            continue
        skip_below = None
        while parents and not fn.startswith(parents[-1].path + "/"):
            parents.pop()
        parent = parents[-1] if parents else None
        is_dir = stat.S_ISDIR(st.st_mode)
        item = _Included(path=fn, rel=rel, follow=parent is None and follow_links)

        if glob is not None:
            if not last_matched or not fn.startswith(last_matched + "/"):
                if not glob.match(fn):
                    continue
                last_matched = fn
            base = last_matched
        else:
            base = "" if display_root == "/" else display_root
        candidate = (fn + "/").removeprefix(base + "/").removesuffix("/")

        include_it = True
        if inc is not None and not inc.matches_raw(candidate):
            include_it = False
        if include_it and exc is not None and exc.matches_raw(candidate):
            include_it = False
            if is_dir and exclude_is_final:
                # Everything below an excluded directory is excluded too (parent matching, no
                # "!" to undo it): skip the subtree instead of hashing it.
                skip_below = fn + "/"
                continue

        if not include_it and not is_dir:
            continue
        item.digest = hasher.dir_header_digest(rel) if is_dir else hasher.entry_digest(rel)
        if include_it:
            for par in parents:
                if not par.included:
                    out.append(par)
                    par.included = True
            out.append(item)
            item.included = True
        if is_dir:
            parents.append(item)
    return out
