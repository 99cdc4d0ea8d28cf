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
