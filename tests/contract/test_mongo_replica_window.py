"""Selector replays and rollbacks on a real replica set (MONGODB_URI only; issue 21, items 2, 8).

In the order a first real run should take them: the planner serves a replay from the
revision indexes; the floor is read at majority on the wire; a watcher of one process
replays another's writes from the store; and, with MONGODB_FAILOVER set (a command that
makes the replica set elect another primary), a watcher that lives through a failover
under load ends with the store's state. None of this has run here: no MongoDB server can
run on the development machine (the driver-boundary versions: tests/unit/test_mongo_history.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from asset_service.domain.errors import AssetError, HistoryGone, Unavailable
from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.models import Asset, AssetFilter, AssetType, Value, ValueKind
from asset_service.domain.watch import Selector
from asset_service.storage.memory import MemoryStorage
from asset_service.store.mongo import MongoStore
from tests.contract.test_store_contract import pending
from tests.feeds import take
from tests.unit.test_mongo_open import _stages

pytestmark = pytest.mark.requires("mongo")


async def test_a_replay_walks_the_revision_indexes_without_sorting(database: str) -> None:
    store = MongoStore(database)
    await store.open()
    try:
        made = [await store.insert(pending(f"p{i}")) for i in range(300)]
        for asset in made[::3]:
            await store.delete(asset.id)
        after = made[150].revision
        for collection in (store._assets, store._tombstones):
            cursor = collection.find({"revision": {"$gt": after}}).sort("revision", 1).limit(256)
            plan = await cursor.explain()
            kinds = {st["stage"] for st in _stages(plan["queryPlanner"]["winningPlan"])}
            assert "COLLSCAN" not in kinds and "SORT" not in kinds, (collection.name, kinds)
        replay = await store.changes_since(after, 1000)
        deleted = {a.id for a in made[::3]}
        changed = {a.id for a in made[151:]} - deleted
        assert {c.asset.id for c in replay.changes if c.kind.value == "PUT"} == changed
        assert {c.asset.id for c in replay.changes if c.kind.value == "DELETE"} == deleted
        revisions = [c.revision for c in replay.changes]
        assert revisions == sorted(revisions) and revisions[0] > after
    finally:
        await store.close()


class ReadConcerns(monitoring.CommandListener):
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "counters":
            self.seen.append((event.command_name, event.command.get("readConcern")))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

    def failed(self, event: monitoring.CommandFailedEvent) -> None: ...


async def test_the_history_floor_goes_out_at_read_concern_majority(database: str) -> None:
    listener = ReadConcerns()
    store = MongoStore(database)
    unused = store._client
    store._client = AsyncMongoClient(database, tz_aware=True, event_listeners=[listener])
    store._db = store._client.get_default_database()
    store._counters = store._db.get_collection("counters")
    await store._counters.insert_one({"_id": "revision", "value": 5})
    try:
        assert await store.current_revision() == 5
    finally:
        await store._client.close()
        await unused.close()
    assert [concern["level"] for _, concern in listener.seen] == ["majority"]


async def test_one_process_replays_anothers_writes_from_the_store(database: str) -> None:
    """Process B keeps ~8 changes in memory; A writes 60 and deletes some. A watch on B
    from before them is replayed from the store: each asset's state, deletions included."""
    writer = AssetManager(MongoStore(database), MemoryStorage(), Limits())
    reader = AssetManager(MongoStore(database), MemoryStorage(), Limits(watch_history_bytes=8192))
    await writer.start()
    await reader.start()
    try:
        await reader.hub.history.ready()
        start = await reader.store.current_revision()
        made = [
            await writer.create_pending("t", f"p{i}", "", AssetType.VALUE, ()) for i in range(60)
        ]
        for asset in made[:10]:
            await writer.delete(asset.id)
        async with asyncio.timeout(30):  # B's feed has them: its history moved past `start`
            while (reader.hub.history.floor or 0) <= start:
                await reader.hub.history.next_move().wait()
        events = await reader.watch_selector(Selector(task_id="t"), start)
        got = await take(events, 60, seconds=30)
        await events.aclose()
        kinds = {e.asset.id: e.kind for e in got}
        assert [kinds[a.id] for a in made[:10]] == ["DELETED"] * 10
        assert [kinds[a.id] for a in made[10:]] == ["CHANGED"] * 50
    finally:
        await writer.stop()
        await reader.stop()


def failover_command() -> str:
    return os.environ.get("MONGODB_FAILOVER", "")


@pytest.mark.requires("mongo_failover")
async def test_a_watcher_that_lives_through_a_failover_ends_with_the_stores_state(
    database: str,
) -> None:
    """Two processes write while MONGODB_FAILOVER makes the set elect another primary
    (e.g. `mongosh "$MONGODB_URI" --eval 'rs.stepDown(10)'`, or a script that kills the
    primary's mongod so that its unreplicated writes are rolled back when it returns). A
    selector watcher lists, then follows; whenever it is told to list again it does. At
    the end its state equals the store's and it never saw one revision with two contents."""
    one = AssetManager(MongoStore(database), MemoryStorage(), Limits())
    two = AssetManager(MongoStore(database), MemoryStorage(), Limits(watch_history_bytes=65536))
    await one.start()
    await two.start()
    rng = random.Random(8)
    writing = True
    contents: dict[int, tuple[str, str]] = {}

    async def write(manager: AssetManager) -> None:
        live: list[str] = []
        while writing:
            try:
                if rng.random() < 0.6 or not live:
                    made = await manager.create_pending("f", "x", "", AssetType.VALUE, ())
                    live.append(made.id)
                elif rng.random() < 0.5:
                    value = Value(ValueKind.TEXT, b"done")
                    await manager.fulfill_with_value(live.pop(), value, "")
                else:
                    await manager.delete(live.pop())
            except AssetError:  # the failover refuses writes for a while
                await asyncio.sleep(0.2)

    async def listing() -> tuple[dict[str, Asset], int]:
        """Every asset of task f, and the first page's revision."""
        known: dict[str, Asset] = {}
        token, first = "", None
        while True:
            page = await two.list_assets(AssetFilter(created_by_task="f"), 1000, token)
            first = page.revision if first is None else first
            for asset in page.assets:
                if asset.id not in known or known[asset.id].revision < asset.revision:
                    known[asset.id] = asset
            token = page.next_token
            if not token:
                return known, first

    async def follow() -> dict[str, Asset]:
        while True:
            try:
                known, revision = await listing()
                events = await two.watch_selector(Selector(task_id="f"), revision)
                async for event in events:
                    seen = contents.setdefault(event.revision, (event.asset.id, event.kind))
                    assert seen == (event.asset.id, event.kind), "one revision, two contents"
                    if event.kind == "DELETED":
                        known.pop(event.asset.id, None)
                    elif event.revision > getattr(known.get(event.asset.id), "revision", 0):
                        known[event.asset.id] = event.asset
                    if not writing and event.revision >= target:
                        return known
            except (HistoryGone, Unavailable):
                await asyncio.sleep(0.5)

    target = 1 << 62
    writers = [asyncio.create_task(write(m)) for m in (one, two)]
    watcher = asyncio.create_task(follow())
    try:
        await asyncio.sleep(3)
        done = await asyncio.to_thread(
            subprocess.run, failover_command(), shell=True, timeout=120, check=False
        )
        assert done.returncode == 0, "MONGODB_FAILOVER failed"
        await asyncio.sleep(15)  # the election, and writes on the new primary
        writing = False
        await asyncio.gather(*writers)
        end = await one.create_pending("f", "end", "", AssetType.VALUE, ())
        target = end.revision
        known = await asyncio.wait_for(watcher, 120)
        final, _ = await listing()
        assert {i: a.revision for i, a in final.items()} == {
            i: a.revision for i, a in known.items()
        }
    finally:
        writing = False
        watcher.cancel()
        await one.stop()
        await two.stop()
