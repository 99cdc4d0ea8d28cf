"""WatchAsset serializes each change once for every stream that sends it, within a budget."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.api import convert, wire
from asset_service.api.stalls import StallGuard
from asset_service.domain.models import Asset, AssetType, Status, Value, ValueKind, WatchEvent
from asset_service.server import RunningServer
from tests.unit.in_process import served_from_memory

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ID = "5b0e4f0e-0000-4000-8000-00000000000a"


def asset(revision: int, value: bytes | None = b"x", asset_id: str = ID) -> Asset:
    return Asset(
        asset_id,
        "out.txt",
        Status.AVAILABLE,
        AssetType.VALUE,
        "text/plain",
        NOW,
        NOW,
        value=Value(ValueKind.TEXT, value) if value is not None else None,
        revision=revision,
    )


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[tuple[RunningServer, pb_grpc.AssetServiceAsyncStub]]:
    async with served_from_memory(tmp_path) as served:
        yield served


async def test_one_change_to_many_watchers_is_serialized_once(
    served: tuple[RunningServer, pb_grpc.AssetServiceAsyncStub], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, stub = served
    serialized: list[str] = []
    real = convert.event_bytes

    def counting(event: WatchEvent) -> bytes:
        serialized.append(event.kind)
        return real(event)

    monkeypatch.setattr(convert, "event_bytes", counting)
    created = await stub.CreatePendingAsset(
        pb.CreatePendingAssetRequest(task_id="t", label="out.txt", type=pb.ASSET_TYPE_VALUE)
    )
    asset_id = created.asset.id
    watchers = 40
    ready = asyncio.Semaphore(0)

    async def watch() -> list[pb.WatchAssetResponse]:
        events = []
        async for event in stub.WatchAsset(pb.WatchAssetRequest(asset_ids=[asset_id])):
            events.append(event)
            if event.type == pb.WATCH_EVENT_TYPE_SNAPSHOT:
                ready.release()
        return events

    tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
    for _ in range(watchers):
        await asyncio.wait_for(ready.acquire(), 10)
    serialized.clear()  # snapshots are read per watcher; the change is what is shared
    fulfilled = await stub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=asset_id, value=pb.Value(text="done"))
    )
    streams = await asyncio.wait_for(asyncio.gather(*tasks), 10)

    assert serialized == ["CHANGED"], "one serialization for every watcher"
    for events in streams:  # each stream: its snapshot, then the change, parsed back
        assert [e.type for e in events] == [
            pb.WATCH_EVENT_TYPE_SNAPSHOT,
            pb.WATCH_EVENT_TYPE_CHANGED,
        ]
        changed = events[1]
        assert changed.asset == fulfilled.asset
        assert changed.asset.value.text == "done"
        assert changed.revision == fulfilled.asset.revision
        assert changed.SerializeToString() == streams[0][1].SerializeToString()


async def test_resuming_after_a_revision_still_skips_what_was_seen(
    served: tuple[RunningServer, pb_grpc.AssetServiceAsyncStub],
) -> None:
    _, stub = served
    created = await stub.CreatePendingAsset(
        pb.CreatePendingAssetRequest(task_id="t", label="out.txt", type=pb.ASSET_TYPE_VALUE)
    )
    done = await stub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=created.asset.id, value=pb.Value(text="v"))
    )
    request = pb.WatchAssetRequest(asset_ids=[created.asset.id])
    first = [e async for e in stub.WatchAsset(request)]
    assert [(e.type, e.revision) for e in first] == [
        (pb.WATCH_EVENT_TYPE_SNAPSHOT, done.asset.revision)
    ]
    request.after_revision = done.asset.revision
    assert [e async for e in stub.WatchAsset(request)] == [], "nothing after the cursor"


def test_the_same_record_shares_bytes_that_parse_back_to_the_event() -> None:
    events = convert.SharedEvents()
    record = asset(7)
    first = events.encode(WatchEvent("CHANGED", record))
    again = events.encode(WatchEvent("CHANGED", dataclasses.replace(record)))  # equal, not same
    assert again is first and events.serialized == 1
    parsed = pb.WatchAssetResponse.FromString(first)
    assert parsed.type == pb.WATCH_EVENT_TYPE_CHANGED and parsed.revision == 7
    assert parsed.asset == convert.asset_to_pb(record)


def test_events_that_share_a_key_but_differ_are_not_shared() -> None:
    """A DELETED event carries the watcher's last known state: with or without the value."""
    events = convert.SharedEvents()
    full = events.encode(WatchEvent("DELETED", asset(3)))
    slim = events.encode(WatchEvent("DELETED", asset(3, value=None)))
    assert full != slim and events.serialized == 2
    assert pb.WatchAssetResponse.FromString(full).asset.value.text == "x"
    assert not pb.WatchAssetResponse.FromString(slim).asset.HasField("value")
    snapshot = events.encode(WatchEvent("SNAPSHOT", asset(3)))
    assert pb.WatchAssetResponse.FromString(snapshot).type == pb.WATCH_EVENT_TYPE_SNAPSHOT


def test_the_cache_stays_within_its_budget() -> None:
    events = convert.SharedEvents(max_entries=8, max_bytes=4000)
    for revision in range(1, 50):
        events.encode(WatchEvent("CHANGED", asset(revision, b"v" * 100)))
        assert len(events) <= 8 and events.cached_bytes <= 4000
    big = asset(99, b"b" * 5000)  # larger than the whole budget: sent, never kept
    data = events.encode(WatchEvent("CHANGED", big))
    assert pb.WatchAssetResponse.FromString(data).asset.value.text == "b" * 5000
    assert events.cached_bytes <= 4000
    assert events.encode(WatchEvent("CHANGED", big)) == data and events.serialized == 51


def test_the_wire_serializer_passes_bytes_and_serializes_messages() -> None:
    message = pb.WatchAssetResponse(revision=5)
    data = message.SerializeToString()
    assert wire.response_bytes(data) is data
    assert wire.response_bytes(message) == data


async def test_one_guard_ends_only_a_write_that_waits_past_the_limit() -> None:
    guard = StallGuard(0.2)
    clock = asyncio.get_running_loop().time

    async def stream(write_takes: float) -> str:
        writer = guard.register()
        try:
            writer.since = clock()
            try:
                await asyncio.sleep(write_takes)  # stands for context.write
            except asyncio.CancelledError:
                if not writer.stalled:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                return "stalled"
            writer.since = None
            await asyncio.sleep(0.5)  # waiting for the next change is never a stall
            return "sent"
        finally:
            guard.unregister(writer)

    started = clock()
    assert list(await asyncio.gather(stream(30), stream(0.01))) == ["stalled", "sent"]
    assert clock() - started < 5
    assert guard._timer is None, "no timer once no stream is open"

    cancelled = asyncio.create_task(stream(30))  # the client going away is not a stall
    await asyncio.sleep(0.05)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
