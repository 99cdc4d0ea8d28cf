"""Watch buffers bounded in bytes, and a catch-up that is bounded, lossless and in order."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import UTC, datetime

import pytest

from asset_service.domain.models import (
    Asset,
    AssetType,
    Change,
    ChangeKind,
    Status,
    Value,
    ValueKind,
    WatchEvent,
)
from asset_service.domain.reads import slim
from asset_service.domain.watch import (
    EVENT_OVERHEAD_BYTES,
    ChangeHub,
    Subscription,
    WatchStream,
    change_cost,
)

KiB = 1024
MiB = 1024 * KiB
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def asset(asset_id: str, revision: int, status: Status = Status.PENDING, size: int = 0) -> Asset:
    value = Value(ValueKind.BYTES, bytes([revision % 251]) * size) if size else None
    return Asset(
        asset_id, "v.bin", status, AssetType.VALUE, "x/y", NOW, NOW, value=value, revision=revision
    )


class FakeStore:
    """Records with one revision counter; each commit is published to the hub.

    `delay_publish` holds commits back, like a change feed that lags the store; `on_read`
    runs before each get_many answers (to change the store mid catch-up). Every record
    a read returns is a fresh copy, tracked weakly to see how many a watcher holds.
    """

    def __init__(self, hub: ChangeHub) -> None:
        self.hub = hub
        self.records: dict[str, Asset] = {}
        self.revision = 0
        self.reads: list[int] = []  # get_many calls: records each asked for
        self.cuts: list[int] = []  # snapshot calls
        self.calls = 0
        self.delay_publish = False
        self.held: list[Change] = []
        self.on_read: Callable[[int], None] | None = None
        self.copies: weakref.WeakSet[Asset] = weakref.WeakSet()

    def commit(self, asset_id: str, status: Status = Status.PENDING, size: int = 0) -> Asset:
        self.revision += 1
        rec = asset(asset_id, self.revision, status, size)
        self.records[asset_id] = rec
        self._publish(Change(ChangeKind.PUT, rec))
        return rec

    def delete(self, asset_id: str) -> None:
        self.revision += 1
        gone = dataclasses.replace(self.records.pop(asset_id), revision=self.revision)
        self._publish(Change(ChangeKind.DELETE, gone))

    async def _called(self) -> None:
        """Before each read: let others run, then the test's hook (with the call's number,
        snapshot and get_many counted together)."""
        self.calls += 1
        await asyncio.sleep(0)
        if self.on_read is not None:
            self.on_read(self.calls)

    async def snapshot(self, ids: Sequence[str]) -> dict[str, Asset]:
        """One cut, no values (the port's contract): nothing commits while it reads."""
        self.cuts.append(len(ids))
        await self._called()
        return {i: slim(self.records[i]) for i in ids if i in self.records}

    def _publish(self, change: Change) -> None:
        if self.delay_publish:
            self.held.append(change)
        else:
            self.hub.publish(change)

    def release(self) -> None:
        for change in self.held:
            self.hub.publish(change)
        self.held.clear()

    async def get_many(self, ids: Sequence[str]) -> dict[str, Asset]:
        self.reads.append(len(ids))
        await self._called()
        found = {}
        for i in ids:
            if i in self.records:
                copy = dataclasses.replace(self.records[i])
                self.copies.add(copy)
                found[i] = copy
        return found


def watch(
    store: FakeStore, ids: list[str], batch: int, follow: bool = False
) -> tuple[WatchStream, Subscription]:
    sub = store.hub.subscribe(ids)
    snapshot = {i: store.records[i] for i in ids}  # read after subscribing, like watch()
    return WatchStream(sub, store.get_many, store.snapshot, snapshot, 0, follow, batch), sub


def stored(*ids: str) -> FakeStore:
    """A store holding a PENDING record for each of `ids`, under an 8 KiB watch budget."""
    store = FakeStore(ChangeHub(buffer_bytes=8 * KiB))
    for i in ids:
        store.commit(i)
    return store


async def following(
    store: FakeStore, ids: list[str]
) -> tuple[WatchStream, Subscription, AsyncGenerator[WatchEvent, None]]:
    """A watch of `ids` that follows them one record a read, its snapshot events read."""
    stream, sub = watch(store, ids, batch=1, follow=True)
    events = stream.events()
    for _ in ids:
        await anext(events)
    return stream, sub, events


def check_order(events: list[WatchEvent]) -> None:
    """Strictly increasing revisions; a deletion found by re-reading carries the last
    revision the client saw (the store keeps no tombstone), so it is checked apart."""
    seen: dict[str, int] = {}
    top = 0
    for e in events:
        if e.kind == "DELETED" and e.revision == seen.get(e.asset.id):
            assert e.revision <= top
            continue
        assert e.revision > top, f"{e.kind} {e.asset.id}@{e.revision} after revision {top}"
        top = seen[e.asset.id] = e.revision


def test_buffer_is_bounded_by_bytes_so_few_big_values_overflow_it() -> None:
    hub = ChangeHub(buffer_bytes=1 * MiB)
    big, small = hub.subscribe(["big"]), hub.subscribe(["small"])
    for rev in range(1, 4):
        hub.publish(Change(ChangeKind.PUT, asset("big", rev, size=256 * KiB)))
        assert not big.lagged and big.buffered_bytes <= MiB
    hub.publish(Change(ChangeKind.PUT, asset("big", 4, size=256 * KiB)))
    assert big.lagged, "4 x 256 KiB (+ overhead) is over a 1 MiB budget"
    assert big.buffered_bytes == 0 and big.buffered_events == 0
    # A thousand small changes fit where four big ones did not: bytes, not events, count.
    for rev in range(1, 1001):
        hub.publish(Change(ChangeKind.PUT, asset("small", rev)))
    assert not small.lagged and small.buffered_events == 1000
    assert small.buffered_bytes == sum(
        change_cost(Change(ChangeKind.PUT, asset("small", r))) for r in range(1, 1001)
    )


def test_cost_counts_value_label_tags_and_reason() -> None:
    base = asset("a", 1)
    rich = dataclasses.replace(
        base,
        value=Value(ValueKind.TEXT, b"v" * 1000),
        label="l" * 200,
        tags=("t" * 100, "u" * 50),
        failure_reason="r" * 300,
    )
    extra = change_cost(Change(ChangeKind.PUT, rich)) - change_cost(Change(ChangeKind.PUT, base))
    assert extra == 1000 + (200 - len(base.label)) + 150 + 300
    assert change_cost(Change(ChangeKind.PUT, base)) >= EVENT_OVERHEAD_BYTES


async def drain(stream: WatchStream, out: list[WatchEvent], pace: Callable[[], float]) -> None:
    async for event in stream.events():
        out.append(event)
        await asyncio.sleep(pace())


@pytest.mark.parametrize("seed", range(8))
async def test_lagging_watcher_gets_every_final_state_in_revision_order(seed: int) -> None:
    rng = random.Random(seed)
    budget = 200 * KiB
    hub = ChangeHub(buffer_bytes=budget)
    store = FakeStore(hub)
    ids = [f"id-{n:03d}" for n in range(40)]
    for i in ids:
        store.commit(i)
    peak = 0
    publish = hub.publish

    def watched_publish(change: Change) -> None:
        nonlocal peak
        publish(change)
        peak = max(peak, sub.buffered_bytes)

    hub.publish = watched_publish  # type: ignore[method-assign]
    stream, sub = watch(store, ids, batch=4)
    events: list[WatchEvent] = []
    reader = asyncio.create_task(drain(stream, events, lambda: rng.choice([0, 0, 0.001])))
    # Bursts of 64 KiB changes (three fill the budget), a few failures and deletions,
    # while the reader takes its time.
    order = ids[:]
    rng.shuffle(order)
    for n, i in enumerate(order):
        if n % 10 == 3:
            store.commit(i, Status.FAILED)
        elif n % 10 == 7:
            store.delete(i)
        else:
            store.commit(i, Status.AVAILABLE, size=64 * KiB)
        if rng.random() < 0.3:
            await asyncio.sleep(0)
    await asyncio.wait_for(reader, 10)

    assert stream.catch_ups >= 1, "the burst should have overflowed the budget"
    assert peak <= budget, f"buffered {peak} bytes over a {budget} budget"
    check_order(events)
    final = {e.asset.id: e for e in events}
    for i in ids:
        if i in store.records:
            assert final[i].kind != "DELETED"
            assert final[i].asset.revision == store.records[i].revision, i
            assert final[i].asset.value == store.records[i].value
        else:
            assert final[i].kind == "DELETED", i
    assert hub.subscriber_count == 0


async def test_catch_up_reads_in_batches_and_holds_at_most_one_batch() -> None:
    hub = ChangeHub(buffer_bytes=64 * KiB)
    store = FakeStore(hub)
    ids = [f"id-{n:03d}" for n in range(100)]
    for i in ids:
        store.commit(i)
    stream, sub = watch(store, ids, batch=8)
    events = stream.events()
    assert [(await anext(events)).kind for _ in ids] == ["SNAPSHOT"] * len(ids)
    store.reads.clear()
    for i in ids:  # 100 x 256 KiB while the watcher reads nothing
        store.commit(i, Status.AVAILABLE, size=256 * KiB)
    assert sub.lagged and sub.buffered_bytes == 0
    alive = []
    async for event in events:
        assert event.kind == "CHANGED"
        alive.append(len(store.copies))
        del event
    assert stream.catch_ups == 1
    assert max(store.reads) <= 8, f"a read of {max(store.reads)} records; the batch is 8"
    # One cut without values to find what moved, 13 reads to fetch it: never all 100
    # values at once.
    assert store.cuts[-1] == 100 and len(store.reads) == 13
    assert max(alive) <= 8, f"{max(alive)} records of 256 KiB held at once; the batch is 8"


async def test_catch_up_keeps_order_when_an_asset_changes_during_its_first_pass() -> None:
    ids = ["a", "b", "c"]
    store = stored(*ids)
    _stream, sub, events = await following(store, ids)
    store.commit("c", size=16 * KiB)  # over the budget: the watcher lags
    assert sub.lagged

    def change_a_after_reading_it(read: int) -> None:
        if read == 2:  # the cut (call 1) saw "a"; now it moves, then "b" does
            store.commit("a", Status.FAILED)
            store.commit("b", Status.AVAILABLE)

    store.on_read = change_a_after_reading_it
    got = [await anext(events) for _ in range(3)]
    assert [(e.asset.id, e.asset.status) for e in got] == [
        ("c", Status.PENDING),  # revision 4
        ("a", Status.FAILED),  # revision 5: from the buffer, before the store's "b"
        ("b", Status.AVAILABLE),  # revision 6
    ]
    check_order(got)
    await events.aclose()


async def test_catch_up_waits_for_the_feed_to_deliver_what_the_store_shows() -> None:
    ids = ["a", "b"]
    store = stored(*ids)
    _stream, sub, events = await following(store, ids)
    store.commit("b", size=16 * KiB)  # the watcher lags
    assert sub.lagged

    def commit_behind_the_feed(read: int) -> None:
        if read == 1:
            # Just before the cut: both changes are in the store, and reach the hub
            # only later.
            store.delay_publish = True
            store.commit("a", Status.FAILED)
            store.commit("b", Status.AVAILABLE)
            asyncio.get_running_loop().call_later(0.05, store.release)

    store.on_read = commit_behind_the_feed
    got = [await asyncio.wait_for(anext(events), 5) for _ in range(2)]
    assert [(e.asset.id, e.asset.status) for e in got] == [
        ("a", Status.FAILED),
        ("b", Status.AVAILABLE),
    ]
    check_order(got)
    await events.aclose()


async def test_a_feed_that_never_delivers_does_not_hold_a_catch_up_forever() -> None:
    store = stored("a")
    store.hub.feed_wait_seconds = 0.05
    _stream, _sub, events = await following(store, ["a"])
    store.commit("a", size=16 * KiB)
    store.delay_publish = True  # the next change never reaches the hub
    store.commit("a", Status.AVAILABLE)
    event = await asyncio.wait_for(anext(events), 5)
    assert (event.asset.status, event.revision) == (Status.AVAILABLE, store.revision)
    await events.aclose()


async def test_catch_up_skips_a_record_that_moved_on_since_its_first_pass() -> None:
    store = stored("a", "b")
    _stream, sub, events = await following(store, ["a", "b"])
    store.commit("a", size=16 * KiB)  # revision 3: over the budget, dropped
    store.commit("b")  # revision 4: dropped too
    assert sub.lagged

    def move_a_again(read: int) -> None:
        if read == 2:  # the cut (call 1) saw a@3; now it is fetched
            store.commit("a", Status.FAILED)  # revision 5, buffered

    store.on_read = move_a_again
    got = [await anext(events) for _ in range(2)]
    # a@5 comes from the buffer after b@4; sending the fetched a@5 in a@3's place
    # would put it before b@4.
    assert [(e.asset.id, e.revision) for e in got] == [("b", 4), ("a", 5)]
    await events.aclose()


async def test_catch_up_starts_over_when_the_watcher_lags_again_midway() -> None:
    ids = ["a", "b", "c", "d"]
    store = stored(*ids)
    stream, sub, events = await following(store, ids)
    store.commit("c", size=16 * KiB)  # revision 5: the watcher lags
    assert sub.lagged

    def commit_behind_the_feed(read: int) -> None:
        if read == 2:  # after the cut, while c@5 is fetched; these are on their way
            store.delay_publish = True
            store.commit("a", Status.FAILED)  # revision 6
            store.commit("b", Status.FAILED)  # revision 7

    store.on_read = commit_behind_the_feed
    first = await anext(events)
    assert (first.asset.id, first.revision) == ("c", 5)
    # While the client holds c@5, a@6 arrives and the buffer overflows again (d@8),
    # dropping a@6: b@7 must not go out before a@6 is found again.
    store.delay_publish = False
    store.release()
    store.commit("d", size=16 * KiB)
    assert sub.lagged
    got = [await anext(events) for _ in range(3)]
    assert [(e.asset.id, e.revision) for e in got] == [("a", 6), ("b", 7), ("d", 8)]
    assert stream.catch_ups == 2
    await events.aclose()


async def test_snapshot_of_many_big_values_holds_at_most_one_batch() -> None:
    """The first read keeps no values; they come back a batch at a time as they are sent."""
    hub = ChangeHub(buffer_bytes=64 * KiB)
    store = FakeStore(hub)
    ids = [f"id-{n:03d}" for n in range(100)]
    for i in ids:
        store.commit(i, Status.AVAILABLE, size=256 * KiB)
    sub = hub.subscribe(ids)
    snapshot = await store.snapshot(ids)
    assert all(a.value is None for a in snapshot.values())
    assert len(store.copies) == 0, "the first read keeps no record with its value"
    stream = WatchStream(sub, store.get_many, store.snapshot, snapshot, 0, False, 8)
    alive, events = [], []
    async for event in stream.events():
        assert event.asset.value == store.records[event.asset.id].value
        alive.append(len(store.copies))
        events.append((event.kind, event.asset.id))
        del event
    assert events == [("SNAPSHOT", i) for i in ids]
    assert max(store.reads) <= 8 and max(alive) <= 8


async def test_a_value_deleted_between_the_snapshot_reads_is_reported_deleted() -> None:
    hub = ChangeHub(buffer_bytes=MiB)
    store = FakeStore(hub)
    store.commit("a", Status.AVAILABLE, size=10)
    store.commit("b", Status.AVAILABLE, size=10)
    sub = hub.subscribe(["a", "b"])
    snapshot = await store.snapshot(["a", "b"])
    store.delete("a")  # after the first read, before the values are fetched back
    stream = WatchStream(sub, store.get_many, store.snapshot, snapshot, 0, False, 8)
    events = [e async for e in stream.events()]
    assert [(e.kind, e.asset.id) for e in events] == [("DELETED", "a"), ("SNAPSHOT", "b")]
    check_order(events)  # the deletion carries the revision first read, so stays in order
    assert hub.subscriber_count == 0
