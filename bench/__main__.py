"""Run the benchmarks against a real server process: `make bench` or `python -m bench`."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from bench._object_store import object_store_rows
from tests.serverproc import ServerProcess

MiB = 1024 * 1024


def raw_write(folder: Path, size: int) -> float:
    """Baseline: what the disk and hashlib alone do with the same bytes (write, hash, fsync)."""
    chunk = os.urandom(MiB)
    start = time.perf_counter()
    digest = hashlib.sha256()
    with open(folder / "baseline.bin", "wb") as fh:
        for _ in range(size // MiB):
            fh.write(chunk)
            digest.update(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    elapsed = time.perf_counter() - start
    (folder / "baseline.bin").unlink()
    return elapsed


async def upload_once(stub: pb_grpc.AssetServiceAsyncStub, size: int) -> float:
    chunk = os.urandom(MiB)

    async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=pb.UploadHeader(label="bench.bin"))
        for _ in range(size // MiB):
            yield pb.UploadAssetRequest(chunk=chunk)

    start = time.perf_counter()
    response = await stub.UploadAsset(requests())
    elapsed = time.perf_counter() - start
    await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=response.asset.id))
    return elapsed


async def unary_latency(call: object, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await call()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def watch_fanout(stub: pb_grpc.AssetServiceAsyncStub, watchers: int) -> float:
    """Seconds from sending FulfillAsset until every watcher has seen AVAILABLE."""
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
    for _ in range(watchers):
        await ready.acquire()
    sent = time.perf_counter()
    await stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=asset.id, value=pb.Value(text="x")))
    await asyncio.gather(*tasks)
    assert len(seen_at) == watchers, "a watcher missed the change"
    return max(seen_at) - sent


async def main(size_mib: int, rounds: int, s3_size_mib: int, s3_rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # 200 watchers share the bench's one connection: above the default 100 streams per
        # connection the rest would wait for a free stream forever (the first 100 never end).
        server = ServerProcess(
            root / "data",
            f"sqlite:///{root / 'assets.db'}",
            extra_args=["--max-streams-per-connection", "512"],
        ).start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = pb_grpc.AssetServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                size = size_mib * MiB
                await upload_once(stub, MiB)  # warm up
                base = statistics.median(raw_write(root, size) for _ in range(rounds))
                upl = statistics.median([await upload_once(stub, size) for _ in range(rounds)])
                print(
                    f"upload {size_mib} MiB: {size / upl / MiB:.0f} MiB/s; "
                    f"{upl / base:.2f}x the time of a local write+sha256+fsync"
                )

                asset = (
                    await stub.CreateValueAsset(
                        pb.CreateValueAssetRequest(label="b", value=pb.Value(text="x"))
                    )
                ).asset
                hc = await unary_latency(lambda: health.Check(health_pb2.HealthCheckRequest()), 300)
                get = await unary_latency(
                    lambda: stub.GetAsset(pb.GetAssetRequest(asset_id=asset.id)), 300
                )
                print(
                    f"GetAsset median {get * 1e6:.0f} us; {get / hc:.2f}x a health check "
                    "(the same gRPC stack without the store)"
                )

                one = statistics.median([await watch_fanout(stub, 1) for _ in range(rounds)])
                many = statistics.median([await watch_fanout(stub, 200) for _ in range(rounds)])
                print(
                    f"watch fan-out: 200 watchers see a change in {many * 1e3:.1f} ms; "
                    f"{many / one:.1f}x the time for 1 watcher"
                )
        finally:
            server.stop()
    if s3_size_mib > 0:
        print(*await object_store_rows(s3_size_mib, s3_rounds), sep="\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=128, help="upload size")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions (median is shown)")
    parser.add_argument(
        "--s3-size-mib", type=int, default=64, help="object-store upload/read size (0 skips)"
    )
    parser.add_argument(
        "--s3-rounds", type=int, default=5, help="object-store rounds, alternating with raw calls"
    )
    args = parser.parse_args()
    asyncio.run(main(args.size_mib, args.rounds, args.s3_size_mib, args.s3_rounds))
