"""One lease sweeper at a time, paced, so dead workers do not stall live writes (issue 21, item 7).

Every server process used to sweep: all read the same first 100 expired leases and raced
the same conditional writes inside the transactions that hold MongoDB's revision counter,
so a fleet of dead workers stalled everyone's real writes. Now the store's sweep claim
lets one process sweep, and the sweep leaves the store to other writers between rounds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

import pytest

from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.manager import _base as manager_base
from asset_service.domain.models import AssetType, Status
from asset_service.storage.memory import MemoryStorage
from asset_service.store.memory import MemoryStore
from tests.records import pending_record
from tests.unit.fake_mongo import Server, install
from tests.unit.test_mongo_promise_leases import process, promise


async def test_servers_sharing_a_store_sweep_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [datetime(2026, 5, 1, tzinfo=UTC)]
    monkeypatch.setattr(manager_base, "now", lambda: clock[0])
    store = MemoryStore()
    servers = [AssetManager(store, MemoryStorage(), Limits()) for _ in range(4)]
    for s in servers:
        await s.start()
    try:
        ids = [
            (await servers[0].create_pending("t", "x", "", AssetType.VALUE, (), lease_seconds=5)).id
            for _ in range(40)
        ]
        clock[0] += timedelta(seconds=5)
        counts = await asyncio.gather(*(s.expire_leases(hold_seconds=3) for s in servers))
        assert sorted(counts) == [0, 0, 0, 40]  # one swept, the others did nothing
        sweeper = counts.index(40)
        assert {a.status for a in await servers[1].batch_get(ids)} == {Status.FAILED}
        # The claim holds for its time; then (the sweeper dead) another takes over.
        clock[0] += timedelta(seconds=2)
        others = [s for i, s in enumerate(servers) if i != sweeper]
        assert not any([await s.store.claim_sweep(s.sweeper, 3, clock[0]) for s in others])
        clock[0] += timedelta(seconds=1.5)
        assert await others[0].expire_leases(hold_seconds=3) == 0  # nothing left, but its turn
        assert not await servers[sweeper].store.claim_sweep(servers[sweeper].sweeper, 3, clock[0])
        # A clean stop gives the claim up at once.
        await others[0].release_sweep()
        assert await others[1].store.claim_sweep(others[1].sweeper, 3, clock[0])
    finally:
        for s in servers:
            await s.stop()


async def test_a_fleet_of_dead_workers_does_not_stall_live_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three server processes on one (fake) replica set, 1 ms round trips; 120 promises
    whose producers died. All three run their sweep while one of them serves 20 writes in
    a row: one process sweeps (every promise failed once), and the writes go on beside
    it, each within a small bound, finishing before the sweep does."""
    server = Server()
    server.frozen = server.now
    install(server, monkeypatch)
    server.rtt = 0.001
    stores = [process(server) for _ in range(3)]
    try:
        for _ in range(4):
            await asyncio.gather(*(stores[0].insert(promise(server.now, 1)) for _ in range(30)))
        server.frozen += timedelta(seconds=2)
        managers = [AssetManager(s, MemoryStorage(), Limits()) for s in stores]
        latencies: list[float] = []
        done: dict[str, float] = {}

        async def sweep(manager: AssetManager) -> int:
            failed = await manager.expire_leases()
            if failed:
                done["sweep"] = time.monotonic()
            return failed

        async def writes() -> None:
            for _ in range(20):
                began = time.monotonic()
                await stores[1].insert(pending_record(at=server.now))
                latencies.append(time.monotonic() - began)
            done["writes"] = time.monotonic()

        results = await asyncio.gather(*(sweep(m) for m in managers), writes())
    finally:
        for s in stores:
            await s.close()
    assert sorted(r or 0 for r in results[:3]) == [0, 0, 120]
    failed = [d for d in server.data["assets"].values() if d["status"] == "FAILED"]
    assert len(failed) == 120 and server.data["leases"] == {}
    assert done["writes"] < done["sweep"], "the writes waited for the sweep"
    # Without the claim and the pacing one write here waited 2.5 s (docs/mongodb.md).
    assert max(latencies) < 0.5, (statistics.median(latencies), max(latencies))
