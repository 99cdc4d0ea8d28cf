"""Promise leases, the database's clock, the sweep and post-image events on a real replica
set (issue 21, items 1, 6, 7, 9, 12; MONGODB_URI only).

No MongoDB server can run on the development machine: these cases wait for the first
`MONGODB_URI=... make test` (elsewhere deselected and counted: tests/left_out.py). Their
driver-boundary versions run everywhere (tests/unit/test_mongo_promise_leases.py,
test_mongo_feed_order.py, test_lease_sweep.py, test_writer_lease_liveness.py). They are
written in the order a first real run should take: what open() set up, what the server's
planner does with the sweep's query, then the behaviour that rests on them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from asset_service.domain import leases
from asset_service.domain.errors import Conflict, LeaseRanOut
from asset_service.domain.models import Asset, Change, Fulfillment, Status
from asset_service.store.mongo import MongoStore
from tests.records import pending_record

pytestmark = pytest.mark.requires("mongo")

SKEW = timedelta(minutes=10)
FULFILL = Fulfillment(size_bytes=3, sha256="ab" * 32, storage_path="generated/t/x")


@pytest.fixture
async def raw(database: str) -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(database, tz_aware=True)
    yield client.get_default_database()
    await client.close()


def promise(seconds: int) -> Asset:
    now = datetime.now(UTC)
    return dataclasses.replace(
        pending_record(at=now),
        lease_seconds=seconds,
        lease_expires_at=leases.deadline(now, seconds),
    )


# 1. What open() sets up ---------------------------------------------------------------


async def test_1_open_turns_on_post_images_and_indexes_the_leases(database: str, raw: Any) -> None:
    store = MongoStore(database)
    await store.open()
    try:
        infos = await (await raw.list_collections(filter={"name": "assets"})).to_list()
        assert infos[0]["options"]["changeStreamPreAndPostImages"] == {"enabled": True}
        names = [i["name"] async for i in await raw.leases.list_indexes()]
        assert "expires_at" in names
    finally:
        await store.close()


async def test_2_the_sweep_reads_due_leases_by_their_index(database: str, raw: Any) -> None:
    """`$expr: {$lte: ["$expires_at", "$$NOW"]}` sorted by expires_at: an index scan, no
    collection scan and no in-memory sort (if this fails, the sweep reads every lease)."""
    store = MongoStore(database)
    await store.open()
    try:
        for _ in range(20):
            await store.insert(promise(3600))
        plan = await raw.command(
            "explain",
            {
                "find": "leases",
                "filter": {"$expr": {"$lte": ["$expires_at", "$$NOW"]}},
                "sort": {"expires_at": 1},
                "limit": 100,
            },
            verbosity="queryPlanner",
        )
        winning = str(plan["queryPlanner"]["winningPlan"])
        assert "IXSCAN" in winning and "COLLSCAN" not in winning, winning
        assert "'SORT'" not in winning, winning
    finally:
        await store.close()


# 2. Leases as records, by the database's clock ------------------------------------------


async def test_3_renewals_are_no_events_and_the_expiry_is_one(database: str) -> None:
    """Through one process, watched by another: 10 renewals put nothing on the second's
    change stream; the expiry its sweep makes is one event."""
    worker, watcher = MongoStore(database), MongoStore(database)
    await worker.open()
    await watcher.open()
    feed = watcher.changes()
    try:
        a = await worker.insert(promise(2))
        first = await anext(feed)
        assert isinstance(first, Change) and first.revision == a.revision
        for _ in range(10):
            await worker.renew_lease(a.id, 2, datetime.now(UTC), "worker")
        await asyncio.sleep(2.5)
        assert await leases.expire_due(watcher, datetime.now(UTC) - SKEW) == 1
        async with asyncio.timeout(10):
            change = await anext(feed)
        assert isinstance(change, Change) and change.asset.status is Status.FAILED
        assert change.revision == a.revision + 1  # nothing in between
    finally:
        await worker.close()
        await watcher.close()


async def test_4_processes_clocks_decide_nothing(database: str) -> None:
    ahead, behind = MongoStore(database), MongoStore(database)
    await ahead.open()
    await behind.open()
    try:
        live, dead = await ahead.insert(promise(30)), await behind.insert(promise(1))
        await asyncio.sleep(1.5)
        now = datetime.now(UTC)
        renewed = await ahead.renew_lease(live.id, 30, now + SKEW, "worker")
        assert renewed.lease_expires_at is not None
        assert abs(renewed.lease_expires_at - (now + timedelta(seconds=30))) < timedelta(seconds=5)
        with pytest.raises(LeaseRanOut):
            await ahead.renew_lease(dead.id, 30, now - SKEW, "worker")
        assert [a.id for a in await behind.leases_run_out(now - SKEW, 10)] == [dead.id]
        done = await ahead.transition(live.id, Status.PENDING, FULFILL, now + SKEW)
        assert done.status is Status.AVAILABLE
    finally:
        await ahead.close()
        await behind.close()


async def test_5_a_fulfilment_racing_the_expiry_has_one_outcome(database: str, raw: Any) -> None:
    """At the lease's end, from two processes, ten times: the asset ends AVAILABLE or
    FAILED, and exactly one of the two writes says it applied."""
    worker, sweeper = MongoStore(database), MongoStore(database)
    await worker.open()
    await sweeper.open()
    try:
        for _ in range(10):
            a = await worker.insert(promise(1))
            assert a.lease_expires_at is not None
            await asyncio.sleep(max(0.0, (a.lease_expires_at - datetime.now(UTC)).total_seconds()))
            results = await asyncio.gather(
                worker.transition(a.id, Status.PENDING, FULFILL, datetime.now(UTC)),
                sweeper.transition(a.id, Status.PENDING, leases.expiry(a), datetime.now(UTC)),
                return_exceptions=True,
            )
            applied = [r for r in results if isinstance(r, Asset)]
            assert all(isinstance(r, Asset | Conflict) for r in results), results
            assert len(applied) <= 1, results
            final = await worker.get(a.id)
            assert final is not None
            lease = await raw.leases.find_one({"_id": a.id})
            if applied:  # the one that applied is the state, and the lease is over
                assert final.status is applied[0].status and lease is None
            else:  # both came at the wrong moment: still PENDING, for the next sweep
                assert final.status is Status.PENDING and lease is not None
    finally:
        await worker.close()
        await sweeper.close()


# 3. Writer-lease liveness ---------------------------------------------------------------


async def test_6_writer_beats_go_on_while_the_event_loop_is_blocked(
    database: str, raw: Any
) -> None:
    store = MongoStore(database)
    await store.open()
    try:
        await store.insert(pending_record())  # the writer's session is leased
        assert store._leases is not None
        before = await raw.writers.find_one({"_id": store._leases.instance})
        time.sleep(4)  # the loop is blocked; the heartbeat thread is not
        after = await raw.writers.find_one({"_id": store._leases.instance})
        assert after["beat"] >= before["beat"] + 2, (before, after)
    finally:
        await store.close()
