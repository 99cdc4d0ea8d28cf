"""MongoStore's side of selector replays and rollbacks (issue 21, items 2 and 8), at the
driver boundary: the real client and sessions, fake collections, a scripted change stream.

What these cannot show is that MongoDB behaves as documented: a read at "majority" never
returns a write a failover rolls back, and a snapshot session reads one cluster time.
The MONGODB_URI suite's replica-set cases are where that is seen (docs/mongodb.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.read_concern import ReadConcern

from asset_service.domain.errors import HistoryGone
from asset_service.domain.models import ChangeKind
from asset_service.domain.replay import Replay
from asset_service.domain.watch import ChangeHub, Selector, SelectorStream
from asset_service.store.mongo import MongoStore
from asset_service.store.mongo._documents import asset_to_doc
from asset_service.store.mongo._tombstones import HORIZON_ID, tombstone_doc
from tests.feeds import take
from tests.unit.fake_mongo import NullUsage
from tests.unit.mongo_fake import Server, attach, install
from tests.unit.test_mongo_change_stream import (
    A,
    B,
    FakeStream,
    FakeWatch,
    feed_of,
    insert,
    record,
)
from tests.unit.test_mongo_writes import ASSET, closed_port

C = "7d8f7c1e-0000-4000-8000-00000000000c"
D = "7d8f7c1e-0000-4000-8000-00000000000d"


def bare_store() -> MongoStore:
    store = MongoStore(f"mongodb://127.0.0.1:{closed_port()}/db")
    store._usage = NullUsage()  # type: ignore[assignment]
    return store


class Counters:
    """`counters` on a primary that holds writes not yet majority-committed: read concern
    "majority" sees `majority`, the default ("local") sees `local`. What a failover does
    to the writes in between: they are rolled back, and the new primary numbers others
    with their revisions."""

    def __init__(self, local: int, majority: int, concern: ReadConcern | None = None) -> None:
        self.local, self.majority, self.concern = local, majority, concern
        self.reads: list[str | None] = []

    def with_options(self, read_concern: ReadConcern | None = None, **_: Any) -> Counters:
        view = Counters(self.local, self.majority, read_concern)
        view.reads = self.reads
        return view

    async def find_one(self, where: Mapping[str, Any], *_: Any, **kw: Any) -> dict[str, Any]:
        level = self.concern.level if self.concern is not None else None
        self.reads.append(level)
        value = self.majority if level == "majority" else self.local
        return {"_id": where["_id"], "value": value}


async def no_replay(after: int, limit: int) -> Replay:
    raise AssertionError("served from the history, not the store")


# --- item 8: the history floor, and rollbacks -------------------------------------------


async def test_the_floor_is_read_at_majority() -> None:
    store = bare_store()
    counters = Counters(local=105, majority=100)
    store._counters = counters  # type: ignore[assignment]
    try:
        assert await store.current_revision() == 100
    finally:
        await store.close()
    assert counters.reads == ["majority"]


async def test_revisions_a_failover_rolled_back_and_handed_out_again_reach_selector_watchers() -> (
    None
):
    """Revisions 101-105 reached only the old primary and were rolled back; the new one
    numbers other writes 101, 102. The change stream delivers only majority-committed
    events, so those are what arrives. Before: the floor read at "local" was 105, and the
    history dropped 101 and 102 as "committed before it began" (the watcher waited
    forever)."""
    store = bare_store()
    store._counters = Counters(local=105, majority=100)  # type: ignore[assignment]
    stream = FakeStream([insert(1, record(A, 101)), insert(2, record(B, 102))])
    hub = ChangeHub()
    hub.start(feed_of(FakeWatch(), first=stream).run(), store.current_revision)
    try:
        assert await hub.history.ready() == 100
        events = SelectorStream(hub.history, Selector(), 100, no_replay).events()
        got = await take(events, 2)
        await events.aclose()
        assert [(e.asset.id, e.revision) for e in got] == [(A, 101), (B, 102)]
    finally:
        await hub.close()
        await store.close()


async def test_a_revision_handed_out_twice_by_the_change_stream_ends_selector_watches() -> None:
    """A change stream that shows revision 102 twice, for two assets, shows that writes
    the watchers saw were rolled back: they list again (HistoryGone), and the history
    begins anew at the (majority) counter."""
    store = bare_store()
    counters = Counters(local=100, majority=100)
    store._counters = counters  # type: ignore[assignment]
    gate = asyncio.Event()

    class Gated(FakeStream):
        async def try_next(self) -> Mapping[str, Any] | None:
            if self.seen == 2:
                await gate.wait()
            self.seen += 1
            return await super().try_next()

        seen = 0

    stream = Gated(
        [
            insert(1, record(A, 101)),
            insert(2, record(B, 102)),
            insert(3, record(C, 102)),  # another write with 102: B's was rolled back
            insert(4, record(D, 103)),
        ]
    )
    hub = ChangeHub()
    hub.start(feed_of(FakeWatch(), first=stream).run(), store.current_revision)
    try:
        await hub.history.ready()
        events = SelectorStream(hub.history, Selector(), 100, no_replay).events()
        assert [e.asset.id for e in await take(events, 2)] == [A, B]
        counters.majority = 102
        gate.set()
        with pytest.raises(HistoryGone, match="starting anew"):
            await take(events, 1)
        assert await hub.history.ready() == 102
        again = SelectorStream(hub.history, Selector(), 102, no_replay).events()
        assert [e.asset.id for e in await take(again, 1)] == [D]
        await again.aclose()
    finally:
        await hub.close()
        await store.close()


# --- item 2: changes since a revision ----------------------------------------------------


class Find:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.sorted: tuple[str, int] | None = None
        self.limited: int | None = None
        self.max_time: int | None = None

    def sort(self, key: str, direction: int) -> Find:
        self.sorted = (key, direction)
        return self

    def limit(self, n: int) -> Find:
        self.limited = n
        return self

    def max_time_ms(self, ms: int) -> Find:
        self.max_time = ms
        return self

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        docs = sorted(self.docs, key=lambda d: int(d["revision"]))
        for doc in docs[: self.limited]:
            yield doc

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()


class Collection:
    """Records every read with its session, filter and projection."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.reads: list[tuple[str, Any, Any, AsyncClientSession | None]] = []
        self.finds: list[Find] = []

    async def find_one(
        self, where: Mapping[str, Any], *_: Any, session: AsyncClientSession | None = None
    ) -> dict[str, Any] | None:
        self.reads.append(("find_one", dict(where), None, session))
        return next((d for d in self.docs if d["_id"] == where["_id"]), None)

    def find(
        self,
        where: Mapping[str, Any],
        projection: Mapping[str, Any],
        session: AsyncClientSession | None = None,
    ) -> Find:
        self.reads.append(("find", dict(where), dict(projection), session))
        after = where["revision"]["$gt"]
        docs = [d for d in self.docs if d["revision"] > after]
        for doc in docs:
            for field in projection:
                doc.pop(field, None)
        self.finds.append(Find(docs))
        return self.finds[-1]


def doc(asset_id: str, revision: int) -> dict[str, Any]:
    return asset_to_doc(
        ASSET.__class__(**{**ASSET.__dict__, "id": asset_id, "revision": revision}), revision
    )


async def test_a_replay_reads_horizon_counter_records_and_tombstones_in_one_snapshot() -> None:
    store = bare_store()
    counters = Collection([{"_id": "revision", "value": 9}, {"_id": HORIZON_ID, "value": 2}])
    assets = Collection([doc(A, 3), doc(B, 7)])
    gone = ASSET.__class__(**{**ASSET.__dict__, "id": C, "revision": 5, "updated_by": "ops"})
    tombstones = Collection([tombstone_doc(gone)])
    store._counters, store._assets, store._tombstones = counters, assets, tombstones  # type: ignore[assignment]
    try:
        replay = await store.changes_since(2, 10)
        with pytest.raises(HistoryGone, match="after revision 2"):
            await store.changes_since(1, 10)
    finally:
        await store.close()
    assert [(c.kind, c.asset.id, c.revision) for c in replay.changes] == [
        (ChangeKind.PUT, A, 3),
        (ChangeKind.DELETE, C, 5),
        (ChangeKind.PUT, B, 7),
    ]
    assert replay.revision == 9 and not replay.more
    assert replay.changes[1].asset.updated_by == "ops"
    reads = counters.reads[:2] + assets.reads + tombstones.reads
    sessions = {id(session) for *_, session in reads}
    session = reads[0][3]
    assert len(sessions) == 1 and session is not None, "one snapshot session for the cut"
    assert session.options.snapshot is True
    # No values or block sums are read; each list is one revision-index range, in order.
    assert assets.reads[0][2] == {"value_content": 0, "value_kind": 0, "block_sums": 0, "holds": 0}
    for find in assets.finds + tombstones.finds:
        assert find.sorted == ("revision", 1) and find.limited == 10
        assert find.max_time is not None and find.max_time > 0


class Sweepable:
    """Tombstones and counters for the sweep, recording the order of writes."""

    def __init__(self, log: list[str], revisions: list[int]) -> None:
        self.log, self.revisions = log, revisions

    def find(self, where: Mapping[str, Any], projection: Mapping[str, Any]) -> Find:
        return Find([{"revision": r} for r in self.revisions])

    async def update_one(self, where: Mapping[str, Any], update: Any, upsert: bool) -> None:
        self.log.append(f"horizon {update['$max']['value']}")

    async def delete_many(self, where: Mapping[str, Any]) -> Any:
        top = where["revision"]["$lte"]
        gone = [r for r in self.revisions if r <= top]
        self.revisions[:] = [r for r in self.revisions if r > top]
        self.log.append(f"delete <= {top}")
        return type("Deleted", (), {"deleted_count": len(gone)})()


async def test_the_sweep_raises_the_horizon_before_it_removes_anything() -> None:
    """A reader's cut that lacks a swept tombstone also shows the raised horizon."""
    writes: list[str] = []
    fake = Sweepable(writes, [4, 6, 9])
    store = bare_store()
    store._tombstones = store._counters = fake  # type: ignore[assignment]
    try:
        assert await store.sweep_tombstones(datetime.now(UTC)) == 3
    finally:
        await store.close()
    assert writes == ["horizon 9", "delete <= 9"]


async def test_a_delete_keeps_its_tombstone_in_its_own_transaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the fake replica set (tests/unit/mongo_fake): the record's removal and its
    tombstone commit together (one optime), the tombstone naming the deleter."""
    server = install(monkeypatch, Server())
    server.put("counters", {"_id": "revision", "value": 6})
    server.put("assets", doc(A, 6))
    store = attach(bare_store(), server)
    started = time.monotonic()
    try:
        gone = await store.delete(A, by="ops")
    finally:
        await store.close()
    assert time.monotonic() - started < 5
    assert gone is not None and gone.revision == 7
    (kept,) = server.documents("tombstones").values()
    assert kept["_id"] == A and kept["revision"] == 7 and kept["updated_by"] == "ops"
    assert "deleted_at" in kept and "value_content" not in kept
    assert A not in server.documents("assets")
    removed_at = server.versions["assets"][A][-1][0]
    assert server.versions["tombstones"][A][-1][0] == removed_at, "one transaction"
