"""Running a :class:`~engine.graph.ops.FileOp` into a new layer, and checksumming results.

:func:`apply_file_op` is the solver's entry point for COPY, ADD and WORKDIR: it reads the
destination's layers and the sources' trees, and writes only the new diff layer ``out``
(:class:`~engine.fileops.upper.Upper`). The actions run in order, each seeing what the ones
before it wrote, as BuildKit chains a file op's actions.

:func:`result_checksum` is the content checksum of selected paths of a result (``COPY --from``
content keys, early cutoff): the same implementation and equalities as the build context's
(:mod:`engine.context.checksum`), except that owners and the root's own header count.

Everything here is plain filesystem work on paths handed in, so it can run unchanged inside a
user-namespace helper process (rootless builds).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine.context import checksum as _checksum
from engine.context.checksum import combine_digests, contains_wildcards
from engine.context.tree import ReadTree
from engine.fileops.chmod import parse_chmod
from engine.fileops.chown import MAX_USER_FILE_BYTES, Owner, UserFileReader, resolve_owner
from engine.fileops.copy import CopyOptions, clean_path, copy_path, resolve_wildcards
from engine.fileops.errors import FileOpError
from engine.fileops.mkdir import make_dir
from engine.fileops.mkfile import make_file
from engine.fileops.tree import EmptyTree, LayerTree, as_read_tree
from engine.fileops.untar import extract_archive
from engine.fileops.upper import Upper, display, open_source
from engine.graph.ops import ChownSpec, ContentSpec, CopyAction, FileAction, FileOp, MkdirAction
from engine.snapshot.layers import LayerView

__all__ = ["apply_file_op", "result_checksum"]


def apply_file_op(
    op: FileOp,
    *,
    dest: Sequence[Path] | None,
    sources: Mapping[int, ReadTree | LayerView],
    out: Path,
    created_ns: int | None = None,
    opaque_xattr: str | None = None,
) -> None:
    """Apply ``op``'s actions, writing the new diff layer into ``out``.

    Args:
        op: the file op (its ``dest_input`` is -1 for ``scratch``).
        dest: the destination result's layers, bottom first; None for ``scratch``.
        sources: a read tree per input index a copy reads (or whose user database a chown by
            name reads): a :class:`~engine.fileops.tree.LayerTree` (or ``LayerView``) of a
            result, the build context's :class:`~engine.context.tree.ContextTree`, a
            :class:`~engine.fileops.tree.DirTree` of a download. A copy from the destination
            input itself reads the destination as it was before the op.
        out: an empty directory; it becomes the layer such that ``dest + [out]`` seen with
            overlayfs's rules is the op's result.
        created_ns: time given to what the op creates without a source time (parent
            directories, WORKDIR, inline files), e.g. ``SOURCE_DATE_EPOCH``; None: now.
            Copied entries always keep their source's times.
        opaque_xattr: the opaque-directory marker to write; None (the default): the one
            overlayfs uses where this process runs (``user.overlay.opaque`` in a user
            namespace, where layers are mounted with ``userxattr``; else ``trusted.*``).

    Raises:
        FileOpError: an action failed (BuildKit's wording: ``lstat /x: no such file or
            directory``, ``cannot replace to directory /d with file``, ...).
        IdMappingError: in a user namespace (rootless), an owner the namespace does not map
            (``--chown``, or a copied file's or archive entry's own).
    """
    with os.scandir(out) as entries:
        if any(True for _ in entries):
            # The writer tracks what it made opaque in memory: it must start from nothing.
            raise FileOpError(f"the new layer directory {out} is not empty")
    upper = Upper(out, dest, opaque_xattr=opaque_xattr)
    upper.init_root()
    trees = {index: as_read_tree(tree) for index, tree in sources.items()}
    for number, action in enumerate(op.actions):
        owner = _owner(op, action, number, upper, trees)
        if isinstance(action, CopyAction):
            tree = _source(op, action.src_input, dest, trees)
            _copy(action, tree, upper, owner, created_ns)
        elif isinstance(action, MkdirAction):
            make_dir(upper, action, owner, created_ns)
        else:
            make_file(upper, action, owner, created_ns)


def _source(
    op: FileOp, index: int, dest: Sequence[Path] | None, trees: Mapping[int, ReadTree]
) -> ReadTree:
    tree = trees.get(index)
    if tree is not None:
        return tree
    if index == op.dest_input and index >= 0:
        # BuildKit reads a secondary input as the op received it, not as earlier actions left it.
        return LayerTree(dest) if dest else EmptyTree()
    if index < 0:
        return EmptyTree()
    raise FileOpError(f"invalid input index {index}")


def _owner(
    op: FileOp,
    action: FileAction,
    number: int,
    upper: Upper,
    trees: Mapping[int, ReadTree],
) -> Owner | None:
    spec: ChownSpec | None = action.chown
    if spec is None:
        return None
    index = op.user_db_input
    read: UserFileReader | None
    if index is None or index == op.dest_input:
        # The action's base: the destination as the previous actions left it. The first action
        # on scratch has none (BuildKit: "invalid user index: -1" for a name).
        if op.dest_input < 0 and number == 0:
            read = None
        else:
            read = _user_file_reader(upper)
    else:
        tree = trees.get(index)
        if tree is None:
            raise FileOpError(f"invalid user index: {index}")
        read = _user_file_reader(tree)
    owner = resolve_owner(spec, read)
    if isinstance(action, MkdirAction):
        # WORKDIR under USER, a cache mount's uid/gid: not a --chown the user wrote.
        given = f"{spec.user}:{spec.group}" if spec.group else spec.user
        owner = dataclasses.replace(owner, given=f"the owner {given}")
    return owner


def _user_file_reader(tree: ReadTree | Upper) -> UserFileReader:
    def read(path: str) -> bytes | None:
        if isinstance(tree, Upper):
            found = tree.resolved(path, True)
            rel, st = found.rel, found.st
        else:
            res = tree.resolve(path, True)
            rel, st = res.rel, res.st
        if st is None:
            return None  # missing: as if the name were not in it
        if not stat.S_ISREG(st.st_mode):
            raise FileOpError(f"{display(rel)} is not a regular file")
        fd = open_source(tree.real(rel), st, display(rel))
        try:
            data = b""
            while chunk := os.read(fd, 1 << 16):
                data += chunk
                if len(data) > MAX_USER_FILE_BYTES:
                    raise FileOpError(f'"{display(rel)}" exceeds {MAX_USER_FILE_BYTES} bytes')
            return data
        finally:
            os.close(fd)

    return read


def _copy(
    action: CopyAction,
    tree: ReadTree,
    upper: Upper,
    owner: Owner | None,
    created_ns: int | None,
) -> None:
    """BuildKit's ``docopy`` for each of the action's sources."""
    dest = clean_path(action.dest)
    if not action.create_dest_path:
        rel = upper.resolve(action.dest, True)
        parent = rel.rpartition("/")[0]
        if upper.lstat(parent) is None:
            raise FileOpError(
                f"failed to stat {action.dest}: lstat {display(parent)}: no such file or directory"
            )
    opts = CopyOptions(
        owner=owner,
        chmod=parse_chmod(action.chmod),
        created_ns=created_ns,
        follow_links=action.follow_symlinks,
        copy_dir_contents=action.dir_copy_contents,
        include=action.include,
        exclude=action.exclude,
        always_replace=action.always_replace_existing,
    )
    for raw in action.src:
        src = clean_path(raw)
        if action.wildcard:
            matches = resolve_wildcards(tree, src, action.follow_symlinks)
            if not matches:
                if action.allow_empty_wildcard:
                    continue
                raise FileOpError(f"{src} not found")
        else:
            matches = [src]
        if action.parents:
            _check_required(action, raw, tree)
        for match in matches:
            if action.attempt_unpack and extract_archive(
                tree, match, upper, dest, owner, created_ns
            ):
                continue
            copy_path(tree, match, upper, dest, opts)


def _check_required(action: CopyAction, src: str, tree: ReadTree) -> None:
    # COPY --parents a/./b/c.txt: BuildKit requires the named path to exist (its checksum's
    # RequiredPaths) unless it has wildcards; the copy's include filter alone would just copy
    # nothing.
    if len(action.include) != 1 or contains_wildcards(src) or contains_wildcards(action.include[0]):
        return
    required = clean_path(f"{src}/{action.include[0]}").rstrip("/") or "/"
    if tree.resolve(required, False).st is None:
        raise FileOpError(f'failed to calculate checksum of ref source: "{required}": not found')


def result_checksum(tree: ReadTree | LayerView, spec: ContentSpec, *, ref: str = "result") -> str:
    """The content checksum of ``spec``'s selected paths of a result.

    Args:
        tree: the result (a :class:`~engine.fileops.tree.LayerTree` or ``LayerView``), or
            another read tree (a download's :class:`~engine.fileops.tree.DirTree`).
        spec: the selectors of one input (paths, wildcards, include/exclude, follow-links).
        ref: how a not-found error names the result.

    Returns:
        ``sha256:<hex>``; one selector gives its own digest, several are combined as
        BuildKit's ``NewContentHashFunc`` does (and as the build context's are).

    Raises:
        ContextError: a selected path is missing (``"/x": not found``) or a pattern is invalid.
    """
    read_tree = as_read_tree(tree)
    selectors = spec.selectors or ()
    if not selectors:
        paths: list[tuple[str, bool, bool, tuple[str, ...], tuple[str, ...]]] = [
            ("/", False, False, (), ())
        ]
    else:
        paths = [(s.path, s.wildcard, s.follow_links, s.include, s.exclude) for s in selectors]
    digests = [
        _checksum._checksum(
            read_tree,
            path,
            wildcard,
            follow,
            include,
            exclude,
            read_tree.normalize_owner,
            None,
            ref=ref,
        )
        for path, wildcard, follow, include, exclude in paths
    ]
    return combine_digests(digests)
