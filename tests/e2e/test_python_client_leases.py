"""End to end: leases through the Python clients (sync and asyncio): renew_lease, keep_lease."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from asset_client import (
    AssetClient,
    AssetStatus,
    AssetType,
    AsyncAssetClient,
    AsyncLeaseKeeper,
    FailedPreconditionError,
)

from tests.conftest import StartServer
from tests.e2e.helpers import AsyncDriver
from tests.serverproc import ServerProcess

SWEEP = "0.2"  # --lease-check-interval: a lease that ran out fails within this
KEEPER_LOG = "asset_client._leases"


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    """Every test here (and its client and helper) runs on a server that sweeps leases fast."""
    return start_server("--lease-check-interval", SWEEP)


def renewers(client: AssetClient, asset_id: str) -> list[str]:
    """The keep_lease renewers of this asset still running: asyncio tasks, or threads."""
    names = {t.name for t in threading.enumerate()}
    if isinstance(client, AsyncDriver):
        names |= client.task_names()
    return sorted(n for n in names if n == f"keep-lease {asset_id}")


def keeper_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == KEEPER_LOG and r.levelno >= logging.WARNING
    ]


def test_a_promise_carries_its_lease_and_renew_lease_extends_it(client: AssetClient) -> None:
    before = datetime.now(UTC)
    promise = client.create_pending("render-1", "frame.png", lease_seconds=60)
    assert promise.status is AssetStatus.PENDING
    assert promise.lease_seconds == 60
    assert promise.lease_expires_at is not None and promise.lease_expires_at.tzinfo is not None
    assert promise.lease_expires_at.utcoffset() == timedelta(0)
    assert before + timedelta(seconds=55) < promise.lease_expires_at
    assert promise.lease_expires_at <= datetime.now(UTC) + timedelta(seconds=60)
    assert client.get(promise.id).lease_expires_at == promise.lease_expires_at

    time.sleep(0.05)
    again = client.renew_lease(promise.id)  # 0: for the 60 s it was promised with
    assert again.lease_expires_at is not None and again.lease_expires_at > promise.lease_expires_at
    assert again.lease_seconds == 60 and again.status is AssetStatus.PENDING
    longer = client.renew_lease(promise.id, 300)
    assert longer.lease_expires_at is not None
    assert longer.lease_expires_at - again.lease_expires_at > timedelta(seconds=230)
    assert longer.lease_seconds == 60  # a longer renewal is not a new promised lease
    assert client.get(promise.id).lease_expires_at == longer.lease_expires_at

    plain = client.create_pending("render-1", "plain.png")
    assert plain.lease_seconds == 0 and plain.lease_expires_at is None
    with pytest.raises(FailedPreconditionError, match="promised without a lease"):
        client.renew_lease(plain.id)


def test_keep_lease_keeps_a_promise_past_its_lease_until_fulfilled(
    client: AssetClient, caplog: pytest.LogCaptureFixture
) -> None:
    promise = client.create_pending("render-2", "out.txt", type=AssetType.VALUE, lease_seconds=1)
    with client.keep_lease(promise.id) as lease:
        assert lease.every == pytest.approx(1 / 3)
        time.sleep(2.5)  # two and a half leases
        assert client.get(promise.id).status is AssetStatus.PENDING
        done = client.fulfill(promise.id, value="rendered")
        time.sleep(0.5)  # a renewal or more after the fulfilment: refused, quietly
    assert done.status is AssetStatus.AVAILABLE
    assert lease.lost is None
    assert lease.renewals >= 5
    assert keeper_warnings(caplog) == []
    got = client.get(promise.id)
    assert got.status is AssetStatus.AVAILABLE and got.value is not None
    assert got.value.content == "rendered"


def test_without_keep_lease_the_same_promise_fails(client: AssetClient) -> None:
    promise = client.create_pending("render-2", "out.txt", type=AssetType.VALUE, lease_seconds=1)
    time.sleep(2.5)
    failed = client.get(promise.id)
    assert failed.status is AssetStatus.FAILED
    assert failed.failure_reason.startswith("lease expired at ")
    assert failed.updated_by == "lease"
    with pytest.raises(FailedPreconditionError, match="is FAILED"):
        client.fulfill(promise.id, value="too late")


def test_keep_lease_records_a_promise_failed_by_someone_else(
    client: AssetClient, helper: AssetClient, caplog: pytest.LogCaptureFixture
) -> None:
    promise = client.create_pending("render-3", "out.txt", type=AssetType.VALUE, lease_seconds=1)
    with client.keep_lease(promise.id) as lease:
        time.sleep(0.5)
        assert lease.renewals >= 1 and lease.lost is None
        helper.fail(promise.id, "the orchestrator gave up on render-3")
        time.sleep(0.8)  # two ticks at least
        assert isinstance(lease.lost, FailedPreconditionError)
        renewals = lease.renewals
        time.sleep(0.5)
        assert lease.renewals == renewals  # renewing stopped
        assert renewers(client, promise.id) == []
        reached_the_end = True
    assert reached_the_end  # the loss did not raise out of the block
    assert "is FAILED" in lease.lost.details
    assert "the orchestrator gave up on render-3" in lease.lost.details
    (warning,) = keeper_warnings(caplog)
    assert promise.id in warning and "lease lost" in warning


def test_no_renewer_is_left_after_the_block_also_when_it_raises(client: AssetClient) -> None:
    promise = client.create_pending("render-4", "out.bin", lease_seconds=1)
    with client.keep_lease(promise.id, every=0.1) as lease:
        time.sleep(0.3)
        assert renewers(client, promise.id) == [f"keep-lease {promise.id}"]
    assert renewers(client, promise.id) == []
    assert lease.renewals >= 1 and lease.lost is None

    # The body's error comes out as it was raised.
    with (
        pytest.raises(RuntimeError, match="the body broke"),
        client.keep_lease(promise.id, every=0.1) as second,
    ):
        time.sleep(0.3)
        assert renewers(client, promise.id) == [f"keep-lease {promise.id}"]
        raise RuntimeError("the body broke")
    left = time.monotonic()
    assert renewers(client, promise.id) == []
    assert second.renewals >= 1 and second.lost is None
    assert time.monotonic() - left < 1.0
    assert client.get(promise.id).status is AssetStatus.PENDING


def test_keep_lease_of_a_promise_without_a_lease(client: AssetClient) -> None:
    plain = client.create_pending("render-5", "plain.bin")
    with client.keep_lease(plain.id) as idle:
        assert idle.every is None  # nothing to renew, so no renewer
        assert renewers(client, plain.id) == []
        time.sleep(0.2)
    assert idle.renewals == 0 and idle.lost is None

    with client.keep_lease(plain.id, every=0.05) as told:
        time.sleep(0.5)
    assert isinstance(told.lost, FailedPreconditionError)
    assert "promised without a lease" in told.lost.details


def keep_lease_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("keep-"))


async def test_async_keep_lease_awaits_its_task_however_the_block_ends(
    server: ServerProcess,
) -> None:
    # Each check runs right after the block, before anything else is awaited: a renewer
    # task cancelled but not awaited on the way out would still be listed.
    async with AsyncAssetClient(server.address, timeout=15) as client:
        promise = await client.create_pending("render-6", "out.bin", lease_seconds=1)

        async with client.keep_lease(promise.id) as lease:
            assert keep_lease_tasks() == [f"keep-lease {promise.id}"]
            await asyncio.sleep(0.5)
        assert keep_lease_tasks() == []
        assert lease.renewals >= 1 and lease.lost is None

        with pytest.raises(KeyError):
            async with client.keep_lease(promise.id):
                await asyncio.sleep(0.1)
                raise KeyError("the body broke")
        assert keep_lease_tasks() == []

        left_after_cancel: list[str] = []
        kept: list[AsyncLeaseKeeper] = []
        entered = asyncio.Event()

        async def work() -> None:
            try:
                async with client.keep_lease(promise.id) as lease:
                    kept.append(lease)
                    entered.set()
                    await asyncio.sleep(30)
            finally:
                left_after_cancel.extend(keep_lease_tasks())

        worker = asyncio.create_task(work())
        await entered.wait()
        await asyncio.sleep(1.5)  # past the lease it was promised with
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        assert left_after_cancel == []
        (lease,) = kept
        assert lease.renewals >= 3 and lease.lost is None
        assert (await client.get(promise.id)).status is AssetStatus.PENDING
