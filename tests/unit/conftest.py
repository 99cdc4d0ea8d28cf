"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asset_service.store.sqlite import SqliteStore


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An open SqliteStore in tmp_path, without the disk-full reserve."""
    store = SqliteStore(tmp_path / "a.db", reserve_bytes=0)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
