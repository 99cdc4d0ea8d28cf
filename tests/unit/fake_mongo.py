"""A small MongoDB for tests at the driver boundary, written from MongoDB's documentation.

It is not the code's mirror: filters, update pipelines and `$expr` are evaluated by the
documented rules (tests/unit/mongo_fake/_evaluate.py, which the replica-set fake uses too),
so a test can disagree with the code (a `$$NOW` misused, a `$gt` that should be `$lte`);
`$$NOW` is the SERVER's clock (`Server.now`), never the caller's. What else it follows:

- Upserts: "If no document matches the filter, the update inserts one built from the
  filter's equality conditions"; a second document with the same `_id` is a duplicate key
  error E11000 ("Upsert with Duplicate Values").
- Transactions ("Transactions and Operations", "Production Considerations: In-progress
  Transactions and Write Conflicts"): a transaction reads its own writes and, outside them,
  the committed state; if it writes a document another in-progress transaction has
  written, it fails with WriteConflict (112) labelled TransientTransactionError (and the
  driver's with_transaction retries it); a write outside any transaction to a document an
  in-progress transaction has written waits until that transaction ends. Any error of a
  statement aborts the transaction ("Transactions: ... the transaction aborts").
- Write concern: a write acknowledged "majority" is applied on the primary at once (other
  reads there see it) but acknowledged only after `Server.majority_lag` seconds.

Statements count round trips (`Server.statements`), per collection, for the numbers in
docs/mongodb.md. `Server.rtt` delays each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.client_session_shared import _TxnState
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from tests.unit.mongo_fake._collection import sorted_docs
from tests.unit.mongo_fake._evaluate import (
    MISSING,
    apply_update,
    matches,
    project,
    unset_path,
)
from tests.unit.mongo_fake._server import overlay

Doc = dict[str, Any]
T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def _project(doc: Doc | None, projection: Mapping[str, Any] | None) -> Doc | None:
    return None if doc is None else project(doc, projection)


# --- the server ---------------------------------------------------------------------------


class Server:
    """The documents of one replica set's primary, shared by every fake process."""

    def __init__(self) -> None:
        # The revision counter exists, as open() leaves it (writes never create it).
        self.data: dict[str, dict[Any, Doc]] = {
            "counters": {"revision": {"_id": "revision", "value": 0}}
        }
        self.started = time.monotonic()
        self.offset = timedelta(0)  # moves $$NOW (a failover to a node with another clock)
        self.frozen: datetime | None = None
        # The transaction (lsid) that wrote each (collection, _id) and has not ended.
        self.holders: dict[tuple[str, Any], bytes] = {}
        self.pending: dict[bytes, dict[tuple[str, Any], Doc | None]] = {}
        self._ended = asyncio.Event()
        # Each transaction's writes in statement order, and the committed ones: the oplog
        # change streams read (one entry per write: collection, before, after).
        self.journal: dict[bytes, list[tuple[str, Any, Doc | None, Doc | None]]] = {}
        self.oplog: list[tuple[str, Any, Doc | None, Doc | None]] = []
        # Collections with changeStreamPreAndPostImages on: their images are kept.
        self.images: set[str] = set()
        self.image_reads = {"pre": 0, "post": 0, "lookup": 0}
        self._logged = asyncio.Event()
        self.statements: dict[str, int] = {}
        self.transactions = 0
        self.rtt = 0.0
        self.majority_lag = 0.0
        self.lock = threading.Lock()  # a WriterLeases heartbeat thread writes too

    @property
    def now(self) -> datetime:
        """$$NOW: the server's clock (whole milliseconds), whatever the callers' say."""
        moment = (
            self.frozen
            if self.frozen is not None
            else T0 + timedelta(seconds=time.monotonic() - self.started)
        )
        moment += self.offset
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    def collection(self, name: str) -> Collection:
        return Collection(self, name)

    def view(self, name: str, lsid: bytes | None) -> dict[Any, Doc]:
        """What a statement sees: the committed documents and its transaction's writes."""
        seen = dict(self.data.get(name, {}))
        if lsid:
            overlay(seen, name, self.pending.get(lsid, {}))
        return seen

    async def write(self, name: str, key: Any, doc: Doc | None, lsid: bytes | None) -> None:
        """Put (or with None remove) one document, by the transaction rules."""
        before = self.view(name, lsid).get(key)
        holder = self.holders.get((name, key))
        if lsid is not None:
            if holder is not None and holder != lsid:
                exc = OperationFailure(
                    "WriteConflict error: this operation conflicted with another operation",
                    112,
                    {"ok": 0, "code": 112, "codeName": "WriteConflict"},
                )
                exc._add_error_label("TransientTransactionError")
                raise exc
            self.holders[(name, key)] = lsid
            self.pending.setdefault(lsid, {})[(name, key)] = doc
            self.journal.setdefault(lsid, []).append((name, key, before, doc))
            return
        while holder is not None:  # outside a transaction: wait for the holder to end
            ended = self._ended
            await ended.wait()
            holder = self.holders.get((name, key))
        before = self.data.get(name, {}).get(key)
        self._put(name, key, doc)
        self._log([(name, key, before, doc)])

    def _log(self, entries: list[tuple[str, Any, Doc | None, Doc | None]]) -> None:
        self.oplog += [copy.deepcopy(e) for e in entries]
        self._logged.set()
        self._logged = asyncio.Event()

    def _put(self, name: str, key: Any, doc: Doc | None) -> None:
        table = self.data.setdefault(name, {})
        if doc is None:
            table.pop(key, None)
        else:
            table[key] = doc

    def end(self, lsid: bytes, commit: bool) -> None:
        writes = self.pending.pop(lsid, {})
        journal = self.journal.pop(lsid, [])
        if commit:
            self.transactions += 1
            for (name, key), doc in writes.items():
                self._put(name, key, doc)
            self._log(journal)
        for slot in [k for k, v in self.holders.items() if v == lsid]:
            del self.holders[slot]
        self._ended.set()
        self._ended = asyncio.Event()


def install(server: Server, monkeypatch: Any) -> None:
    """commitTransaction/abortTransaction of every session reach `server`."""

    async def finish(self: AsyncClientSession, command_name: str) -> dict[str, Any]:
        await asyncio.sleep(server.rtt)
        server.end(bytes(self.session_id["id"]), command_name == "commitTransaction")
        return {"ok": 1}

    monkeypatch.setattr(AsyncClientSession, "_finish_transaction_with_retry", finish)


class Cursor:
    """A find cursor: sort, limit, max_time_ms; async iteration, to_list, close."""

    def __init__(self, docs: list[Doc]) -> None:
        self._docs = docs
        self._limit = 0

    def sort(self, key: Any, direction: int = 1) -> Cursor:
        self._docs = sorted_docs(self._docs, key if isinstance(key, list) else [(key, direction)])
        return self

    def limit(self, n: int) -> Cursor:
        self._limit = n
        return self

    def max_time_ms(self, ms: int) -> Cursor:
        return self

    def _all(self) -> list[Doc]:
        return self._docs[: self._limit] if self._limit else list(self._docs)

    def __aiter__(self) -> AsyncIterator[Doc]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Doc]:
        for doc in self._all():
            yield doc

    async def to_list(self, length: int | None = None) -> list[Doc]:
        return self._all()

    async def close(self) -> None:
        return None


class Collection:
    """The slice of pymongo's AsyncCollection the stores use, on `Server`."""

    def __init__(self, server: Server, name: str, majority: bool = True) -> None:
        self.server = server
        self.name = name
        self.majority = majority

    async def _statement(self, session: AsyncClientSession | None) -> bytes | None:
        server = self.server
        server.statements[self.name] = server.statements.get(self.name, 0) + 1
        await asyncio.sleep(server.rtt)
        if session is None or not session.in_transaction:
            return None
        session._transaction.state = _TxnState.IN_PROGRESS
        return bytes(session.session_id["id"])

    async def _acknowledged(self, lsid: bytes | None) -> None:
        if lsid is None and self.majority and self.server.majority_lag:
            await asyncio.sleep(self.server.majority_lag)

    def _docs(self, lsid: bytes | None) -> list[Doc]:
        return list(self.server.view(self.name, lsid).values())

    def _first(self, where: Mapping[str, Any], lsid: bytes | None, sort: Any = None) -> Doc | None:
        found = [d for d in self._docs(lsid) if matches(d, where, self.server.now)]
        if sort:
            found = Cursor(found).sort(sort)._all()
        return found[0] if found else None

    async def find_one(
        self,
        where: Mapping[str, Any] | None = None,
        projection: Mapping[str, Any] | None = None,
        *,
        session: AsyncClientSession | None = None,
        sort: Any = None,
        **_: Any,
    ) -> Doc | None:
        lsid = await self._statement(session)
        return _project(self._first(where or {}, lsid, sort), projection)

    def find(
        self,
        where: Mapping[str, Any] | None = None,
        projection: Mapping[str, Any] | None = None,
        *,
        session: AsyncClientSession | None = None,
        **_: Any,
    ) -> Cursor:
        self.server.statements[self.name] = self.server.statements.get(self.name, 0) + 1
        lsid = (
            bytes(session.session_id["id"])
            if session is not None and session.in_transaction
            else None
        )
        now = self.server.now
        docs = [_project(d, projection) for d in self._docs(lsid) if matches(d, where or {}, now)]
        return Cursor([d for d in docs if d is not None])

    async def insert_one(self, doc: Doc, *, session: AsyncClientSession | None = None) -> None:
        lsid = await self._statement(session)
        await self._insert(copy.deepcopy(doc), lsid)
        await self._acknowledged(lsid)

    async def _insert(self, doc: Doc, lsid: bytes | None) -> None:
        if doc["_id"] in self.server.view(self.name, lsid):
            raise DuplicateKeyError(
                f"E11000 duplicate key error collection: {self.name} dup key: {doc['_id']!r}",
                11000,
            )
        # The sparse unique index key_slot (the store's one holder per get-or-create key).
        slot = doc.get("key_slot")
        if slot is not None and any(
            d.get("key_slot") == slot for d in self.server.view(self.name, lsid).values()
        ):
            raise DuplicateKeyError(
                f"E11000 duplicate key error collection: {self.name} index: key_slot "
                f"dup key: {slot!r}",
                11000,
            )
        await self.server.write(self.name, doc["_id"], doc, lsid)

    async def _update(
        self, where: Mapping[str, Any], update: Any, upsert: bool, lsid: bytes | None
    ) -> tuple[Doc | None, Doc | None]:
        """(before, after) of the one document updated (or upserted)."""
        before = self._first(where, lsid)
        now = self.server.now  # one $$NOW for the whole statement
        if before is None:
            if not upsert:
                return None, None
            seed = {
                k: v for k, v in where.items() if not k.startswith("$") and not isinstance(v, dict)
            }
            after = apply_update(seed, update, now, inserting=True)
            await self._insert(after, lsid)
            return None, after
        after = apply_update(before, update, now, inserting=False)
        await self.server.write(self.name, before["_id"], after, lsid)
        return before, after

    async def update_one(
        self,
        where: Mapping[str, Any],
        update: Any,
        upsert: bool = False,
        *,
        session: AsyncClientSession | None = None,
    ) -> Any:
        lsid = await self._statement(session)
        before, _ = await self._update(where, update, upsert, lsid)
        await self._acknowledged(lsid)
        return type("UpdateResult", (), {"matched_count": int(before is not None)})()

    async def find_one_and_update(
        self,
        where: Mapping[str, Any],
        update: Any,
        projection: Mapping[str, Any] | None = None,
        *,
        upsert: bool = False,
        return_document: bool = ReturnDocument.BEFORE,
        session: AsyncClientSession | None = None,
        **_: Any,
    ) -> Doc | None:
        lsid = await self._statement(session)
        before, after = await self._update(where, update, upsert, lsid)
        await self._acknowledged(lsid)
        return _project(after if return_document == ReturnDocument.AFTER else before, projection)

    async def find_one_and_delete(
        self, where: Mapping[str, Any], *, session: AsyncClientSession | None = None, **_: Any
    ) -> Doc | None:
        lsid = await self._statement(session)
        doc = self._first(where, lsid)
        if doc is not None:
            await self.server.write(self.name, doc["_id"], None, lsid)
        await self._acknowledged(lsid)
        return copy.deepcopy(doc)

    async def delete_one(
        self, where: Mapping[str, Any], *, session: AsyncClientSession | None = None
    ) -> None:
        await self.find_one_and_delete(where, session=session)

    async def delete_many(
        self, where: Mapping[str, Any], *, session: AsyncClientSession | None = None
    ) -> None:
        lsid = await self._statement(session)
        for doc in [d for d in self._docs(lsid) if matches(d, where, self.server.now)]:
            await self.server.write(self.name, doc["_id"], None, lsid)
        await self._acknowledged(lsid)

    async def update_many(
        self, where: Mapping[str, Any], update: Any, *, session: AsyncClientSession | None = None
    ) -> Any:
        lsid = await self._statement(session)
        now = self.server.now
        found = [d for d in self._docs(lsid) if matches(d, where, now)]
        for doc in found:
            await self.server.write(
                self.name, doc["_id"], apply_update(doc, update, now, inserting=False), lsid
            )
        await self._acknowledged(lsid)
        return type("UpdateResult", (), {"matched_count": len(found)})()

    async def bulk_write(
        self,
        requests: list[Any],
        ordered: bool = True,
        *,
        session: AsyncClientSession | None = None,
    ) -> None:
        """Insert, update, replace and delete requests, in order, as one command (the
        group writer sends one kind per call)."""
        lsid = await self._statement(session)
        for index, request in enumerate(requests):
            kind = type(request).__name__
            if kind == "InsertOne":
                try:
                    await self._insert(copy.deepcopy(request._doc), lsid)
                except DuplicateKeyError as exc:
                    error = {"index": index, "code": 11000, "errmsg": str(exc)}
                    raise BulkWriteError({"writeErrors": [error]}) from None
                continue
            if kind == "UpdateOne":
                await self._update(request._filter, request._doc, request._upsert, lsid)
                continue
            if kind == "DeleteOne":
                doc = self._first(request._filter, lsid)
                if doc is not None:
                    await self.server.write(self.name, doc["_id"], None, lsid)
                continue
            if kind != "ReplaceOne":
                raise NotImplementedError(f"fake MongoDB: bulk {kind}")
            where, doc, upsert = request._filter, request._doc, request._upsert
            found = self._first(where, lsid)
            if found is None and not upsert:
                continue
            key = found["_id"] if found is not None else doc.get("_id", where.get("_id"))
            await self.server.write(self.name, key, {"_id": key, **copy.deepcopy(doc)}, lsid)
        await self._acknowledged(lsid)

    async def watch(
        self,
        pipeline: list[Doc],
        *,
        full_document: str | None = None,
        full_document_before_change: str | None = None,
        resume_after: Any = None,
    ) -> ChangeStream:
        return ChangeStream(
            self.server, self.name, pipeline, full_document, full_document_before_change
        )

    async def list_indexes(self) -> Any:
        return _Listing([{"v": 2, "key": {"_id": 1}, "name": "_id_"}])

    async def create_indexes(self, models: Iterable[Any]) -> list[str]:
        return [m.document["name"] for m in models]


class _Listing:
    def __init__(self, docs: list[Doc]) -> None:
        self._docs = docs

    async def __aenter__(self) -> _Listing:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> AsyncIterator[Doc]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Doc]:
        for doc in self._docs:
            yield doc


class ChangeStream:
    """A change stream on one collection, from now ("Change Events", "Change Streams with
    Document Pre- and Post-Images"):

    - insert events carry `fullDocument`; update events `updateDescription` and, with
      fullDocument "updateLookup", the document as it is when the event is READ (None if
      gone), with "required"/"whenAvailable" the post-image kept at the change; delete
      events `documentKey` only, plus `fullDocumentBeforeChange` (the pre-image) when
      asked for. Images need changeStreamPreAndPostImages on the collection ("required"
      without them fails the stream).
    - the pipeline's stages ($match, $unset, $set, $project) run on each event.
    Each image read is counted in `Server.image_reads`.
    """

    def __init__(
        self,
        server: Server,
        name: str,
        pipeline: list[Doc],
        full_document: str | None,
        before: str | None,
    ) -> None:
        self.server = server
        self.name = name
        self.pipeline = pipeline
        self.full_document = full_document
        self.before = before
        self._at = len(server.oplog)
        self.resume_token: Doc | None = {"_data": self._at}
        self.alive = True
        for option in (full_document, before):
            if option == "required" and name not in server.images:
                raise OperationFailure(
                    "changeStreamPreAndPostImages is not enabled for this collection", 280
                )

    async def try_next(self) -> Doc | None:
        """One getMore: waits up to maxAwaitTimeMS (here 50 ms) for an event."""
        if self._at >= len(self.server.oplog):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server._logged.wait(), 0.05)
        while True:
            if self._at >= len(self.server.oplog):
                self.resume_token = {"_data": self._at}
                return None
            name, key, before, after = self.server.oplog[self._at]
            self._at += 1
            self.resume_token = {"_data": self._at}
            if name != self.name:
                continue
            kept = _stages(self._event(key, before, after), self.pipeline, self.server.now)
            if kept is not None:
                return kept

    async def next_event(self, timeout: float = 5.0) -> Doc:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.try_next()
                if event is not None:
                    return event
                await self.server._logged.wait()

    def _event(self, key: Any, before: Doc | None, after: Doc | None) -> Doc:
        server = self.server
        event: Doc = {"_id": {"_data": self._at}, "documentKey": {"_id": key}}
        if before is None:
            event |= {"operationType": "insert", "fullDocument": copy.deepcopy(after)}
            return event
        if after is None:
            event["operationType"] = "delete"
        else:
            changed = {k: v for k, v in after.items() if before.get(k, MISSING) != v}
            removed = [k for k in before if k not in after]
            event |= {
                "operationType": "update",
                "updateDescription": {
                    "updatedFields": copy.deepcopy(changed),
                    "removedFields": removed,
                },
            }
            if self.full_document == "updateLookup":
                server.image_reads["lookup"] += 1
                event["fullDocument"] = copy.deepcopy(server.data.get(self.name, {}).get(key))
            elif self.full_document in ("required", "whenAvailable"):
                server.image_reads["post"] += 1
                event["fullDocument"] = copy.deepcopy(after)
        if self.before in ("required", "whenAvailable") and self.name in server.images:
            server.image_reads["pre"] += 1
            event["fullDocumentBeforeChange"] = copy.deepcopy(before)
        return event

    async def close(self) -> None:
        self.alive = False


def _stages(event: Doc, pipeline: list[Doc], now: datetime) -> Doc | None:
    for stage in pipeline:
        (name, spec), *rest = stage.items()
        if rest:
            raise NotImplementedError(f"fake MongoDB: stage {stage}")
        if name == "$match":
            if not matches(event, spec, now):
                return None
        elif name == "$unset":
            for path in [spec] if isinstance(spec, str) else spec:
                unset_path(event, path)
        elif name == "$project" and all(not v for v in spec.values()):
            for path in spec:
                unset_path(event, path)
        else:
            raise NotImplementedError(f"fake MongoDB: change stream stage {name}")
    return event


class NullUsage:
    """A `usage` collection that takes every accounting statement and keeps nothing: for
    tests of other statements, whose fakes model only `assets` and `counters`."""

    async def bulk_write(self, *args: Any, **kw: Any) -> None:
        return None

    async def delete_many(self, *args: Any, **kw: Any) -> None:
        return None

    async def find_one(self, *args: Any, **kw: Any) -> None:
        return None
