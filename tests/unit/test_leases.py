"""Leases on promises, in process over the memory fakes, with a clock the tests move."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from asset_service.domain.errors import FailedPrecondition, InvalidArgument
from asset_service.domain.leases import LEASE_PRINCIPAL, deadline
from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.manager import _base as manager_base
from asset_service.domain.models import Asset, AssetType, Status, UploadHeader, Value, ValueKind
from asset_service.storage.memory import MemoryState, MemoryStorage
from asset_service.store.memory import MemoryStore
from tests.managers import running

T0 = datetime(2026, 12, 6, 12, 0, 0, 250_000, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(manager_base, "now", c)
    return c


@pytest.fixture
async def store() -> MemoryStore:
    return MemoryStore()


async def started(store: MemoryStore, max_lease: int = 3600) -> AssetManager:
    manager = AssetManager(store, MemoryStorage(), Limits(max_lease_seconds=max_lease))
    await manager.start()
    return manager


@pytest.fixture
async def manager(store: MemoryStore) -> AsyncIterator[AssetManager]:
    m = await started(store)
    try:
        yield m
    finally:
        await m.stop()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def promise(manager: AssetManager, lease: int = 10, task: str = "task-7") -> Asset:
    return await manager.create_pending(
        task, "out.txt", "", AssetType.VALUE, (), lease_seconds=lease, by="orch"
    )


async def test_a_promise_records_its_lease(manager: AssetManager, clock: Clock) -> None:
    p = await promise(manager, lease=10)
    assert p.lease_seconds == 10
    assert p.lease_expires_at == datetime(2026, 12, 6, 12, 0, 10, 250_000, tzinfo=UTC)
    plain = await promise(manager, lease=0)
    assert plain.lease_seconds == 0 and plain.lease_expires_at is None


async def test_a_lease_past_the_limit_is_refused_naming_the_setting(
    manager: AssetManager, clock: Clock
) -> None:
    with pytest.raises(InvalidArgument, match="--max-lease-seconds"):
        await promise(manager, lease=3601)
    p = await promise(manager, lease=10)
    with pytest.raises(InvalidArgument, match="lease_seconds 7200 exceeds"):
        await manager.renew_lease(p.id, 7200)


async def test_renewals_keep_a_promise_alive_past_its_first_lease(
    manager: AssetManager, clock: Clock
) -> None:
    p = await promise(manager, lease=10)
    for _ in range(5):
        clock.advance(8)
        renewed = await manager.renew_lease(p.id, by="worker")  # its own 10 s again
        assert renewed.lease_expires_at == clock.now + timedelta(seconds=10)
        # A heartbeat, not a change: the record is as it was, revision and all.
        assert (renewed.updated_by, renewed.revision) == ("orch", p.revision)
        assert await manager.expire_leases() == 0
    clock.advance(9.999)
    assert await manager.expire_leases() == 0
    longer = await manager.renew_lease(p.id, 60)
    assert longer.lease_expires_at == clock.now + timedelta(seconds=60)
    assert longer.lease_seconds == 10  # the promise's own lease is unchanged
    done = await manager.fulfill_with_value(p.id, Value(ValueKind.TEXT, b"ok"), "")
    assert done.status is Status.AVAILABLE


async def test_a_lease_that_ran_out_fails_the_promise_once_and_says_why(
    manager: AssetManager, clock: Clock
) -> None:
    p = await promise(manager, lease=10, task="task-7")
    stream = await manager.watch([p.id], 0, follow=False)
    clock.advance(10)  # exactly the end: it has run out
    assert await manager.expire_leases() == 1
    assert await manager.expire_leases() == 0
    failed = await manager.get(p.id)
    assert failed.status is Status.FAILED and failed.updated_by == LEASE_PRINCIPAL
    assert failed.failure_reason == (
        "lease expired at 2026-12-06T12:00:10.250Z: not renewed by task task-7 within 10s "
        "(the producing task stopped, or lost its connection)"
    )
    events = [e async for e in stream]
    assert [(e.kind, e.asset.status) for e in events] == [
        ("SNAPSHOT", Status.PENDING),
        ("CHANGED", Status.FAILED),
    ]
    with pytest.raises(FailedPrecondition, match="only a PENDING asset's lease can be renewed"):
        await manager.renew_lease(p.id)


async def test_a_late_renewal_is_refused_even_before_the_sweep(
    manager: AssetManager, clock: Clock
) -> None:
    p = await promise(manager, lease=10)
    clock.advance(10.5)
    with pytest.raises(FailedPrecondition) as err:
        await manager.renew_lease(p.id)
    assert "lease ran out at 2026-12-06T12:00:10.250Z" in err.value.message
    assert "promise the asset again" in err.value.message
    assert (await manager.get(p.id)).status is Status.PENDING  # the sweep fails it
    assert await manager.expire_leases() == 1


async def test_a_late_fulfilment_is_refused_like_a_late_renewal_before_the_sweep(
    store: MemoryStore, clock: Clock
) -> None:
    """Out is out for every caller: a value, a server-side file or an upload into a promise
    whose lease ran out is refused with what a renewal gets; its producer may still fail it."""
    state = MemoryState()
    files = {"/incoming/task-7/out.bin": b"produced"}
    manager = AssetManager(store, MemoryStorage(state, files), Limits(max_lease_seconds=3600))
    async with running(manager):
        value, failed = await promise(manager, lease=10), await promise(manager, lease=10)
        path, uploaded = [
            await manager.create_pending("task-7", name, "", AssetType.FILE, (), lease_seconds=10)
            for name in ("f", "u")
        ]
        clock.advance(10)  # the lease ends exactly now: it has run out
        late = "lease ran out at 2026-12-06T12:00:10.250Z: it is FAILED (or about to be) and "
        attempts = [
            manager.fulfill_with_value(value.id, Value(ValueKind.TEXT, b"late"), ""),
            manager.fulfill_from_path(path.id, "/incoming/task-7/out.bin", ""),
            manager.upload(UploadHeader(pending_asset_id=uploaded.id), chunks(b"late bytes")),
        ]
        for attempt in attempts:
            with pytest.raises(FailedPrecondition) as err:
                await attempt
            assert late + "cannot be fulfilled; promise the asset again" in err.value.message
        assert files == {"/incoming/task-7/out.bin": b"produced"}  # the source stays
        assert not state.objects  # no bytes kept
        for p in (value, path, uploaded):
            assert (await manager.get(p.id)).status is Status.PENDING
        gave_up = await manager.fail(failed.id, "crashed")
        assert gave_up.status is Status.FAILED and gave_up.failure_reason == "crashed"
        assert await manager.expire_leases() == 3


async def test_a_lease_running_out_while_an_upload_streams_refuses_its_commit(
    manager: AssetManager, clock: Clock
) -> None:
    """The check before the bytes is not the one that counts: the conditional write is."""
    p = await manager.create_pending("task-7", "u", "", AssetType.FILE, (), lease_seconds=10)

    async def slow_chunks() -> AsyncIterator[bytes]:
        yield b"first half, "
        clock.advance(11)  # the lease runs out mid-upload
        yield b"second half"

    with pytest.raises(FailedPrecondition, match="cannot be fulfilled"):
        await manager.upload(UploadHeader(pending_asset_id=p.id), slow_chunks())
    assert (await manager.get(p.id)).status is Status.PENDING


async def test_a_promise_without_a_lease_has_nothing_to_renew(
    manager: AssetManager, clock: Clock
) -> None:
    p = await promise(manager, lease=0)
    with pytest.raises(FailedPrecondition, match="promised without a lease"):
        await manager.renew_lease(p.id)
    clock.advance(10**6)
    assert await manager.expire_leases() == 0
    assert (await manager.get(p.id)).status is Status.PENDING


async def test_a_fulfilled_or_failed_promise_is_never_expired(
    manager: AssetManager, clock: Clock
) -> None:
    done = await promise(manager)
    await manager.fulfill_with_value(done.id, Value(ValueKind.TEXT, b"ok"), "")
    gave_up = await promise(manager)
    await manager.fail(gave_up.id, "out of memory")
    clock.advance(60)
    assert await manager.expire_leases() == 0
    assert (await manager.get(done.id)).status is Status.AVAILABLE
    assert (await manager.get(gave_up.id)).failure_reason == "out of memory"


async def test_many_due_leases_are_all_expired_across_batches(
    manager: AssetManager, clock: Clock
) -> None:
    ids = [(await promise(manager, lease=1 + i % 7)).id for i in range(250)]
    keep = await promise(manager, lease=3600)
    clock.advance(8)
    assert await manager.expire_leases() == 250
    states = await manager.batch_get(ids)
    assert {a.status for a in states} == {Status.FAILED}
    assert (await manager.get(keep.id)).status is Status.PENDING


async def test_servers_sharing_a_store_expire_each_promise_once(
    store: MemoryStore, clock: Clock
) -> None:
    """Every server process sweeps; the store's conditional write picks one winner."""
    servers = [await started(store) for _ in range(4)]
    try:
        ids = [(await promise(servers[0], lease=5)).id for _ in range(40)]
        clock.advance(5)
        counts = await asyncio.gather(*(s.expire_leases() for s in servers))
        assert sum(counts) == 40
        assert {a.status for a in await servers[1].batch_get(ids)} == {Status.FAILED}
    finally:
        for s in servers:
            await s.stop()


async def test_a_renewal_racing_the_sweep_has_one_outcome(
    manager: AssetManager, store: MemoryStore, clock: Clock
) -> None:
    """Right at the end of the lease: the renewal is refused and the sweep fails it; a
    millisecond before: the renewal wins and the sweep finds nothing to do."""
    for offset, expect in ((timedelta(0), Status.FAILED), (-timedelta(milliseconds=1), None)):
        p = await promise(manager, lease=10)
        clock.now = p.lease_expires_at + offset  # type: ignore[operator]
        renewal, swept = await asyncio.gather(
            manager.renew_lease(p.id), manager.expire_leases(), return_exceptions=True
        )
        final = await manager.get(p.id)
        if expect is Status.FAILED:
            assert isinstance(renewal, FailedPrecondition) and swept == 1
            assert final.status is Status.FAILED
        else:
            assert isinstance(renewal, Asset) and swept == 0
            assert final.status is Status.PENDING and final.lease_expires_at > clock.now  # type: ignore[operator]
        clock.now = T0


def test_deadlines_are_whole_milliseconds() -> None:
    start = datetime(2026, 1, 1, 0, 0, 0, 123_456, tzinfo=UTC)
    assert deadline(start, 5) == datetime(2026, 1, 1, 0, 0, 5, 123_000, tzinfo=UTC)
