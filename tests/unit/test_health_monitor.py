"""grpc.health.v1 follows the metadata store: NOT_SERVING while ping fails, SERVING after."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from asset_service.domain.errors import Unavailable
from asset_service.server import SERVICE_NAME, _monitor_health
from tests.health import health_status


class FlakyStore:
    def __init__(self) -> None:
        self.up = True

    async def ping(self) -> None:
        if not self.up:
            raise Unavailable("connection refused")


class FakeManager:
    def __init__(self) -> None:
        self.store = FlakyStore()


async def test_health_tracks_store_reachability() -> None:
    manager = FakeManager()
    servicer = health_aio.HealthServicer()
    task = asyncio.create_task(_monitor_health(manager, servicer, 0.05))  # type: ignore[arg-type]
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )

    async def wait_for(status: int) -> None:
        for _ in range(100):
            if all([await health_status(servicer, n) == status for n in ("", SERVICE_NAME)]):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"health never became {status}")

    try:
        await wait_for(serving)
        manager.store.up = False
        await wait_for(not_serving)
        manager.store.up = True
        await wait_for(serving)
    finally:
        task.cancel()


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
    manager = FakeManager()
    manager.store = GatedStore()  # type: ignore[assignment]
    servicer = health_aio.HealthServicer()
    task = asyncio.create_task(_monitor_health(manager, servicer, 30.0))  # type: ignore[arg-type]
    await asyncio.wait_for(manager.store.pinging.wait(), 5)  # type: ignore[attr-defined]
    gate = manager.store.gate  # type: ignore[attr-defined]
    gate.set_result(None)  # the ping completes...
    task.cancel()  # ...and the stop's cancellation arrives in the same step
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done, "the monitor swallowed its cancellation and kept running"
    assert task.cancelled()
