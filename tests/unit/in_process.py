"""The server started in this process, for unit tests that call it through a real stub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.config import load_settings
from asset_service.server import RunningServer, start
from asset_service.store.memory import MemoryStore


@asynccontextmanager
async def served_from_memory(
    tmp_path: Path,
) -> AsyncIterator[tuple[RunningServer, pb_grpc.AssetServiceAsyncStub]]:
    """The server on port 0 with default settings over a memory store (its files under
    `tmp_path`), and a stub on an insecure channel to it; stopped after."""
    settings = load_settings(
        ["--listen", "127.0.0.1:0", "--storage-root", str(tmp_path / "data")], {}
    )
    running = await start(settings, store=MemoryStore())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub: pb_grpc.AssetServiceAsyncStub = pb_grpc.AssetServiceStub(channel)
            yield running, stub
    finally:
        await running.stop(1)
