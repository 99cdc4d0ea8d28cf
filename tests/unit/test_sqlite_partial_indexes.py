"""The content hash's and key slot's indexes hold only records that have one, and are used."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from asset_service.domain.errors import KeyTaken
from asset_service.domain.models import AssetFilter
from asset_service.store.sqlite import SCHEMA_VERSION, SqliteStore, _queries
from asset_service.store.sqlite._schema import LISTED_COLUMNS, RECORDS
from tests.records import pending_record
from tests.unit.sqlite_disk import pragma

# How schema version 8 defined them (every record in both).
VERSION_8 = (
    "CREATE INDEX assets_sha256 ON assets (sha256, seq)",
    "CREATE UNIQUE INDEX assets_key_slot ON assets (key_slot)",
)


def plan(db: Path, statement: str, args: tuple[object, ...]) -> str:
    with sqlite3.connect(db) as c:
        return " ".join(str(row[-1]) for row in c.execute(f"EXPLAIN QUERY PLAN {statement}", args))


def definitions(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as c:
        return dict(
            c.execute(
                "SELECT name, sql FROM sqlite_master WHERE name IN "
                "('assets_sha256', 'assets_key_slot')"
            ).fetchall()
        )


async def _filled(path: Path) -> SqliteStore:
    store = SqliteStore(path, reserve_bytes=0)
    await store.open()
    await store.insert(pending_record())
    await store.insert(dataclasses.replace(pending_record(), key="k1"))
    return store


async def test_lookups_by_key_and_by_content_hash_use_their_indexes(tmp_path: Path) -> None:
    db = tmp_path / "assets.db"
    store = await _filled(db)
    try:
        by_key = plan(db, f"SELECT {LISTED_COLUMNS} FROM {RECORDS} WHERE key_slot = ?", ("k1",))
        assert "USING INDEX assets_key_slot" in by_key
        sql, args = _queries.page_statement(AssetFilter(sha256="ab" * 32), "")
        assert "USING INDEX assets_sha256" in plan(db, sql, (*args, 10))
    finally:
        await store.close()


async def test_a_version_8_database_gets_the_partial_indexes_and_keeps_its_keys(
    tmp_path: Path,
) -> None:
    fresh, old = tmp_path / "fresh.db", tmp_path / "old.db"
    await (await _filled(fresh)).close()
    store = await _filled(old)
    await store.close()
    with sqlite3.connect(old) as c:
        c.execute("DROP INDEX assets_sha256")
        c.execute("DROP INDEX assets_key_slot")
        for statement in VERSION_8:
            c.execute(statement)
        c.execute("PRAGMA user_version = 8")
    assert definitions(old) != definitions(fresh)

    store = SqliteStore(old, reserve_bytes=0)
    await store.open()
    try:
        assert pragma(old, "user_version") == SCHEMA_VERSION
        assert definitions(old) == definitions(fresh)
        with pytest.raises(KeyTaken):
            await store.insert(dataclasses.replace(pending_record(), key="k1"))
        await store.insert(dataclasses.replace(pending_record(), key="k2"))
        assert (await store.key_holder("k2")) is not None
    finally:
        await store.close()
