"""The change hub: fan-out by asset id, and a slow subscriber told to re-read, not blocking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from asset_service.domain.models import Asset, AssetType, Change, ChangeKind, Resync, Status
from asset_service.domain.watch import ChangeHub, WatchStream, change_cost


def change(asset_id: str, revision: int, status: Status = Status.PENDING) -> Change:
    now = datetime.now(UTC)
    asset = Asset(asset_id, "l", status, AssetType.FILE, "x/y", now, now, revision=revision)
    return Change(ChangeKind.PUT, asset)


async def test_fan_out_only_to_subscribers_of_the_asset() -> None:
    hub = ChangeHub()
    a, b, both = hub.subscribe(["a"]), hub.subscribe(["b"]), hub.subscribe(["a", "b"])
    hub.publish(change("a", 1))
    hub.publish(change("b", 2))
    assert (await a.next()).revision == 1  # type: ignore[union-attr]
    assert (await b.next()).revision == 2  # type: ignore[union-attr]
    assert [(await both.next()).revision for _ in range(2)] == [1, 2]  # type: ignore[union-attr]
    assert hub.subscriber_count == 3
    for sub in (a, b, both):
        sub.close()
    assert hub.subscriber_count == 0


async def test_every_watcher_of_a_change_is_handed_the_same_event() -> None:
    # One object for all: the servicer finds the event's wire bytes by identity, and a
    # fan-out to thousands builds no event per watcher.
    hub = ChangeHub()
    first = change("a", 1)

    async def nothing(ids: object) -> dict[str, Asset]:
        return {}

    streams = [
        WatchStream(hub.subscribe(["a"]), nothing, nothing, {"a": first.asset}, 1, True).events()
        for _ in range(2)
    ]
    hub.publish(change("a", 2))
    events = [await asyncio.wait_for(anext(s), 5) for s in streams]
    assert events[0] is events[1]
    assert events[0].kind == "CHANGED" and events[0].revision == 2
    for stream in streams:
        await stream.aclose()
    assert hub.subscriber_count == 0


async def test_overflow_marks_lagged_instead_of_blocking() -> None:
    hub = ChangeHub(buffer_bytes=3 * change_cost(change("a", 1)))  # room for three changes
    slow, fast = hub.subscribe(["a"]), hub.subscribe(["a"])
    for rev in range(1, 6):
        hub.publish(change("a", rev))
        assert (await fast.next()).revision == rev  # type: ignore[union-attr]
    assert slow.lagged
    assert await slow.next() is None  # told to re-read current state
    slow.reset_lag()
    hub.publish(change("a", 6))
    assert (await slow.next()).revision == 6  # type: ignore[union-attr]


async def test_pump_handles_resync_and_close_wakes_waiters() -> None:
    hub = ChangeHub()
    sub = hub.subscribe(["a"])

    async def source() -> AsyncIterator[Change | Resync]:
        yield change("a", 1)
        yield Resync("history lost")
        await asyncio.sleep(3600)

    hub.start(source())
    # Lost history drops what was buffered too: the re-read covers it, and sending an
    # older buffered change after the re-read's newer ones would break revision order.
    assert await asyncio.wait_for(sub.next(), 5) is None and sub.lagged
    assert sub.buffered_bytes == 0
    sub.reset_lag()
    waiter = asyncio.create_task(sub.next())
    await asyncio.sleep(0)
    await hub.close()
    assert await asyncio.wait_for(waiter, 5) is None and sub.closed
