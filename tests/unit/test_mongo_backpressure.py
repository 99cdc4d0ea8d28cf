"""Backpressure of the MongoDB group writer (issue 21 item 4), on the fake replica set.

A bounded queue that refuses at once, a deadline that starts when a write is submitted
(queue time included), writes that leave the queue unsent at their deadline, and the
start-up check that keeps --orphan-grace longer than any write can take to commit.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from asset_service.domain.errors import InvalidArgument, OutcomeUnknown, Overloaded
from asset_service.domain.models import Asset, new_asset_id
from asset_service.store.mongo import MongoStore
from asset_service.store.mongo._startup import (
    check_orphan_grace,
    commit_horizon,
    transaction_lifetime,
)
from asset_service.store.mongo._writer import ANSWER_MARGIN_SECONDS
from tests.unit.mongo_fake import Server, attach
from tests.unit.test_mongo_group_writes import server as server  # fixture
from tests.unit.test_mongo_writes import ASSET, closed_port


def process(server: Server, *, timeout: float = 5.0, queue: int = 2048) -> MongoStore:
    store = MongoStore(
        f"mongodb://127.0.0.1:{closed_port()}/db?serverSelectionTimeoutMS=100",
        operation_timeout=timeout,
        write_queue=queue,
    )
    return attach(store, server)  # type: ignore[no-any-return]


def new(label: str = "a") -> Asset:
    return Asset(**{**ASSET.__dict__, "id": new_asset_id(), "label": label})


async def until(check: Any, seconds: float = 2.0) -> None:
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, "timed out waiting"
        await asyncio.sleep(0.002)


def sent_ids(server: Server) -> set[str]:
    return set(server.documents("assets", at="local"))


async def test_a_full_queue_refuses_at_once_naming_the_limit(server: Server) -> None:
    server.hold_commits = asyncio.Event()
    store = process(server, queue=3)
    try:
        busy = asyncio.create_task(store.insert(new("in flight")))
        await until(lambda: any(c.name == "commitTransaction" for c in server.commands))
        queued = [asyncio.create_task(store.insert(new(f"q{i}"))) for i in range(3)]
        await asyncio.sleep(0.01)
        refused = new("refused")
        start = time.monotonic()
        with pytest.raises(Overloaded) as err:
            await store.insert(refused)
        assert time.monotonic() - start < 0.1, "refused at once, not after a wait"
        assert "queue is full (3 writes" in err.value.message
        assert "--mongo-write-queue" in err.value.message
        server.hold_commits.set()
        await asyncio.gather(busy, *queued)
    finally:
        await store.close()
    assert refused.id not in sent_ids(server), "nothing of the refused write was sent"
    assert store._writer.refused == 1


async def test_queue_time_counts_in_the_deadline_and_late_writes_leave_unsent(
    server: Server,
) -> None:
    """The first write's transaction hangs; one queued behind it has its own deadline
    from submission: it leaves the queue unsent at 0.5 s instead of waiting for its turn
    and then getting another full operation time."""
    server.hold_commits = asyncio.Event()
    store = process(server, timeout=0.5)
    try:
        first = asyncio.create_task(store.insert(new("stuck")))
        await until(lambda: any(c.name == "commitTransaction" for c in server.commands))
        late = new("late")
        start = time.monotonic()
        turn = r"could not have its turn in this server's MongoDB write queue within the 0\.5s"
        with pytest.raises(Overloaded, match=turn):
            await store.insert(late)
        waited = time.monotonic() - start
        with pytest.raises(OutcomeUnknown):
            await first  # its own commit never answered within its deadline
    finally:
        server.hold_commits.set()
        await store.close()
    assert 0.4 < waited < 1.0, waited
    assert store._writer.expired == 1
    assert late.id not in sent_ids(server)
    assert [c.name for c in server.commands].count("insert") == 1, "only the first was sent"


async def test_a_write_answers_within_its_deadline_from_submission(server: Server) -> None:
    """Nothing a caller submits waits for an answer longer than the operation time plus
    the answer's margin, however long the queue in front of it is."""
    server.rtt = 0.02  # each command: 20 ms; a batch takes ~0.14 s
    store = process(server, timeout=0.3)
    try:
        start = time.monotonic()
        results = await asyncio.gather(
            *(store.insert(new(f"w{i}")) for i in range(200)), return_exceptions=True
        )
        took = time.monotonic() - start
    finally:
        await store.close()
    done = [r for r in results if isinstance(r, Asset)]
    shed = [r for r in results if isinstance(r, Overloaded)]
    # Two batches fit in 0.3 s; the writes that could not have their turn in time left
    # the queue unsent (refused at once when the writer saw they could not make it).
    assert done and shed, {type(r) for r in results}
    assert took < 0.3 + ANSWER_MARGIN_SECONDS, took


def test_the_orphan_grace_must_outlast_any_commit() -> None:
    horizon = commit_horizon(15.0, 60.0)
    assert horizon == 15 + 60 + 30  # a transaction is aborted by 90 s at the latest
    check_orphan_grace(600.0, horizon)  # the default 10m
    check_orphan_grace(None, horizon)  # not given: nothing to check
    with pytest.raises(InvalidArgument, match="--orphan-grace 100s is too short") as err:
        check_orphan_grace(100.0, horizon)
    assert "105s" in err.value.message
    assert commit_horizon(15.0, 1.0) == 15 + 1 + 1  # the reaper runs at least every second
    assert commit_horizon(15.0, 600.0) == 15 + 600 + 60  # and at most a minute apart


class _Admin:
    def __init__(self, reply: dict[str, Any] | Exception) -> None:
        self.reply = reply

    async def command(self, *args: Any, **kw: Any) -> dict[str, Any]:
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


class _Client:
    def __init__(self, reply: dict[str, Any] | Exception) -> None:
        self.admin = _Admin(reply)


async def test_the_transaction_lifetime_is_read_from_the_server() -> None:
    from pymongo.errors import OperationFailure

    assert await transaction_lifetime(_Client({"transactionLifetimeLimitSeconds": 300})) == 300
    refused = OperationFailure("not authorized", 13)
    assert await transaction_lifetime(_Client(refused)) == 60.0  # MongoDB's default
