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
