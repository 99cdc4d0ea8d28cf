"""A write is answered as soon as it is durable: the fan-out to its watchers comes after."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.api import convert
from asset_service.config import load_settings
from asset_service.domain.models import WatchEvent
from asset_service.server import RunningServer, start
from asset_service.store.sqlite import SqliteStore
from tests.records import pending_record

# What serializing the change costs the event loop here: a stand-in for a fan-out to
# thousands of watchers, which runs on the loop that also sends the writer's reply.
SLOW_FANOUT_SECONDS = 1.0


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = load_settings(
        [
            "--listen",
            "127.0.0.1:0",
            "--storage-root",
            str(tmp_path / "data"),
            "--database-url",
            f"sqlite:///{tmp_path / 'assets.db'}",
            "--disk-reserve-bytes",
            "0",
        ],
        {},
    )
    running = await start(settings)
    try:
        yield running
    finally:
        await running.stop(1)


async def test_the_writers_reply_does_not_wait_for_a_slow_fanout(
    served: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = f"127.0.0.1:{served.port}"
    slowed = threading.Event()
    real = convert.event_bytes

    def slow(event: WatchEvent) -> bytes:
        if event.kind == "CHANGED":
            slowed.set()
            time.sleep(SLOW_FANOUT_SECONDS)  # holds the server's event loop
        return real(event)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        created = await stub.CreatePendingAsset(
            pb.CreatePendingAssetRequest(task_id="t", label="v", type=pb.ASSET_TYPE_VALUE)
        )
        asset_id = created.asset.id
        ready = asyncio.Event()

        async def watch() -> list[int]:
            kinds = []
            async for event in stub.WatchAsset(pb.WatchAssetRequest(asset_ids=[asset_id])):
                kinds.append(event.type)
                ready.set()
            return kinds

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(ready.wait(), 10)
        monkeypatch.setattr(convert, "event_bytes", slow)

        def fulfill() -> float:
            # A client of its own thread: the server's loop stalling must not stall it.
            with grpc.insecure_channel(address) as sync_channel:
                sync = pb_grpc.AssetServiceStub(sync_channel)
                started = time.monotonic()
                sync.FulfillAsset(
                    pb.FulfillAssetRequest(asset_id=asset_id, value=pb.Value(text="x")),
                    timeout=10,
                )
                return time.monotonic() - started

        took = await asyncio.to_thread(fulfill)
        kinds = await asyncio.wait_for(watcher, 10)

    assert slowed.is_set(), "the change was fanned out"
    assert kinds == [pb.WATCH_EVENT_TYPE_SNAPSHOT, pb.WATCH_EVENT_TYPE_CHANGED]
    assert took < SLOW_FANOUT_SECONDS / 2, (
        f"FulfillAsset took {took:.2f}s: its reply waited for the fan-out"
    )


async def test_a_caller_some_task_hops_away_is_answered_before_its_change_goes_out(
    tmp_path: Path,
) -> None:
    """The store's change feed (what the hub's pump reads) hands a change on only after
    the writer's caller, a few task hops away as an RPC is, has resumed: the watchers'
    wake-ups then queue behind the reply, not ahead of it."""
    store = SqliteStore(tmp_path / "assets.db", reserve_bytes=0)
    await store.open()
    order: list[str] = []

    async def pump() -> None:
        async for _ in store.changes():
            order.append("change out")

    pumping = asyncio.create_task(pump())
    try:
        await asyncio.sleep(0)

        async def write() -> None:  # the domain's call, in the RPC's task
            await store.insert(pending_record())

        async def rpc() -> None:  # an RPC's handler, awaiting work in a task of its own
            await asyncio.create_task(write())
            order.append("reply")

        await asyncio.create_task(rpc())
        for _ in range(20):
            await asyncio.sleep(0)
        assert order == ["reply", "change out"]
    finally:
        pumping.cancel()
        await store.close()
