"""The Python clients check every whole read against the record's size and sha256.

The server checks every block before sending it; the client's check covers the rest of
the way. A server double that lies (its record says one thing, ReadAsset sends another)
stands in for whatever could change bytes past the server's checks.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from asset_client import AssetClient, AsyncAssetClient, DataLossError

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc

ID = "11111111-2222-4333-8444-555555555555"
REAL = b"the real bytes"


class LyingServicer(pb_grpc.AssetServiceServicer):
    def __init__(self, sent: bytes) -> None:
        self.sent = sent

    async def GetAsset(self, request: pb.GetAssetRequest, context: Any) -> pb.GetAssetResponse:
        return pb.GetAssetResponse(
            asset=pb.Asset(
                id=request.asset_id,
                label="x.bin",
                status=pb.ASSET_STATUS_AVAILABLE,
                type=pb.ASSET_TYPE_FILE,
                size_bytes=len(REAL),
                sha256=hashlib.sha256(REAL).hexdigest(),
            )
        )

    async def ReadAsset(
        self, request: pb.ReadAssetRequest, context: Any
    ) -> AsyncIterator[pb.ReadAssetResponse]:
        yield pb.ReadAssetResponse(chunk=self.sent, offset=0)


async def lying_server(sent: bytes) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_AssetServiceServicer_to_server(LyingServicer(sent), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("sent", [b"the fake bytes", b"the real"], ids=["same size", "short"])
async def test_download_refuses_bytes_that_are_not_the_records(tmp_path: Path, sent: bytes) -> None:
    server, address = await lying_server(sent)
    try:
        async with AsyncAssetClient(address) as client:
            with pytest.raises(DataLossError, match=ID):
                await client.download(ID, tmp_path / "out.bin", progress=False)
        assert not list(tmp_path.iterdir()), "nothing is left where the bytes would go"

        def blocking() -> None:  # on a thread: this loop serves the double
            with AssetClient(address) as sync, pytest.raises(DataLossError, match=ID):
                sync.download(ID, tmp_path / "out.bin", progress=False)

        await asyncio.wait_for(asyncio.to_thread(blocking), 30)
        assert not list(tmp_path.iterdir())
    finally:
        await server.stop(None)
