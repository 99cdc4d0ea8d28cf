"""One fake replica set: versioned documents, transactions and majority, by the manual's rules.

What a server would decide is decided here, from MongoDB's documented rules (each cited
where it is applied), not from what the store under test expects:

- A transaction reads one snapshot (its first statement's) plus its own writes, and
  writing a document that another open transaction wrote, or that changed after its
  snapshot, fails at once with WriteConflict (112) labelled TransientTransactionError,
  and the transaction is aborted:
  https://www.mongodb.com/docs/manual/core/transactions-production-consideration/#in-progress-transactions-and-write-conflicts
- A write outside a transaction to a document an open transaction wrote waits until
  that transaction ends (same page).
- ANY statement error aborts the transaction on the server: a duplicate key is reported
  without TransientTransactionError, and the next statement then fails with
  NoSuchTransaction (251) labelled TransientTransactionError (the transactions spec's
  test "abort ignores TransactionAborted", in
  https://github.com/mongodb/specifications/blob/master/source/transactions/tests/
  unified/abort.yml ; https://jira.mongodb.org/browse/SERVER-34059). Writes in a
  transaction stop at the first error even when unordered
  (https://jira.mongodb.org/browse/SERVER-94584).
- commitTransaction applies the writes at once (one optime); with w:"majority" it then
  waits for the majority commit point. An interrupted wait (killSessions: code 11601;
  maxTimeMS: 50; a stepdown: 11602) is a writeConcernError: the commit stays applied
  locally (https://www.mongodb.com/docs/manual/reference/write-concern/ ,
  "Write concern error": the write may have succeeded).
- Reads at "majority" see the majority-committed state; with afterClusterTime they
  wait until it reaches that time
  (https://www.mongodb.com/docs/manual/reference/read-concern-majority/ ,
  https://www.mongodb.com/docs/manual/core/causal-consistency-read-write-concerns/).
- killSessions ends the caller's own sessions only: it concatenates each UUID with the
  hash of the AUTHENTICATED user, so another user's sessions are not touched
  (https://www.mongodb.com/docs/manual/reference/command/killSessions/), and it aborts
  their open transactions.
- A failover rolls back what was not majority-committed and aborts open transactions
  (https://www.mongodb.com/docs/manual/core/replica-set-rollbacks/ ,
  https://www.mongodb.com/docs/manual/core/transactions-production-consideration/#failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo import _csot
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    WriteConcernError,
    WriteError,
)

from tests.unit.mongo_fake._evaluate import clone

TRANSIENT = "TransientTransactionError"
# Waits with no client-side deadline still end, so that no test can hang.
DEFAULT_WAIT_SECONDS = 5.0


def failure(message: str, code: int, *labels: str) -> OperationFailure:
    """An error as pymongo builds it from a server reply (labels from `errorLabels`)."""
    reply: dict[str, Any] = {"ok": 0, "errmsg": message, "code": code}
    if labels:
        reply["errorLabels"] = list(labels)
    return OperationFailure(message, code, reply)


def write_conflict() -> OperationFailure:
    return failure("WriteConflict error: this operation conflicted with another", 112, TRANSIENT)


def no_such_transaction(number: int) -> OperationFailure:
    return failure(f"Transaction {number} has been aborted.", 251, TRANSIENT)


class StatementError(Exception):
    """A write error of one statement (duplicate key, validation): `code`, `message`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_driver_error(self) -> OperationFailure:
        details = {"code": self.code, "errmsg": self.message, "index": 0}
        if self.code == 11000:
            return DuplicateKeyError(self.message, self.code, details)
        return WriteError(self.message, self.code, details)


@dataclass
class Txn:
    lsid: bytes
    number: int
    snapshot: int
    writes: dict[tuple[str, Any], dict[str, Any] | None] = field(default_factory=dict)
    aborted: bool = False
    committed_at: int | None = None


@dataclass
class Command:
    lsid: bytes | None
    name: str
    collection: str
    in_transaction: bool
    at: float


def overlay(
    seen: dict[Any, dict[str, Any]],
    coll: str,
    writes: Mapping[tuple[str, Any], dict[str, Any] | None],
    keys: list[Any] | None = None,
) -> None:
    """Put a transaction's own writes to `coll` (None: a delete) over what it read: a
    transaction reads its own writes (only those to these `_id`s, when given)."""
    for (c, key), doc in writes.items():
        if c != coll or (keys is not None and key not in keys):
            continue
        if doc is None:
            seen.pop(key, None)
        else:
            seen[key] = doc


def lsid_of(session: Any) -> bytes:
    return bytes(session.session_id["id"])


class Server:
    """The documents and transactions of one replica set, shared by every store of a test."""

    def __init__(self, *, rtt: float = 0.0) -> None:
        self.rtt = rtt
        self.optime = 0  # the last applied write (the primary's "local" state)
        self.commit_point = 0  # the majority commit point
        self.replicate = True  # False: the majority commit point stands still
        self.versions: dict[str, dict[Any, list[tuple[int, dict[str, Any] | None]]]] = {}
        self.txns: dict[bytes, Txn] = {}
        self.locks: dict[tuple[str, Any], bytes] = {}
        self.unique: dict[str, tuple[str, ...]] = {"assets": ("seq", "key_slot")}
        self.validators: dict[str, Callable[[Mapping[str, Any]], bool]] = {}
        self.users: dict[bytes, str] = {}  # who used each session first
        self.killed: list[bytes] = []
        self.commands: list[Command] = []
        self.record = True  # keep `commands` (the benchmark turns it off)
        self.conflicts = 0  # WriteConflicts raised
        self.clock = _dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=_dt.UTC)  # $$NOW
        self._interrupts: dict[bytes, int] = {}  # a wait to interrupt, with its code
        self._waiting: set[bytes] = set()  # sessions with an operation waiting
        self.hold_commits: asyncio.Event | None = None  # set: commits go on
        self.down = False  # every command fails with a network error
        self.faults: list[list[Any]] = []  # [command name, make error, times left]
        # Commits whose reply is lost and which reach the server this much later (None:
        # commits apply when sent). Only a transaction still open then commits.
        self.late_commits: float | None = None
        self._late: set[asyncio.Task[None]] = set()

    # --- time and round trips ----------------------------------------------------------

    def now(self) -> _dt.datetime:
        return self.clock

    async def round_trip(
        self, session: Any, name: str, collection: str = "", in_transaction: bool = False
    ) -> None:
        """One command to the primary and its reply: RTT, bounded by the client deadline."""
        lsid = lsid_of(session) if session is not None else None
        if in_transaction:
            session._transaction.set_in_progress()  # as pymongo does just before sending
        if lsid is not None:
            self.users.setdefault(lsid, getattr(session._client, "_fake_user", "app"))
        if self.record:
            self.commands.append(Command(lsid, name, collection, in_transaction, time.monotonic()))
        remaining = _csot.remaining()
        error: BaseException | None = None
        if self.down:
            error = NetworkTimeout(f"connection to the primary closed ({name})")
        for fault in self.faults:
            if fault[0] == name and fault[2] != 0:
                fault[2] -= 1
                error = fault[1]()
                break
        if error is not None:
            if session is not None and isinstance(error, ConnectionFailure):
                # What pymongo's error handler does with a network error in a session.
                if in_transaction:
                    error._add_error_label(TRANSIENT)
                session._server_session.mark_dirty()
            raise error
        if remaining is not None and remaining < self.rtt:
            await asyncio.sleep(max(remaining, 0))
            raise NetworkTimeout(f"timed out waiting for the reply to {name}")
        if self.rtt:
            await asyncio.sleep(self.rtt)

    async def wait_for(self, done: Callable[[], bool], lsid: bytes | None, what: str) -> None:
        """Wait until `done()`, an interruption of `lsid`'s operation, or the deadline."""
        remaining = _csot.remaining()
        end = time.monotonic() + (DEFAULT_WAIT_SECONDS if remaining is None else remaining)
        if lsid is not None:
            self._waiting.add(lsid)
        try:
            while not done():
                if lsid is not None and lsid in self._interrupts:
                    code = self._interrupts.pop(lsid)
                    raise _Interrupted(code, f"operation was interrupted while {what}")
                if time.monotonic() >= end:
                    raise _Interrupted(50, f"operation exceeded time limit while {what}")
                await asyncio.sleep(0.001)
        finally:
            if lsid is not None:
                self._waiting.discard(lsid)
                self._interrupts.pop(lsid, None)

    def fail(self, name: str, make: Callable[[], BaseException], times: int = 1) -> None:
        """The next `times` commands called `name` fail with `make()` before reaching the
        server (times=-1: every one). Names: findAndModify, insert, update, delete, find,
        commitTransaction, abortTransaction, killSessions."""
        self.faults.append([name, make, times])

    # --- documents -----------------------------------------------------------------------

    def version(self, coll: str, key: Any, at: int) -> tuple[int, dict[str, Any] | None]:
        for optime, doc in reversed(self.versions.get(coll, {}).get(key, [])):
            if optime <= at:
                return optime, doc
        return 0, None

    def view(
        self, coll: str, at: int, txn: Txn | None = None, keys: list[Any] | None = None
    ) -> dict[Any, dict[str, Any]]:
        """The collection as of optime `at`, with `txn`'s own writes over it (only the
        documents with these `_id`s, when the filter names them)."""
        seen = {}
        docs = self.versions.get(coll, {})
        for key in docs if keys is None else [k for k in keys if k in docs]:
            doc = self.version(coll, key, at)[1]
            if doc is not None:
                seen[key] = doc
        if txn is not None:
            overlay(seen, coll, txn.writes, keys)
        return seen

    def documents(self, coll: str, at: str = "local") -> dict[Any, dict[str, Any]]:
        """For assertions: the collection as the primary (or a majority) holds it."""
        return self.view(coll, self.optime if at == "local" else self.commit_point)

    def put(self, coll: str, doc: dict[str, Any]) -> None:
        """Set up a committed, replicated document (test fixtures)."""
        self.optime += 1
        self.versions.setdefault(coll, {}).setdefault(doc["_id"], []).append(
            (self.optime, clone(doc))
        )
        self.commit_point = self.optime

    def drop(self, coll: str, key: Any) -> None:
        """Remove a document behind the store's back (committed, replicated)."""
        self.optime += 1
        self.versions.setdefault(coll, {}).setdefault(key, []).append((self.optime, None))
        self.commit_point = self.optime

    def check(self, coll: str, doc: dict[str, Any], at: int, txn: Txn | None) -> None:
        """Unique indexes and validation, as one statement's write errors."""
        valid = self.validators.get(coll)
        if valid is not None and not valid(doc):
            raise StatementError(121, "Document failed validation")
        unique = self.unique.get(coll, ())
        seen = self.view(coll, at, txn) if unique else {}
        for name in unique:
            for other in seen.values():
                if other["_id"] != doc["_id"] and name in doc and other.get(name) == doc[name]:
                    raise StatementError(
                        11000, f"E11000 duplicate key error collection: {coll} index: {name}"
                    )

    # --- transactions --------------------------------------------------------------------

    def txn_for(self, session: Any) -> Txn:
        """The server's transaction for this statement; a new number starts a new one."""
        lsid = lsid_of(session)
        number = int(session._server_session.transaction_id)
        self.users.setdefault(lsid, getattr(session._client, "_fake_user", "app"))
        txn = self.txns.get(lsid)
        if txn is not None and txn.number == number:
            if txn.aborted:
                raise no_such_transaction(number)
            return txn
        if txn is not None:
            self.end(txn, commit=False)
        txn = self.txns[lsid] = Txn(lsid, number, snapshot=self.optime)
        return txn

    def abort(self, txn: Txn) -> None:
        """The server aborts: writes dropped, locks released; later statements: 251."""
        self.end(txn, commit=False)
        txn.aborted = True

    def end(self, txn: Txn, commit: bool) -> None:
        if commit and not txn.aborted:
            self.optime += 1
            for (coll, key), doc in txn.writes.items():
                self.versions.setdefault(coll, {}).setdefault(key, []).append(
                    (self.optime, clone(doc))
                )
            txn.committed_at = self.optime
        for target, holder in list(self.locks.items()):
            if holder == txn.lsid:
                del self.locks[target]
        if not commit:
            txn.writes = {}

    def write_in(self, txn: Txn, coll: str, key: Any, doc: dict[str, Any] | None) -> None:
        """A transaction's write of one document, under the write-conflict rule."""
        holder = self.locks.get((coll, key))
        changed_since = self.version(coll, key, self.optime)[0] > txn.snapshot
        if (holder is not None and holder != txn.lsid) or changed_since:
            self.conflicts += 1
            self.abort(txn)
            raise write_conflict()
        self.locks[(coll, key)] = txn.lsid
        txn.writes[(coll, key)] = clone(doc)

    async def write_alone(
        self, session: Any, coll: str, key: Any, doc: dict[str, Any] | None
    ) -> int:
        """A write outside any transaction: waits for a transaction holding the document."""
        lsid = lsid_of(session) if session is not None else None
        await self.wait_for(lambda: (coll, key) not in self.locks, lsid, "waiting for a lock")
        self.optime += 1
        self.versions.setdefault(coll, {}).setdefault(key, []).append((self.optime, clone(doc)))
        return self.optime

    async def majority(self, optime: int, lsid: bytes | None) -> None:
        """w:"majority": the commit point reaches `optime` (or the wait is interrupted)."""
        if self.replicate:
            await asyncio.sleep(self.rtt)  # one replication round trip
            self.commit_point = max(self.commit_point, optime)
            return
        await self.wait_for(lambda: self.commit_point >= optime, lsid, "waiting for replication")

    async def finish(self, session: Any, command_name: str) -> dict[str, Any]:
        """commitTransaction / abortTransaction of `session`'s transaction."""
        await self.round_trip(session, command_name, "admin")
        lsid = lsid_of(session)
        number = int(session._server_session.transaction_id)
        txn = self.txns.get(lsid)
        if command_name == "abortTransaction":
            if txn is not None and txn.number == number and txn.committed_at is None:
                self.abort(txn)
            return {"ok": 1}
        if txn is None or txn.number != number or txn.aborted:
            raise no_such_transaction(number)
        if self.late_commits is not None:
            task = asyncio.create_task(self._commit_later(txn, self.late_commits))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            raise NetworkTimeout("no reply to commitTransaction (it is still on its way)")
        hold = self.hold_commits
        if hold is not None:
            try:
                await self.wait_for(hold.is_set, lsid, "its commit is held")
            except _Interrupted:
                # The client stops waiting for the reply (its deadline): unknown to it.
                raise NetworkTimeout("no reply to commitTransaction in time") from None
            if txn.aborted:  # killed while it waited
                raise no_such_transaction(number)
        if txn.committed_at is None:
            self.end(txn, commit=True)
        assert txn.committed_at is not None
        try:
            await self.majority(txn.committed_at, lsid)
        except _Interrupted as exc:
            # ok: 1 with a writeConcernError: pymongo raises WriteConcernError (WTimeoutError
            # only for code 64), and commit_transaction decides which labels it gets.
            details = {"code": exc.code, "errmsg": str(exc)}
            raise WriteConcernError(str(exc), exc.code, details) from None
        return {"ok": 1}

    async def _commit_later(self, txn: Txn, delay: float) -> None:
        await asyncio.sleep(delay)
        if not txn.aborted and txn.committed_at is None:  # a kill or a stepdown ends it
            self.end(txn, commit=True)
            if self.replicate:
                self.commit_point = max(self.commit_point, self.optime)

    # --- sessions and replication -----------------------------------------------------------

    def kill_sessions(self, lsids: list[Mapping[str, Any]], user: str = "app") -> None:
        for lsid_doc in lsids:
            lsid = bytes(lsid_doc["id"])
            if self.users.get(lsid, user) != user:
                continue  # another user's session: the server matches nothing
            self.killed.append(lsid)
            txn = self.txns.get(lsid)
            if txn is not None and txn.committed_at is None:
                self.abort(txn)
            if lsid in self._waiting:
                self._interrupts[lsid] = 11601  # e.g. a commit waiting for a majority

    def fail_over(self) -> None:
        """The primary steps down: what a majority does not have is rolled back, open
        transactions are aborted, waits for replication are interrupted (11602)."""
        for docs in self.versions.values():
            for key in list(docs):
                docs[key] = [(t, d) for t, d in docs[key] if t <= self.commit_point]
        self.optime = self.commit_point
        for txn in self.txns.values():
            if txn.committed_at is None:
                self.abort(txn)
        for lsid in self._waiting:
            self._interrupts[lsid] = 11602


class _Interrupted(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    def as_timeout(self) -> OperationFailure:
        if self.code == 50:
            return ExecutionTimeout(str(self), 50, {"code": 50, "errmsg": str(self)})
        return failure(str(self), self.code)


@contextlib.contextmanager
def interrupted_as_errors() -> Iterator[None]:
    try:
        yield
    except _Interrupted as exc:
        raise exc.as_timeout() from None
