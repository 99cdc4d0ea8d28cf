"""Watch events in revision order, built from what is exact at each change (issue 21, items 1, 9).

The issue reproduced it with the project's classes: with `full_document="updateLookup"`
an update event carries the record as it is when the event is READ, so a feed that reads
a little late yields revisions 1, 2, 5, 4, 5: the shared history is no longer sorted, a
selector watch gets A@5, B@4, A@5, and a client resuming from 5 never sees B@4 (FAILED).
Here the store's own change stream options (`MongoStore._open_stream`) meet a fake
primary that follows MongoDB's documented semantics for each of them
(tests/unit/fake_mongo.py: updateLookup reads the current record, post-images are kept
at the change), and the feed, the hub and a selector watch run as in production.
"""

from __future__ import annotations

import asyncio

import pytest

from asset_service.domain.models import (
    BlockSums,
    Change,
    Corruption,
    Failure,
    Fulfillment,
    Status,
    WatchEvent,
)
from asset_service.domain.replay import Replay
from asset_service.domain.watch import ChangeHub, Selector, SelectorStream
from asset_service.store.mongo import ChangeFeed
from tests.feeds import take
from tests.records import pending_record
from tests.unit.fake_mongo import Server, install
from tests.unit.test_mongo_promise_leases import process

FULFILL = Fulfillment(size_bytes=3, sha256="ab" * 32, storage_path="generated/t/a")


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> Server:
    s = Server()
    s.images.add("assets")  # what MongoStore.open turns on (collMod), 6.0+
    install(s, monkeypatch)
    return s


async def test_events_carry_the_state_at_their_revision_in_order(server: Server) -> None:
    store = process(server)
    try:
        feed = ChangeFeed(store._open_stream, first_stream=await store._open_stream(None))
        a = await store.insert(pending_record())
        b = await store.insert(pending_record())
        await store.transition(a.id, Status.PENDING, FULFILL, a.created_at)
        await store.transition(b.id, Status.PENDING, Failure("out of memory"), a.created_at)
        await store.transition(a.id, Status.AVAILABLE, Corruption("block 0 differs"), a.created_at)
        await store.set_block_sums(a.id, "generated/t/a", BlockSums(4, b"\x00\x00\x00\x01"))
        gone = await store.delete(a.id, "admin")
        assert gone is not None
        # Only now does the feed read: every change above is committed.
        got = await take(feed.run(), 6)
    finally:
        await store.close()
    changes = [c for c in got if isinstance(c, Change)]
    assert len(changes) == 6, got
    who = {a.id: "A", b.id: "B"}
    assert [(c.kind.value, who[c.asset.id], c.revision) for c in changes] == [
        ("PUT", "A", 1),
        ("PUT", "B", 2),
        ("PUT", "A", 3),
        ("PUT", "B", 4),
        ("PUT", "A", 5),
        ("DELETE", "A", 6),
    ]
    a3, b4, a5, a6 = (c.asset for c in changes[2:])
    assert (a3.status, a3.corrupt_reason) == (Status.AVAILABLE, "")
    assert (b4.status, b4.failure_reason) == (Status.FAILED, "out of memory")
    assert a5.corrupt_reason == "block 0 differs"
    assert (a6.updated_by, a6.corrupt_reason) == ("admin", "block 0 differs")
    # Item 9: one post-image per update (none for the insert, the delete, or block sums
    # kept later, whose event the pipeline drops), no pre-image, no lookup.
    assert server.image_reads["pre"] == server.image_reads["lookup"] == 0
    updates = 4  # A fulfilled, B failed, A marked, A stamped for its delete
    assert server.image_reads["post"] <= updates + 1  # +1: the block sums' event, if read


async def test_a_selector_watch_resuming_mid_way_misses_nothing(server: Server) -> None:
    """The hub's shared history stays sorted, and a client that resumes from A's
    fulfilment (3) gets B's failure (4) before A's corruption (5)."""
    store = process(server)
    hub = ChangeHub()
    try:
        feed = ChangeFeed(store._open_stream, first_stream=await store._open_stream(None))
        a = await store.insert(pending_record(tags=("job-1",)))
        b = await store.insert(pending_record(tags=("job-1",)))
        await store.transition(a.id, Status.PENDING, FULFILL, a.created_at)
        await store.transition(b.id, Status.PENDING, Failure("out of memory"), a.created_at)
        await store.transition(a.id, Status.AVAILABLE, Corruption("block 0 differs"), a.created_at)

        async def zero() -> int:
            return 0

        hub.start(feed.run(), zero)
        await hub.history.ready(5)
        async with asyncio.timeout(5):
            while len(hub.history) < 5:
                await hub.history.next_move().wait()
        revisions = [c.revision for c in hub.history.since(0)]
        assert revisions == sorted(set(revisions)) == [1, 2, 3, 4, 5]
        events: list[WatchEvent] = []

        async def no_replay(after: int, limit: int) -> Replay:
            raise AssertionError("revision 3 is in the history: nothing to read from the store")

        stream = SelectorStream(hub.history, Selector(tags=("job-1",)), 3, no_replay).events()
        async with asyncio.timeout(5):
            while len(events) < 2:
                events.append(await anext(stream))
        await stream.aclose()
    finally:
        await hub.close()
        await store.close()
    assert [(e.asset.id, e.asset.revision, e.asset.status) for e in events] == [
        (b.id, 4, Status.FAILED),
        (a.id, 5, Status.AVAILABLE),
    ]


async def test_a_server_without_post_images_for_assets_fails_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "required" post-images fail the stream where they are off, rather than let it
    fall back to reading records late (MongoStore.open turns them on, or refuses)."""
    server = Server()
    install(server, monkeypatch)
    store = process(server)
    try:
        with pytest.raises(Exception, match="changeStreamPreAndPostImages"):
            await store._open_stream(None)
    finally:
        await store.close()


async def test_open_refuses_when_post_images_cannot_be_turned_on() -> None:
    """Without collMod rights on `assets` (and images off) the server does not start
    with a feed that would read records late: it says what to run."""
    from pymongo.errors import OperationFailure

    from asset_service.domain.errors import Unavailable
    from tests.unit.test_mongo_open import FakeClient, FakeCollection, FakeDatabase, faked

    class NoCollMod(FakeDatabase):
        async def command(self, *args: object, **kwargs: object) -> dict[str, object]:
            raise OperationFailure("not authorized on db to execute command collMod", 13)

    store = faked(FakeCollection(), FakeCollection(), NoCollMod())
    store._client = FakeClient(  # type: ignore[assignment]
        {"setName": "rs0", "isWritablePrimary": True, "maxWireVersion": 21}
    )
    store._transactions = True
    with pytest.raises(Unavailable, match=r"post-images.*changeStreamPreAndPostImages"):
        await store.open()
