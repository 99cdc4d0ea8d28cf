"""A SQLite page and its revision are one read transaction, even when a write lands between."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from asset_service.domain.models import AssetFilter
from asset_service.store.sqlite import SqliteStore, _queries
from tests.records import pending_record


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    return sqlite_store


async def test_a_write_between_the_counter_and_the_rows_is_not_in_the_page(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await store.insert(pending_record(label="a.txt"))
    real = _queries.counter

    def counter_then_write(c: sqlite3.Connection) -> int:
        revision = real(c)
        # Another writer commits right after the counter was read (a plain connection,
        # as a second process would).
        other = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            rev = other.execute(
                "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value"
            ).fetchone()[0]
            other.execute(
                "UPDATE assets SET label = 'moved.txt', revision = ? WHERE id = ?", (rev, a.id)
            )
            other.execute("COMMIT")
        finally:
            other.close()
        return revision

    monkeypatch.setattr(_queries, "counter", counter_then_write)
    page = await store.query(AssetFilter(), 10, "")
    assert page.revision == a.revision
    assert [(x.id, x.label, x.revision) for x in page.assets] == [(a.id, "a.txt", a.revision)]
    monkeypatch.setattr(_queries, "counter", real)
    later = await store.query(AssetFilter(), 10, "")
    assert later.revision == a.revision + 1 and later.assets[0].label == "moved.txt"
