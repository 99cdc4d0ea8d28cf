"""The server's background loops outlive what goes wrong in one round."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from asset_service import loops
from asset_service.telemetry import NO_RECORDER


class Failing:
    """A manager whose retention sweep raises a bug's exception the first time."""

    def __init__(self) -> None:
        self.sweeps = 0

    async def expire_assets(self, hold: float) -> list[object]:
        self.sweeps += 1
        if self.sweeps == 1:
            # What a --retention-sweep-limit past SQLite's integers raised.
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return []

    async def warn_if_full(self) -> None:
        return None


async def test_a_loop_that_fails_unexpectedly_says_so_and_runs_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception other than the store's or the disk's ended the retention loop's task
    without a line: assets stopped expiring until a restart, and nothing said why."""
    manager = Failing()
    task = asyncio.create_task(loops._expire_assets(cast(Any, manager), 0.01, NO_RECORDER))
    try:
        async with asyncio.timeout(5):
            while manager.sweeps < 3:
                assert not task.done(), task
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith("retention sweep failed unexpectedly")
    assert record.exc_info is not None and record.exc_info[0] is OverflowError


async def test_the_assets_count_outlives_a_bug_in_one_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from asset_service.telemetry._state import AssetCounts, count_assets_forever

    rounds = 0

    class Store:
        async def count_by_status(self) -> dict[object, int]:
            nonlocal rounds
            rounds += 1
            if rounds == 1:
                raise OverflowError("a bug")
            return {}

    task = asyncio.create_task(count_assets_forever(cast(Any, Store()), AssetCounts(), 0.01))
    try:
        async with asyncio.timeout(5):
            while rounds < 3:
                assert not task.done(), task
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "counting assets by status failed unexpectedly" in record.getMessage()
