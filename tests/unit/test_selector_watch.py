"""Selector watches: which changes a selector gets, the shared history, replay and its limits."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from asset_service.domain.errors import HistoryGone
from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    Change,
    ChangeKind,
    Resync,
    Status,
    Value,
    ValueKind,
)
from asset_service.domain.watch import History, Selector
from asset_service.storage.memory import MemoryStorage
from asset_service.store.memory import MemoryStore
from tests.feeds import take
from tests.managers import running
from tests.records import pending_record

T0 = datetime(2026, 12, 6, tzinfo=UTC)


def put(asset: Asset) -> Change:
    return Change(ChangeKind.PUT, asset)


def record(revision: int, **fields: object) -> Asset:
    base = pending_record(task="t-1", tags=("a", "b"), at=T0)
    return dataclasses.replace(base, revision=revision, **fields)  # type: ignore[arg-type]


# --- which changes a selector gets -----------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (Selector(), True),
        (Selector(task_id="t-1"), True),
        (Selector(task_id="t-2"), False),
        (Selector(tags=("a",)), True),
        (Selector(tags=("a", "c")), False),
        (Selector(type=AssetType.FILE), True),
        (Selector(type=AssetType.VALUE), False),
        (Selector(label="out.txt"), True),
        (Selector(label="other"), False),
        (Selector(status=Status.PENDING), True),
        (Selector(status=Status.AVAILABLE), False),
    ],
)
def test_a_pending_promise_is_picked_by_every_matching_field(
    selector: Selector, expected: bool
) -> None:
    assert selector.concerns(put(record(1))) is expected


def test_a_promise_leaving_pending_is_sent_to_pending_watchers_once() -> None:
    pending = Selector(status=Status.PENDING)
    available = Selector(status=Status.AVAILABLE)
    done = record(2, status=Status.AVAILABLE)
    assert pending.concerns(put(done)) and available.concerns(put(done))
    # Deleted later: its last state (AVAILABLE) decides, no second "left PENDING".
    assert not pending.concerns(Change(ChangeKind.DELETE, done))
    assert available.concerns(Change(ChangeKind.DELETE, done))
    # An upload is AVAILABLE from the start, never a promise: not a PENDING event.
    upload = record(3, status=Status.AVAILABLE, created_by_task="")
    assert not pending.concerns(put(upload))
    # A pending promise deleted: a PENDING watcher hears of it.
    assert pending.concerns(Change(ChangeKind.DELETE, record(4)))


# --- the history -----------------------------------------------------------------------


async def test_the_history_replays_in_order_and_evicts_the_oldest_past_its_budget() -> None:
    history = History(max_bytes=10 * 1024**2)
    history.start(floor=5)
    history.append(put(record(4)), record(4))  # before the floor: never replayed
    for rev in range(6, 3006):
        history.append(put(record(rev)), record(rev))
    assert len(history) == 3000
    assert [c.revision for c in history.since(5, limit=3)] == [6, 7, 8]
    assert [c.revision for c in history.since(3004)] == [3005]
    assert history.since(3005) == []
    with pytest.raises(HistoryGone, match="revision 4 is older"):
        history.since(4)
    small = History(max_bytes=50 * 1024)
    small.start(floor=0)
    for rev in range(1, 2001):
        small.append(put(record(rev)), record(rev))
    assert small.held_bytes <= 50 * 1024 and 0 < len(small) < 2000
    assert small.floor is not None and small.floor > 0
    kept = small.since(small.floor, limit=5000)
    assert [c.revision for c in kept] == list(range(small.floor + 1, 2001))
    with pytest.raises(HistoryGone):
        small.since(small.floor - 1)


async def test_a_lost_history_refuses_until_it_begins_again() -> None:
    history = History()
    with pytest.raises(HistoryGone, match="starting anew"):
        history.check(0)
    history.start(floor=10)
    history.append(put(record(11)), record(11))
    history.lost()
    with pytest.raises(HistoryGone):
        history.since(10)
    history.start(floor=20)
    assert history.since(20) == []


# --- through the manager ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def watchable(
    store: MemoryStore | None = None, limits: Limits | None = None
) -> AsyncIterator[AssetManager]:
    """A running manager over `store` (a new one by default) and memory storage, its watch
    history read."""
    manager = AssetManager(store or MemoryStore(), MemoryStorage(), limits or Limits())
    async with running(manager):
        await manager.hub.history.ready()
        yield manager


@pytest.fixture
async def manager() -> AsyncIterator[AssetManager]:
    async with watchable() as m:
        yield m


def text(s: str) -> Value:
    return Value(ValueKind.TEXT, s.encode())


async def test_a_task_selector_gets_its_task_changes_in_order_without_values(
    manager: AssetManager,
) -> None:
    events = await manager.watch_selector(Selector(task_id="render"), 0)
    mine = await manager.create_pending("render", "a.txt", "", AssetType.VALUE, ())
    other = await manager.create_pending("encode", "b.txt", "", AssetType.VALUE, ())
    await manager.fulfill_with_value(other.id, text("not mine"), "")
    done = await manager.fulfill_with_value(mine.id, text("x" * 1000), "")
    later = await manager.create_pending("render", "c.txt", "", AssetType.FILE, ())
    gone = await manager.delete(later.id)
    got = await take(events, 4)
    await events.aclose()
    assert [(e.kind, e.asset.id, e.asset.status) for e in got] == [
        ("CHANGED", mine.id, Status.PENDING),
        ("CHANGED", mine.id, Status.AVAILABLE),
        ("CHANGED", later.id, Status.PENDING),
        ("DELETED", later.id, Status.PENDING),
    ]
    assert [e.revision for e in got] == [
        mine.revision,
        done.revision,
        later.revision,
        gone.revision,
    ]
    assert got[1].asset.value is None, "selector events carry no inline value"


async def test_list_then_watch_from_the_page_revision_misses_and_doubles_nothing(
    manager: AssetManager,
) -> None:
    first = [
        await manager.create_pending("t", f"o{i}", "", AssetType.VALUE, ("x",)) for i in range(3)
    ]
    page = await manager.list_assets(AssetFilter(tags=("x",)), 10, "")
    assert [a.id for a in page.assets] == [a.id for a in first]
    # Changes between the listing and the watch: replayed from the history.
    await manager.fail(first[0].id, "no")
    new = await manager.create_pending("t", "o3", "", AssetType.VALUE, ("x",))
    events = await manager.watch_selector(Selector(tags=("x",)), page.revision)
    await manager.fulfill_with_value(first[1].id, text("ok"), "")
    got = await take(events, 3)
    await events.aclose()
    assert [(e.asset.id, e.asset.status) for e in got] == [
        (first[0].id, Status.FAILED),
        (new.id, Status.PENDING),
        (first[1].id, Status.AVAILABLE),
    ]
    assert all(e.revision > page.revision for e in got)


async def test_lost_history_ends_selector_watches_and_they_start_again_later() -> None:
    class ResyncingStore(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.resync = asyncio.Event()

        def changes(self) -> AsyncIterator[Change | Resync]:
            inner = super().changes()

            async def feed() -> AsyncIterator[Change | Resync]:
                pump = asyncio.ensure_future(anext(inner))
                while True:
                    waiter = asyncio.ensure_future(self.resync.wait())
                    done, _ = await asyncio.wait({pump, waiter}, return_when="FIRST_COMPLETED")
                    if waiter in done:
                        self.resync.clear()
                        yield Resync("test: history lost")
                    else:
                        waiter.cancel()
                    if pump in done:
                        yield pump.result()
                        pump = asyncio.ensure_future(anext(inner))

            return feed()

    store = ResyncingStore()
    async with watchable(store) as manager:
        events = await manager.watch_selector(Selector(), 0)
        first = await manager.create_pending("t", "a", "", AssetType.VALUE, ())
        assert [e.asset.id for e in await take(events, 1)] == [first.id]
        store.resync.set()
        with pytest.raises(HistoryGone):
            await take(events, 1)
        await manager.hub.history.ready()  # read again from the store
        again = await manager.watch_selector(Selector(), await store.current_revision())
        second = await manager.create_pending("t", "b", "", AssetType.VALUE, ())
        assert [e.asset.id for e in await take(again, 1)] == [second.id]
        await again.aclose()


async def test_selector_watches_end_when_the_server_stops() -> None:
    manager = AssetManager(MemoryStore(), MemoryStorage(), Limits())
    await manager.start()
    await manager.hub.history.ready()
    events = await manager.watch_selector(Selector(), 0)
    waiting = asyncio.create_task(take(events, 1, seconds=30))
    await asyncio.sleep(0.05)
    await manager.stop()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 5)


async def test_revision_0_replays_from_the_start_not_from_now(manager: AssetManager) -> None:
    """0 is a revision like any other: a client that listed an empty store (revision 0)
    and watches from it gets what was created in between."""
    page = await manager.list_assets(AssetFilter(), 10, "")
    assert page.revision == 0 and page.assets == []
    made = await manager.create_pending("t", "first", "", AssetType.VALUE, ())
    events = await manager.watch_selector(Selector(), page.revision)
    got = await take(events, 1)
    await events.aclose()
    assert [e.asset.id for e in got] == [made.id]
