"""Leases as records of their own (issue 21, item 12), one contract over every store.

A renewal writes the lease's record only: no revision, no change on the feed, the asset
record untouched. Only an expiry changes the asset: one conditional transition, one
revision, one change. A fulfilment never wins against a lease that ran out. Leases are
judged by the store's clock: the `now` a caller passes (memory, SQLite, FerretDB in its
test mode), or the database's ($$NOW) on a MongoDB replica set, where this suite waits
for real time to pass (`Clock`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from asset_service.domain.errors import Conflict, LeaseRanOut, NotFound
from asset_service.domain.leases import deadline
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    Change,
    ChangeKind,
    Failure,
    Fulfillment,
    Resync,
    Status,
)
from asset_service.domain.ports import MetadataStore
from tests.contract.conftest import Backend
from tests.contract.test_store_contract import T0
from tests.records import pending_record

FULFILL = Fulfillment(size_bytes=5, sha256="ab" * 32, storage_path="generated/t/x")


class Clock:
    """The time leases are judged by. On stores that take the caller's clock it is
    virtual and moves at once; on MongoDB the database's clock decides, so `advance`
    waits for real time (and `now`, which the store then ignores, follows it)."""

    def __init__(self, backend: Backend) -> None:
        self.database = backend.name == "mongo"
        self.now = _floored(datetime.now(UTC)) if self.database else T0

    async def advance(self, seconds: float) -> None:
        if self.database:
            await asyncio.sleep(seconds)
            self.now = _floored(datetime.now(UTC))
        else:
            self.now += timedelta(seconds=seconds)

    def near(self, got: datetime | None, expected: datetime) -> bool:
        """Equal on the caller's clock; within a second of it on the database's."""
        assert got is not None
        return got == expected if not self.database else abs(got - expected) < timedelta(seconds=1)


def _floored(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@pytest.fixture
def clock(backend: Backend) -> Clock:
    return Clock(backend)


def leased(clock: Clock, seconds: int = 2, task: str = "task-1") -> Asset:
    record = pending_record(task=task, at=clock.now)
    return dataclasses.replace(
        record, lease_seconds=seconds, lease_expires_at=deadline(clock.now, seconds)
    )


def expiry(reason: str = "lease expired") -> Failure:
    return Failure(reason, by="lease", lease_ran_out=True)


class Tap:
    """Reads a store's change feed in the background (cancelling a read would end it)."""

    def __init__(self, feed: AsyncIterator[Change | Resync]) -> None:
        self.got: list[Change | Resync] = []
        self._task = asyncio.create_task(self._pump(feed))

    async def _pump(self, feed: AsyncIterator[Change | Resync]) -> None:
        async for item in feed:
            self.got.append(item)

    async def drained(self, settle: float = 0.3) -> list[Change]:
        """What arrived since the last call, once the feed stayed quiet for `settle` s."""
        seen = -1
        while seen != len(self.got):
            seen = len(self.got)
            await asyncio.sleep(settle)
        out, self.got = self.got, []
        assert all(isinstance(c, Change) for c in out), out
        return [c for c in out if isinstance(c, Change)]

    def close(self) -> None:
        self._task.cancel()


@pytest.fixture
async def tap(backend: Backend) -> AsyncIterator[Tap | None]:
    """The store's feed, or None where there is none (FerretDB)."""
    if "change_streams" in backend.lacks:
        yield None
        return
    t = Tap(backend.store.changes())
    await asyncio.sleep(0)
    try:
        yield t
    finally:
        t.close()


async def drained(feed: Tap | None) -> list[Change]:
    return [] if feed is None else await feed.drained()


async def test_a_promise_carries_its_lease_and_reads_show_it(
    backend: Backend, clock: Clock
) -> None:
    store = backend.store
    a = await store.insert(leased(clock, 30))
    assert a.lease_seconds == 30 and clock.near(a.lease_expires_at, deadline(clock.now, 30))
    assert a.lease_expires_at is not None and a.lease_expires_at.tzinfo is not None
    assert await store.get(a.id) == a
    plain = await store.insert(pending_record(at=clock.now))
    got = await store.get(plain.id)
    assert got is not None and got.lease_seconds == 0 and got.lease_expires_at is None
    with pytest.raises(Conflict, match="no lease"):
        await store.renew_lease(plain.id, 10, clock.now, "worker")
    with pytest.raises(NotFound):
        await store.renew_lease(pending_record().id, 10, clock.now, "worker")


async def test_a_renewal_is_a_heartbeat_not_a_change(
    backend: Backend, clock: Clock, tap: Tap | None
) -> None:
    """No revision, no change on the feed, the record untouched: only reads of the lease
    (get, get_many, snapshot, a page, the sweep's) show the new end."""
    store = backend.store
    feed = tap
    a = await store.insert(leased(clock, 30))
    assert [c.revision for c in await drained(feed)] == ([a.revision] if feed else [])
    revision = await store.current_revision()
    renewed = await store.renew_lease(a.id, 60, clock.now, "worker")
    end = deadline(clock.now, 60)
    assert clock.near(renewed.lease_expires_at, end)
    assert renewed.revision == a.revision and renewed.updated_by == a.updated_by
    assert renewed.updated_at == a.updated_at
    assert dataclasses.replace(renewed, lease_expires_at=a.lease_expires_at) == a
    again = await store.renew_lease(a.id, 0, clock.now, "worker")  # 0: its own 30 s
    assert clock.near(again.lease_expires_at, deadline(clock.now, 30))
    assert await store.current_revision() == revision
    shown = again.lease_expires_at
    assert (await store.get(a.id)) == again
    assert (await store.get_many([a.id]))[a.id].lease_expires_at == shown
    assert (await store.snapshot([a.id]))[a.id].lease_expires_at == shown
    page = await store.query(AssetFilter(status=Status.PENDING), 10, "")
    assert [x.lease_expires_at for x in page.assets if x.id == a.id] == [shown]
    assert page.revision == revision
    assert await drained(feed) == []


async def test_renewals_take_no_revision_whatever_their_number(
    backend: Backend, clock: Clock, tap: Tap | None
) -> None:
    store = backend.store
    feed = tap
    a = await store.insert(leased(clock, 30))
    await drained(feed)
    revision = await store.current_revision()
    for _ in range(100):
        await store.renew_lease(a.id, 30, clock.now, "worker")
    b = await store.insert(pending_record(at=clock.now))
    assert b.revision > revision  # the next change takes the next revision...
    assert await store.current_revision() == b.revision
    got = await drained(feed)
    assert [c.asset.id for c in got] == ([b.id] if feed is not None else [])  # ...and only it


async def test_a_lease_that_ran_out_cannot_be_renewed(backend: Backend, clock: Clock) -> None:
    store = backend.store
    a = await store.insert(leased(clock, 1))
    await clock.advance(1.2)
    with pytest.raises(LeaseRanOut) as err:
        await store.renew_lease(a.id, 60, clock.now, "worker")
    assert clock.near(err.value.expires_at, a.lease_expires_at)  # type: ignore[arg-type]
    assert await store.get(a.id) == a


async def test_the_expiry_is_one_transition_one_revision_one_change(
    backend: Backend, clock: Clock, tap: Tap | None
) -> None:
    store = backend.store
    feed = tap
    a = await store.insert(leased(clock, 1))
    renewed = await store.renew_lease(a.id, 1, clock.now, "worker")
    assert [c.revision for c in await drained(feed)] == ([a.revision] if feed else [])
    with pytest.raises(Conflict, match="has not run out"):
        await store.transition(a.id, Status.PENDING, expiry(), clock.now)
    assert await store.leases_run_out(clock.now, 10) == []
    await clock.advance(1.2)
    due = await store.leases_run_out(clock.now, 10)
    assert [d.id for d in due] == [a.id]
    assert due[0].lease_expires_at == renewed.lease_expires_at
    revision = await store.current_revision()
    failed = await store.transition(a.id, Status.PENDING, expiry("expired!"), clock.now)
    assert failed.status is Status.FAILED and failed.failure_reason == "expired!"
    assert failed.updated_by == "lease" and failed.revision > revision
    # The record keeps the lease's last end; the lease itself is over.
    assert failed.lease_expires_at == renewed.lease_expires_at
    assert await store.get(a.id) == failed
    assert await store.leases_run_out(clock.now, 10) == []
    with pytest.raises(Conflict, match="FAILED"):
        await store.transition(a.id, Status.PENDING, expiry(), clock.now)
    with pytest.raises(Conflict):
        await store.renew_lease(a.id, 60, clock.now, "worker")
    got = await drained(feed)
    if feed is not None:
        assert [(c.kind, c.asset.status, c.revision) for c in got] == [
            (ChangeKind.PUT, Status.FAILED, failed.revision)
        ]


async def test_a_fulfilment_never_wins_against_a_lease_that_ran_out(
    backend: Backend, clock: Clock
) -> None:
    """Out is out for every caller, before the sweep has failed the promise too: the
    conditional write checks the lease, in the same atomic step as the asset."""
    store = backend.store
    late = await store.insert(leased(clock, 1))
    live = await store.insert(leased(clock, 60))
    gave_up = await store.insert(leased(clock, 1))
    await clock.advance(1.2)
    with pytest.raises(LeaseRanOut):
        await store.transition(late.id, Status.PENDING, FULFILL, clock.now)
    assert await store.get(late.id) == late
    done = await store.transition(live.id, Status.PENDING, FULFILL, clock.now)
    assert done.status is Status.AVAILABLE
    assert done.lease_expires_at == live.lease_expires_at  # its last end, kept
    with pytest.raises(Conflict):
        await store.renew_lease(live.id, 60, clock.now, "worker")
    # The producer may still fail a promise whose lease ran out (the sweep has not yet).
    failed = await store.transition(
        gave_up.id, Status.PENDING, Failure("crashed", by="worker"), clock.now
    )
    assert failed.status is Status.FAILED and failed.failure_reason == "crashed"
    due = {a.id for a in await store.leases_run_out(clock.now, 10)}
    assert due == {late.id}
    # Without a lease a fulfilment applies whenever it comes.
    plain = await store.insert(pending_record(at=clock.now))
    assert (await store.transition(plain.id, Status.PENDING, FULFILL, clock.now)).status is (
        Status.AVAILABLE
    )
    with pytest.raises(Conflict, match="no lease"):
        await store.transition(
            (await store.insert(pending_record(at=clock.now))).id,
            Status.PENDING,
            expiry(),
            clock.now,
        )


async def test_the_caller_clock_decides_to_the_millisecond(backend: Backend, clock: Clock) -> None:
    """Stores judged by the caller's clock: the lease has run out exactly at its end."""
    if clock.database:
        return  # the database's clock: covered to the second by the cases above
    store = backend.store
    a = await store.insert(leased(clock, 30))
    end = a.lease_expires_at
    assert end is not None
    just_before = end - timedelta(milliseconds=1)
    renewed = await store.renew_lease(a.id, 30, just_before, "worker")
    assert renewed.lease_expires_at == deadline(just_before, 30)
    end = renewed.lease_expires_at
    assert end is not None
    with pytest.raises(Conflict, match="has not run out"):
        await store.transition(a.id, Status.PENDING, expiry(), end - timedelta(milliseconds=1))
    with pytest.raises(LeaseRanOut):
        await store.renew_lease(a.id, 30, end, "worker")
    with pytest.raises(LeaseRanOut):
        await store.transition(a.id, Status.PENDING, FULFILL, end)
    assert [d.id for d in await store.leases_run_out(end, 10)] == [a.id]
    failed = await store.transition(a.id, Status.PENDING, expiry(), end)
    assert failed.status is Status.FAILED and failed.lease_expires_at == end


async def test_leases_run_out_lists_due_leases_earliest_first(
    backend: Backend, clock: Clock
) -> None:
    store = backend.store
    due = [await store.insert(leased(clock, s)) for s in (3, 1, 2)]
    future = await store.insert(leased(clock, 3600))
    await store.insert(pending_record(at=clock.now))  # no lease
    settled = await store.insert(leased(clock, 1))
    await store.transition(settled.id, Status.PENDING, FULFILL, clock.now)
    await clock.advance(3.2)
    by_end = sorted(due, key=lambda a: a.lease_expires_at or clock.now)
    got = await store.leases_run_out(clock.now, 10)
    assert [a.id for a in got] == [a.id for a in by_end]
    assert future.id not in {a.id for a in got}
    assert [a.id for a in await store.leases_run_out(clock.now, 2)] == [a.id for a in by_end[:2]]


async def test_a_delete_ends_the_lease_too(backend: Backend, clock: Clock) -> None:
    store = backend.store
    a = await store.insert(leased(clock, 1))
    renewed = await store.renew_lease(a.id, 1, clock.now, "worker")
    gone = await store.delete(a.id, "admin")
    assert gone is not None and gone.lease_expires_at == renewed.lease_expires_at
    await clock.advance(1.2)
    assert await store.leases_run_out(clock.now, 10) == []
    with pytest.raises(NotFound):
        await store.renew_lease(a.id, 1, clock.now, "worker")


async def test_one_sweeper_at_a_time(backend: Backend, clock: Clock) -> None:
    store: MetadataStore = backend.store
    assert await store.claim_sweep("a", 2, clock.now)
    assert not await store.claim_sweep("b", 2, clock.now)
    assert await store.claim_sweep("a", 2, clock.now)  # its own: held on
    await clock.advance(2.2)
    assert await store.claim_sweep("b", 2, clock.now)  # ran out: taken over
    assert not await store.claim_sweep("a", 2, clock.now)
    assert await store.claim_sweep("b", 0, clock.now)  # given up...
    assert await store.claim_sweep("a", 2, clock.now)  # ...taken at once


@pytest.mark.needs("atomic_find_and_modify")
async def test_racing_renewals_fulfilments_and_expiries_have_one_outcome(
    backend: Backend, clock: Clock
) -> None:
    """Before the end every renewal may apply and a fulfilment wins over the expiries;
    after it no renewal or fulfilment applies and exactly one expiry does."""
    store = backend.store
    for ran_out in (False, True):
        a = await store.insert(leased(clock, 1 if ran_out else 30))
        if ran_out:
            await clock.advance(1.2)
        tries = [store.renew_lease(a.id, 1, clock.now, "w") for _ in range(5)]
        tries += [store.transition(a.id, Status.PENDING, FULFILL, clock.now) for _ in range(3)]
        tries += [
            store.transition(a.id, Status.PENDING, expiry(f"e{i}"), clock.now) for i in range(5)
        ]
        results = await asyncio.gather(*tries, return_exceptions=True)
        assert all(isinstance(r, Asset | Conflict) for r in results), results
        final = await store.get(a.id)
        assert final is not None
        if not ran_out:
            assert final.status is Status.AVAILABLE
            assert sum(isinstance(r, Asset) and r.status is Status.AVAILABLE for r in results) == 1
        else:
            assert final.status is Status.FAILED and final.failure_reason.startswith("e")
            assert [r.status for r in results if isinstance(r, Asset)] == [Status.FAILED]
