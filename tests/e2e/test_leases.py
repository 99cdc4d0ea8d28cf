"""End to end: promises with leases fail on their own when their task stops renewing them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.conftest import StartServer
from tests.e2e.helpers import expect_error
from tests.serverproc import ServerProcess

SWEEP = "0.2"  # --lease-check-interval: expiry is seen within this of the lease's end


@pytest.fixture
def leased_server(start_server: StartServer) -> ServerProcess:
    return start_server("--lease-check-interval", SWEEP, "--max-lease-seconds", "600")


@pytest.fixture
async def lstub(leased_server: ServerProcess) -> AsyncIterator[pb_grpc.AssetServiceStub]:
    async with grpc.aio.insecure_channel(leased_server.address) as channel:
        yield pb_grpc.AssetServiceStub(channel)


async def promise(stub: pb_grpc.AssetServiceStub, lease: int, task: str = "render-9") -> pb.Asset:
    request = pb.CreatePendingAssetRequest(
        task_id=task, label="frame.png", type=pb.ASSET_TYPE_VALUE, lease_seconds=lease
    )
    return (await stub.CreatePendingAsset(request)).asset


async def test_a_promise_nobody_renews_fails_and_its_watchers_see_why(
    lstub: pb_grpc.AssetServiceStub,
) -> None:
    p = await promise(lstub, lease=1)
    assert p.lease_seconds == 1
    assert 0.5 < p.lease_expire_time.seconds + p.lease_expire_time.nanos / 1e9 - time.time() <= 1.0
    started = time.monotonic()
    # The default watch ends by itself once the asset is terminal.
    events = [e async for e in lstub.WatchAsset(pb.WatchAssetRequest(asset_ids=[p.id]), timeout=10)]
    took = time.monotonic() - started
    assert [(e.type, e.asset.status) for e in events] == [
        (pb.WATCH_EVENT_TYPE_SNAPSHOT, pb.ASSET_STATUS_PENDING),
        (pb.WATCH_EVENT_TYPE_CHANGED, pb.ASSET_STATUS_FAILED),
    ]
    failed = events[-1].asset
    assert failed.failure_reason.startswith("lease expired at ")
    assert "not renewed by task render-9 within 1s" in failed.failure_reason
    assert failed.updated_by == "lease"
    assert 0.5 < took < 1.0 + float(SWEEP) + 2.0, took  # seen soon after the lease's end
    await expect_error(
        lstub.RenewLease(pb.RenewLeaseRequest(asset_id=p.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "is FAILED",
    )


async def test_renewals_keep_the_promise_until_it_is_fulfilled(
    lstub: pb_grpc.AssetServiceStub,
) -> None:
    p = await promise(lstub, lease=1)
    renewals = 0
    until = time.monotonic() + 2.5  # well past the first lease's end
    while time.monotonic() < until:
        await asyncio.sleep(0.3)
        renewed = (await lstub.RenewLease(pb.RenewLeaseRequest(asset_id=p.id))).asset
        assert renewed.status == pb.ASSET_STATUS_PENDING
        renewals += 1
    assert renewals >= 6
    assert renewed.lease_expire_time.ToDatetime() > p.lease_expire_time.ToDatetime()
    done = await lstub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=p.id, value=pb.Value(text="rendered"))
    )
    assert done.asset.status == pb.ASSET_STATUS_AVAILABLE
    await asyncio.sleep(1.5)  # its last lease would have run out by now: nothing changes
    got = await lstub.GetAsset(pb.GetAssetRequest(asset_id=p.id))
    assert got.asset.status == pb.ASSET_STATUS_AVAILABLE and got.asset.value.text == "rendered"


async def test_bad_lease_requests_get_clear_answers(lstub: pb_grpc.AssetServiceStub) -> None:
    await expect_error(
        lstub.CreatePendingAsset(
            pb.CreatePendingAssetRequest(task_id="t", label="x", lease_seconds=601)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "lease_seconds 601 exceeds the server's limit of 600 seconds (--max-lease-seconds)",
    )
    leased = await promise(lstub, lease=60)
    await expect_error(
        lstub.RenewLease(pb.RenewLeaseRequest(asset_id=leased.id, lease_seconds=3600)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "--max-lease-seconds",
    )
    plain = await promise(lstub, lease=0)
    assert not plain.HasField("lease_expire_time") and plain.lease_seconds == 0
    await expect_error(
        lstub.RenewLease(pb.RenewLeaseRequest(asset_id=plain.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "promised without a lease",
    )
    await expect_error(
        lstub.RenewLease(pb.RenewLeaseRequest(asset_id="6a1c3d9e-0000-4000-8000-000000000000")),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        lstub.RenewLease(pb.RenewLeaseRequest(asset_id="../etc/passwd")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_a_lease_that_ran_out_while_the_server_was_down_fails_at_start(
    leased_server: ServerProcess,
) -> None:
    async with grpc.aio.insecure_channel(leased_server.address) as channel:
        p = await promise(pb_grpc.AssetServiceStub(channel), lease=1)
    leased_server.stop()
    await asyncio.sleep(1.2)
    leased_server.start()
    async with grpc.aio.insecure_channel(leased_server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got = (await stub.GetAsset(pb.GetAssetRequest(asset_id=p.id))).asset
            if got.status != pb.ASSET_STATUS_PENDING:
                break
            await asyncio.sleep(0.1)
        assert got.status == pb.ASSET_STATUS_FAILED
        assert got.failure_reason.startswith("lease expired at ")


async def test_a_lease_that_ran_out_refuses_fulfilment_before_the_sweep_runs(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The sweep does not run for an hour here; a renewal and every kind of fulfilment are
    refused alike once the lease is out, and the producer may still fail the promise."""
    incoming = tmp_path / "incoming"
    (incoming / "render-9").mkdir(parents=True)
    source = incoming / "render-9" / "frame.png"
    source.write_bytes(b"a late frame")
    server = start_server("--lease-check-interval", "3600", "--import-root", str(incoming))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)

        async def file_promise() -> str:
            request = pb.CreatePendingAssetRequest(task_id="render-9", label="f", lease_seconds=1)
            return (await stub.CreatePendingAsset(request)).asset.id

        value, failed = (await promise(stub, lease=1)).id, (await promise(stub, lease=1)).id
        by_path, uploaded = await file_promise(), await file_promise()
        await asyncio.sleep(1.5)

        async def upload() -> object:
            async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
                yield pb.UploadAssetRequest(header=pb.UploadHeader(pending_asset_id=uploaded))
                yield pb.UploadAssetRequest(chunk=b"late bytes")

            return await stub.UploadAsset(requests(), timeout=10)

        late = [
            (value, stub.RenewLease(pb.RenewLeaseRequest(asset_id=value)), "renewed"),
            (
                value,
                stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=value, value=pb.Value(text="x"))),
                "fulfilled",
            ),
            (
                by_path,
                stub.FulfillAsset(
                    pb.FulfillAssetRequest(asset_id=by_path, source_path=str(source))
                ),
                "fulfilled",
            ),
            (uploaded, upload(), "fulfilled"),
        ]
        for asset_id, call, verb in late:
            await expect_error(
                call,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"asset {asset_id}'s lease ran out at ",
                f"cannot be {verb}; promise the asset again",
            )
        assert source.read_bytes() == b"a late frame"  # the worker's file stays
        states = await stub.BatchGetAssets(
            pb.BatchGetAssetsRequest(asset_ids=[value, by_path, uploaded])
        )
        assert {a.status for a in states.assets} == {pb.ASSET_STATUS_PENDING}  # no sweep yet
        gave_up = await stub.FailAsset(pb.FailAssetRequest(asset_id=failed, reason="crashed"))
        assert gave_up.asset.status == pb.ASSET_STATUS_FAILED
        assert gave_up.asset.failure_reason == "crashed"
