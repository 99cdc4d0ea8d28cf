"""Readiness follows its checks (database, storage); liveness never does; a drain is final."""

from __future__ import annotations

import asyncio
import sqlite3

from asset_service.domain.errors import Unavailable
from asset_service.probes import LIVENESS, NOT_SERVING, READINESS, SERVING, Probes
from tests.health import health_status


class Flaky:
    def __init__(self, what: str) -> None:
        self.what = what
        self.up = True

    async def ping(self) -> None:
        if not self.up:
            raise Unavailable(f"{self.what}: connection refused")


async def wait_for(probes: Probes, name: str, status: int) -> None:
    for _ in range(200):
        if await health_status(probes.servicer, name) == status:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name!r} never became {status}")


async def test_readiness_tracks_every_check_and_liveness_stays_serving() -> None:
    database, storage = Flaky("database"), Flaky("storage")
    probes = Probes([("database", database.ping), ("storage", storage.ping)], 0.05)
    await probes.start()
    task = asyncio.create_task(probes.run())
    try:
        await wait_for(probes, READINESS, SERVING)
        for down in (database, storage):
            down.up = False
            await wait_for(probes, READINESS, NOT_SERVING)
            assert probes.failures == {down.what: f"{down.what}: connection refused"}
            # The process still serves calls: a liveness probe must not restart it.
            assert await health_status(probes.servicer, LIVENESS) == SERVING
            down.up = True
            await wait_for(probes, READINESS, SERVING)
            assert probes.failures == {}
    finally:
        task.cancel()


async def test_a_drain_keeps_readiness_not_serving_and_liveness_serving() -> None:
    database = Flaky("database")
    probes = Probes([("database", database.ping)], 0.05)
    await probes.start()
    task = asyncio.create_task(probes.run())
    try:
        database.up = False
        await wait_for(probes, READINESS, NOT_SERVING)
        await probes.drain()
        database.up = True  # the database comes back during the drain...
        await asyncio.sleep(0.3)  # ...several rounds of checks later
        assert await health_status(probes.servicer, READINESS) == NOT_SERVING
        assert await health_status(probes.servicer, LIVENESS) == SERVING
        await probes.close()  # the listener is about to close: every name says so
        assert await health_status(probes.servicer, LIVENESS) == NOT_SERVING
    finally:
        task.cancel()


async def test_a_check_that_does_not_answer_fails_within_its_bound() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    probes = Probes([("storage", hangs)], 0.05)  # bounded by max(interval, 1 s)
    async with asyncio.timeout(5):
        assert not await probes.check_once()
    assert probes.failures == {"storage": "no answer within 1s"}


class GatedStore:
    """A ping that completes when the test says so."""

    def __init__(self) -> None:
        self.gate: asyncio.Future[None] | None = None
        self.pinging = asyncio.Event()

    async def ping(self) -> None:
        self.gate = asyncio.get_running_loop().create_future()
        self.pinging.set()
        await self.gate


async def test_a_stop_that_lands_as_a_ping_completes_still_ends_the_monitor() -> None:
    """The hang behind issue 18's ASSET_SERVICE_HEALTH_INTERVAL=0: asyncio.wait_for (Python
    3.11) drops a cancellation that arrives in the step its inner call completes, and the
    monitor's loop then outlived the stop. The smaller the interval, the likelier."""
    store = GatedStore()
    probes = Probes([("database", store.ping)], 30.0)
    task = asyncio.create_task(probes.run())
    await asyncio.wait_for(store.pinging.wait(), 5)
    assert store.gate is not None
    store.gate.set_result(None)  # the ping completes...
    task.cancel()  # ...and the stop's cancellation arrives in the same step
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done, "the monitor swallowed its cancellation and kept running"
    assert task.cancelled()


async def test_a_check_that_raises_anything_is_not_ready_and_the_loop_goes_on() -> None:
    """A check raising what is neither the store's nor the disk's error (a corrupt SQLite
    file raises sqlite3.DatabaseError) ended the probe loop: readiness kept answering
    SERVING for good, whatever the checks would have found."""
    failing = True

    async def corrupt() -> None:
        if failing:
            raise sqlite3.DatabaseError("database disk image is malformed")

    probes = Probes([("database", corrupt)], 0.05)
    await probes.start()
    task = asyncio.create_task(probes.run())
    try:
        await wait_for(probes, READINESS, NOT_SERVING)
        assert probes.failures == {"database": "DatabaseError: database disk image is malformed"}
        failing = False
        await wait_for(probes, READINESS, SERVING)
        assert not task.done()
    finally:
        task.cancel()
