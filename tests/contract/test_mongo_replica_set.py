"""Group commit and writer leases on a real replica set (MONGODB_URI only).

No MongoDB server can run on the development machine, so these cases wait for the first
`MONGODB_URI=... make test` (elsewhere its cases are deselected and counted: tests/left_out.py;
the driver-boundary versions run everywhere: tests/unit/test_mongo_group_writes.py).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from pymongo import AsyncMongoClient, ReturnDocument

from asset_service.domain.models import Asset, Change, Resync
from asset_service.store.mongo import MongoStore
from tests.contract.test_store_contract import pending

pytestmark = pytest.mark.requires("mongo")


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A fresh database's URL, dropped afterwards."""
    name = f"asset_rs_{uuid.uuid4().hex[:12]}"
    url = urlunsplit(urlsplit(os.environ["MONGODB_URI"])._replace(path=f"/{name}"))
    yield url
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    await client.drop_database(name)
    await client.close()


async def test_two_processes_writing_at_once_get_unique_revisions_in_commit_order(
    database: str,
) -> None:
    """Two stores (two server processes) write 200 records at once; a change feed sees
    every one, in strictly increasing revision order."""
    one, two = MongoStore(database), MongoStore(database)
    await one.open()
    await two.open()
    feed = one.changes()
    try:
        written = await asyncio.gather(
            *((one if i % 2 else two).insert(pending(f"a{i}")) for i in range(200))
        )
        revisions = sorted(a.revision for a in written)
        assert len(set(revisions)) == 200
        seen: list[int] = []
        async with asyncio.timeout(30):
            async for change in feed:
                assert not isinstance(change, Resync)
                assert isinstance(change, Change)
                seen.append(change.revision)
                if len(seen) == 200:
                    break
        assert seen == revisions, "the change stream lists writes in revision order"
        assert one._writer.transactions + two._writer.transactions < 200
    finally:
        await one.close()
        await two.close()


async def test_a_dead_writer_holding_the_counter_is_ended_by_a_peer(database: str) -> None:
    """A transaction that incremented the counter and never commits (its process died),
    with a lease that is no longer renewed: a live store's write goes through within
    the lease time plus a renewal, not transactionLifetimeLimitSeconds (60 s)."""
    store = MongoStore(database)
    await store.open()
    raw: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(database)
    db = raw.get_default_database()
    session = raw.start_session()
    try:
        await store.insert(pending("first"))  # the counter exists
        await session.start_transaction()
        await db.counters.find_one_and_update(
            {"_id": "revision"},
            {"$inc": {"value": 1}},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        await db.writers.insert_one(
            {
                "_id": "dead-process",
                "lsid": session.session_id,
                "seen": datetime(2000, 1, 1, tzinfo=UTC),
            }
        )
        start = time.monotonic()
        stored: Asset = await store.insert(pending("after"))
        assert time.monotonic() - start < 10
        assert stored.revision > 0
        assert await db.writers.find_one({"_id": "dead-process"}) is None
    finally:
        await store.close()
        await session.end_session()
        await raw.close()
