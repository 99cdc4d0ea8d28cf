"""The servicer's upload slots come back however an upload ends, cancellation included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.api.servicer import AssetServicer
from asset_service.domain.models import UploadHeader


class FakeManager:
    """Consumes the chunk stream like AssetManager.upload, and says when it started."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.chunks: list[bytes] = []

    async def upload(
        self, header: UploadHeader, chunks: AsyncIterator[bytes], *, by: str = ""
    ) -> Any:
        self.started.set()
        async for chunk in chunks:
            self.chunks.append(chunk)
        raise AssertionError("the test never ends the stream")


async def header_then_wait(forever: asyncio.Event) -> AsyncIterator[pb.UploadAssetRequest]:
    yield pb.UploadAssetRequest(header=pb.UploadHeader(label="a.txt"))
    yield pb.UploadAssetRequest(chunk=b"x")
    await forever.wait()


async def test_a_cancelled_upload_gives_its_slot_back() -> None:
    manager = FakeManager()
    servicer = AssetServicer(
        manager,  # type: ignore[arg-type]
        max_concurrent_uploads=1,
        upload_idle_timeout_seconds=60,
    )
    call = asyncio.create_task(
        servicer.UploadAsset(header_then_wait(asyncio.Event()), context=None)  # type: ignore[arg-type]
    )
    await asyncio.wait_for(manager.started.wait(), 5)
    assert servicer.uploads_in_progress == 1
    call.cancel()  # what grpc does when the client cancels or its deadline passes
    with pytest.raises(asyncio.CancelledError):
        await call
    assert servicer.uploads_in_progress == 0
