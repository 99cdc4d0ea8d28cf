"""MongoStore's retention on the fake replica set (tests/unit/mongo_fake): transactions,
the database's clock, and the group writer's batches, which FerretDB cannot show.

A task's input holds are placed in a transaction that writes the task's PENDING cell and
released by the batch in which its last promise leaves PENDING; an expiry's delete tests
the expiry against $$NOW and the holds in its stamp's filter; the accounting cells equal a
recount after concurrent batches.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest

from asset_service.domain.errors import Conflict, Held
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    Failure,
    Fulfillment,
    Hold,
    HoldKind,
    Removal,
    Status,
)
from asset_service.domain.usage import UsageGroup, recount
from asset_service.store.mongo import MongoStore
from tests.records import pending_record
from tests.unit.mongo_fake import Server
from tests.unit.test_mongo_group_writes import server as server  # fixture
from tests.unit.test_mongo_group_writes import store as store  # fixture

FULFILL = Fulfillment(size_bytes=3, sha256="ab" * 32, storage_path="generated/t/x")


def available(server: Server, expires_in: float | None = None, task: str = "") -> Asset:
    record = pending_record(task=task, at=server.clock)
    expires = server.clock + timedelta(seconds=expires_in) if expires_in is not None else None
    return dataclasses.replace(
        record, status=Status.AVAILABLE, size_bytes=9, sha256="cd" * 32, expires_at=expires
    )


async def test_a_tasks_holds_go_in_the_batch_of_its_last_promise(
    server: Server, store: MongoStore
) -> None:
    source = await store.insert(available(server, expires_in=-60))
    first = await store.insert(pending_record(task="t-1", at=server.clock))
    second = await store.insert(pending_record(task="t-1", at=server.clock))
    hold = Hold("task:t-1", HoldKind.TASK, "input of task t-1", server.clock, "orch")
    assert await store.hold_inputs("t-1", [source.id], hold) == [source.id]
    assert await store.hold_inputs("t-1", [source.id], hold) == [source.id]  # once
    assert [h.owner for h in (await store.get(source.id)).holds] == ["task:t-1"]  # type: ignore[union-attr]
    assert await store.expired(server.clock, 10) == []

    # Both promises leave PENDING in one batch: the holds go with it.
    await asyncio.gather(
        store.transition(first.id, Status.PENDING, FULFILL, server.clock),
        store.transition(second.id, Status.PENDING, Failure("x"), server.clock),
    )
    assert store._writer.transactions == 4  # 3 inserts, then both in one batch
    assert server.documents("assets")[source.id]["holds"] == []
    assert [a.id for a in await store.expired(server.clock, 10)] == [source.id]


async def test_an_expiry_is_judged_by_the_databases_clock_and_holds_in_one_filter(
    server: Server, store: MongoStore
) -> None:
    soon = await store.insert(available(server, expires_in=30))
    skewed = Removal(reason="expired (ttl)", expired=True, now=server.clock + timedelta(hours=1))
    with pytest.raises(Conflict, match="has not expired"):
        await store.delete(soon.id, "retention", skewed)  # this server's clock is ahead
    server.clock += timedelta(seconds=31)
    await store.place_hold(soon.id, Hold("keep", reason="audit", placed_at=server.clock), 4)
    with pytest.raises(Held, match="keep \\(audit\\)"):
        await store.delete(soon.id, "retention", skewed)
    await store.release_hold(soon.id, "keep")
    gone = await store.delete(soon.id, "retention", skewed)
    assert gone is not None and gone.deletion_reason == "expired (ttl)" and gone.holds == ()
    tombstone = next(iter(server.documents("tombstones").values()))
    assert tombstone["deletion_reason"] == "expired (ttl)"


async def test_accounting_matches_a_recount_after_concurrent_batches(
    server: Server, store: MongoStore
) -> None:
    promises = [
        await store.insert(pending_record(task=f"t{i % 3}", tags=(f"k{i % 2}",), at=server.clock))
        for i in range(12)
    ]
    values = [await store.insert(available(server)) for _ in range(4)]
    await asyncio.gather(
        *(store.transition(p.id, Status.PENDING, FULFILL, server.clock) for p in promises[:6]),
        *(
            store.transition(p.id, Status.PENDING, Failure("x"), server.clock)
            for p in promises[6:9]
        ),
        store.delete(promises[9].id, "x"),
        store.delete(values[0].id, "x"),
    )
    kept = {}
    for group in UsageGroup:
        kept.update((await store.usage(group.value, [], 100)).cells)
    page = await store.query(AssetFilter(), 100, "")
    assert {c: v for c, v in kept.items() if v != (0, 0)} == recount(page.assets)
