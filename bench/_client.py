"""The client side of every row: the same code drives the service and its bare ceiling."""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.api.wire import MESSAGE_LIMITS
from asset_service.storage.sink import FileSink

MiB = 1024 * 1024
# As the project's own clients: room for a 4 MiB VALUE and its envelope.
CHANNEL_OPTIONS = list(MESSAGE_LIMITS)


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


@dataclass(frozen=True)
class Payload:
    """`size` bytes sent as one random 1 MiB chunk repeated, with their sha256."""

    size: int
    chunk: bytes
    sha256: str

    @classmethod
    def make(cls, size: int) -> Payload:
        chunk = os.urandom(MiB)
        digest = hashlib.sha256()
        for _ in range(size // MiB):
            digest.update(chunk)
        return cls(size, chunk, digest.hexdigest())


async def local_sink(folder: Path, payload: Payload) -> float:
    """Seconds for the service's own upload sink (storage/sink.FileSink: hash, write with
    direct I/O where allowed, fsync) to take the payload into `folder` (then removed), in
    this process: the upload with no network and no server."""
    target = folder / "bench-local-sink.bin"
    start = time.perf_counter()
    out = FileSink(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        for _ in range(payload.size // MiB):
            await out.write(payload.chunk)
        digest = await out.seal()
    finally:
        out.abort()
    elapsed = time.perf_counter() - start
    target.unlink()
    if digest != payload.sha256:
        raise RuntimeError(f"the local sink hashed {digest}, expected {payload.sha256}")
    return elapsed


async def upload(
    stub: pb_grpc.AssetServiceAsyncStub, payload: Payload, label: str = "bench.bin"
) -> tuple[float, str]:
    """Seconds for one UploadAsset (size and sha256 declared in the header), and its id."""
    header = pb.UploadAssetRequest(
        header=pb.UploadHeader(
            label=label,
            media_type="application/octet-stream",
            expected_size_bytes=payload.size,
            expected_sha256=payload.sha256,
        )
    )
    chunk = pb.UploadAssetRequest(chunk=payload.chunk)

    async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
        yield header
        for _ in range(payload.size // MiB):
            yield chunk

    start = time.perf_counter()
    response = await stub.UploadAsset(requests())
    return time.perf_counter() - start, response.asset.id


async def read(stub: pb_grpc.AssetServiceAsyncStub, asset_id: str, size: int) -> float:
    """Seconds for ReadAsset of `size` bytes (1 MiB chunks), every byte counted."""
    start = time.perf_counter()
    got = 0
    async for response in stub.ReadAsset(pb.ReadAssetRequest(asset_id=asset_id, limit=size)):
        got += len(response.chunk)
    elapsed = time.perf_counter() - start
    if got != size:
        raise RuntimeError(f"ReadAsset returned {got} of {size} bytes")
    return elapsed


async def fanout(stub: pb_grpc.AssetServiceAsyncStub, watchers: int) -> float:
    """Seconds from sending FulfillAsset until the last of `watchers` streams has the change."""
    asset = (
        await stub.CreatePendingAsset(
            pb.CreatePendingAssetRequest(task_id="bench", label="v", type=pb.ASSET_TYPE_VALUE)
        )
    ).asset
    ready = asyncio.Semaphore(0)
    seen_at: list[float] = []

    async def watch() -> None:
        async for event in stub.WatchAsset(pb.WatchAssetRequest(asset_ids=[asset.id])):
            if event.type == pb.WATCH_EVENT_TYPE_SNAPSHOT:
                ready.release()
            else:
                seen_at.append(time.perf_counter())

    tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
    try:
        for _ in range(watchers):
            await asyncio.wait_for(ready.acquire(), 60)
        sent = time.perf_counter()
        await stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=asset.id, value=pb.Value(text="x")))
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        for task in tasks:
            task.cancel()
    if len(seen_at) != watchers:
        raise RuntimeError(f"{watchers - len(seen_at)} of {watchers} watchers missed the change")
    return max(seen_at) - sent


async def closed_loop(call: Callable[[], Awaitable[object]], in_flight: int, total: int) -> float:
    """Calls per second of `total` calls made by `in_flight` callers, each calling again as
    soon as its previous call returns."""
    remaining = total

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return total / (time.perf_counter() - start)


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def median_latency(calls: list[Callable[[], Awaitable[object]]]) -> float:
    """Median seconds of the given calls made one after another."""
    return statistics.median([await timed(call) for call in calls])
