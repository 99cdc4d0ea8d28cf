"""A bounded orphan collection lists a bounded part of the storage and resumes after it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from asset_service.domain import recovery

IDS = [f"5b0e4f0e-0000-4000-8000-0000000002{i:02d}" for i in range(40)]
PATHS = [f"/s/uploads/d/{i}/f" for i in IDS]


class Storage:
    """Forty files in order; every fifth has no record. Counts what it listed."""

    def __init__(self) -> None:
        self.listed = 0
        self.removed: list[str] = []

    async def orphans(self, after: str = "") -> AsyncIterator[tuple[str, str]]:
        start = PATHS.index(after) + 1 if after else 0
        for asset_id, path in zip(IDS[start:], PATHS[start:], strict=True):
            self.listed += 1
            yield asset_id, path

    async def remove_orphan(self, path: str, unclaimed: Callable[[], Awaitable[bool]]) -> bool:
        if await unclaimed():
            self.removed.append(path)
            return True
        return False


class Store:
    async def get_many(self, asset_ids: Sequence[str]) -> dict[str, Any]:
        class Rec:
            def __init__(self, asset_id: str) -> None:
                self.storage_path = PATHS[IDS.index(asset_id)]

        return {a: Rec(a) for a in asset_ids if IDS.index(a) % 5}

    async def get(self, asset_id: str) -> Any:
        return (await self.get_many([asset_id])).get(asset_id)

    async def referenced(self, storage_paths: Sequence[str]) -> set[str]:
        return set()  # no bytes shared here


async def test_each_run_lists_a_bounded_part_and_the_passes_resume() -> None:
    storage, store = Storage(), Store()
    cursor, runs = "", 0
    while True:
        before = storage.listed
        removed, cursor = await recovery.reconcile_from(store, storage, 1, cursor)  # type: ignore[arg-type]
        runs += 1
        assert removed <= 1
        assert storage.listed - before <= recovery.SCAN_PER_REMOVAL
        if not cursor:
            break
        assert runs < 100
    assert storage.removed == [PATHS[i] for i in range(0, 40, 5)]
    assert storage.listed == 40, "each file listed once over the pass"
    # The next pass starts again from the beginning.
    removed, cursor = await recovery.reconcile_from(store, storage, 1, cursor)  # type: ignore[arg-type]
    assert removed == 1 and storage.removed[-1] == PATHS[0] and cursor == PATHS[0]
