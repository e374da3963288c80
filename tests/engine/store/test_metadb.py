"""meta.db: creation, WAL, migrations, and refusal of a newer schema."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from engine.errors import StoreError
from engine.store.metadb import MIGRATIONS, Migration, open_meta_db


def test_creates_dir_0700_wal_and_stat_cache(tmp_path: Path) -> None:
    root = tmp_path / "nbroot"
    db = open_meta_db(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert db.path == root / "meta.db"
    assert db.schema_version == len(MIGRATIONS)
    with db.reading() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "stat_cache" in tables
    db.close()


def test_reopen_is_idempotent(tmp_path: Path) -> None:
    open_meta_db(tmp_path).close()
    db = open_meta_db(tmp_path)
    assert db.schema_version == len(MIGRATIONS)
    db.close()


def test_appended_migration_runs_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def m_extra(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("CREATE TABLE extra (k TEXT PRIMARY KEY)")

    steps: list[Migration] = [*MIGRATIONS, m_extra]
    open_meta_db(tmp_path).close()  # at the current version
    db = open_meta_db(tmp_path, steps)
    assert db.schema_version == len(steps)
    db.close()
    open_meta_db(tmp_path, steps).close()
    assert calls == [1]


def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("boom")

    with pytest.raises(StoreError):
        open_meta_db(tmp_path, [*MIGRATIONS, broken])
    db = open_meta_db(tmp_path)
    assert db.schema_version == len(MIGRATIONS)
    with db.reading() as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "half" not in names
    db.close()


def test_newer_schema_refused(tmp_path: Path) -> None:
    open_meta_db(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "meta.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"newer nbbuild"):
        open_meta_db(tmp_path)


def test_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "meta.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        open_meta_db(tmp_path)


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    db = open_meta_db(tmp_path)
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute(
            "INSERT INTO stat_cache VALUES (?, 1, 1, 1, 1, 1, 1, 'sha256:x', 1)", (b"/p",)
        )
        raise RuntimeError("abort")
    with db.reading() as conn:
        assert conn.execute("SELECT COUNT(*) FROM stat_cache").fetchone()[0] == 0
    db.close()
