"""MongoStore's group writer and writer leases at the driver boundary (issue 10, item 3).

No server runs here. The stores keep real AsyncMongoClients, real sessions and pymongo's
own `with_transaction` (its WriteConflict retries with backoff, its labels, the
client-side timeout). What a server would do is `Server`: documents, and MongoDB's rule
for the counter document: a transaction that wrote it holds it until it commits or
aborts, and any other transaction writing it gets WriteConflict (112, labelled
TransientTransactionError). `killSessions` aborts a session's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.client_session_shared import _TxnState
from pymongo.errors import DuplicateKeyError, NetworkTimeout, OperationFailure

from asset_service.domain.errors import Conflict, NotFound, OutcomeUnknown
from asset_service.domain.models import Asset, Failure, Status, new_asset_id
from asset_service.store.mongo import MongoStore
from asset_service.store.mongo._leases import WriterLeases
from tests.unit.fake_mongo import NullUsage
from tests.unit.test_mongo_writes import ASSET, closed_port

NOW = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
RTT = 0.002  # each statement's round trip


def lsid_of(session: AsyncClientSession | None) -> bytes:
    assert session is not None
    return bytes(session.session_id["id"])


class Server:
    """The documents of one deployment, shared by every store (process) of a test."""

    def __init__(self) -> None:
        self.counter = 0
        self.counter_holder: bytes | None = None  # the lsid whose transaction wrote it
        self.assets: dict[str, dict[str, Any]] = {}
        self.pending: dict[bytes, list[tuple[str, Any]]] = {}  # a transaction's writes
        self.dead: set[bytes] = set()  # sessions of processes that died: they send nothing
        self.killed: list[bytes] = []
        self.increments: list[int] = []
        self.fail_commit: type[Exception] | None = None
        self.writers: dict[str, dict[str, Any]] = {}
        self.now = 1000.0  # server clock ($$NOW), seconds

    def release(self, lsid: bytes, commit: bool) -> None:
        writes = self.pending.pop(lsid, [])
        if commit:
            for kind, arg in writes:
                if kind == "counter":
                    self.counter = arg
                elif kind == "put":
                    self.assets[arg["_id"]] = arg
                elif kind == "delete":
                    self.assets.pop(arg, None)
        if self.counter_holder == lsid:
            self.counter_holder = None

    def view(self, lsid: bytes) -> dict[str, dict[str, Any]]:
        """The assets as this transaction sees them (its own writes included)."""
        seen = dict(self.assets)
        for kind, arg in self.pending.get(lsid, []):
            if kind == "put":
                seen[arg["_id"]] = arg
            elif kind == "delete":
                seen.pop(arg, None)
        return seen


async def _statement(session: AsyncClientSession | None) -> bytes:
    await asyncio.sleep(RTT)
    assert session is not None, "group writes run in a transaction"
    session._transaction.state = _TxnState.IN_PROGRESS
    return lsid_of(session)


class Counters:
    def __init__(self, server: Server) -> None:
        self.server = server

    async def find_one_and_update(
        self, where: Mapping[str, Any], update: Mapping[str, Any], **kw: Any
    ) -> dict[str, Any]:
        lsid = await _statement(kw.get("session"))
        server = self.server
        if server.counter_holder not in (None, lsid):
            exc = OperationFailure("WriteConflict", 112, {"ok": 0, "code": 112})
            exc._add_error_label("TransientTransactionError")
            raise exc
        server.counter_holder = lsid
        step = update["$inc"]["value"]
        server.increments.append(step)
        value = server.counter + step
        server.pending.setdefault(lsid, []).append(("counter", value))
        return {"_id": "revision", "value": value}


class Assets:
    def __init__(self, server: Server) -> None:
        self.server = server

    async def insert_one(self, doc: dict[str, Any], session: Any = None) -> None:
        lsid = await _statement(session)
        if doc["_id"] in self.server.view(lsid):
            raise DuplicateKeyError("E11000 duplicate key error", 11000)
        self.server.pending.setdefault(lsid, []).append(("put", copy.deepcopy(doc)))

    async def find_one_and_update(
        self, where: Mapping[str, Any], update: Mapping[str, Any], **kw: Any
    ) -> dict[str, Any] | None:
        lsid = await _statement(kw.get("session"))
        doc = self.server.view(lsid).get(where["_id"])
        if doc is None or ("status" in where and doc["status"] != where["status"]):
            return None
        doc = {**doc, **update["$set"]}
        self.server.pending.setdefault(lsid, []).append(("put", doc))
        assert kw.get("return_document") is ReturnDocument.AFTER
        return copy.deepcopy(doc)

    async def find_one(self, where: Mapping[str, Any], *args: Any, **kw: Any) -> Any:
        lsid = await _statement(kw.get("session"))
        return self.server.view(lsid).get(where["_id"])

    async def delete_one(self, where: Mapping[str, Any], session: Any = None) -> None:
        lsid = await _statement(session)
        self.server.pending.setdefault(lsid, []).append(("delete", where["_id"]))


class Writers:
    """The `writers` collection; `$$NOW` is the server's clock."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def with_options(self, **_: Any) -> Writers:
        return self

    async def update_one(self, where: Mapping[str, Any], pipeline: Any, upsert: bool) -> None:
        assert upsert and pipeline[0]["$set"]["seen"] == "$$NOW"
        old = self.server.writers.get(where["_id"], {})
        self.server.writers[where["_id"]] = {
            "_id": where["_id"],
            "lsid": pipeline[0]["$set"]["lsid"],
            "seen": self.server.now,
            "beat": old.get("beat", 0) + 1,
        }

    async def _others(self, where: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for doc in list(self.server.writers.values()):
            if doc["_id"] != where["_id"]["$ne"]:
                yield dict(doc)

    def find(self, where: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._others(where)

    async def delete_one(self, where: Mapping[str, Any]) -> None:
        doc = self.server.writers.get(where["_id"])
        if doc is not None and ("seen" not in where or doc["seen"] == where["seen"]):
            del self.server.writers[where["_id"]]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Server:
    """commitTransaction/abortTransaction reach `Server`; a dead process sends nothing."""
    shared = Server()

    async def finish(self: AsyncClientSession, command_name: str) -> dict[str, Any]:
        lsid = lsid_of(self)
        if lsid in shared.dead:
            await asyncio.sleep(3600)
        commit = command_name == "commitTransaction"
        if commit and shared.fail_commit is not None:
            shared.release(lsid, commit=False)
            raise shared.fail_commit("timed out during commitTransaction")
        shared.release(lsid, commit)
        return {"ok": 1}

    monkeypatch.setattr(AsyncClientSession, "_finish_transaction_with_retry", finish)
    return shared


def process(server: Server, *, timeout: float = 5.0, leases: bool = False) -> MongoStore:
    """A MongoStore as one server process would have it, on the shared fake server."""
    store = MongoStore(
        f"mongodb://127.0.0.1:{closed_port()}/db?serverSelectionTimeoutMS=100",
        operation_timeout=timeout,
    )
    store._counters = Counters(server)  # type: ignore[assignment]
    store._assets = Assets(server)  # type: ignore[assignment]
    store._usage = NullUsage()  # type: ignore[assignment]
    if leases:

        async def kill(lsids: list[Mapping[str, Any]]) -> None:
            for lsid in lsids:
                key = bytes(lsid["id"])
                server.killed.append(key)
                server.release(key, commit=False)

        store._leases = WriterLeases(
            Writers(server), kill, f"proc-{id(store)}", lease_seconds=0.5, renew_seconds=0.05
        )
    return store


def new(label: str = "a") -> Asset:
    return Asset(**{**ASSET.__dict__, "id": new_asset_id(), "label": label})


async def test_concurrent_writes_share_transactions_and_one_counter_increment_each(
    server: Server,
) -> None:
    store = process(server)
    try:
        stored = await asyncio.gather(*(store.insert(new(f"a{i}")) for i in range(64)))
    finally:
        await store.close()
    # Revisions are dense, unique and in the order the writes were queued.
    assert [a.revision for a in stored] == list(range(1, 65))
    assert server.counter == 64 and len(server.assets) == 64
    # All 64 were queued before the writer ran: ONE transaction and ONE counter
    # increment, not 64 transactions conflicting on the counter.
    assert store._writer.transactions == len(server.increments) == 1
    assert server.increments == [64]


async def test_a_write_whose_condition_fails_does_not_fail_its_batch(server: Server) -> None:
    store = process(server)
    try:
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
    finally:
        await store.close()
    c, failed_a, late, unknown, nothing, d = results
    assert isinstance(late, Conflict) and "is FAILED" in late.message
    assert isinstance(unknown, NotFound) and nothing is None
    assert isinstance(c, Asset) and isinstance(failed_a, Asset) and isinstance(d, Asset)
    # Writes that wrote nothing used no revision: the batch's are consecutive.
    assert (c.revision, failed_a.revision, d.revision) == (4, 5, 6)


async def test_a_duplicate_key_fails_only_its_own_write(server: Server) -> None:
    store = process(server)
    try:
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
    finally:
        await store.close()
    y, dup, z = results
    assert isinstance(dup, Conflict) and "already exists" in dup.message
    assert isinstance(y, Asset) and isinstance(z, Asset)
    assert {a["label"] for a in server.assets.values()} == {"taken", "x", "y", "z"}


async def test_an_ambiguous_commit_leaves_every_write_of_its_batch_unknown(
    server: Server,
) -> None:
    store = process(server, timeout=1.0)
    try:
        first = asyncio.create_task(store.insert(new("first")))
        await asyncio.sleep(0)
        server.fail_commit = NetworkTimeout
        results = await asyncio.gather(
            *(store.insert(new(f"b{i}")) for i in range(5)), return_exceptions=True
        )
        await asyncio.gather(first, return_exceptions=True)
    finally:
        await store.close()
    assert all(isinstance(r, OutcomeUnknown) for r in results), results
    assert len({id(r) for r in results}) == 5, "one error object per caller"


async def test_the_writer_session_is_leased_before_its_first_transaction(
    server: Server,
) -> None:
    store = process(server, leases=True)
    try:
        await store.insert(new())
        session = store._session
        assert session is not None
        leases = list(server.writers.values())
        assert [bytes(w["lsid"]["id"]) for w in leases] == [lsid_of(session)]
    finally:
        await store.close()
    assert server.writers == {}, "a clean close gives its lease back"


async def dead_process_holding_the_counter(server: Server) -> MongoStore:
    """A process that claimed revisions, then died before committing: its transaction
    stays open on the server and holds the counter; it renews nothing any more."""
    dead = process(server, leases=True)
    hang = asyncio.Event()
    real_insert = Assets.insert_one

    async def insert_then_die(self: Assets, doc: dict[str, Any], session: Any = None) -> None:
        if session is not None and session is dead._session:
            server.dead.add(lsid_of(session))
            await hang.wait()
        await real_insert(self, doc, session)

    Assets.insert_one = insert_then_die  # type: ignore[method-assign]
    dead.doomed = asyncio.create_task(dead.insert(new("never")))  # type: ignore[attr-defined]
    for _ in range(200):
        await asyncio.sleep(0.01)
        if server.counter_holder is not None:
            break
    Assets.insert_one = real_insert  # type: ignore[method-assign]
    assert server.counter_holder is not None
    return dead


async def bury(server: Server, dead: MongoStore) -> None:
    """End the test's "dead" process for real (its abort may now reach the server)."""
    server.dead.clear()
    await dead.close()
    doomed: asyncio.Task[Asset] = dead.doomed  # type: ignore[attr-defined]
    with contextlib.suppress(OutcomeUnknown):  # it was committing when it "died"
        await doomed


async def test_a_dead_writer_is_ended_by_a_peer_within_seconds(server: Server) -> None:
    dead = await dead_process_holding_the_counter(server)
    assert dead._leases is not None and dead._session is not None
    dead_lsid = lsid_of(dead._session)
    await dead._leases.close()  # the process is gone: no more renewals...
    server.writers[dead._leases.instance] = {  # ...but its last lease is still there
        "_id": dead._leases.instance,
        "lsid": dead._session.session_id if dead._session else None,
        "seen": server.now,
    }
    peer = process(server, leases=True)
    assert peer._leases is not None
    peer._leases.start()

    async def clock() -> None:  # the server's clock runs on
        while True:
            await asyncio.sleep(0.05)
            server.now += 0.05

    ticking = asyncio.create_task(clock())
    try:
        start = time.monotonic()
        stored = await peer.insert(new("after"))
        waited = time.monotonic() - start
    finally:
        ticking.cancel()
        await peer.close()
        await bury(server, dead)
    assert stored.revision == 1, "the dead transaction's claim never committed"
    assert dead_lsid in server.killed
    # The lease is 0.5 s here (5 s in production), renewed every 0.05 s.
    assert waited < 2.0, f"the peer waited {waited:.1f}s"


async def test_without_leases_a_dead_writer_blocks_its_peers(server: Server) -> None:
    """The control: nothing ends the dead transaction, so a peer's write conflicts until
    its time runs out (in production, until transactionLifetimeLimitSeconds: 60 s)."""
    dead = await dead_process_holding_the_counter(server)
    peer = process(server, timeout=1.0)
    try:
        with pytest.raises(Conflict, match="kept conflicting"):
            await peer.insert(new("after"))
    finally:
        await peer.close()
        await bury(server, dead)
