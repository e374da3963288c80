"""COPY/ADD's copy action: BuildKit's ``docopy`` over fsutil's ``copy.Copy``, into a layer.

The rules, as fsutil implements them (``tonistiigi/fsutil/copy``):

* the destination's parent is created first (``dest`` ending in ``/`` or ``/.``: the
  destination itself); created directories get ``0755`` (an octal ``--chmod``'s bits instead),
  the ``--chown`` owner, and the current time;
* the destination resolves through symlinks inside the image (``fs.RootPath``), so
  ``COPY f /link/`` writes where ``/link`` points, never outside the root;
* a file copied onto an existing directory lands inside it (``COPY a b/`` and ``COPY a b`` with
  ``b`` a directory); a directory is merged into an existing one: with ``dir_copy_contents``
  (Dockerfile COPY) its *contents* are copied, otherwise the directory itself is placed inside;
  a missing destination becomes the directory (created ``0755``, ``root`` or ``--chown``,
  with the source's times);
* every copied entry keeps its mode, times and xattrs; its owner is ``--chown``'s, else the
  source's (0:0 for the build context and downloads); ``--chmod`` applies to files and
  directories copied (not to symlinks); existing directories that are merged into keep their
  owner;
* a file replaces a file or symlink at its target, never a directory
  (``cannot replace to directory … with file``); ``always_replace`` lifts that;
* include/exclude patterns filter paths relative to the copied source; directories on the way to
  an included path are created even when they are not included themselves;
* hard links among copied files are kept; sockets become empty regular files.

In a user namespace (rootless builds) device nodes are skipped, as rootless BuildKit does, and
an owner the namespace does not map fails with an :class:`~engine.userns.IdMappingError`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from engine.context.checksum import contains_wildcards, go_path_pattern
from engine.context.dockerignore import PatternError, PatternMatcher, go_clean
from engine.context.tree import ReadTree
from engine.errors import ContextError
from engine.fileops.chmod import Chmod
from engine.fileops.chown import Owner
from engine.fileops.errors import FileOpError, os_error
from engine.fileops.mkdir import mkdir_all, restore_times
from engine.fileops.tree import content_xattrs
from engine.fileops.upper import Upper, copy_content, display, open_source
from engine.userns import ownership

__all__ = ["CopyOptions", "clean_path", "copy_path", "resolve_wildcards"]


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """How one source is copied (BuildKit's ``copy.CopyInfo``).

    Attributes:
        owner: ``--chown``, resolved; None keeps the source's owner.
        chmod: ``--chmod``, parsed; None keeps the source's mode.
        created_ns: time of directories the copy creates (None: now).
        follow_links: follow a symlink named as the source (Dockerfile COPY does).
        copy_dir_contents: copy a directory's contents, not the directory itself.
        include: only paths (relative to the source) matching one of these.
        exclude: never paths matching one of these (``COPY --exclude``).
        always_replace: replace whatever is at a target, even a directory.
    """

    owner: Owner | None = None
    chmod: Chmod | None = None
    created_ns: int | None = None
    follow_links: bool = False
    copy_dir_contents: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    always_replace: bool = False


def clean_path(path: str) -> str:
    """BuildKit's ``cleanPath``: absolute and clean, keeping a trailing ``/`` or ``/.``."""
    cleaned = go_clean("/" + path)
    if path.endswith("/."):
        if cleaned != "/":
            cleaned += "/"
        cleaned += "."
    elif path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def _go_split(path: str) -> tuple[str, str]:
    # filepath.Split: everything up to and including the last slash, and the rest.
    i = path.rfind("/")
    return path[: i + 1], path[i + 1 :]


def _go_base(path: str) -> str:
    # filepath.Base.
    stripped = path.rstrip("/")
    if not stripped:
        return "/" if path else "."
    return stripped.rpartition("/")[2]


def _join(rel: str, name: str) -> str:
    # A resolved directory plus one name (".", "/" and "" leave it as is, as filepath.Join).
    if name in ("", ".", "/"):
        return rel
    return f"{rel}/{name}" if rel else name


def _split_wildcards(path: str) -> tuple[str, str]:
    parts = go_clean(path).split("/")
    head: list[str] = []
    tail: list[str] = []
    for part in parts:
        if not tail and not contains_wildcards(part):
            head.append(part or "/")
        else:
            tail.append(part)
    return go_clean("/".join(head)) if head else "/", "/".join(tail)


def resolve_wildcards(tree: ReadTree, src: str, follow_links: bool) -> list[str]:
    """fsutil's ``ResolveWildcards``: the source paths a pattern like ``/a/*.txt`` names.

    The part before the first wildcard resolves inside the tree (its last component only with
    ``follow_links``); the rest is matched, ``path.Match``-style, against paths below it, in
    name order; a matching directory is not searched further. Without wildcards the cleaned
    path itself is returned.

    Raises:
        FileOpError: the directory before the wildcard does not exist.
    """
    head, tail = _split_wildcards(src)
    if not tail:
        return [head]
    base = tree.resolve(head, follow_links)
    if base.st is None:
        raise os_error("lstat", display(base.rel), 2)
    try:
        pattern = go_path_pattern(tail)
    except ContextError:
        return []  # path.Match's ErrBadPattern is ignored: nothing matches
    depth = tail.count("/") + 1
    matches: list[str] = []
    if not stat.S_ISDIR(base.st.st_mode):
        return matches

    def walk(rel: str, sub: str, level: int) -> None:
        for name in tree.children(rel):
            child = _join(rel, name)
            child_sub = f"{sub}/{name}" if sub else name
            st = tree.lstat(child)
            if st is None:
                continue
            if pattern.match(child_sub):
                matches.append(display(child))
                continue
            # "*" never crosses "/": a pattern of n components cannot match deeper paths.
            if stat.S_ISDIR(st.st_mode) and level + 1 < depth:
                walk(child, child_sub, level + 1)

    walk(base.rel, "", 0)
    return matches


@dataclass(slots=True)
class _Pending:
    src_rel: str
    dst_rel: str
    copied: bool = False


@dataclass(slots=True)
class _Copier:
    src: ReadTree
    upper: Upper
    opts: CopyOptions
    include: PatternMatcher | None
    exclude: PatternMatcher | None
    inodes: dict[tuple[int, int], str] = field(default_factory=dict)
    parents: list[_Pending] = field(default_factory=list)
    # Directories this copy created (absent from the merged view before, or made opaque):
    # nothing is below them but what this copy puts there.
    fresh: set[str] = field(default_factory=set)

    # -- fsutil's prepareTargetDir ------------------------------------------------------

    def prepare_target(self, src_rel: str, src: str, dest_rel: str) -> tuple[str, list[str]]:
        fi_src = self.src.lstat(src_rel)
        if fi_src is None:
            raise os_error("lstat", display(src_rel), 2)
        fi_dest = self.upper.lstat(dest_rel)
        src_dir = stat.S_ISDIR(fi_src.st_mode)
        dest_dir = fi_dest is not None and stat.S_ISDIR(fi_dest.st_mode)
        cdc = self.opts.copy_dir_contents
        if (not cdc and src_dir and fi_dest is not None) or (not src_dir and dest_dir):
            dest_rel = _join(dest_rel, _go_base(src))
        target = dest_rel.rpartition("/")[0]
        if cdc and src_dir and fi_dest is None:
            target = dest_rel
        created = mkdir_all(
            self.upper, target, self._dir_perm(), self.opts.owner, self.opts.created_ns
        )
        return dest_rel, created

    def _dir_perm(self) -> int:
        chmod = self.opts.chmod
        perm = chmod.dir_perm if chmod is not None else None
        return 0o755 if perm is None else perm

    # -- fsutil's copier.copy -----------------------------------------------------------

    def copy(self, src_rel: str, comps: str, target: str, overwrite: bool) -> None:
        include, excluded = True, False
        if comps:
            if self.include is not None:
                include = self.include.matches_raw(comps)
            if self.exclude is not None and self.exclude.matches_raw(comps):
                include, excluded = False, True
            if (
                not include
                and self.include is None
                and (self.exclude is None or not self.exclude.has_exclusions)
            ):
                return  # excluded, and nothing below can be re-included
        fi = self.src.lstat(src_rel)
        if fi is None:
            raise FileOpError(f"failed to stat {display(src_rel)}: no such file or directory")
        mode = fi.st_mode
        is_dir = stat.S_ISDIR(mode)
        if not include and not is_dir:
            return
        if (
            include
            and stat.S_ISREG(mode)
            and fi.st_nlink == 1
            and target.rpartition("/")[0] in self.fresh
        ):
            # Into a directory this copy made: the target is absent, the parents exist (they
            # were created before it), nothing to replace or check.
            self._copy_fresh_file(src_rel, target, fi)
            return
        target_fi = self.upper.lstat(target)
        if include:
            self._remove_target_if_needed(target, fi, target_fi)
            self._create_parents(overwrite)
        if not is_dir:
            self._ensure_empty_file_target(target)

        copy_info, restore_ts = include, False
        if is_dir:
            created = self._copy_directory(src_rel, comps, target, fi, overwrite, include, excluded)
            if not overwrite:
                # The copy's root: an existing (or just created) destination keeps its mode
                # and owner and only takes the source's times.
                copy_info, restore_ts = created, not created
        elif stat.S_ISREG(mode):
            if self._copy_regular(src_rel, target, fi, with_info=copy_info):
                return  # owner, mode, xattrs and times were set on the new file's descriptor
        elif stat.S_ISLNK(mode):
            self.upper.symlink(self.src.readlink(src_rel), target)
        elif stat.S_ISSOCK(mode):
            os.close(self.upper.create_file(target))  # a socket is copied as an empty file
        else:
            rdev = fi.st_rdev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0
            if not self.upper.mknod(target, mode, rdev):
                return  # a device, in a user namespace: skipped

        if copy_info:
            self._copy_file_info(fi, src_rel, target)
            self.upper.set_xattrs(target, self.src.xattrs(src_rel))
        elif restore_ts and target_fi is not None:
            self._copy_times(fi, target)

    def _copy_regular(
        self, src_rel: str, target: str, fi: os.stat_result, *, with_info: bool = False
    ) -> bool:
        """Copy a regular file; with ``with_info`` also give the new file its owner, mode,
        xattrs and times (what :meth:`_copy_file_info` and ``set_xattrs`` do by path) through
        its open descriptor. Returns whether that was done (not for a hard link to an earlier
        copy)."""
        if fi.st_nlink > 1:
            key = (fi.st_dev, fi.st_ino)
            first = self.inodes.get(key)
            if first is not None:
                self.upper.link(first, target)
                return False
            self.inodes[key] = target
        src_fd = open_source(self.src.real(src_rel), fi, display(src_rel))
        try:
            dst_fd = self.upper.create_file(target)
            try:
                copy_content(src_fd, dst_fd)
                if with_info:
                    self._file_info_fd(dst_fd, fi, src_rel, target)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        return with_info

    def _copy_fresh_file(self, src_rel: str, target: str, fi: os.stat_result) -> None:
        src_fd = open_source(self.src.real(src_rel), fi, display(src_rel))
        try:
            try:
                dst_fd = os.open(
                    self.upper.host(target),
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                )
            except OSError as exc:
                raise os_error("create", display(target), exc) from None
            try:
                copy_content(src_fd, dst_fd)
                self._file_info_fd(dst_fd, fi, src_rel, target)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def _owner_of(self, fi: os.stat_result, src_rel: str, target: str) -> tuple[int, int, str]:
        # The owner a copied entry gets, and what needs it (for a user namespace's error).
        owner = self.opts.owner
        if owner is not None:
            return owner.uid, owner.gid, owner.needs(target)
        if self.src.normalize_owner:
            return 0, 0, ""  # root: mapped in every namespace
        return fi.st_uid, fi.st_gid, f"{display(src_rel)} of the source is owned by {{id}}"

    def _file_info_fd(self, fd: int, fi: os.stat_result, src_rel: str, target: str) -> None:
        # The same as _copy_file_info + set_xattrs, in the same order (owner before mode, so a
        # setuid bit survives; times last, after the content was written), on the descriptor.
        uid, gid, what = self._owner_of(fi, src_rel, target)
        ownership.chown(fd, uid, gid, what=what)
        mode = stat.S_IMODE(fi.st_mode)
        if self.opts.chmod is not None:
            mode = self.opts.chmod.apply(fi.st_mode, False)
        os.fchmod(fd, mode & 0o7777)
        os.utime(fd, ns=(fi.st_atime_ns, fi.st_mtime_ns))
        for key, value in content_xattrs(dict(self.src.xattrs(src_rel))).items():
            try:
                os.setxattr(fd, key, value)
            except OSError:
                continue  # BuildKit logs and goes on (e.g. security.* refused)

    def _remove_target_if_needed(
        self, target: str, fi: os.stat_result, target_fi: os.stat_result | None
    ) -> None:
        if not self.opts.always_replace or target_fi is None:
            return
        if stat.S_ISDIR(fi.st_mode) and stat.S_ISDIR(target_fi.st_mode):
            return  # directories are merged, not replaced
        self.upper.remove(target)

    def _ensure_empty_file_target(self, target: str) -> None:
        st = self.upper.lstat(target)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            raise FileOpError(f"cannot replace to directory {display(target)} with file")
        self.upper.remove(target)

    def _create_parents(self, overwrite: bool) -> None:
        # Directories skipped by include patterns are created once something below them is
        # copied (fsutil's delayed parent creation).
        for pending in self.parents:
            if pending.copied:
                continue
            fi = self.src.lstat(pending.src_rel)
            if fi is None or not stat.S_ISDIR(fi.st_mode):
                raise FileOpError(f"{display(pending.src_rel)} is not a directory")
            if self._copy_directory_only(pending.dst_rel, fi, overwrite):
                self._copy_file_info(fi, pending.src_rel, pending.dst_rel)
                self.upper.set_xattrs(pending.dst_rel, self.src.xattrs(pending.src_rel))
            pending.copied = True

    def _copy_directory(
        self,
        src_rel: str,
        comps: str,
        dst: str,
        fi: os.stat_result,
        overwrite: bool,
        include: bool,
        excluded: bool,
    ) -> bool:
        created = False
        pending = _Pending(src_rel, dst)
        if include:
            created = self._copy_directory_only(dst, fi, overwrite)
            pending.copied = True
        self.parents.append(pending)
        try:
            if excluded and (self.exclude is None or not self.exclude.has_exclusions):
                return False
            for name in self.src.children(src_rel):
                self.copy(
                    _join(src_rel, name),
                    f"{comps}/{name}" if comps else name,
                    _join(dst, name),
                    True,
                )
        finally:
            self.parents.pop()
        return created

    def _copy_directory_only(self, dst: str, fi: os.stat_result, overwrite: bool) -> bool:
        st = self.upper.lstat(dst)
        if st is None:
            self.upper.mkdir(dst, stat.S_IMODE(fi.st_mode))
            self.fresh.add(dst)
            return True
        if not stat.S_ISDIR(st.st_mode):
            raise FileOpError(f"cannot copy to non-directory: {display(dst)}")
        if overwrite:
            self.upper.chmod(dst, stat.S_IMODE(fi.st_mode))
        return False

    def _copy_file_info(self, fi: os.stat_result, src_rel: str, target: str) -> None:
        uid, gid, what = self._owner_of(fi, src_rel, target)
        self.upper.chown(target, uid, gid, what=what or None)
        if not stat.S_ISLNK(fi.st_mode):
            mode = stat.S_IMODE(fi.st_mode)
            if self.opts.chmod is not None:
                mode = self.opts.chmod.apply(fi.st_mode, stat.S_ISDIR(fi.st_mode))
            self.upper.chmod(target, mode)
        self._copy_times(fi, target)

    def _copy_times(self, fi: os.stat_result, target: str) -> None:
        self.upper.utime(target, fi.st_atime_ns, fi.st_mtime_ns)


def copy_path(src: ReadTree, path: str, upper: Upper, dest: str, opts: CopyOptions) -> None:
    """Copy one source path (wildcards already expanded) to ``dest``: fsutil's ``copy.Copy``.

    Args:
        src: the tree to copy from.
        path: the source path in ``src`` (absolute or relative to its root).
        upper: the layer being written.
        dest: the destination as BuildKit's ``cleanPath`` leaves it (trailing ``/`` kept).
        opts: owner, mode, patterns and flags.

    Raises:
        FileOpError: the source is missing, or the destination cannot take it.
    """
    try:
        include = PatternMatcher.from_patterns(opts.include) if opts.include else None
        exclude = PatternMatcher.from_patterns(opts.exclude) if opts.exclude else None
    except PatternError as exc:
        raise FileOpError(f"invalid include/exclude patterns: {exc}") from None
    head, tail = _go_split(dest)
    ensure = head if tail not in ("", ".") else dest
    copier = _Copier(src, upper, opts, include, exclude)
    created = mkdir_all(
        upper, upper.resolve(ensure, True), copier._dir_perm(), opts.owner, opts.created_ns
    )
    dest_rel = upper.resolve(go_clean(dest), True)
    src_rel = src.resolve(path, opts.follow_links).rel
    target, more = copier.prepare_target(src_rel, path, dest_rel)
    copier.copy(src_rel, "", target, False)
    restore_times(upper, created + more, opts.created_ns)
