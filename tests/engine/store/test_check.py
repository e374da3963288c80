"""check / check --repair: a clean store is clean; damage is found and quarantined."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.store.check import check
from engine.store.gc import disk_usage, prune
from engine.store.store import Lease, Result, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "root")
    yield s
    s.close()


def add(store: Store, lease: Lease, key: str, base: tuple[str, ...] = ()) -> Result:
    d = store.new_diff_dir(lease)
    (d / "f").write_text(key)
    r = store.commit(keys=[key], base=base, diff=d, exec_ns=1, description=key, lease=lease)
    store.set_checksum(r, "spec", "sha256:c")
    return r


def kinds(report: object) -> list[tuple[str, str]]:
    return sorted((p.kind, p.id) for p in report.problems)  # type: ignore[attr-defined]


def test_empty_and_populated_stores_are_clean(store: Store) -> None:
    assert check(store).clean
    with store.lease() as lease:
        a = add(store, lease, "a")
        add(store, lease, "b", a.layers)
        store.blobs.put_bytes(b"blob")
        report = check(store)
        assert report.clean, report.problems
        assert report.checked_snapshots == 2 and report.checked_results == 2
        assert report.checked_blobs == 1
        # a live build's unpublished diff is not an orphan
        store.new_diff_dir(lease)
        assert check(store).clean
    repaired = check(store, repair=True)
    assert repaired.clean and repaired.quarantined == 0


def test_repair_quarantines_result_with_deleted_snapshot_and_dependents(store: Store) -> None:
    with store.lease() as lease:
        base = add(store, lease, "base")
        mid = add(store, lease, "mid", base.layers)
        top = add(store, lease, "top", mid.layers)
        merged = store.commit(
            keys=["merge"], base=top.layers, diff=None, exec_ns=0, description="merge", lease=lease
        )
        other = add(store, lease, "other")
    shutil.rmtree(store.diff_path(mid.layers[-1]))

    report = check(store)
    assert not report.clean
    assert kinds(report) == sorted(
        [
            ("missing-snapshot", mid.layers[-1]),
            ("broken-result", mid.id),
            ("broken-result", top.id),
            ("broken-result", merged.id),
        ]
    )
    # check without repair changes nothing
    assert store.result(mid.id) == mid

    report = check(store, repair=True)
    assert len(report.repaired) == 4 and not report.held
    assert report.quarantined == 4  # three results and the snapshot row
    for gone in (mid, top, merged):
        assert store.result(gone.id) is None
    assert store.result(base.id) == base and store.result(other.id) == other
    with store.lease() as lease:
        assert store.lookup(["top"], lease) is None
        assert store.lookup(["merge"], lease) is None
        assert store.lookup(["base"], lease) == base
    with store.db.reading() as conn:
        rows = conn.execute("SELECT kind, item, data FROM quarantine ORDER BY id").fetchall()
        keys = conn.execute("SELECT key FROM cache_keys ORDER BY key").fetchall()
        checksums = conn.execute("SELECT COUNT(*) FROM result_checksums").fetchone()[0]
    assert [k[0] for k in keys] == ["base", "other"]
    assert checksums == 2
    by_item = {item: (kind, json.loads(data)) for kind, item, data in rows}
    assert by_item[top.id][0] == "result"
    assert by_item[top.id][1]["keys"] == ["top"]
    assert by_item[top.id][1]["layers"] == list(top.layers)
    assert by_item[top.id][1]["checksums"] == {"spec": "sha256:c"}
    assert by_item[mid.layers[-1]][0] == "snapshot"

    # now clean; top's own diff is unreferenced garbage that prune removes
    assert check(store).clean
    garbage = [r for r in disk_usage(store) if r.kind == "snapshot"]
    assert [r.id for r in garbage] == [top.layers[-1]]
    prune(store, until_ns=10**15)
    assert not store.diff_path(top.layers[-1]).exists()
    assert check(store).clean


def test_repair_never_touches_leased_items(store: Store) -> None:
    with store.lease() as lease:
        a = add(store, lease, "a")
        b = add(store, lease, "b", a.layers)
    shutil.rmtree(store.diff_path(a.layers[0]))
    with store.lease() as lease:
        store.hold(b, lease)
        report = check(store, repair=True)
        assert {(p.kind, p.id) for p in report.held} == {
            ("broken-result", b.id),
            ("missing-snapshot", a.layers[0]),
        }
        assert {(p.kind, p.id) for p in report.repaired} == {("broken-result", a.id)}
        assert store.result(b.id) == b
    report = check(store, repair=True)
    assert not report.held
    assert check(store).clean


def test_snapshot_replaced_by_file_is_moved_to_quarantine(store: Store) -> None:
    with store.lease() as lease:
        a = add(store, lease, "a")
    path = store.diff_path(a.layers[0])
    shutil.rmtree(path)
    path.write_text("not a dir")
    report = check(store)
    assert ("missing-snapshot", a.layers[0]) in kinds(report)
    check(store, repair=True)
    assert not path.exists()
    moved = list(store.quarantine_dir.iterdir())
    assert len(moved) == 1 and moved[0].read_text() == "not a dir"
    assert check(store).clean


def test_orphan_dirs_and_partial_blobs(store: Store) -> None:
    (store.snapshots_dir / "orphan1").mkdir()
    (store.snapshots_dir / "orphan1" / "f").write_text("x")
    (store.tmp_dir / "leftover").mkdir()
    (store.blobs.ingest_dir / "zzz-99999999-5").write_bytes(b"partial")
    report = check(store)
    assert kinds(report) == [
        ("orphan-dir", "orphan1"),
        ("partial-blob", "zzz-99999999-5"),
        ("tmp-dir", "leftover"),
    ]
    report = check(store, repair=True)
    assert len(report.repaired) == 3
    assert os.listdir(store.tmp_dir) == []
    assert sorted(os.listdir(store.snapshots_dir)) == ["tmp"]
    assert os.listdir(store.blobs.ingest_dir) == []
    assert check(store).clean


def test_corrupt_blob_is_quarantined(store: Store) -> None:
    good = store.blobs.put_bytes(b"good")
    bad = store.blobs.put_bytes(b"original")
    path = store.blobs.path(bad)
    os.chmod(path, 0o600)
    path.write_bytes(b"tampered")
    (store.blobs.sha256_dir / "not-a-digest").write_text("?")
    report = check(store)
    assert kinds(report) == [("blob-digest", bad), ("stray-blob", "not-a-digest")]
    report = check(store, repair=True)
    assert report.quarantined == 2
    assert not store.blobs.has(bad) and store.blobs.has(good)
    assert sorted(p.name for p in store.quarantine_dir.iterdir()) == [
        f"blob-{bad[7:]}",
        "stray-not-a-digest",
    ]
    assert check(store).clean


def test_stale_lease_reported_and_reclaimed(store: Store) -> None:
    with store.db.transaction() as conn:
        conn.execute(
            "INSERT INTO leases (id, pid, start_ticks, boot_id, created_ns) VALUES ('x', 99999999, 1, '', 0)"
        )
        conn.execute("INSERT INTO lease_snapshots VALUES ('abc', 'x')")
    (store.tmp_dir / "abc").mkdir()
    report = check(store)
    assert kinds(report) == [("stale-lease", "x")]
    report = check(store, repair=True)
    assert ("stale-lease", "x") in [(p.kind, p.id) for p in report.repaired]
    assert not (store.tmp_dir / "abc").exists()
    assert check(store).clean


def test_dangling_rows_found_when_foreign_keys_were_bypassed(store: Store) -> None:
    with store.lease() as lease:
        add(store, lease, "a")
    # another tool wrote without foreign keys (sqlite3's default)
    raw = sqlite3.connect(store.db.path)
    raw.execute("INSERT INTO cache_keys VALUES ('ghost-key', 'ghost', 0)")
    raw.execute("INSERT INTO result_checksums VALUES ('ghost', 'spec', 'sha256:x')")
    raw.commit()
    raw.close()
    report = check(store)
    found = kinds(report)
    assert ("dangling-key", "ghost-key") in found
    assert ("dangling-checksum", "ghost:spec") in found
    assert any(k == "foreign-key" for k, _ in found)
    check(store, repair=True)
    assert check(store).clean
