"""SqliteStore.ping fails while its database file is not where it was opened (readiness)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from asset_service.domain.errors import Unavailable
from asset_service.store.sqlite import SqliteStore


async def test_ping_fails_while_the_database_file_is_moved_away_and_recovers(
    tmp_path: Path,
) -> None:
    db = tmp_path / "assets.db"
    store = SqliteStore(db)
    await store.open()
    try:
        await store.ping()
        db.rename(tmp_path / "moved.db")
        with pytest.raises(Unavailable, match=r"assets\.db is gone .*put it back"):
            await store.ping()
        (tmp_path / "moved.db").rename(db)
        await store.ping()
    finally:
        await store.close()


async def test_ping_fails_when_another_file_replaced_the_database(tmp_path: Path) -> None:
    db = tmp_path / "assets.db"
    store = SqliteStore(db)
    await store.open()
    try:
        shutil.copy(db, tmp_path / "copy.db")
        (tmp_path / "copy.db").replace(db)  # a restore over the live file
        with pytest.raises(Unavailable, match="no longer the file this server opened"):
            await store.ping()
    finally:
        await store.close()
