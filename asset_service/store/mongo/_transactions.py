"""The group writer's transactions: retries, outcomes that stay unknown, and settling them.

Three rules from MongoDB's documentation decide what happens after a failure:

- A statement error, a WriteConflict or a NoSuchTransaction means the transaction is
  aborted on the server (nothing of it applies): it is retried whole while the write's
  deadline allows (https://www.mongodb.com/docs/manual/core/transactions-in-applications/,
  "TransientTransactionError").
- commitTransaction may fail after it applied: with UnknownTransactionCommitResult, and
  also on a writeConcernError such as 11601 (the majority wait interrupted, e.g. by a
  peer's killSessions), which pymongo raises WITHOUT that label. So every commit error
  that does not say "aborted" (TransientTransactionError alone) is an unknown outcome.
- A session whose transaction may still be open on the server (a network error, an
  unknown commit) is "doubtful": it is never used again nor handed back to pymongo's
  session pool (whose next start_session would return the same lsid), and it is ended
  with killSessions, which aborts its transaction if it has not committed. Once that kill
  has returned, the outcome can no longer change; `settled()` then reads at majority,
  after a majority write of its own, so that a commit applied only on a primary that
  then failed over is seen as rolled back, and one a majority holds is seen.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import pymongo
from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.operations import DeleteOne
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import ReadPreference
from pymongo.write_concern import WriteConcern

from asset_service.domain.errors import OutcomeUnknown, Unavailable
from asset_service.domain.models import Asset
from asset_service.store.mongo._documents import (
    WRITE_CONFLICT,
    Doc,
    DuplicateKey,
    _unavailable,
    _write_error,
    doc_to_asset,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# A transaction that lost the counter to a peer's tries again after a random pause of up
# to BACKOFF_FIRST * 2**(n-1) seconds, capped by about the time a transaction holds the
# counter (what this process's last ones took), within BACKOFF_CAP: a loser then tries
# again within about one peer's turn, not many (pymongo's with_transaction grows to 500
# ms). Measured with scripts/mongo_write_model.py (docs/mongodb.md): a 50 ms cap let the
# slowest of 8 processes get half the fastest's writes; about one turn, 0.8 and more.
BACKOFF_FIRST = 0.001
BACKOFF_CAP = 0.05
# The counter: it must exist from open() on (MongoStore.open lifts it to the highest
# stored revision); created on the fly it would start again at 1.
COUNTER_MISSING = (
    "the revision counter (counters/_id: 'revision') is missing from the database; "
    "restart the asset service (start-up recreates it above every stored revision) "
    "rather than let writes number from 1 again"
)


class _Ambiguous(Exception):
    def __init__(self, cause: PyMongoError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def backoff(attempt: int, turn: float = BACKOFF_CAP) -> float:
    """A random pause before try `attempt` + 1; `turn`: how long a transaction holds the
    counter, about."""
    cap = min(BACKOFF_CAP, max(BACKOFF_FIRST, turn))
    return random.uniform(0, min(cap, BACKOFF_FIRST * 2 ** (attempt - 1)))


def _definitely_aborted(exc: PyMongoError) -> bool:
    """The server says the transaction did not (and will not) commit."""
    return exc.has_error_label("TransientTransactionError") and not exc.has_error_label(
        "UnknownTransactionCommitResult"
    )


def _keeps_session(exc: BaseException) -> bool:
    """A failure after which the session is known to be clean: the server aborted the
    transaction itself (a write conflict, a write error) over a healthy connection."""
    if isinstance(exc, DuplicateKeyError) or not isinstance(exc, PyMongoError):
        return True
    return isinstance(exc, OperationFailure) and exc.code == WRITE_CONFLICT


class Transactional:
    """MongoStore's transaction machinery (a mixin: it uses the store's client,
    collections, leases and killSessions)."""

    _client: pymongo.AsyncMongoClient[Doc]
    _assets: Any
    _counters: Any
    _leases: Any
    _transactions: bool
    _session: AsyncClientSession | None
    _doubtful: list[Mapping[str, Any]]
    _ending: asyncio.Task[None] | None
    operation_timeout: float
    _turn: float = BACKOFF_CAP  # how long a transaction of ours takes, about

    async def _kill_sessions(self, lsids: list[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    async def _drain_writer(self) -> None:
        raise NotImplementedError

    # --- one transaction ----------------------------------------------------------------

    async def _transact(self, fn: Callable[[Any], Awaitable[T]], seconds: float) -> T:
        """`fn(session)` in one transaction, retried while it is definitely aborted and
        time is left; driver errors mapped to domain errors (OutcomeUnknown when the
        commit may have applied). Everything, retries included, ends within `seconds`."""
        if not self._transactions:
            try:
                with pymongo.timeout(seconds):
                    return await fn(None)
            except DuplicateKeyError as exc:
                raise DuplicateKey(f"asset already exists: {exc}") from exc
            except PyMongoError as exc:
                raise _write_error(exc, transaction=False) from exc
        started = time.monotonic()
        attempt = 0
        conflict: PyMongoError | None = None
        try:
            with pymongo.timeout(seconds):
                while True:
                    attempt += 1
                    session = await self._writer_session()
                    began = asyncio.get_running_loop().time()
                    try:
                        result = await self._attempt(session, fn)
                    except PyMongoError as exc:
                        if isinstance(exc, OperationFailure) and exc.code == WRITE_CONFLICT:
                            conflict = exc
                        if not _definitely_aborted(exc):
                            raise
                        pause = backoff(attempt, self._turn)
                        if time.monotonic() + pause - started >= seconds:
                            raise
                        await asyncio.sleep(pause)
                    else:
                        # A moving average of how long a transaction holds the counter.
                        took = asyncio.get_running_loop().time() - began
                        self._turn += (took - self._turn) / 8
                        return result
        except _Ambiguous as exc:
            raise OutcomeUnknown(
                f"MongoDB did not confirm the commit, which may or may not have applied: "
                f"{exc.cause}"
            ) from exc.cause
        except DuplicateKeyError as exc:
            raise DuplicateKey(f"asset already exists: {exc}") from exc
        except PyMongoError as exc:
            # Not from a commit (those are _Ambiguous or definitely aborted): nothing applied.
            # Time that ran out while the counter was contended is the contention's doing.
            cause = conflict if conflict is not None and exc.timeout else exc
            raise _unavailable(cause) from exc

    async def _attempt(self, session: AsyncClientSession, fn: Callable[[Any], Awaitable[T]]) -> T:
        await session.start_transaction(
            read_concern=ReadConcern("snapshot"),
            write_concern=WriteConcern("majority"),
            read_preference=ReadPreference.PRIMARY,
        )
        try:
            result = await fn(session)
        except BaseException as exc:
            # STARTING: no statement was sent, so there is no transaction on the server.
            sent = not session._starting_transaction
            if session.in_transaction:
                # pymongo ignores abortTransaction's own errors (the spec says to): if it
                # may not have reached the server, the session is doubtful.
                await session.abort_transaction()
            if sent and (not _keeps_session(exc) or session._server_session.dirty):
                self._doubt(session)
            raise
        tries = 0
        while True:
            tries += 1
            try:
                await session.commit_transaction()
                return result
            except PyMongoError as exc:
                if _definitely_aborted(exc):
                    if not _keeps_session(exc):
                        self._doubt(session)  # e.g. NoSuchTransaction: a peer killed it?
                    raise
                retry = exc.has_error_label("UnknownTransactionCommitResult") and not (
                    isinstance(exc, OperationFailure) and exc.code == 50
                )
                if retry and not _expired():
                    # commitTransaction is retryable: the server answers for the same
                    # transaction (a lost reply, a new primary that has it).
                    await asyncio.sleep(backoff(tries))
                    continue
                self._doubt(session)
                raise _Ambiguous(exc) from exc

    async def _writer_session(self) -> AsyncClientSession:
        """The group writer's session; a new one is leased before it is first used."""
        if self._session is None:
            session = self._client.start_session(causal_consistency=False)
            if self._leases is not None:
                await self._leases.register(session.session_id)
            self._session = session
        return self._session

    def _doubt(self, session: AsyncClientSession) -> None:
        """Never use `session` again; end it on the server (killSessions) soon."""
        if session is self._session:
            self._session = None
        lsid = session.session_id
        if lsid in self._doubtful:
            return
        # Out of pymongo's pool (the session object is dropped, never ended: ending it
        # would hand its server session back): another start_session must not get this
        # lsid back, or the kill meant for this one would end that one.
        session._server_session.mark_dirty()
        self._doubtful.append(lsid)
        if self._ending is None or self._ending.done():
            # A context of its own: not the failed transaction's (its pymongo.timeout).
            self._ending = asyncio.create_task(
                self._end_doubtful_soon(), name="mongo-end-sessions", context=contextvars.Context()
            )

    async def _end_doubtful(self) -> None:
        """killSessions for every doubtful session: after it, none can commit any more."""
        lsids = list(self._doubtful)
        if not lsids:
            return
        await self._kill_sessions(lsids)
        self._doubtful = [lsid for lsid in self._doubtful if lsid not in lsids]
        log.info("ended %d MongoDB session(s) whose last transaction had no clear end", len(lsids))

    async def _end_doubtful_soon(self) -> None:
        pause = 0.05
        while self._doubtful:
            try:
                with pymongo.timeout(self.operation_timeout):
                    await self._end_doubtful()
            except PyMongoError as exc:
                log.warning("could not end doubtful MongoDB sessions yet: %s", exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    # --- settling unknown outcomes ------------------------------------------------------

    async def settled(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        """The records as they will stay, by a majority read made after every write this
        process sent has a definite outcome: the batch under way ends, doubtful sessions
        are killed, then a majority write of our own (a causally consistent session), and
        the read at majority after it. Unavailable when that cannot be done now."""
        ids = list(dict.fromkeys(asset_ids))
        await self._drain_writer()
        if not self._transactions:
            return await self.get_many(ids)
        found: dict[str, Asset] = {}
        try:
            with pymongo.timeout(self.operation_timeout):
                await self._end_doubtful()
                async with self._client.start_session(causal_consistency=True) as session:
                    await self._counters.find_one_and_update(
                        {"_id": "settled"},
                        [{"$set": {"at": "$$NOW"}}],
                        upsert=True,
                        return_document=ReturnDocument.AFTER,
                        session=session,
                    )
                    majority = self._assets.with_options(read_concern=ReadConcern("majority"))
                    for start in range(0, len(ids), 1000):
                        part = ids[start : start + 1000]
                        cursor = majority.find({"_id": {"$in": part}}, session=session)
                        async for doc in cursor:
                            found[str(doc["_id"])] = doc_to_asset(doc)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return found

    async def get_many(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        raise NotImplementedError

    # --- the statements of a batch (_writer.Statements) -----------------------------------

    async def claim(self, session: Any, count: int) -> int:
        """The first of `count` fresh revisions: ONE $inc of the counter, in the batch's
        transaction (so they are handed out in commit order). Never creates it."""
        doc = await self._counters.find_one_and_update(
            {"_id": "revision"},
            {"$inc": {"value": count}},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if doc is None:
            raise Unavailable(COUNTER_MISSING)
        return int(doc["value"]) - count + 1

    async def bulk(self, session: Any, requests: list[Any]) -> None:
        await self._assets.bulk_write(requests, ordered=True, session=session)

    async def read_back(self, session: Any, ids: list[str]) -> dict[str, Doc]:
        return {
            str(doc["_id"]): doc
            async for doc in self._assets.find({"_id": {"$in": ids}}, session=session)
        }

    async def before(self, session: Any, writes: list[Any], revisions: list[int]) -> None:
        """Nothing yet: every write is one statement on `assets`."""

    async def remove_stamped(self, session: Any, gone: list[Doc]) -> None:
        await self._assets.bulk_write(
            [DeleteOne({"_id": doc["_id"], "revision": doc["revision"]}) for doc in gone],
            ordered=True,
            session=session,
        )


def _expired() -> bool:
    remaining = pymongo._csot.remaining()
    return remaining is not None and remaining <= 0
