"""MongoStore's write path at the driver boundary: bounded time, ambiguous commits, errors.

No server runs here. The store keeps its real AsyncMongoClient, sessions and pymongo's
own transaction state machine (commit_transaction adds the labels it adds on a real
failure); what would reach a server goes to the fake replica set of tests/unit/mongo_fake
(MongoDB's documented rules), where a test injects failures command by command.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import (
    AutoReconnect,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
    WTimeoutError,
)
from pymongo.read_preferences import ReadPreference

from asset_service.domain.errors import (
    AssetError,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    OutcomeUnknown,
    Unavailable,
)
from asset_service.domain.models import AssetType, Failure, Status
from asset_service.store.mongo import MongoStore
from asset_service.store.mongo._documents import _unavailable, _write_error, asset_to_doc
from tests.records import make_record
from tests.unit.mongo_fake import Server, attach, install

NOW = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
ASSET = make_record(
    Status.PENDING,
    AssetType.FILE,
    "application/octet-stream",
    label="a.bin",
    asset_id="5b0c6b55-8d5e-4a39-9a55-0f5b8f6c9f10",
    at=NOW,
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def labelled(exc: PyMongoError, *labels: str) -> PyMongoError:
    for label in labels:
        exc._add_error_label(label)
    return exc


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Server:
    """The fake replica set (tests/unit/mongo_fake); commit/abort reach it."""
    shared = install(monkeypatch, Server())
    shared.put("counters", {"_id": "revision", "value": 6})
    shared.put("assets", asset_to_doc(ASSET, 1))
    return shared


def fake_store(server: Server, *, timeout: float = 0.5, url: str | None = None) -> MongoStore:
    # A short server selection: close() tries to end pooled sessions on the server.
    url = url or f"mongodb://127.0.0.1:{closed_port()}/db?serverSelectionTimeoutMS=100"
    store = MongoStore(url, operation_timeout=timeout)
    return attach(store, server)  # type: ignore[no-any-return]


def commits(server: Server) -> list[float]:
    """When commitTransaction was sent, each time."""
    return [c.at for c in server.commands if c.name == "commitTransaction"]


# --- item 2: every write ends within the operation timeout -------------------------


async def test_write_during_an_outage_ends_within_the_cap() -> None:
    # A real client against a closed port: inside a transaction pymongo labels the
    # server-selection error TransientTransactionError and with_transaction used to
    # retry it for 120 s.
    store = MongoStore(
        f"mongodb://127.0.0.1:{closed_port()}/db?serverSelectionTimeoutMS=200",
        operation_timeout=1.0,
    )
    start = time.monotonic()
    with pytest.raises(Unavailable) as err:
        await store.insert(ASSET)
    assert time.monotonic() - start < 3
    assert not isinstance(err.value, OutcomeUnknown)  # nothing was ever sent
    assert store._doubtful == [], "no statement was sent: no session to end"
    await store.close()


async def test_transient_transaction_errors_forever_end_within_the_cap(server: Server) -> None:
    server.fail("findAndModify", lambda: AutoReconnect("not primary"), times=-1)
    store = fake_store(server, timeout=0.6)
    start = time.monotonic()
    with pytest.raises(Unavailable) as err:
        await store.transition(ASSET.id, Status.PENDING, Failure("x"), NOW)
    elapsed = time.monotonic() - start
    assert 0.5 < elapsed < 2.5
    tries = [c for c in server.commands if c.name == "findAndModify"]
    assert len(tries) > 1  # retried while within the cap (an election is ridden through)
    assert not isinstance(err.value, OutcomeUnknown)  # every attempt aborted
    await store.close()


async def test_a_transient_error_that_clears_is_ridden_through(server: Server) -> None:
    server.fail("findAndModify", lambda: AutoReconnect("election"), times=3)
    store = fake_store(server, timeout=5)
    stored = await store.insert(ASSET.__class__(**{**ASSET.__dict__, "id": "b" * 36}))
    assert stored.revision == 7
    assert len([c for c in server.commands if c.name == "findAndModify"]) == 3 + 1
    await store.close()


# --- item 1: a commit whose outcome is unknown --------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        lambda: NetworkTimeout("timed out during commitTransaction"),
        lambda: AutoReconnect("connection reset"),
        lambda: WTimeoutError(
            "waiting for replication timed out", 64, {"code": 64, "errInfo": {"wtimeout": True}}
        ),
        lambda: labelled(
            OperationFailure("primary stepped down", 189, {"ok": 0, "code": 189}),
            "RetryableWriteError",
        ),
        lambda: WriteConcernError("operation was interrupted", 11601, {"code": 11601}),
    ],
    ids=["network-timeout", "connection-reset", "write-concern-timeout", "stepdown", "interrupted"],
)
async def test_an_ambiguous_commit_is_outcome_unknown(
    server: Server, failure: Callable[[], BaseException]
) -> None:
    server.fail("commitTransaction", failure, times=-1)
    store = fake_store(server, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(OutcomeUnknown) as err:
        await store.delete(ASSET.id)
    assert time.monotonic() - start < 2.5
    assert "may or may not have applied" in err.value.message
    await store.close()


async def test_an_unknown_commit_result_is_retried_first(server: Server) -> None:
    """commitTransaction is retryable: a commit whose reply was lost is sent again, and
    the second answer is the outcome."""
    server.fail("commitTransaction", lambda: AutoReconnect("connection reset"), times=1)
    store = fake_store(server, timeout=2)
    gone = await store.delete(ASSET.id)
    assert gone is not None and ASSET.id not in server.documents("assets")
    assert len(commits(server)) == 2
    await store.close()


async def test_a_commit_the_server_refused_is_not_ambiguous(server: Server) -> None:
    server.fail(
        "commitTransaction",
        lambda: labelled(
            OperationFailure("no such transaction", 251, {"ok": 0, "code": 251}),
            "TransientTransactionError",
        ),
        times=-1,
    )
    store = fake_store(server, timeout=0.5)
    with pytest.raises(Unavailable) as err:
        await store.delete(ASSET.id)
    assert not isinstance(err.value, OutcomeUnknown)
    await store.close()


async def test_cancelled_while_committing_is_outcome_unknown(server: Server) -> None:
    server.hold_commits = asyncio.Event()
    store = fake_store(server, timeout=5)
    task = asyncio.create_task(store.delete(ASSET.id))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if commits(server):
            break
    task.cancel()
    with pytest.raises(OutcomeUnknown):
        await task
    server.hold_commits.set()
    await store.close()


async def test_cancelled_while_queued_stays_a_cancellation_and_is_never_sent(
    server: Server,
) -> None:
    """The group writer runs one transaction at a time: a write queued behind it and
    cancelled is removed, never sent; one whose transaction is under way cannot be
    called back, so its caller hears OutcomeUnknown (and re-reads)."""
    server.hold_commits = asyncio.Event()
    store = fake_store(server, timeout=5)
    first = asyncio.create_task(store.transition(ASSET.id, Status.PENDING, Failure("x"), NOW))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if commits(server):
            break
    other = ASSET.__class__(**{**ASSET.__dict__, "id": "c" * 36})
    queued = asyncio.create_task(store.insert(other))
    await asyncio.sleep(0.05)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    first.cancel()
    with pytest.raises(OutcomeUnknown):
        await first
    server.hold_commits.set()
    await asyncio.sleep(0.1)
    # The first transaction went on and committed; the cancelled insert was never sent.
    assert server.documents("assets")[ASSET.id]["status"] == "FAILED"
    assert [c.name for c in server.commands].count("insert") == 0
    await store.close()


async def test_standalone_writes_are_ambiguous_once_sent(server: Server) -> None:
    store = fake_store(server)
    store._transactions = False
    server.fail("insert", lambda: NetworkTimeout("timed out"))
    with pytest.raises(OutcomeUnknown):
        await store.insert(ASSET.__class__(**{**ASSET.__dict__, "id": "d" * 36}))
    server.fail("findAndModify", lambda: ServerSelectionTimeoutError("no servers"))
    with pytest.raises(Unavailable) as err:
        await store.insert(ASSET.__class__(**{**ASSET.__dict__, "id": "e" * 36}))
    assert not isinstance(err.value, OutcomeUnknown)
    await store.close()


# --- item 5: reads go to the primary -------------------------------------------------


async def test_a_secondary_read_preference_in_the_url_is_overridden(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "mongodb://127.0.0.1:1/db?readPreference=secondary&readPreferenceTags=dc:ny"
    with caplog.at_level(logging.WARNING):
        store = MongoStore(url)
    assert store._client.read_preference.mongos_mode == "secondary"  # what the URL asked
    assert store._db.read_preference == ReadPreference.PRIMARY
    assert store._assets.read_preference == ReadPreference.PRIMARY
    assert store._counters.read_preference == ReadPreference.PRIMARY
    assert "reads from the primary" in caplog.text and "'secondary'" in caplog.text
    await store.close()


async def test_no_warning_when_the_url_keeps_the_primary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        store = MongoStore("mongodb://127.0.0.1:1/db")
    assert "read preference" not in caplog.text
    await store.close()


async def test_transactions_run_on_the_primary_whatever_the_url(server: Server) -> None:
    seen: list[Any] = []
    url = "mongodb://127.0.0.1:1/db?readPreference=nearest&serverSelectionTimeoutMS=100"
    store = fake_store(server, url=url)
    counters = store._counters
    real = counters.find_one_and_update

    async def spy(*args: Any, **kw: Any) -> Any:
        session: AsyncClientSession = kw["session"]
        assert session._transaction.opts is not None
        seen.append(session._transaction.opts.read_preference)
        return await real(*args, **kw)

    counters.find_one_and_update = spy  # type: ignore[method-assign]
    await store.delete(ASSET.id)
    assert seen and all(pref == ReadPreference.PRIMARY for pref in seen)
    await store.close()


# --- item 8: only transient failures are UNAVAILABLE ---------------------------------


def failure(code: int, message: str = "refused") -> OperationFailure:
    return OperationFailure(message, code, {"ok": 0, "code": code, "errmsg": message})


@pytest.mark.parametrize(
    ("exc", "expected", "words"),
    [
        (
            failure(13, "not authorized on db to execute command insert"),
            FailedPrecondition,
            "credentials or roles",
        ),
        (failure(18, "Authentication failed."), FailedPrecondition, "credentials or roles"),
        (failure(121, "Document failed validation"), FailedPrecondition, "validation"),
        (failure(2, "bad value"), InvalidArgument, "rejected a value"),
        (failure(112, "WriteConflict"), Conflict, "re-read the asset and retry"),
        (AutoReconnect("connection refused"), Unavailable, "unreachable"),
    ],
    ids=["unauthorized", "auth-failed", "validation", "bad-value", "write-conflict", "down"],
)
async def test_driver_errors_map_to_truthful_domain_errors(
    server: Server, exc: PyMongoError, expected: type[AssetError], words: str
) -> None:
    mapped = _unavailable(exc)
    assert type(mapped) is expected and words in mapped.message
    assert type(_write_error(exc, transaction=True)) is expected

    server.fail("findAndModify", lambda: exc, times=-1)
    store = fake_store(server, timeout=0.3)
    with pytest.raises(AssetError) as err:
        await store.delete(ASSET.id)
    assert type(err.value) is expected
    await store.close()


async def test_write_conflicts_until_the_cap_are_a_conflict(server: Server) -> None:
    server.fail(
        "findAndModify",
        lambda: labelled(failure(112, "WriteConflict"), "TransientTransactionError"),
        times=-1,
    )
    store = fake_store(server, timeout=0.4)
    with pytest.raises(Conflict) as err:
        await store.transition(ASSET.id, Status.PENDING, Failure("x"), NOW)
    tries = [c for c in server.commands if c.name == "findAndModify"]
    assert len(tries) > 1 and "kept conflicting" in err.value.message
    await store.close()
