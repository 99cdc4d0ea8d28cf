"""End to end: follow() on a store far bigger than the watch history converges while writes go on.

The server keeps ~16 changes in memory (--watch-history-bytes 16KiB) and holds 20,000
assets; another client keeps creating, fulfilling and deleting assets the whole time.
Listing takes dozens of pages, so the watch from the first page's revision is far below the
history: the server replays it from the store. Before (issue 21, item 2) it was refused
with OUT_OF_RANGE, follow() listed again, was refused again, and never caught up.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asset_client import Asset, AssetStatus, AsyncAssetClient, WatchEventType
from asset_client import AssetType as ClientType

from asset_service.domain.models import Asset as Record
from asset_service.domain.models import AssetType, Status, new_asset_id
from asset_service.store import open_store
from tests.serverproc import ServerProcess, database_url_for, serving

SEEDED = 20_000
PAGE = 500


async def seed(url: str, count: int) -> None:
    """The records, written straight into the store before the server starts (through
    the server's own store class; 20k RPCs would take most of the test's time)."""
    store = open_store(url)
    await store.open()
    try:
        at = datetime.now(UTC)
        for start in range(0, count, 256):
            await asyncio.gather(
                *(
                    store.insert(
                        Record(
                            id=new_asset_id(),
                            label=f"seed-{n}.txt",
                            status=Status.PENDING,
                            type=AssetType.VALUE,
                            media_type="text/plain",
                            created_at=at,
                            updated_at=at,
                            created_by_task="seed",
                            tags=("bulk",),
                        )
                    )
                    for n in range(start, min(count, start + 256))
                )
            )
    finally:
        await store.close()


@pytest.fixture
def big_server(tmp_path: Path) -> Iterator[ServerProcess]:
    url = database_url_for(tmp_path)
    asyncio.run(seed(url, SEEDED))
    args = ["--watch-history-bytes", "16KiB"]
    with serving(ServerProcess(tmp_path / "data", url, extra_args=args)) as proc:
        yield proc


async def test_follow_converges_on_a_large_store_while_writes_go_on(
    big_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asset_client")
    rng = random.Random(2121)
    writing = True
    writes = 0

    async def write(client: AsyncAssetClient) -> None:
        """Creates, fulfils (some seeded promises too) and deletes, about 150 a second."""
        nonlocal writes
        mine: list[str] = []
        seeded = [a.id for a in (await client.list_page(page_size=1000)).assets]
        while writing:
            roll = rng.random()
            if roll < 0.4 or not mine:
                made = await client.create_pending("w", f"w{writes}", type=ClientType.VALUE)
                mine.append(made.id)
            elif roll < 0.6:
                await client.fulfill(mine.pop(rng.randrange(len(mine))), value="done")
            elif roll < 0.8 and seeded:
                await client.fulfill(seeded.pop(), value="seed done")
            else:
                await client.delete(mine.pop(rng.randrange(len(mine))))
            writes += 1
            await asyncio.sleep(0.005)

    known: dict[str, Asset] = {}
    async with (
        AsyncAssetClient(big_server.address, timeout=15) as writer_client,
        AsyncAssetClient(big_server.address, timeout=15) as client,
    ):
        writer = asyncio.create_task(write(writer_client))
        events = client.follow(page_size=PAGE, timeout=60)
        sentinel: Asset | None = None
        try:
            async with asyncio.timeout(25):
                async for event in events:
                    last = known.get(event.asset.id)
                    if event.type is WatchEventType.DELETED:
                        # (a relisting's DELETED carries the last state yielded)
                        assert last is None or event.revision >= last.revision
                        known.pop(event.asset.id, None)
                    else:
                        assert last is None or event.revision > last.revision, "once each"
                        known[event.asset.id] = event.asset
                    if sentinel is None and event.type is not WatchEventType.SNAPSHOT:
                        # The listing is over: let writes go on a little, then stop them
                        # and mark the end with one last asset.
                        await asyncio.sleep(0.5)
                        writing = False
                        await writer
                        sentinel = await writer_client.create_pending("end", "sentinel")
                    if sentinel is not None and event.asset.id == sentinel.id:
                        # Sent by the watch (not a listing): every change before it is in.
                        assert event.type is WatchEventType.CHANGED
                        break
        finally:
            writing = False
            await events.aclose()
            await writer
        final: dict[str, Asset] = {}
        token = ""
        while True:
            page = await client.list_page(page_size=1000, page_token=token)
            final.update((a.id, a) for a in page.assets)
            token = page.next_page_token
            if not token:
                break

    assert writes > 50, "writes went on while it listed"
    assert len(final) >= SEEDED
    assert {i: a.revision for i, a in known.items()} == {i: a.revision for i, a in final.items()}
    statuses = {a.status for a in known.values()}
    assert AssetStatus.AVAILABLE in statuses and AssetStatus.PENDING in statuses
    relisted = [r for r in caplog.records if "listing again" in r.getMessage()]
    assert relisted == [], "it caught up from the store, never listing again"
