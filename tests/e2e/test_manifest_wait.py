"""End to end: GetManifest with wait answers once its inputs are settled, before the deadline."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
from asset_client import AssetType, AsyncAssetClient

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import expect_error
from tests.serverproc import ServerProcess


async def promise(stub: pb_grpc.AssetServiceStub, label: str) -> str:
    request = pb.CreatePendingAssetRequest(task_id="t-1", label=label, type=pb.ASSET_TYPE_VALUE)
    return (await stub.CreatePendingAsset(request)).asset.id


async def fulfil_later(
    stub: pb_grpc.AssetServiceStub, asset_id: str, text: str, after: float
) -> None:
    await asyncio.sleep(after)
    await stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=asset_id, value=pb.Value(text=text)))


async def test_a_waiting_manifest_is_written_once_its_inputs_are_fulfilled(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    a, b = await promise(stub, "a.txt"), await promise(stub, "b.txt")
    started = time.monotonic()
    response, _, _ = await asyncio.gather(
        stub.GetManifest(
            pb.GetManifestRequest(asset_mappings={"a": a, "b": b}, wait=True), timeout=20
        ),
        fulfil_later(stub, a, "first", 0.3),
        fulfil_later(stub, b, "second", 0.6),
    )
    assert 0.5 < time.monotonic() - started < 10
    inputs = json.loads(Path(response.manifest_path).read_text())["inputs"]
    assert {k: Path(v).read_text() for k, v in inputs.items()} == {"a": "first", "b": "second"}


async def test_the_deadline_gets_an_answer_naming_what_is_still_pending(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    a = await promise(stub, "a.txt")
    started = time.monotonic()
    err = await expect_error(
        stub.GetManifest(pb.GetManifestRequest(asset_mappings={"in": a}, wait=True), timeout=2),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "waited",
        "(the call's deadline)",
        f"in={a} is PENDING",
    )
    assert err.details() is not None
    assert time.monotonic() - started < 2.5


async def test_a_failed_input_ends_the_wait_with_the_reason(stub: pb_grpc.AssetServiceStub) -> None:
    a = await promise(stub, "a.txt")

    async def fail_later() -> None:
        await asyncio.sleep(0.3)
        await stub.FailAsset(pb.FailAssetRequest(asset_id=a, reason="gpu lost"))

    started = time.monotonic()
    results = await asyncio.gather(
        stub.GetManifest(pb.GetManifestRequest(asset_mappings={"in": a}, wait=True), timeout=30),
        fail_later(),
        return_exceptions=True,
    )
    err = results[0]
    assert isinstance(err, grpc.aio.AioRpcError), results
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"in={a} is FAILED (gpu lost)" in (err.details() or "")
    assert time.monotonic() - started < 10, "it must not wait for the deadline"


async def test_the_python_client_waits_for_a_manifest(server: ServerProcess) -> None:
    async with AsyncAssetClient(server.address) as client:
        out = await client.create_pending("t-2", "x.txt", type=AssetType.VALUE)
        waiting = asyncio.create_task(client.manifest({"x": out.id}, wait=True, timeout=20))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await client.fulfill(out.id, value="done")
        manifest = await waiting
        assert Path(manifest.entries["x"]).read_text() == "done"
