"""Store: commit/lookup, keys, checksums, history, diff directories and the commit race."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import StoreError
from engine.store.store import BuildRecord, Lease, Result, StepRecord, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "root")
    yield s
    s.close()


def make_diff(store: Store, lease: Lease, files: dict[str, bytes]) -> Path:
    d = store.new_diff_dir(lease)
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    return d


def commit(
    store: Store, lease: Lease, keys: list[str], base: tuple[str, ...] = (), **files: bytes
) -> Result:
    diff = make_diff(store, lease, files or {"f": b"data"})
    return store.commit(
        keys=keys, base=base, diff=diff, exec_ns=123, description="RUN x", lease=lease
    )


def test_open_creates_layout_0700(tmp_path: Path) -> None:
    root = tmp_path / "new" / "root"
    with Store.open(root) as s:
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        for sub in ("snapshots", "snapshots/tmp", "blobs/sha256", "blobs/ingest"):
            assert (root / sub).is_dir()
        assert s.root == root


def test_open_refuses_unusable_root(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a dir")
    with pytest.raises(StoreError):
        Store.open(tmp_path / "file")


def test_commit_lookup_round_trip(store: Store) -> None:
    with store.lease() as lease:
        r = commit(store, lease, ["k1"], f=b"hello")
        assert len(r.layers) == 1
        assert r.exec_ns == 123 and r.description == "RUN x"
        path = store.diff_path(r.layers[0])
        assert (path / "f").read_bytes() == b"hello"
        assert path.parent == store.snapshots_dir
        assert store.layer_paths(r) == [path]
        assert os.listdir(store.tmp_dir) == []
    with Store.open(store.root) as again, again.lease() as lease:
        hit = again.lookup(["k1"], lease)
        assert hit == r
        assert again.lookup(["other"], lease) is None
        assert again.lookup([], lease) is None


def test_chain_and_no_layer_result(store: Store) -> None:
    with store.lease() as lease:
        a = commit(store, lease, ["a"], f=b"1")
        b = commit(store, lease, ["b"], base=a.layers, g=b"2")
        assert b.layers[:-1] == a.layers and len(b.layers) == 2
        m = store.commit(
            keys=["m"],
            base=(*a.layers, *b.layers),
            diff=None,
            exec_ns=0,
            description="merge",
            lease=lease,
        )
        assert m.layers == (*a.layers, *b.layers)
        assert store.lookup(["m"], lease) == m
        assert [p.name for p in store.layer_paths(m)] == list(m.layers)


def test_lookup_bumps_last_used_and_count(store: Store) -> None:
    with store.lease() as lease:
        r = commit(store, lease, ["k"])
    with store.db.reading() as conn:
        before = conn.execute("SELECT last_used_ns, usage_count FROM results").fetchone()
    with store.lease() as lease:
        store.lookup(["k"], lease)
        store.lookup(["k"], lease)
    with store.db.reading() as conn:
        after = conn.execute("SELECT last_used_ns, usage_count FROM results").fetchone()
    assert after[0] > before[0] and after[1] == before[1] + 2
    assert store.result(r.id) == r


def test_keys_many_to_many(store: Store) -> None:
    with store.lease() as lease:
        r1 = commit(store, lease, ["k1", "k2", "k1"])
        assert store.keys_of(r1) == ["k1", "k2"]
        assert store.lookup(["k2"], lease) == r1
        # --no-cache: a fresh result under an existing key; the key names both, newest wins
        r2 = store.commit(
            keys=["k2", "k3"],
            base=(),
            diff=make_diff(store, lease, {"f": b"new"}),
            exec_ns=1,
            description="again",
            lease=lease,
            fresh=True,
        )
        assert r2.id != r1.id
        assert store.lookup(["k2"], lease) == r2
        assert store.lookup(["k1"], lease) == r1
        # keys are tried in order
        assert store.lookup(["k1", "k3"], lease) == r1
        assert store.lookup(["nope", "k3"], lease) == r2
    with store.db.reading() as conn:
        rows = conn.execute("SELECT result_id FROM cache_keys WHERE key = 'k2'").fetchall()
    assert {r[0] for r in rows} == {r1.id, r2.id}


def test_add_keys(store: Store) -> None:
    with store.lease() as lease:
        r = commit(store, lease, ["def"])
        store.add_keys(r, ["content1", "content2", "def"])
        assert store.keys_of(r) == ["content1", "content2", "def"]
        assert store.lookup(["content2"], lease) == r
        ghost = Result("doesnotexist", (), 0, 0)
        with pytest.raises(StoreError):
            store.add_keys(ghost, ["x"])


def test_checksums(store: Store) -> None:
    with store.lease() as lease:
        r = commit(store, lease, ["k"])
        assert store.get_checksum(r, "spec1") is None
        store.set_checksum(r, "spec1", "sha256:aa")
        store.set_checksum(r, "spec2", "sha256:bb")
        store.set_checksum(r, "spec1", "sha256:cc")
        assert store.get_checksum(r, "spec1") == "sha256:cc"
        assert store.get_checksum(r, "spec2") == "sha256:bb"
        # a checksum of a result that no longer exists is silently not remembered
        ghost = Result("gone", (), 0, 0)
        store.set_checksum(ghost, "spec1", "sha256:dd")
        assert store.get_checksum(ghost, "spec1") is None


def test_commit_race_returns_existing_and_discards_diff(store: Store) -> None:
    with store.lease() as first, store.lease() as second:
        d1 = make_diff(store, first, {"f": b"one"})
        d2 = make_diff(store, second, {"f": b"two"})
        r1 = store.commit(keys=["k"], base=(), diff=d1, exec_ns=5, description="a", lease=first)
        r2 = store.commit(
            keys=["x", "k"], base=(), diff=d2, exec_ns=9, description="b", lease=second
        )
        assert r2 == r1
        assert not d2.exists()
        # the loser's other keys now lead to the winner
        assert store.lookup(["x"], second) == r1
        names = sorted(os.listdir(store.snapshots_dir))
        assert names == sorted([*r1.layers, "tmp"])
        assert os.listdir(store.tmp_dir) == []
    with store.db.reading() as conn:
        assert conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM lease_snapshots").fetchone()[0] == 0


def test_commit_race_inside_transaction(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The winner publishes between the loser's pre-check and its transaction."""
    with store.lease() as first, store.lease() as second:
        d2 = make_diff(store, second, {"f": b"two"})
        winner: list[Result] = []
        started: list[bool] = []

        from engine.store.fsync import syncfs as real_syncfs

        def syncfs_then_race(path: Path) -> None:
            real_syncfs(path)
            if not started:
                started.append(True)
                winner.append(commit(store, first, ["k"]))

        monkeypatch.setattr("engine.store.store.syncfs", syncfs_then_race)
        r2 = store.commit(keys=["k"], base=(), diff=d2, exec_ns=1, description="b", lease=second)
        assert r2 == winner[0]
        assert sorted(os.listdir(store.snapshots_dir)) == sorted([*r2.layers, "tmp"])


def test_lookup_skips_result_with_missing_layer(store: Store) -> None:
    with store.lease() as lease:
        old = commit(store, lease, ["k"], f=b"old")
    os.rename(store.diff_path(old.layers[0]), store.root / "elsewhere")
    with store.lease() as lease:
        assert store.lookup(["k"], lease) is None
        new = commit(store, lease, ["k"], f=b"new")
        assert new.id != old.id
        assert store.lookup(["k"], lease) == new


def test_commit_unknown_base_is_an_error(store: Store) -> None:
    with store.lease() as lease:
        d = make_diff(store, lease, {"f": b"x"})
        with pytest.raises(StoreError, match="base layer"):
            store.commit(
                keys=["k"], base=("nosuchsnapshot",), diff=d, exec_ns=1, description="", lease=lease
            )
    # the lease's exit removed the directory that was renamed but never published
    assert sorted(os.listdir(store.snapshots_dir)) == ["tmp"]
    assert os.listdir(store.tmp_dir) == []


def test_commit_refuses_foreign_directory(store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with store.lease() as lease, pytest.raises(StoreError, match="not a diff directory"):
        store.commit(keys=["k"], base=(), diff=outside, exec_ns=1, description="", lease=lease)


def test_diff_path_rejects_traversal(store: Store) -> None:
    for bad in ("../x", "a/b", "", ".", "UPPER"):
        with pytest.raises(StoreError):
            store.diff_path(bad)


def test_new_diff_dir_and_lease_cleanup(store: Store) -> None:
    with store.lease() as lease:
        a = store.new_diff_dir(lease)
        b = store.new_diff_dir(lease)
        assert a != b and a.parent == store.tmp_dir == b.parent
        assert stat.S_IMODE(a.stat().st_mode) == 0o755
        (a / "f").write_text("x")
        (b / "locked").mkdir()
        (b / "locked" / "g").write_text("y")
        os.chmod(b / "locked", 0)
        store.discard_diff_dir(lease, a)
        assert not a.exists()
    assert not b.exists()
    assert os.listdir(store.tmp_dir) == []
    with store.db.reading() as conn:
        assert conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM lease_snapshots").fetchone()[0] == 0


def test_new_diff_dirs_registers_several_under_the_lease(store: Store) -> None:
    with store.lease() as lease:
        dirs = store.new_diff_dirs(lease, 3)
        assert len(set(dirs)) == 3 and all(d.parent == store.tmp_dir for d in dirs)
        assert all(stat.S_IMODE(d.stat().st_mode) == 0o755 and not os.listdir(d) for d in dirs)
        with store.db.reading() as conn:
            rows = conn.execute(
                "SELECT snapshot_id FROM lease_snapshots WHERE lease_id = ?", (lease.id,)
            ).fetchall()
        assert sorted(r[0] for r in rows) == sorted(d.name for d in dirs)
        (dirs[0] / "f").write_text("x")
    assert os.listdir(store.tmp_dir) == []
    with pytest.raises(StoreError, match="no longer held"):
        store.new_diff_dirs(lease, 2)
    assert os.listdir(store.tmp_dir) == []


def test_released_lease_cannot_be_used(store: Store) -> None:
    with store.lease() as lease:
        r = commit(store, lease, ["k"])
    with pytest.raises(StoreError, match="no longer held"):
        store.new_diff_dir(lease)
    with pytest.raises(StoreError, match="no longer held"):
        store.lookup(["k"], lease)
    with store.lease() as other:
        store.hold(r, other)
        with store.db.reading() as conn:
            held = conn.execute(
                "SELECT result_id FROM lease_results WHERE lease_id = ?", (other.id,)
            )
            assert [row[0] for row in held] == [r.id]


def test_snapshot_size_recorded(store: Store) -> None:
    with store.lease() as lease:
        r = commit(store, lease, ["k"], big=b"x" * 100_000)
    size = store.snapshot_size(r.layers[0])
    assert size is not None and 100_000 <= size < 200_000
    assert store.snapshot_size("nosuch") is None


def test_snapshot_diff_id(store: Store) -> None:
    with store.lease() as lease:
        r = commit(store, lease, ["k"])
    assert store.snapshot_diff_id(r.layers[0]) is None
    store.set_snapshot_diff_id(r.layers[0], "sha256:" + "d" * 64)
    with Store.open(store.root) as again:
        assert again.snapshot_diff_id(r.layers[0]) == "sha256:" + "d" * 64
    assert store.snapshot_diff_id("nosuch") is None


def test_history_round_trip(store: Store) -> None:
    step = StepRecord(
        digest="sha256:d",
        name="[2/3] RUN make",
        step=2,
        stage="build",
        line=4,
        instruction="RUN make",
        key="sha256:k",
        status="executed",
        duration_ns=1500,
        saved_ns=0,
        preimage={"type": "exec", "args": ["make"], "nested": {"a": [1, 2]}},
    )
    cached = StepRecord("sha256:e", "[3/3] COPY", 3, "build", 5, "COPY . .", None, "cached", 0, 900)
    first = BuildRecord(
        "nb-cell-1", 1000, "build", "executed", (step, cached), tag="app:1", context="/ctx"
    )
    second = BuildRecord("nb-cell-1", 2000, "", "failed", (step,))
    other = BuildRecord("other", 1500, "", "canceled", ())
    for record in (first, second, other):
        store.record_build(record)
    with Store.open(store.root) as again:
        assert again.last_build("nb-cell-1") == second
        assert again.last_build("other") == other
        assert again.last_build("missing") is None
        assert again.builds() == [second, other, first]
        assert again.builds(limit=1) == [second]
        assert again.builds()[2].steps[0].preimage == step.preimage


def test_last_build_same_time_prefers_later_record(store: Store) -> None:
    a = BuildRecord("n", 5, "", "executed", ())
    b = BuildRecord("n", 5, "t", "failed", ())
    store.record_build(a)
    store.record_build(b)
    assert store.last_build("n") == b


def test_threads_share_one_store(store: Store) -> None:
    import threading

    errors: list[BaseException] = []
    results: dict[int, Result] = {}

    def work(i: int) -> None:
        try:
            with store.lease() as lease:
                for j in range(10):
                    r = commit(store, lease, [f"k{j}"], f=str(j).encode())
                    hit = store.lookup([f"k{j}"], lease)
                    assert hit is not None and hit.id == r.id
                    results[i * 100 + j] = r
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for j in range(10):
        ids = {results[i * 100 + j].id for i in range(4)}
        assert len(ids) == 1


def test_a_store_is_used_only_in_the_mode_that_made_its_layers(tmp_path: Path) -> None:
    """Layers made by real root mark opaque dirs with trusted.* xattrs, rootless ones with
    user.*; overlayfs reads only its mode's kind, so the other mode is refused, clearly."""
    import sqlite3

    from engine.userns.helper import Helper
    from engine.userns.namespace import mode

    root = tmp_path / "store"
    helper = Helper()  # inside a user namespace: what a rootless build sees
    try:
        if mode() == "outside":
            # a normal user's store is made (and only used) inside the namespace
            assert (
                helper.call(
                    "nbbuild.cli:main", (["cache", "du", "--root", str(root)],), {}, capture=True
                )
                == 0
            )
            made = "user"
        else:
            Store.open(root).close()
            made = "trusted"
        db = sqlite3.connect(root / "meta.db")
        assert db.execute("SELECT key, value FROM settings").fetchall() == [
            ("overlay_xattrs", made)
        ]
        if made == "trusted":
            with pytest.raises(StoreError, match=r"made by real root.*another directory"):
                helper.call("engine.store.store:Store.open", (root,), {})
        db.execute("UPDATE settings SET value = 'other' WHERE key = 'overlay_xattrs'")
        db.commit()
        db.close()
        with pytest.raises(StoreError, match="cannot be used"):
            helper.call("engine.store.store:Store.open", (root,), {})
    finally:
        helper.close()
