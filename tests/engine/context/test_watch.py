"""The context watch (engine.context.watch) and the checksum reuse it allows (ContextHasher).

Real inotify on tmp_path: a rehash of an unchanged context walks nothing, and every kind of
change makes the next hash walk again and agree with a hasher that never reuses anything. The
kernel-independent logic (event parsing, overflow, filesystem types, watch limits) is unit
tested with made-up events and a failing inotify.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.context import source as source_mod
from engine.context import watch
from engine.context.source import ContextHasher
from engine.context.tree import ContextTree
from engine.graph.ops import ContentSpec, LocalSource, PathSelector
from engine.store.metadb import open_meta_db

ALL = ContentSpec((PathSelector("/"),))


class Walked:
    """Counts what the context trees list and look up (the walk the watch saves)."""

    def __init__(self) -> None:
        self.listed = 0
        self.looked_up = 0

    @property
    def anything(self) -> bool:
        return bool(self.listed or self.looked_up)

    def reset(self) -> None:
        self.listed = self.looked_up = 0


@pytest.fixture
def walked(monkeypatch: pytest.MonkeyPatch) -> Walked:
    counter = Walked()
    scan, disk = ContextTree._scan_children, ContextTree._disk

    def counting_scan(self: ContextTree, rel: str) -> list[str]:
        counter.listed += 1
        return scan(self, rel)

    def counting_disk(self: ContextTree, rel: str) -> os.stat_result | None:
        counter.looked_up += 1
        return disk(self, rel)

    monkeypatch.setattr(ContextTree, "_scan_children", counting_scan)
    monkeypatch.setattr(ContextTree, "_disk", counting_disk)
    return counter


@pytest.fixture
def watching(monkeypatch: pytest.MonkeyPatch) -> Iterator[watch.Watcher]:
    """A fresh watcher for this process, in the mode of a long-lived caller."""
    fresh = watch.Watcher()
    monkeypatch.delenv("NBBUILD_CONTEXT_WATCH", raising=False)
    monkeypatch.setattr(watch, "_WATCHER", fresh)
    monkeypatch.setattr(watch, "_MODE", True)
    monkeypatch.setattr(source_mod, "_KEPT", {})
    # The files of these contexts were just written: trust them at once (the racy window has
    # its own test).
    monkeypatch.setattr(source_mod, "_RACY_WINDOW_NS", 0)
    yield fresh
    fresh.clear()


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    (root / "a").mkdir(parents=True)
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a" / "x.txt").write_text("hello x\n")
    (root / "a" / "y.txt").write_text("hello y\n")
    (root / "b" / "deep" / "z.txt").write_text("hello z\n")
    (root / "top.txt").write_text("top\n")
    (root / "link").symlink_to("a/x.txt")
    return root


def hashed(
    root: Path,
    spec: ContentSpec = ALL,
    *,
    dockerfile: Path | None = None,
    excludes: tuple[str, ...] = (),
    store: Path | None = None,
) -> tuple[str, dict[str, str]]:
    """One hasher's checksum and manifest of the main context ``root`` (as a build has it)."""
    hasher = ContextHasher(store, dockerfile_path=dockerfile, extra_excludes=excludes)
    try:
        source = LocalSource("context", str(root))
        return hasher.checksum(source, spec), dict(hasher.manifest(source, spec))
    finally:
        hasher.close()


def cold(root: Path, monkeypatch: pytest.MonkeyPatch, **kw: object) -> tuple[str, dict[str, str]]:
    """What a process without the watch computes."""
    with monkeypatch.context() as m:
        m.setenv("NBBUILD_CONTEXT_WATCH", "0")
        return hashed(root, **kw)  # type: ignore[arg-type]


def _same_size_edit(path: Path, data: str) -> None:
    # New bytes, same size, same mtime: nothing in a stat tuple but ctime tells.
    st = path.stat()
    assert len(data.encode()) == st.st_size
    path.write_text(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _map_for_writing(path: Path) -> mmap.mmap:
    # As numpy.memmap(path, mode="r+") does: open, map, close the descriptor at once. No event:
    # the mapping holds the file open (IN_CLOSE_WRITE comes when it is unmapped), and writes
    # through it make none.
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), 0)


def _write_through(mapping: mmap.mmap, data: bytes) -> None:
    mapping[: len(data)] = data
    mapping.flush()


def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + ".tmp")
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _dir_to_file(path: Path) -> None:
    shutil.rmtree(path)
    path.write_text("now a file\n")


CHANGES: dict[str, Callable[[Path], None]] = {
    "content edit, same size and mtime": lambda r: _same_size_edit(r / "a" / "x.txt", "HELLO x\n"),
    "deep content edit": lambda r: (r / "b" / "deep" / "z.txt").write_text("changed z\n"),
    "chmod of a file": lambda r: (r / "a" / "y.txt").chmod(0o600),
    "chmod of a directory": lambda r: (r / "b" / "deep").chmod(0o700),
    "new file": lambda r: (r / "a" / "new.txt").write_text("new\n"),
    "deleted file": lambda r: (r / "a" / "y.txt").unlink(),
    "rename within a directory": lambda r: (r / "a" / "y.txt").rename(r / "a" / "w.txt"),
    "rename across directories": lambda r: (r / "a" / "y.txt").rename(r / "b" / "y.txt"),
    "symlink retargeted": lambda r: _replace_symlink(r / "link", "a/y.txt"),
    "directory replaced by a file": lambda r: _dir_to_file(r / "b"),
    ".dockerignore written": lambda r: (r / ".dockerignore").write_text("a/y.txt\n"),
}


def test_an_unchanged_context_is_not_walked_again(
    ctx: Path, watching: watch.Watcher, walked: Walked
) -> None:
    first = hashed(ctx)
    assert walked.listed >= 4  # the root, a, b, b/deep
    walked.reset()
    assert hashed(ctx) == first
    assert hashed(ctx) == first
    assert not walked.anything


def test_a_write_through_a_shared_mapping_is_seen(
    ctx: Path, watching: watch.Watcher, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = hashed(ctx)
    mapping = _map_for_writing(ctx / "a" / "x.txt")
    try:
        walked.reset()
        assert hashed(ctx) == first and not walked.anything  # mapping it changed nothing
        _write_through(mapping, b"HELLO x\n")  # same size; no inotify event
        again = hashed(ctx)
        assert walked.anything
        walked.reset()
        assert hashed(ctx) == again and not walked.anything  # and the new state is reused
    finally:
        mapping.close()
    assert (ctx / "a" / "x.txt").read_bytes() == b"HELLO x\n"
    assert again != first and again == cold(ctx, monkeypatch)


def test_every_file_and_directory_a_kept_checksum_covers_is_verified(
    ctx: Path, watching: watch.Watcher
) -> None:
    """The stat verification alone (no watch involved): what changes a covered entry's stat
    fails it, an unchanged tree passes."""
    tree = ContextTree(ctx)
    began = time.time_ns()
    manifest = hashed(ctx)[1]
    stamped = source_mod.stamp(tree, manifest, began)
    assert stamped is not None
    files, dirs, _ = stamped
    assert set(files) == {"a/x.txt", "a/y.txt", "b/deep/z.txt", "top.txt", "link"}
    assert set(dirs) == {"a", "b", "b/deep"}
    assert source_mod.unchanged(str(ctx), stamped)

    _same_size_edit(ctx / "a" / "x.txt", "HELLO x\n")  # mtime restored: ctime tells
    assert not source_mod.unchanged(str(ctx), stamped)
    stamped = source_mod.stamp(ContextTree(ctx), manifest, time.time_ns())
    assert source_mod.unchanged(str(ctx), stamped)

    mapping = _map_for_writing(ctx / "b" / "deep" / "z.txt")
    try:
        stamped = source_mod.stamp(ContextTree(ctx), manifest, time.time_ns())
        assert source_mod.unchanged(str(ctx), stamped)
        _write_through(mapping, b"HELLO z\n")
        assert not source_mod.unchanged(str(ctx), stamped)
    finally:
        mapping.close()

    stamped = source_mod.stamp(ContextTree(ctx), manifest, time.time_ns())
    os.rename(ctx / "b" / "deep", ctx / "b" / "gone")
    (ctx / "b" / "deep").mkdir()  # a directory in its place (same mode, another inode)
    os.rename(ctx / "b" / "gone" / "z.txt", ctx / "b" / "deep" / "z.txt")
    assert not source_mod.unchanged(str(ctx), stamped)
    (ctx / "b" / "deep" / "z.txt").unlink()
    assert not source_mod.unchanged(str(ctx), stamped)  # a missing file
    assert not source_mod.unchanged(str(ctx), None)


def test_a_file_changed_within_the_racy_window_is_not_trusted(
    ctx: Path, watching: watch.Watcher, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its stat may not change with a write in the same timestamp tick after it was hashed: the
    # kept checksum is not reused, the next hash walks (and keeps a trusted one once the files
    # are older than the window when its walk begins).
    monkeypatch.setattr(source_mod, "_RACY_WINDOW_NS", 3600 * 10**9)
    first = hashed(ctx)
    walked.reset()
    assert hashed(ctx) == first
    assert walked.anything
    monkeypatch.setattr(source_mod, "_RACY_WINDOW_NS", 0)
    assert hashed(ctx) == first
    walked.reset()
    assert hashed(ctx) == first
    assert not walked.anything


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_makes_the_next_hash_walk_and_agree_with_a_cold_one(
    ctx: Path,
    watching: watch.Watcher,
    walked: Walked,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
) -> None:
    before = hashed(ctx)
    hashed(ctx)
    CHANGES[change](ctx)
    walked.reset()
    after = hashed(ctx)
    assert walked.anything
    assert after == cold(ctx, monkeypatch)
    assert after[0] != before[0]
    # ... and the new state is watched in turn.
    walked.reset()
    assert hashed(ctx) == after
    assert not walked.anything


def test_a_file_in_a_new_subdirectory_is_seen(
    ctx: Path, watching: watch.Watcher, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed(ctx)
    (ctx / "a" / "sub").mkdir()
    with_dir = hashed(ctx)
    assert with_dir == cold(ctx, monkeypatch)
    (ctx / "a" / "sub" / "f.txt").write_text("in the new directory\n")
    walked.reset()
    with_file = hashed(ctx)
    assert walked.anything
    assert with_file == cold(ctx, monkeypatch)
    assert with_file[0] != with_dir[0]


def test_a_hard_linked_file_edited_through_a_path_outside_the_context(
    ctx: Path, tmp_path: Path, watching: watch.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.link(ctx / "a" / "x.txt", outside / "x-link")
    before = hashed(ctx)
    hashed(ctx)
    _same_size_edit(outside / "x-link", "HELLO X\n")
    after = hashed(ctx)
    assert after == cold(ctx, monkeypatch)
    assert after[0] != before[0]


def test_a_change_racing_the_walk_is_not_trusted(
    ctx: Path, watching: watch.Watcher, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file appears in a directory just after the walk listed it: the walk's result misses
    # it, so it must not be reused (the directory is watched before it is listed).
    real_scandir = os.scandir
    raced: list[str] = []

    @contextlib.contextmanager
    def racing_scandir(path: str) -> Iterator[Iterator[os.DirEntry[str]]]:
        with real_scandir(path) as it:
            entries = list(it)
        if path.endswith("/a") and not raced:
            raced.append(path)
            (ctx / "a" / "raced.txt").write_text("after the listing\n")
        yield iter(entries)

    monkeypatch.setattr(os, "scandir", racing_scandir)
    first = hashed(ctx)
    monkeypatch.setattr(os, "scandir", real_scandir)
    assert raced and "a/raced.txt" not in first[1]
    walked.reset()
    again = hashed(ctx)
    assert walked.anything
    assert again == cold(ctx, monkeypatch)
    assert "a/raced.txt" in again[1]


def test_events_about_ignored_names_keep_the_reuse(
    ctx: Path, watching: watch.Watcher, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    excludes = ("**/*.ipynb",)  # the notebook's own
    (ctx / ".dockerignore").write_text("*.log\nbuild\n")
    (ctx / "build").mkdir()
    first = hashed(ctx, excludes=excludes)
    hashed(ctx, excludes=excludes)
    (ctx / "run.log").write_text("noise\n")
    (ctx / "notes.ipynb").write_text("{}\n")  # a notebook saved beside the Dockerfile
    (ctx / "build" / "out.o").write_text("not in the context\n")
    (ctx / "build").rename(ctx / "build.tmp")  # a name not ignored: counts
    (ctx / "build.tmp").rename(ctx / "build")
    walked.reset()
    assert hashed(ctx, excludes=excludes) == first
    assert walked.anything
    walked.reset()
    (ctx / "more.log").write_text("noise\n")
    (ctx / "notes.ipynb").write_text("{ }\n")
    assert hashed(ctx, excludes=excludes) == first
    assert not walked.anything
    assert first == cold(ctx, monkeypatch, excludes=excludes)
    (ctx / "build2").mkdir()
    assert hashed(ctx, excludes=excludes) == cold(ctx, monkeypatch, excludes=excludes) != first


def test_a_name_ignored_by_one_walk_but_not_another_counts(
    ctx: Path, watching: watch.Watcher, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed(ctx, excludes=("*.log",))
    hashed(ctx)
    (ctx / "run.log").write_text("seen by the second\n")
    walked.reset()
    assert hashed(ctx) == cold(ctx, monkeypatch)
    assert walked.anything


def test_the_dockerfiles_own_ignore_file_outside_the_root_is_keyed_by_content(
    ctx: Path, tmp_path: Path, watching: watch.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    df_dir = tmp_path / "dockerfiles"
    df_dir.mkdir()
    dockerfile = df_dir / "app.Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    own = df_dir / "app.Dockerfile.dockerignore"
    own.write_text("a/x.txt\n")
    first = hashed(ctx, dockerfile=dockerfile)
    assert "a/x.txt" not in first[1]
    own.write_text("a/y.txt\n")
    second = hashed(ctx, dockerfile=dockerfile)
    assert second == cold(ctx, monkeypatch, dockerfile=dockerfile)
    assert "a/x.txt" in second[1] and "a/y.txt" not in second[1]
    own.unlink()
    third = hashed(ctx, dockerfile=dockerfile)
    assert third == cold(ctx, monkeypatch, dockerfile=dockerfile) == cold(ctx, monkeypatch)
    # Another Dockerfile (no ignore file of its own) does not reuse app.Dockerfile's answer.
    own.write_text("top.txt\n")
    assert hashed(ctx, dockerfile=dockerfile) == cold(ctx, monkeypatch, dockerfile=dockerfile)
    assert hashed(ctx) == cold(ctx, monkeypatch)


def test_selections_and_excludes_are_kept_apart(
    ctx: Path, watching: watch.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_a = ContentSpec((PathSelector("a"),))
    everything = hashed(ctx)
    assert hashed(ctx, only_a) == cold(ctx, monkeypatch, spec=only_a)
    assert hashed(ctx, excludes=("a",)) == cold(ctx, monkeypatch, excludes=("a",))
    assert hashed(ctx) == everything


def test_a_file_selected_by_name_is_watched_without_listing_its_directory(
    ctx: Path, watching: watch.Watcher, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = ContentSpec((PathSelector("b/deep/z.txt"),))  # COPY b/deep/z.txt /
    before = hashed(ctx, one)
    assert walked.looked_up and not walked.listed
    hashed(ctx, one)
    (ctx / "b" / "deep" / "z.txt").write_text("edited z\n")
    after = hashed(ctx, one)
    assert after == cold(ctx, monkeypatch, spec=one)
    assert after[0] != before[0]


def test_the_stat_cache_agrees(
    ctx: Path, tmp_path: Path, watching: watch.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    open_meta_db(store).close()
    hashed(ctx, store=store)
    hashed(ctx, store=store)
    _same_size_edit(ctx / "a" / "x.txt", "HELLO x\n")
    assert hashed(ctx, store=store) == cold(ctx, monkeypatch)


def test_a_replaced_root_is_not_the_watched_one(
    ctx: Path, tmp_path: Path, watching: watch.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The context's parent renamed and a new tree put in its place: no event on any watched
    # directory, but the root's inode differs.
    hashed(ctx)
    parent = ctx.parent
    parent.rename(tmp_path.with_name(tmp_path.name + "-moved"))
    try:
        parent.mkdir()
        (ctx / "a").mkdir(parents=True)
        (ctx / "a" / "x.txt").write_text("another tree\n")
        assert hashed(ctx) == cold(ctx, monkeypatch)
    finally:
        shutil.rmtree(parent)
        tmp_path.with_name(tmp_path.name + "-moved").rename(parent)


def test_nested_roots_share_a_watched_directory(
    ctx: Path, watching: watch.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = ctx / "b"
    hashed(ctx)
    hashed(inner)
    (inner / "deep" / "z.txt").write_text("both see it\n")
    assert hashed(inner) == cold(inner, monkeypatch)
    assert hashed(ctx) == cold(ctx, monkeypatch)


def test_a_directory_moved_out_of_the_context_stops_mattering(
    ctx: Path, tmp_path: Path, watching: watch.Watcher, walked: Walked
) -> None:
    hashed(ctx)
    moved = tmp_path / "moved-out"
    (ctx / "b").rename(moved)
    after = hashed(ctx)
    (moved / "deep" / "z.txt").write_text("outside now\n")
    walked.reset()
    assert hashed(ctx) == after
    assert not walked.anything
    # The kernel keeps exactly the watches of what the context now holds (the moved
    # directories' watches were removed at the end of the walk after the move).
    state = watching._roots[str(ctx)]
    assert sorted(state.dirs) == ["", "a"]
    assert _kernel_watches(watching) == len(state.dirs) + len(state.files)


def _kernel_watches(watcher: watch.Watcher) -> int:
    kernel = watcher._kernel
    assert isinstance(kernel, watch.Inotify)
    info = Path(f"/proc/self/fdinfo/{kernel.fd}").read_text()
    return sum(1 for line in info.splitlines() if line.startswith("inotify wd:"))


def test_a_forked_child_neither_trusts_nor_steals_the_parents_watch(
    ctx: Path, watching: watch.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = hashed(ctx)
    generation = watching._roots[str(ctx)].generation
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        ok = watch._WATCHER is not watching and watch.changed_since(str(ctx), generation)
        (ctx / "a" / "x.txt").write_text("written by the child\n")
        # the child's own watch works, from a fresh instance
        again = hashed(ctx)
        (ctx / "top.txt").write_text("child again\n")
        ok = ok and hashed(ctx)[0] != again[0]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    after = hashed(ctx)  # the child's writes reached the parent's queue, not the child's
    assert after == cold(ctx, monkeypatch)
    assert after[0] != before[0]


# -- which processes watch ------------------------------------------------------------------


def test_by_default_a_root_is_watched_from_its_second_walk(
    ctx: Path, watching: watch.Watcher, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "_MODE", None)  # neither enable() nor disable() called: a CLI
    hashed(ctx)
    assert not watching._roots  # one build, no watch
    hashed(ctx)  # a warm process: from now on
    walked.reset()
    hashed(ctx)
    assert not walked.anything


def test_disable_and_the_environment_turn_it_off(
    ctx: Path, watching: watch.Watcher, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBBUILD_CONTEXT_WATCH", "0")
    for _ in range(3):
        walked.reset()
        hashed(ctx)
        assert walked.anything
    monkeypatch.delenv("NBBUILD_CONTEXT_WATCH")
    hashed(ctx)
    assert watching._roots
    watch.disable()
    assert not watching._roots
    for _ in range(2):
        walked.reset()
        hashed(ctx)
        assert walked.anything
    watch.enable()
    hashed(ctx)
    walked.reset()
    hashed(ctx)
    assert not walked.anything


# -- the kernel-independent logic -----------------------------------------------------------


def _event(wd: int, mask: int, name: bytes = b"") -> bytes:
    # As the kernel writes them: the name NUL-padded to a multiple of 16 bytes.
    padded = name + b"\0" * (16 - len(name) % 16) if name else b""
    return struct.pack("iIII", wd, mask, 0, len(padded)) + padded


def test_parse_events_reads_wd_mask_and_the_padded_name() -> None:
    buf = _event(3, watch.IN_MODIFY, b"file.txt") + _event(1, watch.IN_DELETE_SELF)
    buf += _event(-1, watch.IN_Q_OVERFLOW) + _event(2, watch.IN_CREATE | watch.IN_ISDIR, b"\xff")
    assert list(watch.parse_events(buf)) == [
        (3, watch.IN_MODIFY, "file.txt"),
        (1, watch.IN_DELETE_SELF, ""),
        (-1, watch.IN_Q_OVERFLOW, ""),
        (2, watch.IN_CREATE | watch.IN_ISDIR, os.fsdecode(b"\xff")),
    ]


def test_a_queue_overflow_means_everything_changed(ctx: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    watcher = watch.Watcher()
    try:
        walks = [watcher.begin(str(r), auto=False) for r in (ctx, other)]
        assert all(w is not None for w in walks)
        gens = [w.generation for w in walks if w is not None]
        assert not watcher.changed_since(str(ctx), gens[0])
        watcher.handle(_event(-1, watch.IN_Q_OVERFLOW))
        assert watcher.changed_since(str(ctx), gens[0])
        assert watcher.changed_since(str(other), gens[1])
    finally:
        watcher.clear()


def test_a_watch_the_kernel_dropped_means_its_roots_changed(ctx: Path) -> None:
    watcher = watch.Watcher()
    try:
        walk = watcher.begin(str(ctx), auto=False)
        assert walk is not None
        walk.directory("a", os.stat(ctx).st_dev)
        wd = watcher._roots[str(ctx)].dirs["a"]
        # An event about an unknown wd (one removed earlier) changes nothing...
        watcher.handle(_event(wd + 1000, watch.IN_IGNORED))
        assert not watcher.changed_since(str(ctx), walk.generation)
        watcher.handle(_event(wd, watch.IN_IGNORED))
        assert watcher.changed_since(str(ctx), walk.generation)
    finally:
        watcher.clear()


@pytest.mark.parametrize(
    ("fs_type", "trusted"),
    [
        (0xEF53, True),  # ext4
        (0x58465342, True),  # xfs
        (0x9123683E, True),  # btrfs
        (0x01021994, True),  # tmpfs
        (0x794C7630, True),  # overlayfs
        (0x2FC12FC1, True),  # zfs
        (0x6969, False),  # nfs
        (0xFF534D42, False),  # cifs
        (0xFE534D42, False),  # smb2
        (0x65735546, False),  # fuse
        (0x01021997, False),  # 9p
        (0x12345678, False),  # unknown
        (None, False),  # statfs failed
    ],
)
def test_only_local_filesystems_are_trusted(fs_type: int | None, trusted: bool) -> None:
    assert watch.local_filesystem(fs_type) is trusted


def test_statfs_reads_a_filesystem_type(tmp_path: Path) -> None:
    assert isinstance(watch.filesystem_type(str(tmp_path)), int)
    assert watch.filesystem_type(str(tmp_path / "missing")) is None


def test_a_non_local_filesystem_falls_back_to_walking(
    ctx: Path, watching: watch.Watcher, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "filesystem_type", lambda path: 0x6969)  # NFS
    first = hashed(ctx)
    for _ in range(2):
        walked.reset()
        assert hashed(ctx) == first
        assert walked.listed >= 4
    assert not watching._roots


class _Limited(watch.Inotify):
    """Real inotify that runs out of watches after ``allowed`` of them (ENOSPC)."""

    def __init__(self, allowed: int) -> None:
        super().__init__()
        self.allowed = allowed
        self.removed: list[int] = []

    def add_watch(self, path: str, mask: int) -> int:
        if self.allowed <= 0:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        self.allowed -= 1
        return super().add_watch(path, mask)

    def rm_watch(self, wd: int) -> None:
        self.removed.append(wd)
        super().rm_watch(wd)


def test_an_exhausted_watch_limit_falls_back_to_walking(
    ctx: Path, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = _Limited(allowed=2)
    limited = watch.Watcher(kernel)
    monkeypatch.delenv("NBBUILD_CONTEXT_WATCH", raising=False)
    monkeypatch.setattr(watch, "_WATCHER", limited)
    monkeypatch.setattr(watch, "_MODE", True)
    monkeypatch.setattr(source_mod, "_KEPT", {})
    try:
        first = hashed(ctx)
        assert first == cold(ctx, monkeypatch)
        assert len(kernel.removed) == 2  # the watches it did get are given back
        for _ in range(2):
            walked.reset()
            assert hashed(ctx) == first
            assert walked.listed >= 4
        assert not limited._roots
    finally:
        limited.clear()


class _Unreadable(watch.Inotify):
    """Real inotify whose queue cannot be read (an error the kernel might report)."""

    def read(self) -> bytes:
        raise OSError(errno.EIO, "cannot read the queue")


def test_an_unreadable_event_queue_falls_back_to_walking(
    ctx: Path, walked: Walked, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = watch.Watcher(_Unreadable())
    monkeypatch.delenv("NBBUILD_CONTEXT_WATCH", raising=False)
    monkeypatch.setattr(watch, "_WATCHER", broken)
    monkeypatch.setattr(watch, "_MODE", True)
    monkeypatch.setattr(source_mod, "_KEPT", {})
    first = hashed(ctx)
    assert first == cold(ctx, monkeypatch)
    for _ in range(2):
        walked.reset()
        assert hashed(ctx) == first
        assert walked.listed >= 4
    assert broken._kernel is None and not broken._roots
