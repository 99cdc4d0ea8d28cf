"""End to end: an orchestrator lists, then follows a selector from the page's revision."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.conftest import StartServer
from tests.e2e.helpers import expect_error
from tests.serverproc import ServerProcess


async def promise(stub: pb_grpc.AssetServiceStub, task: str, label: str) -> pb.Asset:
    request = pb.CreatePendingAssetRequest(
        task_id=task, label=label, type=pb.ASSET_TYPE_VALUE, tags=["job-7"]
    )
    return (await stub.CreatePendingAsset(request)).asset


async def test_list_then_follow_a_selector_sees_every_change_once(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    a = await promise(stub, "render", "a.png")
    await promise(stub, "encode", "b.mp4")
    page = await stub.ListAssets(pb.ListAssetsRequest(created_by_task="render"))
    assert [x.id for x in page.assets] == [a.id] and page.revision >= a.revision
    # A change between the listing and the watch is replayed, not lost.
    await stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=a.id, value=pb.Value(text="A")))
    watch = stub.WatchAsset(
        pb.WatchAssetRequest(
            selector=pb.AssetSelector(task_id="render"), after_revision=page.revision
        )
    )
    try:
        first = await asyncio.wait_for(watch.read(), 10)
        assert (first.type, first.asset.id, first.asset.status) == (  # type: ignore[union-attr]
            pb.WATCH_EVENT_TYPE_CHANGED,
            a.id,
            pb.ASSET_STATUS_AVAILABLE,
        )
        assert not first.asset.HasField("value"), "selector events carry no inline value"  # type: ignore[union-attr]
        await promise(stub, "encode", "c.mp4")  # another task: not sent
        c = await promise(stub, "render", "c.png")
        second = await asyncio.wait_for(watch.read(), 10)
        assert (second.asset.id, second.asset.status) == (c.id, pb.ASSET_STATUS_PENDING)  # type: ignore[union-attr]
        await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=c.id))
        third = await asyncio.wait_for(watch.read(), 10)
        assert (third.type, third.asset.id) == (pb.WATCH_EVENT_TYPE_DELETED, c.id)  # type: ignore[union-attr]
        assert page.revision < first.revision < second.revision < third.revision  # type: ignore[union-attr]
    finally:
        watch.cancel()


async def test_selector_requests_that_cannot_be_served_are_refused_clearly(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    a = await promise(stub, "t", "x")
    await expect_error(
        _first(stub, pb.WatchAssetRequest(asset_ids=[a.id], selector=pb.AssetSelector())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "asset_ids or a selector, not both",
    )
    await expect_error(
        _first(stub, pb.WatchAssetRequest(selector=pb.AssetSelector(task_id="../x"))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def _first(
    stub: pb_grpc.AssetServiceStub, request: pb.WatchAssetRequest, seconds: float = 10
) -> object:
    call = stub.WatchAsset(request, timeout=seconds)
    try:
        return await call.read()
    finally:
        call.cancel()


@pytest.fixture
def small_history_server(start_server: StartServer) -> ServerProcess:
    return start_server("--watch-history-bytes", "16KiB", "--watch-tombstone-ttl", "1s")


async def test_a_revision_older_than_the_history_is_replayed_from_the_store(
    small_history_server: ServerProcess,
) -> None:
    """Each asset's latest state after the revision, deletions included, then live changes.
    Before (issue 21, item 2): OUT_OF_RANGE once ~16 KiB of changes had passed."""
    async with grpc.aio.insecure_channel(small_history_server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        first = await promise(stub, "t", "first")
        gone = await promise(stub, "t", "gone")
        await stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=first.id, value=pb.Value(text="A")))
        for i in range(60):  # ~60 KiB of records: the history keeps ~16 KiB
            await promise(stub, "other", f"p{i}")
        await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=gone.id))
        watch = stub.WatchAsset(
            pb.WatchAssetRequest(
                selector=pb.AssetSelector(task_id="t"), after_revision=first.revision - 1
            )
        )
        try:
            got = [await asyncio.wait_for(watch.read(), 10) for _ in range(2)]
            late = await promise(stub, "t", "late")
            got.append(await asyncio.wait_for(watch.read(), 10))
        finally:
            watch.cancel()
    assert [(e.type, e.asset.id, e.asset.status) for e in got] == [  # type: ignore[union-attr]
        (pb.WATCH_EVENT_TYPE_CHANGED, first.id, pb.ASSET_STATUS_AVAILABLE),
        (pb.WATCH_EVENT_TYPE_DELETED, gone.id, pb.ASSET_STATUS_PENDING),
        (pb.WATCH_EVENT_TYPE_CHANGED, late.id, pb.ASSET_STATUS_PENDING),
    ]


async def wait_until_swept(stub: pb_grpc.AssetServiceStub, revision: int) -> grpc.aio.AioRpcError:
    """The server's tombstones after `revision` are swept (--watch-tombstone-ttl 1s) and
    its history has moved past it: a watch from it is refused. That refusal."""
    async with asyncio.timeout(15):
        while True:
            try:
                await _first(
                    stub,
                    pb.WatchAssetRequest(
                        selector=pb.AssetSelector(task_id="no-such-task"), after_revision=revision
                    ),
                    seconds=0.5,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.OUT_OF_RANGE:
                    return exc
                assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED, exc
            await asyncio.sleep(0.2)


async def test_a_revision_older_than_the_kept_tombstones_is_out_of_range(
    small_history_server: ServerProcess,
) -> None:
    async with grpc.aio.insecure_channel(small_history_server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        first = await promise(stub, "t", "first")
        gone = await promise(stub, "t", "gone")
        await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=gone.id))
        for i in range(60):  # past the in-memory history, which would still replay it
            await promise(stub, "other", f"p{i}")
        refused = await wait_until_swept(stub, first.revision)
        assert f"revision {first.revision} is older than this server's change history" in (
            refused.details() or ""
        )
        assert "list again" in (refused.details() or "")
        page = await stub.ListAssets(pb.ListAssetsRequest(page_size=1))
        watch = stub.WatchAsset(
            pb.WatchAssetRequest(selector=pb.AssetSelector(), after_revision=page.revision)
        )
        try:
            late = await promise(stub, "t", "late")
            got = await asyncio.wait_for(watch.read(), 10)
            assert got.asset.id == late.id  # type: ignore[union-attr]
        finally:
            watch.cancel()
