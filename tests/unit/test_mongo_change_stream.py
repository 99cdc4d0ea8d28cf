"""MongoStore's change feed against realistic change events at the driver boundary."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import Timestamp
from pymongo.errors import (
    AutoReconnect,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from asset_service.domain.models import Change, ChangeKind, Resync, Status
from asset_service.store.mongo import ChangeFeed
from tests.feeds import take

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
A = "7d8f7c1e-0000-4000-8000-00000000000a"
B = "7d8f7c1e-0000-4000-8000-00000000000b"
_clock = itertools.count(1)


def token(n: int) -> dict[str, str]:
    return {"_data": f"8264{n:012d}2B0229296E04"}


def record(asset_id: str, revision: int, status: str = "PENDING", **more: Any) -> dict[str, Any]:
    """An `assets` document as MongoStore writes it."""
    return {
        "_id": asset_id,
        "seq": revision,
        "label": "in.txt",
        "status": status,
        "type": "FILE",
        "media_type": "text/plain",
        "storage_path": "",
        "value_kind": None,
        "value_content": None,
        "created_by_task": "task-1",
        "tags": ["raw"],
        "size_bytes": 0,
        "sha256": "",
        "created_at": T0,
        "updated_at": T0,
        "failure_reason": "",
        "fulfilled_from": "",
        "revision": revision,
        **more,
    }


def event(n: int, op: str, asset_id: str, **fields: Any) -> dict[str, Any]:
    """A change event shaped like the server's (resume token `_id`, ns, documentKey...)."""
    return {
        "_id": token(n),
        "operationType": op,
        "clusterTime": Timestamp(1_760_000_000, next(_clock)),
        "wallTime": T0,
        "ns": {"db": "asset_service", "coll": "assets"},
        "documentKey": {"_id": asset_id},
        **fields,
    }


def insert(n: int, doc: dict[str, Any]) -> dict[str, Any]:
    return event(n, "insert", doc["_id"], fullDocument=doc)


def update(n: int, doc: dict[str, Any], changed: dict[str, Any]) -> dict[str, Any]:
    desc = {"updatedFields": changed, "removedFields": [], "truncatedArrays": []}
    return event(n, "update", doc["_id"], fullDocument=doc, updateDescription=desc)


def delete_stamp(
    n: int,
    asset_id: str,
    revision: int,
    by: str = "admin",
    last: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """MongoStore.delete's stamp, with its post-image: the last state, stamped."""
    stamp = {"revision": revision, "deleted": True, "updated_by": by}
    desc = {"updatedFields": stamp, "removedFields": []}
    post = {**(last or record(asset_id, revision)), **stamp}
    return event(n, "update", asset_id, fullDocument=post, updateDescription=desc)


def delete(n: int, asset_id: str, pre: dict[str, Any] | None = None) -> dict[str, Any]:
    extra = {"fullDocumentBeforeChange": pre} if pre is not None else {}
    return event(n, "delete", asset_id, **extra)


def invalidate(n: int) -> dict[str, Any]:
    return {"_id": token(n), "operationType": "invalidate", "clusterTime": Timestamp(1, n)}


@dataclass(frozen=True)
class Idle:
    """An empty getMore batch: pymongo moves `resume_token` to its postBatchResumeToken."""

    n: int | None


Script = Iterable[Mapping[str, Any] | Exception | Idle]


class FakeStream:
    """Stands in for pymongo's AsyncChangeStream: scripted batches and errors, then waits.

    Like pymongo's: `try_next` runs one getMore; an event moves `resume_token` to its `_id`,
    an empty batch to the postBatchResumeToken, and an error leaves it where it was.
    """

    def __init__(self, script: Script, initial: int | None = -1) -> None:
        self.script = iter(script)
        # -1: like pymongo, the token it was opened with (FakeWatch sets it), else token(0).
        self.opened_at_request = initial == -1
        self._resume_token = None if initial is None else token(max(initial, 0))
        self.closed = False

    def opened_with(self, resume_after: Mapping[str, Any] | None) -> None:
        if self.opened_at_request and resume_after is not None:
            self._resume_token = resume_after

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        return self._resume_token

    @property
    def alive(self) -> bool:
        return not self.closed

    async def try_next(self) -> Mapping[str, Any] | None:
        item = next(self.script, None)
        if item is None:
            await asyncio.Event().wait()  # like a tailable cursor with nothing new
            raise AssertionError("unreachable")
        if isinstance(item, Exception):
            raise item
        if isinstance(item, Idle):
            self._resume_token = None if item.n is None else token(item.n)
            return None
        self._resume_token = item["_id"]
        return item

    async def next(self) -> Mapping[str, Any]:
        """pymongo's `next`: `try_next` until an event (empty batches move the token)."""
        while True:
            item = await self.try_next()
            if item is not None:
                return item

    async def close(self) -> None:
        self.closed = True


class FakeWatch:
    """Stands in for `collection.watch(...)`: records resume_after, returns scripted streams."""

    def __init__(self, *outcomes: FakeStream | Exception) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[Mapping[str, Any] | None] = []

    async def __call__(self, resume_after: Mapping[str, Any] | None) -> FakeStream:
        self.calls.append(resume_after)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        outcome.opened_with(resume_after)
        return outcome


def feed_of(watch: FakeWatch, first: FakeStream | None = None) -> ChangeFeed:
    return ChangeFeed(watch, backoff_initial=0.001, backoff_max=0.004, first_stream=first)


def summary(items: list[Change | Resync]) -> list[tuple[str, str, int] | str]:
    return [
        (i.kind.value, i.asset.id, i.revision) if isinstance(i, Change) else "RESYNC" for i in items
    ]


async def test_events_become_changes_in_order_with_numbered_deletes() -> None:
    a1, b2 = record(A, 1), record(B, 2)
    a3 = record(A, 3, "AVAILABLE", storage_path="/d/a", size_bytes=5)
    stream = FakeStream(
        [
            insert(1, a1),
            insert(2, b2),
            update(3, a3, {"status": "AVAILABLE", "revision": 3, "storage_path": "/d/a"}),
            delete_stamp(4, A, 4, last=a3),
            delete(5, A),
            delete_stamp(6, B, 5),
            delete(7, B),
        ]
    )
    feed = feed_of(FakeWatch(), first=stream)
    got = await take(feed.run(), 5)
    assert summary(got) == [
        ("PUT", A, 1),
        ("PUT", B, 2),
        ("PUT", A, 3),
        ("DELETE", A, 4),
        ("DELETE", B, 5),
    ]
    put_a3, del_a = got[2], got[3]
    assert isinstance(put_a3, Change) and put_a3.asset.status is Status.AVAILABLE
    assert put_a3.asset.storage_path == "/d/a" and put_a3.asset.tags == ("raw",)
    # The delete carries the last state (the stamp's post-image), at the new revision.
    assert isinstance(del_a, Change) and del_a.asset.storage_path == "/d/a"
    # ... and names who deleted it, from the stamp.
    assert del_a.asset.updated_by == "admin"
    assert feed.token == token(7)


async def test_a_delete_carries_the_full_last_state_from_its_stamp() -> None:
    """No pre-image is asked for (issue 21, item 9): the stamp's post-image has it all."""
    last = record(A, 8, "FAILED", failure_reason="boom")
    stream = FakeStream([delete_stamp(1, A, 9, by="ops", last=last), delete(2, A)])
    got = await take(feed_of(FakeWatch(), first=stream).run(), 1)
    change = got[0]
    assert isinstance(change, Change) and change.kind is ChangeKind.DELETE
    assert (
        change.revision,
        change.asset.status,
        change.asset.failure_reason,
        change.asset.updated_by,
    ) == (9, Status.FAILED, "boom", "ops")


async def test_delete_of_an_unseen_asset_has_its_id_and_revision() -> None:
    stream = FakeStream([delete_stamp(1, B, 12, by="cn:janitor"), delete(2, B)])
    got = await take(feed_of(FakeWatch(), first=stream).run(), 1)
    assert summary(got) == [("DELETE", B, 12)]
    assert isinstance(got[0], Change) and got[0].asset.updated_by == "cn:janitor"


async def test_delete_without_a_revision_stamp_resyncs() -> None:
    stream = FakeStream([delete(1, A), insert(2, record(B, 3))])
    got = await take(feed_of(FakeWatch(), first=stream).run(), 2)
    assert summary(got) == ["RESYNC", ("PUT", B, 3)]


async def test_transient_errors_resume_after_the_last_token() -> None:
    first = FakeStream([insert(1, record(A, 1)), insert(2, record(B, 2)), AutoReconnect("gone")])
    watch = FakeWatch(
        ServerSelectionTimeoutError("no primary"),  # election in progress
        NetworkTimeout("timed out"),
        FakeStream([insert(3, record(A, 3, "FAILED")), NetworkTimeout("again")]),
        FakeStream([insert(4, record(B, 4, "FAILED"))]),
    )
    got = await take(feed_of(watch, first=first).run(), 4)
    assert summary(got) == [("PUT", A, 1), ("PUT", B, 2), ("PUT", A, 3), ("PUT", B, 4)]
    assert watch.calls == [token(2), token(2), token(2), token(3)]
    assert first.closed


async def test_resume_before_any_event_uses_the_streams_initial_token() -> None:
    first = FakeStream([AutoReconnect("primary stepped down")], initial=41)
    watch = FakeWatch(FakeStream([insert(42, record(A, 7))]))
    got = await take(feed_of(watch, first=first).run(), 1)
    assert summary(got) == [("PUT", A, 7)]
    assert watch.calls == [token(41)]


async def test_lazily_opened_feed_starts_from_now_then_resumes() -> None:
    watch = FakeWatch(
        FakeStream([insert(1, record(A, 1)), AutoReconnect("x")], initial=0),
        FakeStream([insert(2, record(B, 2))]),
    )
    got = await take(feed_of(watch).run(), 2)
    assert summary(got) == [("PUT", A, 1), ("PUT", B, 2)]
    assert watch.calls == [None, token(1)]


@pytest.mark.parametrize("during", ["next", "resume"])
async def test_history_lost_resyncs_from_now_then_continues(during: str) -> None:
    lost = OperationFailure(
        "Resume of change stream was not possible, as the resume point may no longer be "
        "in the oplog.",
        code=286,
        details={"code": 286, "codeName": "ChangeStreamHistoryLost", "ok": 0},
    )
    if during == "next":
        first = FakeStream([insert(1, record(A, 1)), lost])
        fresh = FakeStream([insert(50, record(B, 50))], initial=49)
        watch = FakeWatch(fresh)
        expected_calls: list[Mapping[str, Any] | None] = [None]
    else:
        first = FakeStream([insert(1, record(A, 1)), AutoReconnect("restart")])
        fresh = FakeStream([insert(50, record(B, 50))], initial=49)
        watch = FakeWatch(lost, fresh)
        expected_calls = [token(1), None]
    feed = feed_of(watch, first=first)
    items = feed.run()
    got = await take(items, 2)
    assert summary(got) == [("PUT", A, 1), "RESYNC"]
    # The new stream is open before watchers are told to re-read: nothing can slip by.
    assert watch.calls == expected_calls
    assert isinstance(got[1], Resync) and "286" in got[1].reason
    assert summary(await take(items, 1)) == [("PUT", B, 50)]
    assert feed.token == token(50)


async def test_invalidate_resyncs_from_now() -> None:
    first = FakeStream([insert(1, record(A, 1)), invalidate(2), insert(3, record(A, 99))])
    watch = FakeWatch(FakeStream([insert(10, record(B, 5))], initial=9))
    got = await take(feed_of(watch, first=first).run(), 3)
    assert summary(got) == [("PUT", A, 1), "RESYNC", ("PUT", B, 5)]
    assert watch.calls == [None]  # an invalidated stream cannot be resumed
    assert first.closed


async def test_keeps_retrying_while_the_server_is_away() -> None:
    outages: list[FakeStream | Exception] = [AutoReconnect(f"down {i}") for i in range(8)]
    watch = FakeWatch(*outages, FakeStream([insert(2, record(B, 2))]))
    first = FakeStream([insert(1, record(A, 1)), AutoReconnect("down")])
    got = await take(feed_of(watch, first=first).run(), 2)
    assert summary(got) == [("PUT", A, 1), ("PUT", B, 2)]
    assert watch.calls == [token(1)] * 9


async def test_other_server_errors_back_off_and_resume() -> None:
    first = FakeStream([insert(1, record(A, 1)), OperationFailure("interrupted", code=11601)])
    watch = FakeWatch(FakeStream([insert(2, record(B, 2))]))
    got = await take(feed_of(watch, first=first).run(), 2)
    assert summary(got) == [("PUT", A, 1), ("PUT", B, 2)]
    assert watch.calls == [token(1)]


async def test_an_undecodable_event_resyncs_and_the_feed_goes_on() -> None:
    bad = insert(2, {**record(B, 2), "status": "NOT_A_STATUS"})
    first = FakeStream([insert(1, record(A, 1)), bad, insert(3, record(A, 3, "FAILED"))])
    got = await take(feed_of(FakeWatch(), first=first).run(), 3)
    assert summary(got) == [("PUT", A, 1), "RESYNC", ("PUT", A, 3)]


async def test_other_event_types_are_ignored() -> None:
    noise = event(2, "createIndexes", A)
    first = FakeStream([noise, insert(3, record(A, 3))])
    got = await take(feed_of(FakeWatch(), first=first).run(), 1)
    assert summary(got) == [("PUT", A, 3)]


async def test_an_update_without_its_post_image_resyncs_rather_than_guess() -> None:
    """Post-images are "required" (a server without them fails the stream); were one
    missing, rebuilding the state from a cache could put it on the wrong revision."""
    desc = {"updatedFields": {"status": "AVAILABLE", "revision": 2, "size_bytes": 5}}
    no_image = event(2, "update", A, fullDocument=None, updateDescription=desc)
    first = FakeStream([insert(1, record(A, 1)), no_image, insert(3, record(B, 3))])
    got = await take(feed_of(FakeWatch(), first=first).run(), 3)
    assert summary(got) == [("PUT", A, 1), "RESYNC", ("PUT", B, 3)]


async def test_an_unexpected_error_reopens_from_now_with_a_resync() -> None:
    first = FakeStream([insert(1, record(A, 1)), ValueError("invalid BSON")])
    watch = FakeWatch(FakeStream([insert(5, record(B, 5))], initial=4))
    got = await take(feed_of(watch, first=first).run(), 3)
    assert summary(got) == [("PUT", A, 1), "RESYNC", ("PUT", B, 5)]
    assert watch.calls == [None]


# --- item 6: memory, poison events, health; item 7: post-batch resume tokens ------------

MiB = 1024 * 1024
TOO_LARGE = 10334  # BSONObjectTooLarge: an event over 16 MB, raised on every resume
UNAUTHORIZED = 13


def failure(code: int, message: str, *labels: str) -> OperationFailure:
    """An OperationFailure as pymongo raises it from a getMore/aggregate reply."""
    details: dict[str, Any] = {"ok": 0, "code": code, "errmsg": message}
    if labels:
        details["errorLabels"] = list(labels)
    return OperationFailure(message, code=code, details=details)


def value_events(count: int, size: int) -> Iterator[dict[str, Any]]:
    """Fulfilled VALUE assets, each with its own `size` bytes, made one at a time."""
    for n in range(1, count + 1):
        asset_id = f"7d8f7c1e-0000-4000-8000-{n:012d}"
        doc = record(
            asset_id,
            n,
            "AVAILABLE",
            type="VALUE",
            value_kind="BYTES",
            value_content=bytes([n % 251]) * size,
            size_bytes=size,
        )
        yield insert(n, doc)


async def test_cache_keeps_no_value_bytes_but_puts_carry_them() -> None:
    import gc
    import tracemalloc

    count = 24
    feed = feed_of(FakeWatch(), first=FakeStream(value_events(count, MiB)))
    items = feed.run()
    tracemalloc.start()
    try:
        async with asyncio.timeout(5):
            for _ in range(count):
                change = await anext(items)
                assert isinstance(change, Change) and change.asset.value is not None
                assert len(change.asset.value.data) == MiB  # watchers get the value
            del change
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Before: the cache kept every value (24 MiB here; 39 GiB at 10,000 x 4 MiB).
    assert held < 3 * MiB, f"the feed holds {held / MiB:.1f} MiB after {count} x 1 MiB values"
    await items.aclose()


async def test_delete_changes_hold_no_value_bytes() -> None:
    last = record(A, 8, "AVAILABLE", type="VALUE", value_kind="TEXT")
    last["value_content"] = b"x" * 1000
    first = FakeStream([delete_stamp(1, A, 9, last=last), delete(2, A)])
    got = await take(feed_of(FakeWatch(), first=first).run(), 1)
    assert isinstance(got[0], Change) and got[0].kind is ChangeKind.DELETE
    assert (got[0].revision, got[0].asset.status, got[0].asset.value) == (
        9,
        Status.AVAILABLE,
        None,
    )


async def test_a_poison_event_is_retried_a_bounded_number_of_times_then_resyncs() -> None:
    """An event over 16 MB fails every resume from the same token: skip it with a Resync."""
    too_large = failure(TOO_LARGE, "BSONObj size: 17000000 (0x1036640) is invalid")
    first = FakeStream([insert(1, record(A, 1)), too_large])
    watch = FakeWatch(
        FakeStream([too_large]),
        FakeStream([too_large]),
        FakeStream([insert(50, record(B, 50))], initial=49),
    )
    feed = feed_of(watch, first=first)
    items = feed.run()
    got = await take(items, 2)
    assert summary(got) == [("PUT", A, 1), "RESYNC"]
    assert watch.calls == [token(1), token(1), None]  # then from now, never again token(1)
    assert isinstance(got[1], Resync) and "10334" in got[1].reason
    # Reported while it lasted (MongoStore.ping fails: health NOT_SERVING)...
    assert feed.failure is not None and "3 times" in feed.failure
    assert summary(await take(items, 1)) == [("PUT", B, 50)]
    assert feed.failure is None  # ...and cleared once the stream reads again
    assert feed.token == token(50)


async def test_unauthorized_is_reported_and_retried_without_a_resync_storm() -> None:
    denied = failure(UNAUTHORIZED, "not authorized on asset_service to execute command")
    first = FakeStream([insert(1, record(A, 1)), denied])
    watch = FakeWatch(
        denied, denied, denied, denied, denied, FakeStream([insert(7, record(B, 7))], initial=6)
    )
    feed = feed_of(watch, first=first)
    items = feed.run()
    got = await take(items, 2)
    assert summary(got) == [("PUT", A, 1), "RESYNC"]  # one Resync, however long it lasts
    assert watch.calls == [token(1), token(1), None, None, None, None]
    assert feed.failure is not None and "not authorized" in feed.failure
    assert summary(await take(items, 1)) == [("PUT", B, 7)]
    assert feed.failure is None


async def test_election_errors_are_never_taken_for_poison() -> None:
    not_primary = failure(10107, "not primary", "ResumableChangeStreamError")
    watch = FakeWatch(*[not_primary] * 6, FakeStream([insert(2, record(B, 2))]))
    first = FakeStream([insert(1, record(A, 1)), not_primary])
    feed = feed_of(watch, first=first)
    got = await take(feed.run(), 2)
    assert summary(got) == [("PUT", A, 1), ("PUT", B, 2)]  # no Resync: the token still works
    assert watch.calls == [token(1)] * 7
    assert feed.failure is None


async def test_a_transient_error_that_lasts_is_reported_while_resuming_from_the_token() -> None:
    watch = FakeWatch(*[AutoReconnect(f"down {i}") for i in range(5)], FakeStream([]))
    first = FakeStream([insert(1, record(A, 1)), AutoReconnect("down")])
    feed = ChangeFeed(
        watch,
        backoff_initial=0.001,
        backoff_max=0.004,
        first_stream=first,
        report_transient_after=0.0,
    )
    items = feed.run()
    assert summary(await take(items, 1)) == [("PUT", A, 1)]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await anext(items)  # the last stream waits for events
    assert watch.calls == [token(1)] * 6
    assert feed.failure is not None and "down" in feed.failure
    await items.aclose()


async def test_reopens_from_the_post_batch_resume_token_not_the_last_event() -> None:
    """After an idle weekend the last event's id may be off the oplog; the PBRT is not."""
    first = FakeStream([insert(1, record(A, 1)), Idle(7), Idle(9), AutoReconnect("failover")])
    watch = FakeWatch(FakeStream([insert(10, record(B, 10))], initial=9))
    feed = feed_of(watch, first=first)
    got = await take(feed.run(), 2)
    assert summary(got) == [("PUT", A, 1), ("PUT", B, 10)]
    assert watch.calls == [token(9)]


async def test_token_moves_with_empty_batches() -> None:
    first = FakeStream([Idle(3), Idle(5)], initial=1)
    feed = feed_of(FakeWatch(), first=first)
    items = feed.run()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await anext(items)
    assert feed.token == token(5)
    await items.aclose()


async def test_a_missing_resume_token_reopens_from_now_with_a_resync() -> None:
    """No token (no PBRT from an old server): reopening "from now" could skip changes."""
    first = FakeStream([AutoReconnect("failover")], initial=None)
    watch = FakeWatch(FakeStream([insert(3, record(B, 3))], initial=2))
    got = await take(feed_of(watch, first=first).run(), 2)
    assert summary(got) == ["RESYNC", ("PUT", B, 3)]
    assert watch.calls == [None]


class _Admin:
    async def command(self, name: str) -> dict[str, Any]:
        assert name == "ping"
        return {"ok": 1.0}


class _ReachableClient:
    """The server answers ping: only the change feed is in trouble."""

    admin = _Admin()


class _Collection:
    def __init__(self) -> None:
        self.watched: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def watch(self, *args: Any, **kwargs: Any) -> FakeStream:
        self.watched.append((args, kwargs))
        return FakeStream([])


async def test_a_failing_feed_makes_ping_and_health_fail_until_it_reads_again() -> None:
    from asset_service.domain.errors import Unavailable
    from asset_service.probes import NOT_SERVING, READINESS, SERVING, Probes
    from asset_service.store.mongo import MongoStore
    from tests.health import health_status

    denied = failure(UNAUTHORIZED, "not authorized on asset_service to execute command")
    watch = FakeWatch(denied, denied, FakeStream([insert(7, record(B, 7))], initial=6))
    feed = feed_of(watch, first=FakeStream([insert(1, record(A, 1)), denied]))
    store = MongoStore("mongodb://127.0.0.1:1/db")
    store._client = _ReachableClient()  # type: ignore[assignment]
    store._feed = feed
    items = feed.run()
    await store.ping()  # healthy feed, reachable server
    assert summary(await take(items, 2)) == [("PUT", A, 1), "RESYNC"]
    with pytest.raises(Unavailable, match=r"change feed is failing.*not authorized"):
        await store.ping()
    probes = Probes([("database", store.ping)], 0.01)
    monitor = asyncio.create_task(probes.run())
    try:
        await asyncio.sleep(0.1)
        assert await health_status(probes.servicer, READINESS) == NOT_SERVING
        assert summary(await take(items, 1)) == [("PUT", B, 7)]
        await asyncio.sleep(0.1)
        assert await health_status(probes.servicer, READINESS) == SERVING
    finally:
        monitor.cancel()
        await items.aclose()


async def test_streams_are_opened_with_the_pipeline_that_drops_duplicate_values() -> None:
    """The stages the store sends are EVALUATED (tests/unit/mongo_fake: each operator as
    the manual describes it) over events shaped like the server's, not compared with the
    store's own constant; the same events run on MongoDB itself in
    tests/contract/test_mongo_change_pipeline.py (MONGODB_URI)."""
    from asset_service.store.mongo import MongoStore
    from tests.unit.mongo_fake import aggregate

    store = MongoStore("mongodb://127.0.0.1:1/db")
    assets = _Collection()
    store._assets = assets  # type: ignore[assignment]
    await store._open_stream(token(3))
    ((args, kwargs),) = assets.watched
    pipeline = args[0] if args else kwargs.get("pipeline")
    # Post-images kept at the change, not the record when read; no pre-images at all.
    assert kwargs["resume_after"] == token(3) and kwargs["full_document"] == "required"
    assert "full_document_before_change" not in kwargs
    value = b"v" * 1024
    sums = b"\x00\x10\x00\x00\x01\x02\x03\x04"
    assert pipeline is not None
    events: list[dict[str, Any]] = [
        {
            "_id": token(1),
            "operationType": "insert",
            "fullDocument": {"value_content": value, "block_sums": sums, "revision": 1},
        },
        {
            "_id": token(2),
            "operationType": "update",
            "fullDocument": {"value_content": value, "status": "AVAILABLE", "revision": 2},
            "updateDescription": {
                "updatedFields": {"value_content": value, "status": "AVAILABLE", "revision": 2}
            },
        },
        {  # set_block_sums: no revision, not a change of the asset
            "_id": token(3),
            "operationType": "update",
            "fullDocument": {"value_content": value, "block_sums": sums, "revision": 2},
            "updateDescription": {"updatedFields": {"block_sums": sums}},
        },
        {"_id": token(4), "operationType": "delete", "documentKey": {"_id": "a"}},
    ]
    inserted, updated, deleted = aggregate(events, pipeline, datetime.now(UTC))
    assert inserted["fullDocument"] == {"value_content": value, "revision": 1}
    assert updated["fullDocument"]["value_content"] == value  # the post-image keeps it
    assert updated["updateDescription"]["updatedFields"] == {"status": "AVAILABLE", "revision": 2}
    assert deleted["operationType"] == "delete"
    # A changed _id (the resume token) would break resuming (error 280).
    assert [e["_id"] for e in (inserted, updated, deleted)] == [token(1), token(2), token(4)]
    await store.close()


async def test_cursor_not_found_and_server_timeouts_are_not_poison() -> None:
    from pymongo.errors import CursorNotFound, ExecutionTimeout

    lost_cursor = CursorNotFound("cursor id 7 not found", code=43)
    slow = ExecutionTimeout("operation exceeded time limit", code=50)
    watch = FakeWatch(
        FakeStream([lost_cursor]),
        FakeStream([lost_cursor]),
        FakeStream([slow]),
        FakeStream([slow]),
        FakeStream([slow]),
        FakeStream([insert(2, record(B, 2))]),
    )
    first = FakeStream([insert(1, record(A, 1)), lost_cursor])
    feed = feed_of(watch, first=first)
    got = await take(feed.run(), 2)
    assert summary(got) == [("PUT", A, 1), ("PUT", B, 2)]  # resumed, no Resync
    assert watch.calls == [token(1)] * 6


async def test_an_update_of_block_sums_alone_is_no_change() -> None:
    """MongoStore.set_block_sums (sums of an old asset, kept on its first read) writes no
    revision: the feed must not report it, or watchers would see one revision twice."""
    a2 = record(A, 2, "AVAILABLE", storage_path="/d/a", size_bytes=5)
    a3 = record(A, 3, "AVAILABLE", storage_path="/d/a", corrupt_reason="bad")
    stream = FakeStream(
        [
            insert(1, record(A, 1)),
            update(2, a2, {"status": "AVAILABLE", "revision": 2, "storage_path": "/d/a"}),
            update(3, a2, {"block_sums": b"\x00\x10\x00\x00\x01\x02\x03\x04"}),
            update(4, a3, {"corrupt_reason": "bad", "revision": 3}),
        ]
    )
    feed = feed_of(FakeWatch(), first=stream)
    got = await take(feed.run(), 3)
    assert summary(got) == [("PUT", A, 1), ("PUT", A, 2), ("PUT", A, 3)]
    last = got[-1]
    assert isinstance(last, Change) and last.asset.corrupt_reason == "bad"
