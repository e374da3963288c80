"""GC: disk usage records and prune semantics (BuildKit's all/until/caps, LRU, parents)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import UsageError
from engine.store import gc
from engine.store.gc import calculate_keep_bytes, disk_usage, prune
from engine.store.store import (
    Lease,
    Result,
    Store,
    register_snapshot_root,
    unregister_snapshot_root,
)

HOUR = 3600 * 10**9


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "root")
    yield s
    s.close()


def add(store: Store, lease: Lease, key: str, size: int, base: tuple[str, ...] = ()) -> Result:
    d = store.new_diff_dir(lease)
    (d / "data").write_bytes(b"x" * size)
    return store.commit(keys=[key], base=base, diff=d, exec_ns=1, description=key, lease=lease)


def set_used(store: Store, result: Result, ns_ago: int, count: int = 0) -> None:
    with store.db.transaction() as conn:
        conn.execute(
            "UPDATE results SET last_used_ns = ?, usage_count = ? WHERE id = ?",
            (time.time_ns() - ns_ago, count, result.id),
        )


def ids(store: Store) -> set[str]:
    with store.db.reading() as conn:
        return {r[0] for r in conn.execute("SELECT id FROM results")}


def snapshot_dirs(store: Store) -> set[str]:
    return {p.name for p in store.snapshots_dir.iterdir() if p.name != "tmp"}


def sizes(store: Store) -> dict[str, int]:
    return {r.id: r.size for r in disk_usage(store)}


def test_calculate_keep_bytes_table() -> None:
    # (total, free, max_used, reserved, min_free) -> keep ; cases from BuildKit's semantics
    cases = [
        ((100, 50, 0, 0, 0), 0),  # no cap
        ((100, 50, 80, 0, 0), 80),  # max-used-space
        ((100, 50, 0, 30, 0), 30),  # reserved only: prune down to it
        ((100, 50, 20, 30, 0), 30),  # never below reserved
        ((100, 50, 0, 0, 70), 80),  # 20 bytes short of free: keep total - 20
        ((100, 50, 0, 0, 40), 100),  # enough free: keep everything
        ((100, 50, 90, 0, 70), 80),  # min(max-used, total - excess)
        ((100, 50, 60, 0, 70), 60),
        ((100, 50, 0, 90, 70), 90),  # reserved wins over min-free
    ]
    for (total, free, mx, rs, mf), want in cases:
        got = calculate_keep_bytes(
            total, free, max_used_space=mx, reserved_space=rs, min_free_space=mf
        )
        assert got == want, (total, free, mx, rs, mf)


def test_disk_usage_records(store: Store) -> None:
    with store.lease() as lease:
        a = add(store, lease, "a", 50_000)
        b = add(store, lease, "b", 10_000, base=a.layers)
        m = store.commit(
            keys=["m"], base=b.layers, diff=None, exec_ns=0, description="m", lease=lease
        )
        records = {r.id: r for r in disk_usage(store)}
        assert set(records) == {a.id, b.id, m.id}
        assert all(r.in_use and not r.reclaimable for r in records.values())
        assert records[b.id].parents == (a.id,)
        assert records[m.id].parents == (a.id, b.id)
        assert records[m.id].size == 0
        assert 50_000 <= records[a.id].size < 70_000
        assert records[a.id].description == "a" and records[a.id].kind == "result"
    records = {r.id: r for r in disk_usage(store)}
    assert all(not r.in_use and r.reclaimable and not r.shared for r in records.values())
    assert sum(r.size for r in records.values()) == sum(
        store.snapshot_size(s) or 0 for s in b.layers
    )


def test_prune_removes_everything_unused(store: Store) -> None:
    with store.lease() as lease:
        a = add(store, lease, "a", 1000)
        add(store, lease, "b", 1000, base=a.layers)
        add(store, lease, "c", 1000)
    report = prune(store)
    assert len(report.removed) == 3
    assert report.snapshots == 3 and report.reclaimed > 3000
    assert ids(store) == set() and snapshot_dirs(store) == set()
    # children go before their parents
    order = [r.description for r in report.removed]
    assert order.index("b") < order.index("a")
    with store.db.reading() as conn:
        for table in ("snapshots", "cache_keys", "result_layers", "result_checksums"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0


def test_prune_keeps_leased_and_their_chains(store: Store) -> None:
    with store.lease() as lease:
        a = add(store, lease, "a", 1000)
        b = add(store, lease, "b", 1000, base=a.layers)
        c = add(store, lease, "c", 1000)
    with store.lease() as lease:
        assert store.lookup(["b"], lease) == b
        report = prune(store, all=True)
        # b is held; a is its parent (its diff is in b's chain); only c goes
        assert [r.id for r in report.removed] == [c.id]
        assert ids(store) == {a.id, b.id}
        assert snapshot_dirs(store) == set(b.layers)
        usage = {r.id: r for r in disk_usage(store)}
        assert usage[a.id].in_use and usage[b.id].in_use
    prune(store)
    assert ids(store) == set()


def test_parent_with_unleased_child_is_removed_after_it(store: Store) -> None:
    with store.lease() as lease:
        a = add(store, lease, "a", 1000)
        b = add(store, lease, "b", 1000, base=a.layers)
    set_used(store, a, 10 * HOUR)
    set_used(store, b, 1 * HOUR)
    # until=5h: only a is old enough, but b (recent) still uses a's diff -> a stays
    assert prune(store, until_ns=5 * HOUR).removed == ()
    assert ids(store) == {a.id, b.id}
    report = prune(store, until_ns=30 * 60 * 10**9)
    assert [r.id for r in report.removed] == [b.id, a.id]


def test_until_filter(store: Store) -> None:
    with store.lease() as lease:
        old = add(store, lease, "old", 1000)
        new = add(store, lease, "new", 1000)
    set_used(store, old, 49 * HOUR)
    set_used(store, new, 47 * HOUR)
    report = prune(store, until_ns=48 * HOUR)
    assert [r.id for r in report.removed] == [old.id]
    assert ids(store) == {new.id}


def test_max_used_space_lru(store: Store) -> None:
    with store.lease() as lease:
        rs = [add(store, lease, f"r{i}", 20_000) for i in range(5)]
    # last use: r3 oldest, then r0, r4, r1, r2
    for r, hours in zip(rs, (4, 2, 1, 5, 3), strict=True):
        set_used(store, r, hours * HOUR)
    size = sizes(store)
    total = sum(size.values())
    cap = total - size[rs[3].id] - size[rs[0].id] // 2  # needs two removals
    report = prune(store, max_used_space=cap)
    assert [r.id for r in report.removed] == [rs[3].id, rs[0].id]
    assert report.keep_bytes == cap and report.total_before == total
    assert ids(store) == {rs[1].id, rs[2].id, rs[4].id}
    assert sum(sizes(store).values()) <= cap
    # exactly at the cap: nothing more goes
    at = sum(sizes(store).values())
    assert prune(store, max_used_space=at).removed == ()


def test_lru_ties_broken_by_usage_count(store: Store) -> None:
    with store.lease() as lease:
        busy = add(store, lease, "busy", 10_000)
        idle = add(store, lease, "idle", 10_000)
    same = 3 * HOUR
    set_used(store, busy, same, count=9)
    set_used(store, idle, same, count=1)
    with store.db.transaction() as conn:
        conn.execute("UPDATE results SET last_used_ns = (SELECT MIN(last_used_ns) FROM results)")
    report = prune(store, max_used_space=1)
    assert [r.id for r in report.removed] == [idle.id, busy.id]


def test_reserved_space(store: Store) -> None:
    with store.lease() as lease:
        rs = [add(store, lease, f"r{i}", 20_000) for i in range(4)]
    for i, r in enumerate(rs):
        set_used(store, r, (10 - i) * HOUR)  # r0 least recently used
    size = sizes(store)
    keep = size[rs[2].id] + size[rs[3].id]
    # reserved alone (buildx's old --keep-storage): prune down to it, LRU first
    report = prune(store, reserved_space=keep)
    assert [r.id for r in report.removed] == [rs[0].id, rs[1].id]
    # reserved beats a smaller max-used-space: nothing more may go
    assert prune(store, reserved_space=keep, max_used_space=1).removed == ()
    assert ids(store) == {rs[2].id, rs[3].id}


def test_min_free_space(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with store.lease() as lease:
        rs = [add(store, lease, f"r{i}", 20_000) for i in range(3)]
    for i, r in enumerate(rs):
        set_used(store, r, (10 - i) * HOUR)
    # the real filesystem has far more free space than 1 byte: nothing to do
    assert prune(store, min_free_space=1).removed == ()
    # an impossible target frees everything prunable
    assert len(prune(store, min_free_space=1 << 62).removed) == 3
    assert ids(store) == set()
    with store.lease() as lease:
        rs = [add(store, lease, f"s{i}", 20_000) for i in range(3)]
    for i, r in enumerate(rs):
        set_used(store, r, (10 - i) * HOUR)
    size = sizes(store)
    # pretend the disk is 1 byte short of the target: one removal (the LRU one) suffices
    monkeypatch.setattr(gc, "_free_bytes", lambda s: 1000)
    report = prune(store, min_free_space=1001)
    assert [r.id for r in report.removed] == [rs[0].id]
    assert report.keep_bytes == sum(size.values()) - 1


def test_shared_with_images_needs_all(store: Store) -> None:
    with store.lease() as lease:
        img = add(store, lease, "img", 10_000)
        plain = add(store, lease, "plain", 10_000)
    roots = set(img.layers)

    def image_root(conn: sqlite3.Connection) -> set[str]:
        return roots

    register_snapshot_root(image_root)
    try:
        usage = {r.id: r for r in disk_usage(store)}
        assert usage[img.id].shared and not usage[img.id].reclaimable
        assert not usage[plain.id].shared and usage[plain.id].reclaimable
        report = prune(store)
        assert [r.id for r in report.removed] == [plain.id]
        report = prune(store, all=True)
        # the result goes, the image's layer stays (and is counted as a layer record)
        assert [r.id for r in report.removed] == [img.id]
        assert report.reclaimed == 0
        assert snapshot_dirs(store) == roots
        usage = {r.id: r for r in disk_usage(store)}
        assert list(usage) == list(img.layers)
        layer = usage[img.layers[0]]
        assert layer.kind == "snapshot" and layer.shared and not layer.reclaimable
    finally:
        unregister_snapshot_root(image_root)
    # the image is gone: its layer is garbage, collected by the next prune whatever the flags
    report = prune(store, until_ns=1000 * HOUR)
    assert [r.kind for r in report.removed] == ["snapshot"]
    assert snapshot_dirs(store) == set()


def test_image_layers_table_is_a_root(store: Store) -> None:
    from engine.images.store import ImageStore

    with store.lease() as lease:
        img = add(store, lease, "img", 1000)
    images = ImageStore(store)
    images.put("app", layers=img.layers, config={"os": "linux", "architecture": "amd64", "config": {}})
    assert prune(store).removed == ()
    prune(store, all=True)
    assert snapshot_dirs(store) == set(img.layers)
    images.remove("app")
    prune(store)
    assert snapshot_dirs(store) == set()


def test_negative_options_rejected(store: Store) -> None:
    with pytest.raises(UsageError):
        prune(store, max_used_space=-1)
    with pytest.raises(UsageError):
        prune(store, until_ns=-5)


def test_prune_reclaims_dead_leases_first(store: Store) -> None:
    with store.lease() as lease:
        r = add(store, lease, "k", 1000)
    # a lease row of a process that no longer exists (pid far above pid_max)
    with store.db.transaction() as conn:
        conn.execute(
            "INSERT INTO leases (id, pid, start_ticks, boot_id, created_ns) VALUES ('dead', 99999999, 1, '', 0)"
        )
        conn.execute("INSERT INTO lease_results VALUES ('dead', ?)", (r.id,))
    assert [x.id for x in prune(store).removed] == [r.id]
