"""Running an AssetManager for the length of a block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asset_service.domain.manager import AssetManager


@asynccontextmanager
async def running(manager: AssetManager) -> AsyncIterator[AssetManager]:
    """`manager` started, and stopped on the way out however the block ends."""
    await manager.start()
    try:
        yield manager
    finally:
        await manager.stop()
