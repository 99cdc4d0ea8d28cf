"""MongoStore's group writer and writer leases at the driver boundary (issues 10 and 21).

No server runs here. The stores keep real AsyncMongoClients, real sessions and pymongo's
own transaction state machine and error labels; what a server would decide is the fake
replica set of tests/unit/mongo_fake, which follows MongoDB's documented rules (each
cited there): a transaction holding a document makes other transactions' writes to it
fail at once with WriteConflict; ANY statement error aborts the transaction; commits
wait for a majority; killSessions aborts a session's open transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from pymongo.errors import AutoReconnect

from asset_service.domain.errors import (
    Conflict,
    FailedPrecondition,
    LeaseRanOut,
    NotFound,
    OutcomeUnknown,
    Unavailable,
)
from asset_service.domain.models import Asset, Failure, Fulfillment, Status, new_asset_id
from asset_service.store.mongo import MongoStore
from asset_service.store.mongo._leases import WriterLeases
from tests.unit.mongo_fake import FakeCollection, Server, attach, install, lsid_of
from tests.unit.mongo_fake._server import Txn
from tests.unit.test_mongo_writes import ASSET, closed_port

NOW = ASSET.created_at
FULFILL = Fulfillment(size_bytes=3, sha256="ab" * 32, storage_path="generated/t/x")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Server:
    shared = install(monkeypatch, Server())
    shared.put("counters", {"_id": "revision", "value": 0})  # open() creates it
    return shared


def process(
    server: Server, *, timeout: float = 5.0, leases: bool = False, user: str = "app"
) -> MongoStore:
    """A MongoStore as one server process would have it, on the shared fake server."""
    store = MongoStore(
        f"mongodb://127.0.0.1:{closed_port()}/db?serverSelectionTimeoutMS=100",
        operation_timeout=timeout,
    )
    attach(store, server, user)
    if leases:
        store._leases = WriterLeases(
            FakeCollection(server, "writers"),
            store._kill_sessions,
            f"proc-{id(store)}",
            lease_seconds=0.5,
            renew_seconds=0.05,
        )
    return store


@pytest.fixture
async def store(server: Server) -> AsyncIterator[MongoStore]:
    one = process(server)
    yield one
    await one.close()


def new(label: str = "a") -> Asset:
    return Asset(**{**ASSET.__dict__, "id": new_asset_id(), "label": label})


def counter_holds(server: Server) -> list[int]:
    """For each transaction that took the counter: how many commands it sent from its
    `$inc` to its commit (the time it held the counter, in round trips)."""
    spans: dict[bytes, list[int]] = {}
    held: dict[bytes, int] = {}
    for command in server.commands:
        if command.lsid is None:
            continue
        if command.collection == "counters" and command.in_transaction:
            held[command.lsid] = 0
        elif command.lsid in held:
            held[command.lsid] += 1
            if command.name in ("commitTransaction", "abortTransaction"):
                spans.setdefault(command.lsid, []).append(held.pop(command.lsid))
    return [n for per in spans.values() for n in per]


async def test_concurrent_writes_share_transactions_and_one_counter_increment_each(
    server: Server, store: MongoStore
) -> None:
    stored = await asyncio.gather(*(store.insert(new(f"a{i}")) for i in range(64)))
    # Revisions are unique, increasing in the order the writes were queued.
    assert [a.revision for a in stored] == list(range(1, 65))
    assert server.documents("counters")["revision"]["value"] == 64
    assert len(server.documents("assets")) == 64
    # All 64 were queued before the writer ran: ONE transaction, ONE counter increment.
    assert store._writer.transactions == 1
    assert [c.name for c in server.commands if c.collection == "counters"] == ["findAndModify"]


async def test_the_counter_is_held_for_the_same_few_round_trips_whatever_the_batch(
    server: Server, store: MongoStore
) -> None:
    """Issue 21 item 5: a batch holds the counter from its `$inc` to its commit for a
    constant number of commands, not one per write: 4 writes and 60 writes hold it
    equally long."""
    holds = []
    for size in (4, 60):
        first = [await store.insert(new(f"x{i}")) for i in range(size // 2)]
        server.commands.clear()
        await asyncio.gather(
            *(store.insert(new(f"n{i}")) for i in range(size // 4)),
            *(store.transition(a.id, Status.PENDING, Failure("x"), NOW) for a in first[1:]),
            store.delete(first[0].id),
        )
        holds.append(counter_holds(server))
    # leases: find (which promises have one); assets: insert, update, find, delete;
    # tombstones: one replace command; usage: one $inc command (the accounting); the commit.
    assert holds[0] == holds[1] == [8], holds


async def test_a_write_whose_condition_fails_does_not_fail_its_batch(
    server: Server, store: MongoStore
) -> None:
    a, b = await store.insert(new("a")), await store.insert(new("b"))
    await store.transition(b.id, Status.PENDING, Failure("first"), NOW)
    results = await asyncio.gather(
        store.insert(new("c")),  # alone: the writer was idle
        store.transition(a.id, Status.PENDING, Failure("x"), NOW),
        store.transition(b.id, Status.PENDING, Failure("late"), NOW),  # FAILED already
        store.transition(new_asset_id(), Status.PENDING, Failure("x"), NOW),
        store.delete(new_asset_id()),
        store.insert(new("d")),
        return_exceptions=True,
    )
    c, failed_a, late, unknown, nothing, d = results
    assert isinstance(late, Conflict) and "is FAILED" in late.message
    assert isinstance(unknown, NotFound) and nothing is None
    assert isinstance(c, Asset) and isinstance(failed_a, Asset) and isinstance(d, Asset)
    assert failed_a.status is Status.FAILED and failed_a.failure_reason == "x"
    # The second batch: inserts first, then updates (the oplog's order); unique revisions.
    assert c.revision == 4 and d.revision == 5 and failed_a.revision == 6
    assert server.documents("assets")[b.id]["failure_reason"] == "first"


async def test_a_duplicate_key_fails_only_its_own_write(server: Server, store: MongoStore) -> None:
    """MongoDB aborts the whole transaction on the duplicate key (the fake does too), so
    the others commit only because the batch runs again without it."""
    taken = await store.insert(new("taken"))
    first = asyncio.create_task(store.insert(new("x")))  # keeps the writer busy
    await asyncio.sleep(0)
    results = await asyncio.gather(
        store.insert(new("y")),
        store.insert(taken),
        store.insert(new("z")),
        return_exceptions=True,
    )
    await first
    y, dup, z = results
    assert isinstance(dup, Conflict) and "already exists" in dup.message
    assert isinstance(y, Asset) and isinstance(z, Asset)
    assert {a["label"] for a in server.documents("assets").values()} == {"taken", "x", "y", "z"}
    assert store._writer.reruns == 1


async def test_one_validation_error_fails_only_its_own_write_not_63_others(
    server: Server, store: MongoStore
) -> None:
    # A validator the operator added (code 121, a write error like a duplicate key).
    server.validators["assets"] = lambda doc: doc.get("label") != "refused"
    writes = [new(f"ok{i}") for i in range(63)]
    writes.insert(30, new("refused"))
    results = await asyncio.gather(*(store.insert(a) for a in writes), return_exceptions=True)
    refused = results.pop(30)
    assert isinstance(refused, FailedPrecondition), refused
    assert "validation" in refused.message and writes[30].id in refused.message
    assert all(isinstance(r, Asset) for r in results), [r for r in results if type(r) is not Asset]
    assert len(server.documents("assets")) == 63
    assert store._writer.transactions == 2  # one aborted, one without the refused write


async def test_an_ambiguous_commit_leaves_every_write_of_its_batch_unknown(
    server: Server,
) -> None:
    store = process(server, timeout=1.0)
    try:
        server.replicate = False  # the commit applies on the primary; no majority comes
        results = await asyncio.gather(
            *(store.insert(new(f"b{i}")) for i in range(5)), return_exceptions=True
        )
    finally:
        await store.close()
    assert all(isinstance(r, OutcomeUnknown) for r in results), results
    assert len({id(r) for r in results}) == 5, "one error object per caller"
    assert len(server.documents("assets", at="local")) == 5
    assert server.documents("assets", at="majority") == {}


async def test_a_commit_interrupted_in_its_majority_wait_is_outcome_unknown(
    server: Server, store: MongoStore
) -> None:
    """Issue 21 item 3: a peer's killSessions (or any interruption) during the commit's
    majority wait is a writeConcernError 11601, which pymongo does NOT label
    UnknownTransactionCommitResult; the commit has applied on the primary."""
    server.replicate = False
    write = asyncio.create_task(store.insert(new("slow")))
    for _ in range(500):
        await asyncio.sleep(0.002)
        if server.documents("assets", at="local"):
            break
    session = store._session
    assert session is not None
    server.kill_sessions([session.session_id])
    with pytest.raises(OutcomeUnknown, match="may or may not have applied"):
        await write
    assert len(server.documents("assets", at="local")) == 1


async def test_after_a_failed_transaction_the_writer_never_reuses_its_session(
    server: Server,
) -> None:
    """Issue 21 item 10: the old session leaves pymongo's pool (its next start_session
    would hand the same lsid back) and is ended with killSessions."""
    store = process(server, timeout=0.5)
    try:
        await _never_reuses(server, store)
    finally:
        await store.close()


async def _never_reuses(server: Server, store: MongoStore) -> None:
    await store.insert(new("first"))
    assert store._session is not None
    old = lsid_of(store._session)
    server.fail("commitTransaction", lambda: AutoReconnect("connection reset"), times=-1)
    with pytest.raises(OutcomeUnknown):
        await store.insert(new("lost"))
    server.faults.clear()
    await store.insert(new("after"))
    assert store._session is not None and lsid_of(store._session) != old
    others = [store._client.start_session() for _ in range(5)]
    assert old not in {lsid_of(s) for s in others}
    for s in others:
        await s.end_session()
    for _ in range(100):
        if old in server.killed:
            break
        await asyncio.sleep(0.01)
    assert old in server.killed, "the doubtful session was ended on the server"


async def test_the_writer_session_is_leased_before_its_first_transaction(
    server: Server,
) -> None:
    store = process(server, leases=True)
    try:
        await store.insert(new())
        session = store._session
        assert session is not None
        leases = list(server.documents("writers").values())
        assert [bytes(w["lsid"]["id"]) for w in leases] == [lsid_of(session)]
    finally:
        await store.close()
    assert server.documents("writers") == {}, "a clean close gives its lease back"


def dead_process(server: Server, user: str = "app", lease_user: str = "") -> bytes:
    """A process that claimed revisions, then died before committing: its transaction
    stays open on the server and holds the counter; its lease is no longer renewed."""
    lsid = b"dead-process-lsid"
    txn = server.txns[lsid] = Txn(lsid, 1, snapshot=server.optime)
    server.write_in(txn, "counters", "revision", {"_id": "revision", "value": 99})
    server.users[lsid] = user
    server.put(
        "writers",
        {
            "_id": "dead",
            "lsid": {"id": lsid},
            "seen": server.now() - timedelta(seconds=30),
            "user": lease_user,
        },
    )
    return lsid


async def clock(server: Server) -> None:
    """The server's clock runs on ($$NOW)."""
    while True:
        await asyncio.sleep(0.05)
        server.clock += timedelta(seconds=0.05)


async def test_a_dead_writer_is_ended_by_a_peer_within_seconds(server: Server) -> None:
    lsid = dead_process(server)
    peer = process(server, leases=True)
    assert peer._leases is not None
    peer._leases.start()
    ticking = asyncio.create_task(clock(server))
    try:
        start = time.monotonic()
        stored = await peer.insert(new("after"))
        waited = time.monotonic() - start
    finally:
        ticking.cancel()
        await peer.close()
    assert stored.revision == 1, "the dead transaction's claim never committed"
    assert lsid in server.killed
    assert "dead" not in server.documents("writers")
    # The lease is 0.5 s here (5 s in production), renewed every 0.05 s.
    assert waited < 2.0, f"the peer waited {waited:.1f}s"


async def test_without_leases_a_dead_writer_blocks_its_peers(server: Server) -> None:
    """The control: nothing ends the dead transaction, so a peer's write conflicts until
    its time runs out (in production, until transactionLifetimeLimitSeconds: 60 s)."""
    dead_process(server)
    peer = process(server, timeout=1.0)
    try:
        with pytest.raises(Conflict, match="kept conflicting"):
            await peer.insert(new("after"))
    finally:
        await peer.close()


async def test_a_dead_writer_of_another_database_user_is_reported_not_silently_kept(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 21 item 10: killSessions only ends the caller's own user's sessions (the
    server matches nothing otherwise); the reaper says so instead of believing it
    ended the transaction."""
    lsid = dead_process(server, user="other", lease_user="other@admin")
    peer = process(server, leases=True, user="app")
    assert peer._leases is not None
    peer._leases.user = "app@admin"
    with caplog.at_level(logging.ERROR):
        ended = await peer._leases.reap()  # first sight of its beat
        await asyncio.sleep(0.6)  # it stands still for a lease (0.5 s here)
        ended += await peer._leases.reap()
    await peer.close()
    assert ended == 0 and lsid not in server.killed
    assert "other@admin" in caplog.text and "one database user" in caplog.text


async def test_the_counter_is_never_created_on_the_fly(server: Server, store: MongoStore) -> None:
    """Issue 21 item 10: a counter missing at runtime (dropped) is refused, not
    re-created at 1 (open() lifts it above every stored revision instead)."""
    await store.insert(new("before"))
    server.drop("counters", "revision")
    with pytest.raises(Unavailable, match="revision counter"):
        await store.insert(new("after"))
    assert "revision" not in server.documents("counters")


async def test_leased_promises_change_with_their_leases_in_one_batch(
    server: Server, store: MongoStore
) -> None:
    """The batch's statements on `leases` (one command each, whatever the batch): a new
    promise's lease is created by $$NOW and its end copied into the record; an expiry
    removes a lease that ran out, a fulfilment refuses one that ran out, a promise
    without a lease moves on; and the counter is held for a constant number of commands."""
    store._transactions = True  # a replica set: the database's clock decides
    start = server.now()

    def leased(label: str) -> Asset:
        return Asset(
            **{
                **new(label).__dict__,
                "lease_seconds": 10,
                "lease_expires_at": start + timedelta(minutes=9),  # a skewed caller
            }
        )

    late, due = await asyncio.gather(store.insert(leased("late")), store.insert(leased("due")))
    plain = await store.insert(new("plain"))
    ends = {k: d["expires_at"] for k, d in server.documents("leases").items()}
    assert ends == {late.id: start + timedelta(seconds=10), due.id: start + timedelta(seconds=10)}
    assert late.lease_expires_at == start + timedelta(seconds=10)  # the database's clock
    server.clock += timedelta(seconds=11)  # both leases ran out
    server.commands.clear()
    fulfilled_late, expired, fulfilled_plain = await asyncio.gather(
        store.transition(late.id, Status.PENDING, FULFILL, NOW),
        store.transition(due.id, Status.PENDING, Failure("gone", lease_ran_out=True), NOW),
        store.transition(plain.id, Status.PENDING, FULFILL, NOW),
        return_exceptions=True,
    )
    assert isinstance(fulfilled_late, LeaseRanOut), fulfilled_late
    assert isinstance(expired, Asset) and expired.status is Status.FAILED
    assert expired.lease_expires_at == start + timedelta(seconds=10)  # its last end
    assert isinstance(fulfilled_plain, Asset) and fulfilled_plain.status is Status.AVAILABLE
    assert set(server.documents("leases")) == {late.id}, "only the expired lease went"
    assert server.documents("assets")[late.id]["status"] == "PENDING"
    # leases: find, delete, find; assets: update, find; usage: one $inc; then the commit.
    assert counter_holds(server) == [7]
