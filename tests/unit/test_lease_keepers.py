"""The lease keepers' verdicts on renewal errors, over a scripted client (no server)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import cast

import pytest
from asset_client import (
    Asset,
    AssetClient,
    AssetStatus,
    AsyncAssetClient,
    AsyncLeaseKeeper,
    DeadlineExceededError,
    FailedPreconditionError,
    LeaseKeeper,
    PermissionDeniedError,
    UnavailableError,
)

from tests.unit.test_client_informer import rec

EVERY = 0.05


def record(status: AssetStatus = AssetStatus.PENDING) -> Asset:
    now = datetime.now(UTC)
    return dataclasses.replace(
        rec("a1", 1, status),
        label="out",
        created_by_task="t",
        create_time=now,
        update_time=now,
        lease_seconds=3,
        lease_expires_at=now,
    )


class Script:
    """Answers renewals from a list of errors (then successes), and records each deadline."""

    timeout = 0.02

    def __init__(self, errors: Iterable[Exception], status: AssetStatus) -> None:
        self.errors = list(errors)
        self.status = status
        self.renewals = 0
        self.deadlines: list[float | None] = []

    def renew(self, timeout: float | None) -> Asset:
        self.renewals += 1
        self.deadlines.append(timeout)
        if self.errors:
            raise self.errors.pop(0)
        return record()


class SyncScript(Script):
    def get(self, asset_id: str, *, timeout: float | None = None) -> Asset:
        return record(self.status)

    def renew_lease(self, asset_id: str, *, timeout: float | None = None) -> Asset:
        return self.renew(timeout)


class AsyncScript(Script):
    async def get(self, asset_id: str, *, timeout: float | None = None) -> Asset:
        return record(self.status)

    async def renew_lease(self, asset_id: str, *, timeout: float | None = None) -> Asset:
        return self.renew(timeout)


async def keep(
    script: Script, every: float | None, seconds: float
) -> AsyncLeaseKeeper | LeaseKeeper:
    """Hold each keeper for `seconds` over `script`; the async one in this loop."""
    if isinstance(script, AsyncScript):
        async with AsyncLeaseKeeper(cast(AsyncAssetClient, script), "a1", every) as lease:
            await asyncio.sleep(seconds)
        return lease
    assert isinstance(script, SyncScript)

    def hold() -> LeaseKeeper:
        with LeaseKeeper(cast(AssetClient, script), "a1", every) as lease:
            time.sleep(seconds)
        return lease

    return await asyncio.to_thread(hold)


@pytest.fixture(params=[SyncScript, AsyncScript], ids=["thread", "asyncio"])
def kind(request: pytest.FixtureRequest) -> type[Script]:
    return cast(type[Script], request.param)


async def test_transient_errors_are_retried_at_the_next_tick(kind: type[Script]) -> None:
    script = kind([UnavailableError("down"), DeadlineExceededError("slow")], AssetStatus.PENDING)
    lease = await keep(script, EVERY, 0.6)
    assert lease.lost is None
    assert script.renewals >= 4 and lease.renewals == script.renewals - 2
    # Each renewal's deadline: one interval, at most the client's own timeout.
    assert set(script.deadlines) == {Script.timeout}


async def test_a_permanent_refusal_stops_the_renewals_and_is_kept(
    kind: type[Script], caplog: pytest.LogCaptureFixture
) -> None:
    refusal = PermissionDeniedError("not your task")
    script = kind([UnavailableError("down"), refusal], AssetStatus.PENDING)
    lease = await keep(script, EVERY, 0.5)
    assert lease.lost is refusal
    assert script.renewals == 2 and lease.renewals == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "asset a1: lease lost, renewals stopped: PERMISSION_DENIED: not your task"
    ]


async def test_a_refusal_because_the_asset_is_available_loses_nothing(
    kind: type[Script], caplog: pytest.LogCaptureFixture
) -> None:
    script = kind([FailedPreconditionError("asset a1 is AVAILABLE")], AssetStatus.AVAILABLE)
    lease = await keep(script, EVERY, 0.3)
    assert lease.lost is None and script.renewals == 1
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


async def test_the_interval_is_a_third_of_the_lease_read_at_entry(kind: type[Script]) -> None:
    script = kind([], AssetStatus.PENDING)
    lease = await keep(script, None, 0)
    assert lease.every == 1.0  # record()'s lease is 3 s
    assert script.renewals == 0  # the first renewal comes one interval after entry


def test_every_must_be_positive_and_is_at_least_a_twentieth_of_a_second() -> None:
    client = cast(AssetClient, SyncScript([], AssetStatus.PENDING))
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="every must be a positive number"):
            LeaseKeeper(client, "a1", bad)
    assert LeaseKeeper(client, "a1", 0.001).every == 0.05
