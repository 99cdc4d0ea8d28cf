"""Group commit, unknown outcomes and writer leases on a real replica set (MONGODB_URI only).

No MongoDB server can run on the development machine, so these cases wait for the first
`MONGODB_URI=... make test` (elsewhere its cases are deselected and counted: tests/left_out.py;
the driver-boundary versions run everywhere on the fake replica set of tests/unit/mongo_fake).
They are in the order a first run should take them (docs/mongodb.md, "First run on a
replica set"): what open() requires, then ordering, then the rules the fake was written
from (abort on a statement error, killSessions), then liveness, then a failover.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient, ReturnDocument, monitoring
from pymongo.errors import OperationFailure

from asset_service.domain.errors import Conflict, FailedPrecondition
from asset_service.domain.models import Asset, Change, Failure, Resync, Status
from asset_service.store.mongo import MongoStore
from asset_service.store.mongo import _store as store_module
from tests.contract.test_store_contract import T0, pending

pytestmark = pytest.mark.requires("mongo")


async def test_open_finds_what_the_store_needs(database: str) -> None:
    """First: 6.0+, change-stream images turned on, the writer's lease with its user."""
    store = MongoStore(database)
    await store.open()
    try:
        assert store._pre_images, "collMod changeStreamPreAndPostImages was refused"
        await store.insert(pending("first"))
        assert store._leases is not None
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(database)
        lease = await client.get_default_database().writers.find_one(
            {"_id": store._leases.instance}
        )
        await client.close()
        assert lease is not None and lease.get("user") == store._leases.user
    finally:
        await store.close()


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


class Commands(monitoring.CommandListener):
    """Every command the store's client starts: (name, lsid, collection)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes | None, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        lsid = event.command.get("lsid")
        name = event.command_name
        self.seen.append((name, bytes(lsid["id"]) if lsid else None, str(event.command[name])))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


async def test_a_batch_holds_the_counter_for_the_same_commands_whatever_its_size(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 item 5 on the wire: from the counter's findAndModify to commitTransaction,
    a batch of 4 and a batch of 60 send the same commands."""
    commands = Commands()
    monkeypatch.setattr(
        store_module,
        "AsyncMongoClient",
        functools.partial(AsyncMongoClient, event_listeners=[commands]),
    )
    store = MongoStore(database)
    await store.open()
    holds = []
    try:
        for size in (4, 60):
            first = [await store.insert(pending(f"x{i}")) for i in range(size // 2)]
            commands.seen.clear()
            await asyncio.gather(
                *(store.insert(pending(f"n{i}")) for i in range(size // 4)),
                *(store.transition(a.id, Status.PENDING, Failure("x"), T0) for a in first[1:]),
                store.delete(first[0].id),
            )
            held: list[str] = []
            holder: bytes | None = None
            for name, lsid, collection in commands.seen:
                if name == "findAndModify" and collection == "counters":
                    held, holder = [], lsid
                elif lsid != holder or holder is None:
                    continue  # another session's command (a lease renewal, say)
                elif name == "commitTransaction":
                    holds.append(held)
                    break
                else:
                    held.append(name)
    finally:
        await store.close()
    # leases: find; assets: insert, update, find, delete; tombstones: update (replace);
    # usage: update (the accounting's $inc), find (task-1's PENDING cell: promises of it
    # left PENDING, others remain, so no hold is released).
    expected = ["find", "insert", "update", "find", "delete", "update", "update", "find"]
    assert holds[0] == holds[1] == expected, holds


async def test_a_duplicate_key_aborts_the_batch_and_fails_only_its_own_write(
    database: str,
) -> None:
    """MongoDB aborts a transaction on a duplicate key; the batch runs again without it."""
    store = MongoStore(database)
    await store.open()
    try:
        taken = await store.insert(pending("taken"))
        results = await asyncio.gather(
            *(store.insert(pending(f"ok{i}")) for i in range(20)),
            store.insert(taken),
            return_exceptions=True,
        )
    finally:
        await store.close()
    assert isinstance(results[-1], Conflict), results[-1]
    assert all(isinstance(r, Asset) for r in results[:-1]), results
    assert store._writer.reruns >= 1


async def test_a_validation_error_fails_only_its_own_write(database: str) -> None:
    """An operator's validator refuses one record: that write alone fails."""
    store = MongoStore(database)
    await store.open()
    try:
        await store._db.command("collMod", "assets", validator={"label": {"$ne": "refused"}})
        results = await asyncio.gather(
            *(store.insert(pending(f"ok{i}")) for i in range(20)),
            store.insert(pending("refused")),
            return_exceptions=True,
        )
    finally:
        await store.close()
    assert isinstance(results[-1], FailedPrecondition), results[-1]
    assert all(isinstance(r, Asset) for r in results[:-1]), results


async def test_settled_ends_a_doubtful_transaction_before_it_reads(database: str) -> None:
    """Issue 21 item 3: a transaction whose commit the store could not confirm is killed
    before the majority read, so that it cannot commit after the read said 'absent'."""
    store = MongoStore(database)
    await store.open()
    raw: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(database)
    session = raw.start_session()
    try:
        record = pending("doubtful")
        await session.start_transaction()
        doc = {"_id": record.id, "seq": 10**9, "revision": 10**9, "status": "PENDING"}
        await raw.get_default_database().assets.insert_one(doc, session=session)
        store._doubtful.append(session.session_id)  # as after an unknown commit
        assert await store.settled([record.id]) == {}
        with pytest.raises(OperationFailure) as gone:
            await session.commit_transaction()
        assert gone.value.code == 251  # NoSuchTransaction: the kill aborted it
        assert await store.get(record.id) is None
    finally:
        await session.end_session()
        await raw.close()
        await store.close()


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


def test_two_processes_ride_through_a_failover() -> None:
    """Last: scripts/mongo_failover_load.py (two servers under load, the primary steps
    down): every acknowledged write survives, revisions are unique and in order on a
    watch, nothing stored is left without a record. Needs 3+ members."""
    uri = os.environ["MONGODB_URI"]
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10000)
    try:
        hello = client.admin.command("hello")
    finally:
        client.close()
    if len(hello.get("hosts", [])) + len(hello.get("passives", [])) < 3:
        pytest.skip("a failover needs a replica set of 3 or more members")
    script = Path(__file__).resolve().parents[2] / "scripts" / "mongo_failover_load.py"
    done = subprocess.run(
        [sys.executable, str(script), "--seconds", "40", "--step-down-at", "15"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
