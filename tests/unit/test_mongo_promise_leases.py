"""MongoStore's promise leases at the driver boundary (issue 21, items 12, 6 and 7).

The stores keep real AsyncMongoClients, real sessions and pymongo's own with_transaction;
`fake_mongo.Server` is a primary that follows MongoDB's documented rules ($$NOW is its
clock, write conflicts between transactions, upserts and duplicate keys). Each store is
one server process; `now` is that process's own (skewed) clock, which must decide nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from asset_service.domain import leases
from asset_service.domain.errors import Conflict, LeaseRanOut
from asset_service.domain.models import Asset, Failure, Fulfillment, Status, new_asset_id
from asset_service.store.mongo import MongoStore
from tests.records import pending_record
from tests.unit.fake_mongo import Server, install
from tests.unit.test_mongo_writes import closed_port

SKEW = timedelta(minutes=10)
FULFILL = Fulfillment(size_bytes=3, sha256="ab" * 32, storage_path="generated/t/x")


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> Server:
    s = Server()
    s.frozen = s.now
    install(s, monkeypatch)
    return s


def process(server: Server) -> MongoStore:
    """A MongoStore as one server process on a replica set would have it."""
    store = MongoStore(f"mongodb://127.0.0.1:{closed_port()}/db?serverSelectionTimeoutMS=100")
    store._assets = server.collection("assets")  # type: ignore[assignment]
    store._counters = server.collection("counters")  # type: ignore[assignment]
    store._lease_docs = server.collection("leases")  # type: ignore[assignment]
    store._sweeps = server.collection("sweeps")  # type: ignore[assignment]
    store._tombstones = server.collection("tombstones")  # type: ignore[assignment]
    store._usage = server.collection("usage")  # type: ignore[assignment]
    store._transactions = True  # a replica set: the database's clock decides
    return store


@pytest.fixture
async def store(server: Server) -> AsyncIterator[MongoStore]:
    s = process(server)
    try:
        yield s
    finally:
        await s.close()


def promise(at: datetime, seconds: int = 10) -> Asset:
    record = pending_record(at=at)
    return dataclasses.replace(
        record, lease_seconds=seconds, lease_expires_at=leases.deadline(at, seconds)
    )


def tick(server: Server, seconds: float) -> None:
    assert server.frozen is not None
    server.frozen += timedelta(seconds=seconds)


async def test_a_renewal_is_one_lease_write_no_transaction_no_revision(
    server: Server, store: MongoStore
) -> None:
    """100 renewals: 100 writes of the lease's document (each beside a read of the asset)
    and nothing else; before (issue 21, item 12) each was a transaction of the counter's
    $inc and the asset's update: a revision, a change event, a pre-image."""
    a = await store.insert(promise(server.now, 30))
    before = dict(server.data["assets"][a.id])
    counter = dict(server.data["counters"]["revision"])
    transactions, statements = server.transactions, dict(server.statements)
    for _ in range(100):
        tick(server, 1)
        renewed = await store.renew_lease(a.id, 0, server.now - SKEW, "worker")
        assert renewed.lease_expires_at == server.now + timedelta(seconds=30)
    assert server.transactions == transactions  # no transaction
    assert server.data["counters"]["revision"] == counter  # no revision
    assert server.data["assets"][a.id] == before  # the asset untouched: no change event
    spent = {k: v - statements.get(k, 0) for k, v in server.statements.items()}
    assert spent == {"assets": 100, "leases": 100, "counters": 0, "usage": 0}
    lease = server.data["leases"][a.id]
    assert lease["renewed_by"] == "worker" and lease["renewed_at"] == server.now


async def test_servers_clocks_decide_nothing(server: Server) -> None:
    """One process's clock 10 minutes ahead, another's 10 minutes behind: a live promise
    is renewed and fulfilled by the one ahead, a dead one is refused to it and failed by
    the sweep of the one behind, all by the database's clock."""
    ahead, behind = (
        process(server),
        process(server),
    )
    try:
        live = await ahead.insert(promise(server.now + SKEW, 10))
        dead = await behind.insert(promise(server.now - SKEW, 10))
        # The leases end 10 s after the insert by the DATABASE's clock.
        assert live.lease_expires_at == dead.lease_expires_at == server.now + timedelta(seconds=10)
        tick(server, 9)
        assert await ahead.leases_run_out(server.now + SKEW, 10) == []  # not by its clock
        renewed = await ahead.renew_lease(live.id, 10, server.now + SKEW, "worker")
        assert renewed.lease_expires_at == server.now + timedelta(seconds=10)
        # The sweep of the process ahead fails nothing that is still running.
        assert await leases.expire_due(ahead, server.now + SKEW) == 0
        tick(server, 2)  # `dead` ran out 1 s ago (by the database's clock)
        with pytest.raises(LeaseRanOut):
            await ahead.renew_lease(dead.id, 10, server.now + SKEW, "worker")
        with pytest.raises(LeaseRanOut):
            await behind.transition(dead.id, Status.PENDING, FULFILL, server.now - SKEW)
        # The process behind (its clock says the lease has 9 minutes left) fails it.
        assert [a.id for a in await behind.leases_run_out(server.now - SKEW, 10)] == [dead.id]
        assert await leases.expire_due(behind, server.now - SKEW) == 1
        done = await ahead.transition(live.id, Status.PENDING, FULFILL, server.now + SKEW)
        assert done.status is Status.AVAILABLE
        failed = await behind.get(dead.id)
        assert failed is not None and failed.status is Status.FAILED
        assert failed.lease_expires_at == dead.lease_expires_at
    finally:
        await ahead.close()
        await behind.close()


async def test_a_fulfilment_and_the_expiry_racing_over_the_end_have_one_winner(
    server: Server,
) -> None:
    """The fulfilment's transaction removes the lease while it still runs; the clock then
    passes the end and a peer's expiry tries to remove it too: the two write the same
    document, MongoDB lets one commit and the other conflict, retry and find it gone."""
    server.rtt = 0.01
    worker, sweeper = process(server), process(server)
    try:
        a = await worker.insert(promise(server.now, 1))
        tick(server, 0.999)
        fulfil = asyncio.create_task(worker.transition(a.id, Status.PENDING, FULFILL, server.now))
        for _ in range(5000):  # until the fulfilment holds the lease
            if ("leases", a.id) in server.holders:
                break
            await asyncio.sleep(0.001)
        tick(server, 0.002)  # now it has run out
        expiry = leases.expiry(a)
        results = await asyncio.gather(
            fulfil,
            sweeper.transition(a.id, Status.PENDING, expiry, server.now),
            return_exceptions=True,
        )
    finally:
        await worker.close()
        await sweeper.close()
    done, swept = results
    assert isinstance(done, Asset) and done.status is Status.AVAILABLE, results
    assert isinstance(swept, Conflict) and not isinstance(swept, LeaseRanOut), results
    assert server.data["assets"][a.id]["status"] == "AVAILABLE"
    assert a.id not in server.data["leases"]


async def test_an_expiry_removes_the_lease_with_the_asset_s_transition(
    server: Server, store: MongoStore
) -> None:
    a = await store.insert(promise(server.now, 5))
    with pytest.raises(Conflict, match="has not run out"):
        await store.transition(a.id, Status.PENDING, leases.expiry(a), server.now + SKEW)
    tick(server, 5)
    revision = server.data["counters"]["revision"]["value"]
    failed = await store.transition(a.id, Status.PENDING, leases.expiry(a), server.now - SKEW)
    assert failed.status is Status.FAILED and failed.revision == revision + 1
    assert a.id not in server.data["leases"]
    assert server.data["assets"][a.id]["lease_expires_at"] == a.lease_expires_at


async def test_a_promise_without_a_lease_never_touches_the_leases(
    server: Server, store: MongoStore
) -> None:
    """Its transitions write nothing to `leases`: a batch of them reads `leases` once (one
    find for the whole batch, to learn that none of its promises has a lease)."""
    a = await store.insert(pending_record(at=server.now))
    b = await store.insert(pending_record(at=server.now))
    c = await store.insert(pending_record(at=server.now))
    server.statements.clear()
    logged = len(server.oplog)
    await asyncio.gather(
        store.transition(a.id, Status.PENDING, FULFILL, server.now),
        store.transition(b.id, Status.PENDING, Failure("no"), server.now),
        store.delete(c.id),
    )
    assert server.statements.get("leases", 0) == 1
    assert [e for e in server.oplog[logged:] if e[0] == "leases"] == []


async def test_one_sweep_claim_by_the_database_s_clock(server: Server) -> None:
    first, second = process(server), process(server)
    try:
        assert await first.claim_sweep("first", 3, server.now - SKEW)
        assert not await second.claim_sweep("second", 3, server.now + SKEW)
        tick(server, 2)
        assert await first.claim_sweep("first", 3, server.now + SKEW)  # held on
        tick(server, 2)
        assert not await second.claim_sweep("second", 3, server.now + SKEW)
        tick(server, 1.5)
        assert await second.claim_sweep("second", 3, server.now - SKEW)  # it ran out
    finally:
        await first.close()
        await second.close()


async def test_a_lease_of_an_older_release_is_moved_at_open(server: Server) -> None:
    store = process(server)
    pending_id = new_asset_id()
    end = server.now + timedelta(seconds=30)
    server.data["assets"] = {
        pending_id: {
            "_id": pending_id,
            "status": "PENDING",
            "lease_seconds": 30,
            "lease_expires_at": end,
        }
    }
    from asset_service.store.mongo import _schema

    await _schema.prepare_leases(store._assets, store._lease_docs, store._sweeps, "db")
    assert server.data["leases"][pending_id] == {
        "_id": pending_id,
        "expires_at": end,
        "seconds": 30,
        "renewed_by": "",
    }
    server.data["leases"].clear()
    await _schema.prepare_leases(store._assets, store._lease_docs, store._sweeps, "db")
    assert server.data["leases"] == {}  # once only
    await store.close()
