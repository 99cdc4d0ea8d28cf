"""MongoStore's write path at the driver boundary: bounded time, ambiguous commits, errors.

No server runs here. The store keeps its real AsyncMongoClient, sessions and pymongo's
own `with_transaction` (retries, error labels, client-side timeout); only the calls
that would reach a server are replaced: the collection methods the write callback uses,
and the session's `_finish_transaction_with_retry` (the commitTransaction round trip),
so that pymongo's real commit_transaction adds the labels it adds on a real failure.
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
from pymongo.client_session_shared import _TxnState
from pymongo.errors import (
    AutoReconnect,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
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
from asset_service.domain.models import Asset, AssetType, Failure, Status
from asset_service.store.mongo import MongoStore
from asset_service.store.mongo._documents import _unavailable, _write_error
from tests.unit.fake_mongo import NullUsage

NOW = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
ASSET = Asset(
    id="5b0c6b55-8d5e-4a39-9a55-0f5b8f6c9f10",
    label="a.bin",
    status=Status.PENDING,
    type=AssetType.FILE,
    media_type="application/octet-stream",
    created_at=NOW,
    updated_at=NOW,
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def labelled(exc: PyMongoError, *labels: str) -> PyMongoError:
    for label in labels:
        exc._add_error_label(label)
    return exc


class FakeCollection:
    """Stands for the collections' server round trips inside the write callbacks."""

    def __init__(self, step: Callable[[AsyncClientSession | None], Any]) -> None:
        self.step = step
        self.calls = 0

    async def _op(self, *args: Any, session: AsyncClientSession | None = None, **kw: Any) -> Any:
        self.calls += 1
        if session is not None:
            # What a first server operation does: the transaction is now on the server,
            # so commit_transaction really sends commitTransaction.
            session._transaction.state = _TxnState.IN_PROGRESS
        result = self.step(session)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    find_one_and_update = _op
    insert_one = _op
    find_one = _op
    delete_one = _op


def fake_store(
    step: Callable[[AsyncClientSession | None], Any],
    *,
    timeout: float = 0.5,
    url: str | None = None,
) -> tuple[MongoStore, FakeCollection]:
    store = MongoStore(url or f"mongodb://127.0.0.1:{closed_port()}/db", operation_timeout=timeout)
    fake = FakeCollection(step)
    store._counters = fake  # type: ignore[assignment]
    store._assets = fake  # type: ignore[assignment]
    store._usage = NullUsage()  # type: ignore[assignment]
    return store, fake


def counter(_: AsyncClientSession | None) -> dict[str, Any]:
    return {"value": 7, "_id": ASSET.id, "status": "PENDING"}


def commit_fails_with(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[], BaseException | None]
) -> list[float]:
    """Replace the commitTransaction round trip; returns the times it was attempted."""
    attempts: list[float] = []

    async def finish(self: AsyncClientSession, command_name: str) -> dict[str, Any]:
        if command_name == "commitTransaction":
            attempts.append(time.monotonic())
            exc = make()
            if exc is not None:
                raise exc
        return {"ok": 1}

    monkeypatch.setattr(AsyncClientSession, "_finish_transaction_with_retry", finish)
    return attempts


@pytest.fixture(autouse=True)
def no_server_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    """commitTransaction and abortTransaction succeed unless a test says otherwise."""
    commit_fails_with(monkeypatch, lambda: None)


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
    await store.close()


async def test_transient_transaction_errors_forever_end_within_the_cap() -> None:
    def step(_: AsyncClientSession | None) -> Any:
        raise labelled(AutoReconnect("not primary"), "TransientTransactionError")

    store, fake = fake_store(step, timeout=0.6)
    start = time.monotonic()
    with pytest.raises(Unavailable) as err:
        await store.transition(ASSET.id, Status.PENDING, Failure("x"), NOW)
    elapsed = time.monotonic() - start
    assert 0.5 < elapsed < 2.5
    assert fake.calls > 1  # retried while within the cap (an election is ridden through)
    assert not isinstance(err.value, OutcomeUnknown)  # every attempt aborted
    await store.close()


async def test_a_transient_error_that_clears_is_ridden_through() -> None:
    failures = [3]

    def step(_: AsyncClientSession | None) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise labelled(AutoReconnect("election"), "TransientTransactionError")
        return counter(None)

    store, fake = fake_store(step, timeout=5)
    stored = await store.insert(ASSET)
    assert stored.revision == 7 and fake.calls == 3 + 2
    await store.close()


# --- item 1: a commit whose outcome is unknown --------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        lambda: NetworkTimeout("timed out during commitTransaction"),
        lambda: AutoReconnect("connection reset"),
        lambda: OperationFailure("waiting for replication timed out", 64, {"ok": 0, "code": 64}),
        lambda: labelled(
            OperationFailure("primary stepped down", 189, {"ok": 0, "code": 189}),
            "RetryableWriteError",
        ),
    ],
    ids=["network-timeout", "connection-reset", "write-concern-timeout", "stepdown"],
)
async def test_an_ambiguous_commit_is_outcome_unknown(
    monkeypatch: pytest.MonkeyPatch, failure: Callable[[], BaseException]
) -> None:
    attempts = commit_fails_with(monkeypatch, failure)
    store, _ = fake_store(counter, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(OutcomeUnknown) as err:
        await store.insert(ASSET)
    assert time.monotonic() - start < 2.5
    assert len(attempts) >= 2  # pymongo retried the commit itself first
    assert "may or may not have applied" in err.value.message
    await store.close()


async def test_a_commit_the_server_refused_is_not_ambiguous(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commit_fails_with(
        monkeypatch,
        lambda: labelled(
            OperationFailure("no such transaction", 251, {"ok": 0, "code": 251}),
            "TransientTransactionError",
        ),
    )
    store, _ = fake_store(counter, timeout=0.5)
    with pytest.raises(Unavailable) as err:
        await store.delete(ASSET.id)
    assert not isinstance(err.value, OutcomeUnknown)
    await store.close()


async def test_cancelled_while_committing_is_outcome_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    committing = asyncio.Event()

    async def finish(self: AsyncClientSession, command_name: str) -> dict[str, Any]:
        if command_name == "commitTransaction":
            committing.set()
            await asyncio.sleep(30)
        return {"ok": 1}

    monkeypatch.setattr(AsyncClientSession, "_finish_transaction_with_retry", finish)
    store, _ = fake_store(counter, timeout=5)
    task = asyncio.create_task(store.insert(ASSET))
    await asyncio.wait_for(committing.wait(), 2)
    task.cancel()
    with pytest.raises(OutcomeUnknown):
        await task
    await store.close()


async def test_cancelled_while_queued_stays_a_cancellation_and_is_never_sent() -> None:
    """The group writer runs one transaction at a time: a write queued behind it and
    cancelled is removed, never sent; one whose transaction is under way cannot be
    called back, so its caller hears OutcomeUnknown (and re-reads)."""
    started, release = asyncio.Event(), asyncio.Event()

    async def step(_: AsyncClientSession | None) -> Any:
        started.set()
        await release.wait()
        return counter(None)

    store, fake = fake_store(step, timeout=5)
    first = asyncio.create_task(store.insert(ASSET))
    await asyncio.wait_for(started.wait(), 2)
    calls_so_far = fake.calls
    queued = asyncio.create_task(store.insert(ASSET))
    await asyncio.sleep(0.05)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    first.cancel()
    with pytest.raises(OutcomeUnknown):
        await first
    release.set()
    await asyncio.sleep(0.1)
    # The first transaction went on (claim + insert); the cancelled one sent nothing.
    assert fake.calls == calls_so_far + 1
    await store.close()


async def test_standalone_writes_are_ambiguous_once_sent() -> None:
    def sent(_: AsyncClientSession | None) -> Any:
        raise NetworkTimeout("timed out")

    store, _ = fake_store(sent)
    store._transactions = False
    with pytest.raises(OutcomeUnknown):
        await store.insert(ASSET)

    def unsent(_: AsyncClientSession | None) -> Any:
        raise ServerSelectionTimeoutError("no servers")

    store.__dict__["_assets"] = store.__dict__["_counters"] = FakeCollection(unsent)
    with pytest.raises(Unavailable) as err:
        await store.insert(ASSET)
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


async def test_transactions_run_on_the_primary_whatever_the_url() -> None:
    seen: list[Any] = []

    def step(session: AsyncClientSession | None) -> Any:
        assert session is not None
        seen.append(session._transaction.opts.read_preference)
        return counter(session)

    store, _ = fake_store(step, url="mongodb://127.0.0.1:1/db?readPreference=nearest")
    await store.insert(ASSET)
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
    exc: PyMongoError, expected: type[AssetError], words: str
) -> None:
    mapped = _unavailable(exc)
    assert type(mapped) is expected and words in mapped.message
    assert type(_write_error(exc, transaction=True)) is expected

    def step(_: AsyncClientSession | None) -> Any:
        raise exc

    store, _ = fake_store(step, timeout=0.3)
    with pytest.raises(AssetError) as err:
        await store.insert(ASSET)
    assert type(err.value) is expected
    await store.close()


async def test_write_conflicts_until_the_cap_are_a_conflict() -> None:
    def step(_: AsyncClientSession | None) -> Any:
        raise labelled(failure(112, "WriteConflict"), "TransientTransactionError")

    store, fake = fake_store(step, timeout=0.4)
    with pytest.raises(Conflict) as err:
        await store.transition(ASSET.id, Status.PENDING, Failure("x"), NOW)
    assert fake.calls > 1 and "kept conflicting" in err.value.message
    await store.close()
