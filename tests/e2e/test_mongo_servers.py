"""End to end on MongoDB: start-up errors (always), and two servers sharing one database."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess, database_url_for, drop_database_of


def test_unreachable_mongodb_fails_start_up_clearly(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ServerProcess(tmp_path / "data", f"mongodb://127.0.0.1:{port}/assets")
    with pytest.raises(RuntimeError, match="did not start"):
        server.start(timeout=30)
    assert server.proc is not None and server.proc.returncode == 2
    assert any("cannot start" in line and f"127.0.0.1:{port}" in line for line in server.log)


# Two servers on one database need a replica set (MONGODB_URI); deselected and counted without.
@pytest.mark.requires("mongo")
async def test_second_server_sees_every_transition_of_the_first(tmp_path: Path) -> None:
    url = database_url_for(tmp_path)
    a = ServerProcess(tmp_path / "shared", url).start()
    b = ServerProcess(tmp_path / "shared", url).start()  # same storage and database
    try:
        async with (
            grpc.aio.insecure_channel(a.address) as ca,
            grpc.aio.insecure_channel(b.address) as cb,
        ):
            via_a, via_b = pb_grpc.AssetServiceStub(ca), pb_grpc.AssetServiceStub(cb)
            ids = [
                (
                    await via_a.CreatePendingAsset(
                        pb.CreatePendingAssetRequest(
                            task_id="t", label=f"v{i}", type=pb.ASSET_TYPE_VALUE
                        )
                    )
                ).asset.id
                for i in range(5)
            ]
            seen: list[pb.WatchAssetResponse] = []
            started = asyncio.Event()

            async def watch() -> None:
                async for event in via_b.WatchAsset(
                    pb.WatchAssetRequest(asset_ids=ids), timeout=30
                ):
                    seen.append(event)
                    if len(seen) == len(ids):
                        started.set()

            task = asyncio.create_task(watch())
            await asyncio.wait_for(started.wait(), 10)
            for i, asset_id in enumerate(ids):
                if i % 2:
                    await via_a.FailAsset(pb.FailAssetRequest(asset_id=asset_id, reason="x"))
                else:
                    await via_a.FulfillAsset(
                        pb.FulfillAssetRequest(asset_id=asset_id, value=pb.Value(text="ok"))
                    )
            await asyncio.wait_for(task, 20)
            changes = [e for e in seen if e.type == pb.WATCH_EVENT_TYPE_CHANGED]
            assert [e.asset.id for e in changes] == ids
            revisions = [e.revision for e in seen]
            assert revisions == sorted(revisions)
    finally:
        a.stop()
        b.stop()
        drop_database_of(url)
