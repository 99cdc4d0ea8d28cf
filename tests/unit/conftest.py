"""Fixtures shared by the unit tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
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


@pytest.fixture
def restore_root() -> Iterator[None]:
    """The root logger's handlers and level as they were, after a test configures it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
