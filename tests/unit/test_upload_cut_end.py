"""An upload's stream that ends because its call was cut is not the upload's end.

grpc.aio reads a cut client stream (a dropped connection, a client that died) as the end
of its messages and cancels the call only a moment later (grpc#33038); the servicer asks
grpc whether the call is still open (its initial metadata sent) before the end completes
an upload. Here the context's answer stands in for that moment: the cancellation late.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc._cython import cygrpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.api.servicer import AssetServicer
from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.models import AssetFilter
from asset_service.security.principal import ANONYMOUS
from asset_service.storage.local import LocalStorage
from asset_service.store.memory import MemoryStore
from tests.managers import running

DATA = b"x" * 3000


class Context:
    """What the servicer asks of an UploadAsset call: is it still open."""

    def __init__(self, cut: bool, stalled: bool = False) -> None:
        self.cut, self.stalled = cut, stalled
        self.asked = 0

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise grpc.aio.AbortError()

    async def send_initial_metadata(self, metadata: object) -> None:
        self.asked += 1
        if self.stalled:  # headers that never go out
            await asyncio.Event().wait()
        if self.cut:  # what grpc raises for a batch on a call that is over
            raise cygrpc.ExecuteBatchError('Failed "execute_batch"')


def messages(**header: object) -> Iterator[pb.UploadAssetRequest]:
    yield pb.UploadAssetRequest(header=pb.UploadHeader(label="cut.bin", **header))  # type: ignore[arg-type]
    for start in range(0, len(DATA), 1000):
        yield pb.UploadAssetRequest(chunk=DATA[start : start + 1000])


async def stream(items: Iterator[pb.UploadAssetRequest]) -> AsyncIterator[pb.UploadAssetRequest]:
    for item in items:
        yield item


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[AssetServicer, AssetManager]]:
    manager = AssetManager(MemoryStore(), LocalStorage(tmp_path), Limits())
    async with running(manager):
        yield AssetServicer(manager), manager


async def _assets(manager: AssetManager) -> int:
    return len((await manager.list_assets(AssetFilter(), 10, "")).assets)


@pytest.mark.parametrize(
    "header",
    [{}, {"expected_size_bytes": 3000}, {"expected_sha256": hashlib.sha256(DATA).hexdigest()}],
    ids=["nothing declared", "size declared", "sha256 declared"],
)
async def test_a_stream_ended_by_a_cut_stores_nothing(
    served: tuple[AssetServicer, AssetManager], header: dict[str, object]
) -> None:
    servicer, manager = served
    cut = Context(cut=True)
    with pytest.raises(asyncio.CancelledError):
        await servicer.UploadAsset(stream(messages(**header)), cut)  # type: ignore[arg-type]
    assert cut.asked == 1
    assert await _assets(manager) == 0, "a cut upload completed with what had arrived"
    # The same stream, half-closed by its client, completes.
    whole = await servicer.UploadAsset(stream(messages(**header)), Context(cut=False))  # type: ignore[arg-type]
    assert whole.asset.size_bytes == len(DATA)
    assert await _assets(manager) == 1


async def test_a_resumable_upload_cut_so_keeps_its_bytes_for_the_next_stream(
    served: tuple[AssetServicer, AssetManager],
) -> None:
    servicer, manager = served
    with pytest.raises(asyncio.CancelledError):
        await servicer.UploadAsset(  # type: ignore[arg-type]
            stream(messages(upload_id="cut-upload-1", expected_size_bytes=3000)), Context(cut=True)
        )
    state = await manager.query_upload("cut-upload-1", by=ANONYMOUS.name)
    assert state.committed_bytes == len(DATA) and state.asset is None


async def test_a_call_that_cannot_answer_at_the_end_is_bounded_and_stores_nothing(
    tmp_path: Path,
) -> None:
    manager = AssetManager(MemoryStore(), LocalStorage(tmp_path), Limits())
    async with running(manager):
        servicer = AssetServicer(manager, upload_idle_timeout_seconds=0.2)
        stalled = Context(cut=False, stalled=True)
        with pytest.raises(grpc.aio.AbortError):
            await asyncio.wait_for(servicer.UploadAsset(stream(messages()), stalled), 10)  # type: ignore[arg-type]
        code, details = stalled.status
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED and "--upload-idle-timeout" in details
        assert await _assets(manager) == 0
