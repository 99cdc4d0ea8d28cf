"""SqliteStore accounting, one write per cell per group transaction: only what commits counts."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest

from asset_service.domain.errors import Conflict, Unavailable
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    Change,
    Failure,
    Fulfillment,
    Hold,
    HoldKind,
    Status,
)
from asset_service.domain.usage import UsageGroup, recount
from asset_service.store.sqlite import SqliteStore, _writes
from tests.records import pending_record
from tests.unit.test_sqlite_group_commit import Held, queued, writer

FULFILL = Fulfillment(size_bytes=5, sha256="ab" * 32, storage_path="generated/t/x")


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    return sqlite_store


async def kept(store: SqliteStore) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Every cell the store keeps (read through usage(), group by group)."""
    cells: dict[tuple[str, str, str], tuple[int, int]] = {}
    for group in UsageGroup:
        cells.update((await store.usage(group.value, [], 1000)).cells)
    return {cell: value for cell, value in cells.items() if value != (0, 0)}


async def recounted(store: SqliteStore) -> dict[tuple[str, str, str], tuple[int, int]]:
    page = await store.query(AssetFilter(), 1000, "")
    assert not page.next_token
    return recount(page.assets)


async def test_a_batch_of_writes_keeps_every_cell_as_a_recount(store: SqliteStore) -> None:
    first = [await store.insert(pending_record(task="t", tags=("a",))) for _ in range(3)]
    async with Held(store):
        tasks = [
            asyncio.create_task(store.insert(pending_record(task=task, tags=tags)))
            for task, tags in (("t", ("a", "b")), ("u", ()), ("t", ("b",)), ("", ("a",)))
        ]
        tasks += [
            asyncio.create_task(store.transition(a.id, Status.PENDING, change, datetime.now(UTC)))
            for a, change in zip(first, (FULFILL, Failure("x"), FULFILL), strict=True)
        ]
        await queued(store, len(tasks))
        before = store.transactions
    await asyncio.gather(*tasks)
    assert store.transactions - before == 1  # one group transaction for all seven
    assert await kept(store) == await recounted(store)


async def test_a_write_rolled_back_after_its_accounting_leaves_no_trace_in_it(
    store: SqliteStore,
) -> None:
    """A write that raises once it has taken a revision and accounted for its record (its
    savepoint is rolled back) must take both with it; the batch's other writes still count."""

    def fails_late(c: sqlite3.Connection) -> tuple[Asset, Change]:
        _writes.insert(c, pending_record(task="t", tags=("a",)), False, store._group)
        raise Conflict("refused after accounting")

    promise = await store.insert(pending_record(task="t"))
    async with Held(store):
        ok = asyncio.create_task(store.insert(pending_record(task="t", tags=("a",))))
        doomed = asyncio.create_task(writer(store).submit(fails_late))
        moved = asyncio.create_task(
            store.transition(promise.id, Status.PENDING, FULFILL, datetime.now(UTC))
        )
        await queued(store, 3)
        before = store.transactions
    results = await asyncio.gather(ok, doomed, moved, return_exceptions=True)
    assert store.transactions - before == 1
    assert isinstance(results[1], Conflict)
    assert isinstance(results[0], Asset) and isinstance(results[2], Asset)
    assert await kept(store) == await recounted(store)
    # Its revision went back too: the batch's writes follow on without a gap, and the
    # counter the batch wrote says where the next one starts.
    assert [results[0].revision, results[2].revision] == [
        promise.revision + 1,
        promise.revision + 2,
    ]
    assert await store.current_revision() == promise.revision + 2
    assert (await store.insert(pending_record())).revision == promise.revision + 3
    cells = await store.usage(UsageGroup.TASK.value, ["t"], 10)
    assert cells.cells[(UsageGroup.TASK.value, "t", Status.PENDING.value)] == (1, 0)


async def test_a_batch_whose_commit_fails_counts_each_write_once_when_retried(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch is rolled back as a whole and its writes run again one by one: the
    deltas of the failed attempt must not be written again with theirs."""
    failures = iter([True])

    def flaky(c: sqlite3.Connection) -> None:
        if next(failures, False):
            raise sqlite3.OperationalError("disk I/O error")
        c.execute("COMMIT")

    async with Held(store):
        monkeypatch.setattr(writer(store), "commit", flaky)
        tasks = [
            asyncio.create_task(store.insert(pending_record(task="t", tags=("a",))))
            for _ in range(4)
        ]
        await queued(store, len(tasks))
    await asyncio.gather(*tasks)
    assert await kept(store) == await recounted(store)


async def test_a_batch_whose_commit_fails_for_good_counts_nothing(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(c: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async with Held(store):
        monkeypatch.setattr(writer(store), "commit", broken)
        tasks = [asyncio.create_task(store.insert(pending_record(task="t"))) for _ in range(3)]
        await queued(store, len(tasks))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    monkeypatch.undo()
    assert await kept(store) == {}
    await store.insert(pending_record(task="t"))  # the next batch starts from nothing
    assert await kept(store) == await recounted(store)


async def test_a_tasks_holds_go_when_its_last_promises_leave_pending_in_one_batch(
    store: SqliteStore,
) -> None:
    """The task's PENDING count is read inside the batch: it must include what the
    batch's earlier writes moved but has not written yet."""
    source = await store.insert(pending_record(task=""))
    first = await store.insert(pending_record(task="t-9"))
    second = await store.insert(pending_record(task="t-9"))
    hold = Hold("task:t-9", HoldKind.TASK, "input of task t-9")
    assert await store.hold_inputs("t-9", [source.id], hold) == [source.id]
    async with Held(store):
        tasks = [
            asyncio.create_task(store.transition(a.id, Status.PENDING, FULFILL, datetime.now(UTC)))
            for a in (first, second)
        ]
        await queued(store, 2)
        before = store.transactions
    await asyncio.gather(*tasks)
    assert store.transactions - before == 1
    assert (await store.get(source.id)).holds == ()  # type: ignore[union-attr]


async def test_holding_inputs_sees_a_promise_inserted_earlier_in_its_batch(
    store: SqliteStore,
) -> None:
    source = await store.insert(pending_record(task=""))
    hold = Hold("task:t-new", HoldKind.TASK, "input of task t-new")
    async with Held(store):
        made = asyncio.create_task(store.insert(pending_record(task="t-new")))
        held = asyncio.create_task(store.hold_inputs("t-new", [source.id], hold))
        await queued(store, 2)
        before = store.transactions
    await made
    assert await held == [source.id]
    assert store.transactions - before == 1


async def test_a_batch_that_fails_midway_counts_each_write_once_when_retried(
    store: SqliteStore,
) -> None:
    """An SQLite error inside a write (the transaction may be gone) rolls the whole batch
    back and runs each write again alone: what the writes before it had accounted for must
    go with the rollback."""
    tries = iter([True])

    def flaky(c: sqlite3.Connection) -> tuple[None, None]:
        if next(tries, False):
            raise sqlite3.OperationalError("disk I/O error")
        return None, None

    async with Held(store):
        tasks = [
            asyncio.create_task(store.insert(pending_record(task="t", tags=("a",))))
            for _ in range(3)
        ]
        tasks.append(asyncio.create_task(writer(store).submit(flaky)))
        await queued(store, len(tasks))
        before = store.transactions
    await asyncio.gather(*tasks)
    assert store.transactions - before == 1 + len(tasks)  # the batch, then each write alone
    assert await kept(store) == await recounted(store)


async def test_a_write_alone_that_fails_after_its_accounting_leaves_no_trace(
    store: SqliteStore,
) -> None:
    """A write alone in its transaction runs without a savepoint: its failure rolls the
    transaction back, revision and accounting included."""

    def fails_late(c: sqlite3.Connection) -> tuple[Asset, Change]:
        _writes.insert(c, pending_record(task="t", tags=("a",)), False, store._group)
        raise Conflict("refused after accounting")

    first = await store.insert(pending_record(task="t"))
    before = store.transactions
    with pytest.raises(Conflict):
        await writer(store).submit(fails_late)
    assert store.transactions - before == 1
    assert await store.current_revision() == first.revision
    assert await kept(store) == await recounted(store)
    assert (await store.insert(pending_record(task="t"))).revision == first.revision + 1
    assert await kept(store) == await recounted(store)
