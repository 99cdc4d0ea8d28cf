"""Selector watches replayed from the store below the in-memory history, and rollbacks."""

from __future__ import annotations

import asyncio
import dataclasses
import random
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
    WatchEvent,
    WatchEventKind,
)
from asset_service.domain.replay import EVERYTHING, Narrowing, Replay, merged
from asset_service.domain.watch import Selector
from asset_service.store.memory import MemoryStore
from tests.feeds import take
from tests.unit.test_selector_watch import text, watchable

TINY_HISTORY = 8 * 1024  # a handful of records


@pytest.fixture
async def manager() -> AsyncIterator[AssetManager]:
    async with watchable(limits=Limits(watch_history_bytes=TINY_HISTORY)) as m:
        yield m


async def everything(manager: AssetManager) -> dict[str, Asset]:
    found: dict[str, Asset] = {}
    token = ""
    while True:
        page = await manager.list_assets(AssetFilter(), 1000, token)
        found.update((a.id, a) for a in page.assets)
        token = page.next_token
        if not token:
            return found


def applied(known: dict[str, Asset], event: WatchEvent) -> None:
    """What an informer does with an event: the latest state, or forget a deleted one."""
    if event.kind == "DELETED":
        known.pop(event.asset.id, None)
    else:
        known[event.asset.id] = event.asset


async def test_a_revision_the_history_no_longer_holds_is_replayed_from_the_store(
    manager: AssetManager,
) -> None:
    """Each asset's state at the read, deletions as tombstones, in revision order; then
    the live changes. Before: OUT_OF_RANGE ("list again") after ~8 records."""
    kept = await manager.create_pending("t", "kept", "", AssetType.VALUE, ("x",))
    start = await manager.store.current_revision()
    made = [
        await manager.create_pending("t", f"p{i}", "", AssetType.VALUE, ("x",)) for i in range(40)
    ]
    for asset in made[:10]:
        await manager.fulfill_with_value(asset.id, text("done"), "")
    for asset in made[10:15]:
        await manager.delete(asset.id)
    await manager.fail(kept.id, "no")
    assert manager.hub.history.floor is not None and manager.hub.history.floor > start
    events = await manager.watch_selector(Selector(tags=("x",)), start)
    got = await take(events, 41)
    late = await manager.create_pending("t", "late", "", AssetType.VALUE, ("x",))
    (live,) = await take(events, 1)
    await events.aclose()
    revisions = [e.revision for e in got]
    assert revisions == sorted(revisions) and len(set(revisions)) == 41
    assert all(r > start for r in revisions)
    # Compacted: one event per asset, its latest state; nothing from before `start`.
    by_id = {e.asset.id: e for e in got}
    assert len(by_id) == 41
    assert [by_id[a.id].kind for a in made[10:15]] == ["DELETED"] * 5
    assert {by_id[a.id].asset.status for a in made[:10]} == {Status.AVAILABLE}
    assert by_id[kept.id].asset.status is Status.FAILED
    assert all(e.asset.value is None for e in got)
    assert live.asset.id == late.id and live.revision > revisions[-1]


async def test_a_watcher_that_falls_behind_the_history_catches_up_from_the_store(
    manager: AssetManager,
) -> None:
    """Before: it ended with OUT_OF_RANGE once the history moved past it."""
    start = await manager.store.current_revision()
    events = await manager.watch_selector(Selector(), start)
    made = [await manager.create_pending("t", f"p{i}", "", AssetType.VALUE, ()) for i in range(40)]
    await asyncio.sleep(0.05)  # nobody reads meanwhile: the history moves past the watcher
    got = await take(events, 40)
    await events.aclose()
    assert [e.asset.id for e in got] == [a.id for a in made]


async def test_a_revision_below_the_swept_tombstones_is_refused(manager: AssetManager) -> None:
    first = await manager.create_pending("t", "a", "", AssetType.VALUE, ())
    before_delete = await manager.store.current_revision()
    gone = await manager.delete(first.id)
    assert manager.limits.watch_tombstone_ttl_seconds == 3600.0
    assert await manager.sweep_tombstones() == 0, "a fresh tombstone stays"
    manager.limits = dataclasses.replace(manager.limits, watch_tombstone_ttl_seconds=-1.0)
    assert await manager.sweep_tombstones() == 1  # everything deleted is past it
    for _ in range(20):  # move the history past it
        await manager.create_pending("t", "b", "", AssetType.VALUE, ())
    with pytest.raises(HistoryGone, match="tombstones") as info:
        await manager.watch_selector(Selector(), before_delete)
    assert info.value.floor == gone.revision
    # From the swept deletion on, the store still replays.
    events = await manager.watch_selector(Selector(), gone.revision)
    got = await take(events, 20)
    await events.aclose()
    assert len(got) == 20


async def test_a_pending_watcher_replayed_from_the_store_hears_of_a_failed_promise_deleted(
    manager: AssetManager,
) -> None:
    """Compaction leaves only the tombstone (FAILED) of a promise that failed and was then
    deleted: a PENDING watcher that listed it must still hear it is gone."""
    promise = await manager.create_pending("t", "p", "", AssetType.VALUE, ())
    start = await manager.store.current_revision()
    await manager.fail(promise.id, "no")
    gone = await manager.delete(promise.id)
    for i in range(20):
        await manager.create_pending("u", f"q{i}", "", AssetType.VALUE, ())
    pending = Selector(task_id="t", status=Status.PENDING)
    events = await manager.watch_selector(pending, start)
    (event,) = await take(events, 1)
    await events.aclose()
    assert (event.kind, event.asset.id, event.revision) == ("DELETED", promise.id, gone.revision)


async def test_the_store_replays_only_the_assets_a_selector_can_take(
    manager: AssetManager,
) -> None:
    """The store is asked for the records and tombstones with the selector's label, tags
    (and task, key, type), not every change since; the status stays the selector's to
    test: a PENDING watcher still hears of a promise that failed and was then deleted."""
    start = await manager.store.current_revision()
    made = [
        await manager.create_pending("t", f"l{i % 3}", "", AssetType.VALUE, (f"g{i % 2}", "x"))
        for i in range(40)
    ]
    failed, done = made[0], made[6]  # both l0, g0
    await manager.fail(failed.id, "no")
    await manager.delete(failed.id)
    await manager.fulfill_with_value(done.id, text("done"), "")
    assert manager.hub.history.floor is not None and manager.hub.history.floor > start
    selector = Selector(label="l0", tags=("g0",), status=Status.PENDING)
    whole = await manager.store.changes_since(start, 1000)
    expected = [
        (c.kind, c.asset.id, c.revision) for c in whole.changes if selector.concerns(c, True)
    ]
    assert (ChangeKind.DELETE, failed.id, whole.changes[-2].revision) in expected
    asked: list[Narrowing] = []
    read: list[Change] = []
    real = manager.store.changes_since

    async def narrowed(after: int, limit: int, narrow: Narrowing = EVERYTHING) -> Replay:
        replay = await real(after, limit, narrow)
        if limit > 1:  # not the check that the store can replay at all (one change)
            asked.append(narrow)
            read.extend(replay.changes)
        return replay

    manager.store.changes_since = narrowed  # type: ignore[method-assign]
    events = await manager.watch_selector(selector, start)
    got = await take(events, len(expected))
    await events.aclose()
    kinds = {"CHANGED": ChangeKind.PUT, "DELETED": ChangeKind.DELETE}
    assert [(kinds[e.kind], e.asset.id, e.revision) for e in got] == expected
    assert asked and set(asked) == {Narrowing(label="l0", tags=("g0",))}
    assert read and all(c.asset.label == "l0" and "g0" in c.asset.tags for c in read)
    assert len(read) == 7, "the 7 assets l0 and g0 (one deleted), no others"


async def test_list_then_watch_converges_while_writes_go_on(manager: AssetManager) -> None:
    """An informer over a history of a few records: whatever it falls behind, the state it
    builds from the listing and the events equals a listing at the end."""
    rng = random.Random(21)
    live: list[str] = []

    async def write(n: int) -> None:
        for i in range(n):
            roll = rng.random()
            if roll < 0.5 or len(live) < 5:
                made = await manager.create_pending("t", f"w{i}", "", AssetType.VALUE, ())
                live.append(made.id)
            elif roll < 0.8:
                victim = live.pop(rng.randrange(len(live)))
                await manager.fulfill_with_value(victim, text(str(i)), "")
            else:
                await manager.delete(live.pop(rng.randrange(len(live))))

    await write(100)
    known: dict[str, Asset] = {}
    first = await manager.list_assets(AssetFilter(), 10, "")
    writer = asyncio.create_task(write(300))
    page, token = first, first.next_token
    for asset in page.assets:
        known[asset.id] = asset
    while token:  # later pages are read at later revisions, while writes go on
        page = await manager.list_assets(AssetFilter(), 10, token)
        for asset in page.assets:
            if asset.id not in known or known[asset.id].revision < asset.revision:
                known[asset.id] = asset
        token = page.next_token
    reads = 0
    real = manager.store.changes_since

    async def counted(after: int, limit: int, narrow: Narrowing = EVERYTHING) -> Replay:
        nonlocal reads
        reads += 1
        return await real(after, limit, narrow)

    manager.store.changes_since = counted  # type: ignore[method-assign]
    events = await manager.watch_selector(Selector(), first.revision)
    await writer
    target = await manager.store.current_revision()
    async with asyncio.timeout(10):
        async for event in events:
            current = known.get(event.asset.id)
            if current is None or current.revision < event.revision:
                applied(known, event)
            if event.revision >= target:
                break
    await events.aclose()
    assert reads >= 1, "it caught up from the store"
    final = await everything(manager)
    assert {i: a.revision for i, a in known.items()} == {i: a.revision for i, a in final.items()}
    assert {i: a.status for i, a in known.items()} == {i: a.status for i, a in final.items()}


# --- the replay's pages -------------------------------------------------------------------


def put(revision: int) -> Change:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    asset = Asset(
        f"a{revision}", "l", Status.PENDING, AssetType.FILE, "", now, now, revision=revision
    )
    return Change(ChangeKind.PUT, asset)


def gone(revision: int) -> Change:
    return Change(ChangeKind.DELETE, put(revision).asset)


def test_a_page_stops_where_a_full_list_may_go_on() -> None:
    # Neither list full: everything up to the cut.
    whole = merged([put(2), put(5)], [gone(3)], 9, 3)
    assert [c.revision for c in whole.changes] == [2, 3, 5] and whole.reaches == 9
    # Records full at 5: tombstone 7 may have records 6.. before it; stop at 5.
    part = merged([put(2), put(4), put(5)], [gone(3), gone(7)], 9, 3)
    assert [c.revision for c in part.changes] == [2, 3, 4] and part.more
    assert part.reaches == 4
    both = merged([put(1), put(8)], [gone(2), gone(9)], 12, 2)
    assert [c.revision for c in both.changes] == [1, 2] and both.reaches == 2
    empty = Replay([], 4)
    assert empty.reaches == 4


# --- signs that the database went back in time (issue 21, item 8) -------------------------


class RewindingStore(MemoryStore):
    """A store whose change source can be made to hand out revisions again, as a new
    primary does after a failover rolled back writes the old one had numbered."""

    def __init__(self) -> None:
        super().__init__()
        self.injected: asyncio.Queue[Change | Resync] = asyncio.Queue()

    def changes(self) -> AsyncIterator[Change | Resync]:
        inner = super().changes()

        async def feed() -> AsyncIterator[Change | Resync]:
            pump = asyncio.ensure_future(anext(inner))
            extra = asyncio.ensure_future(self.injected.get())
            try:
                while True:
                    done, _ = await asyncio.wait({pump, extra}, return_when="FIRST_COMPLETED")
                    if extra in done:
                        yield extra.result()
                        extra = asyncio.ensure_future(self.injected.get())
                    if pump in done:
                        yield pump.result()
                        pump = asyncio.ensure_future(anext(inner))
            finally:
                pump.cancel()
                extra.cancel()

        return feed()


async def test_a_revision_handed_out_again_resyncs_every_watcher() -> None:
    """A change whose revision is not above the last one published (with other content)
    is a rollback: selector watchers end (list again), id watchers re-read state, and
    the history begins again. Before: the history dropped it and watchers never knew."""
    store = RewindingStore()
    async with watchable(store) as manager:
        a = await manager.create_pending("t", "a", "", AssetType.VALUE, ())
        selector_events = await manager.watch_selector(Selector(), 0)
        id_events = await manager.watch([a.id], 0, follow=True)
        assert [e.kind for e in await take(id_events, 1)] == ["SNAPSHOT"]
        b = await manager.create_pending("t", "b", "", AssetType.VALUE, ())
        assert [e.asset.id for e in await take(selector_events, 2)] == [a.id, b.id]
        # The same revision as b's, another asset: a rolled-back write's number reused.
        ghost = dataclasses.replace(b, id="7d8f7c1e-0000-4000-8000-0000000000ff", label="c")
        await store.injected.put(Change(ChangeKind.PUT, ghost))
        with pytest.raises(HistoryGone, match="starting anew"):
            await take(selector_events, 1)
        # The id watcher catches up from the store: nothing moved for a, so it waits on.
        done = await manager.fulfill_with_value(a.id, text("A"), "")
        (event,) = await take(id_events, 1)
        assert (event.asset.id, event.revision) == (a.id, done.revision)
        await id_events.aclose()
        # A new selector watch begins after the floor read anew.
        await manager.hub.history.ready()
        again = await manager.watch_selector(Selector(), done.revision)
        c = await manager.create_pending("t", "c", "", AssetType.VALUE, ())
        assert [e.asset.id for e in await take(again, 1)] == [c.id]
        await again.aclose()


async def test_the_same_change_twice_is_published_once() -> None:
    store = RewindingStore()
    async with watchable(store) as manager:
        events = await manager.watch_selector(Selector(), 0)
        a = await manager.create_pending("t", "a", "", AssetType.VALUE, ())
        assert [e.revision for e in await take(events, 1)] == [a.revision]
        await store.injected.put(Change(ChangeKind.PUT, a))  # a resumed source repeats it
        b = await manager.create_pending("t", "b", "", AssetType.VALUE, ())
        assert [e.revision for e in await take(events, 1)] == [b.revision]
        await events.aclose()
        # Nor is it kept twice: a watch replaying the history sends it once.
        again = await manager.watch_selector(Selector(), 0)
        assert [e.revision for e in await take(again, 2)] == [a.revision, b.revision]
        await again.aclose()


async def test_a_revision_above_the_store_is_refused(manager: AssetManager) -> None:
    """A client holding a revision the store has not handed out saw writes the database
    no longer has (rolled back, or a restore): it must list again, not wait forever."""
    await manager.create_pending("t", "a", "", AssetType.VALUE, ())
    current = await manager.store.current_revision()
    with pytest.raises(HistoryGone, match="went back in time"):
        await manager.watch_selector(Selector(), current + 5)


async def test_an_id_watch_above_the_store_sends_every_state_again(manager: AssetManager) -> None:
    """An id watch resumed from a revision the store has not handed out (a restore, a
    rollback) was sent no snapshot: the client kept states the database no longer has,
    and a PENDING asset's watch waited in silence. It re-reads instead: every state again."""
    a = await manager.create_pending("t", "a", "", AssetType.VALUE, ())
    b = await manager.create_pending("t", "b", "", AssetType.VALUE, ())
    current = await manager.store.current_revision()
    events = await manager.watch([a.id, b.id], current + 5, follow=False)
    snapshot = await asyncio.wait_for(take(events, 2), 5)
    assert [(e.kind, e.asset.id) for e in snapshot] == [
        (WatchEventKind.SNAPSHOT, a.id),
        (WatchEventKind.SNAPSHOT, b.id),
    ]
    await events.aclose()


async def test_a_store_read_below_what_was_handed_out_is_refused(manager: AssetManager) -> None:
    """The counter going backwards while a watcher replays from the store."""
    start = await manager.store.current_revision()
    for i in range(20):
        await manager.create_pending("t", f"p{i}", "", AssetType.VALUE, ())
    real = manager.store.changes_since

    async def rewound(after: int, limit: int, narrow: Narrowing = EVERYTHING) -> Replay:
        replay = await real(after, limit, narrow)
        return Replay(replay.changes[:1], start + 1)

    manager.store.changes_since = rewound  # type: ignore[method-assign]
    events = await manager.watch_selector(Selector(), start)
    with pytest.raises(HistoryGone, match="went back in time"):
        await take(events, 20)
