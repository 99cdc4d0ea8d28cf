"""MongoStore through an outage (real driver, FerretDB killed and restarted on its data).

Health goes NOT_SERVING while the server is gone, calls fail fast with Unavailable, and
once it is back the store answers again with everything written before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service.domain.errors import Unavailable
from asset_service.domain.models import Asset, AssetType, Status, new_asset_id
from asset_service.probes import LIVENESS, NOT_SERVING, READINESS, SERVING, Probes
from asset_service.store.mongo import MongoStore
from tests.backends import FerretDB
from tests.health import health_status


@pytest.fixture
def ferretdb_process(tmp_path: Path) -> Iterator[FerretDB]:
    ferret = FerretDB(tmp_path / "ferret").start()
    yield ferret
    ferret.stop()


async def test_outage_is_unavailable_fast_and_recovery_keeps_data(
    ferretdb_process: FerretDB,
) -> None:
    store = MongoStore(ferretdb_process.url + "outage", allow_standalone=True)
    await store.open()
    now = datetime.now(UTC)
    written = await store.insert(
        Asset(new_asset_id(), "kept", Status.PENDING, AssetType.FILE, "x/y", now, now)
    )
    probes = Probes([("database", store.ping)], 0.2)
    await probes.start()
    monitor = asyncio.create_task(probes.run())
    serving, not_serving = SERVING, NOT_SERVING

    async def health_becomes(status: int, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await health_status(probes.servicer, READINESS) == status:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"health did not become {status} within {within}s")

    try:
        await health_becomes(serving, 10)
        ferretdb_process.stop()
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await store.get(written.id)
        assert time.monotonic() - started < 10, "an RPC must fail fast, not hang"
        await health_becomes(not_serving, 15)
        assert await health_status(probes.servicer, LIVENESS) == serving

        ferretdb_process.start()
        await health_becomes(serving, 20)
        assert await store.get(written.id) == written
    finally:
        monitor.cancel()
        await store.close()
