"""The slice of pymongo's AsyncCollection the store calls, served by the fake Server.

Each call is one command (one round trip; an ordered bulk_write is one command per run of
operations of one kind, as pymongo splits it:
https://pymongo.readthedocs.io/en/stable/examples/bulk.html#ordered-bulk-write-operations).
Filters, updates and pipelines are interpreted by _evaluate.py; what the server would
decide (snapshots, conflicts, aborts, majority) by _server.py.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from bson.timestamp import Timestamp
from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError
from pymongo.operations import (
    DeleteMany,
    DeleteOne,
    InsertOne,
    ReplaceOne,
    UpdateMany,
    UpdateOne,
)
from pymongo.read_concern import ReadConcern
from pymongo.results import BulkWriteResult, DeleteResult, InsertOneResult, UpdateResult

from tests.unit.mongo_fake._evaluate import (
    apply_update,
    clone,
    compare,
    get_path,
    matches,
    project,
    upsert_base,
)
from tests.unit.mongo_fake._server import (
    Server,
    StatementError,
    Txn,
    interrupted_as_errors,
    lsid_of,
)


def _in_transaction(session: Any) -> bool:
    return session is not None and bool(session.in_transaction)


class FakeCollection:
    def __init__(self, server: Server, name: str, read_concern: ReadConcern | None = None):
        self.server = server
        self.name = name
        self.read_concern = read_concern or ReadConcern()

    def with_options(self, read_concern: ReadConcern | None = None, **_: Any) -> FakeCollection:
        return FakeCollection(self.server, self.name, read_concern or self.read_concern)

    # --- reads ---------------------------------------------------------------------------

    async def _read_view(
        self, session: Any, keys: list[Any] | None = None
    ) -> tuple[dict[Any, dict[str, Any]], Txn | None]:
        """What a read sees: the transaction's snapshot, or the read concern's state."""
        server = self.server
        if _in_transaction(session):
            txn = server.txn_for(session)
            session._transaction.set_in_progress()
            return server.view(self.name, txn.snapshot, txn, keys), txn
        level = self.read_concern.level or "local"
        if session is not None and session.options.snapshot:
            at = getattr(session, "_fake_snapshot", None)
            if at is None:
                at = session._fake_snapshot = server.commit_point
            return server.view(self.name, at, None, keys), None
        if level == "majority":
            after = None
            if session is not None and session.options.causal_consistency:
                after = session.operation_time
            if after is not None:
                # afterClusterTime: wait until the majority commit point reaches it.
                lsid = lsid_of(session)
                with interrupted_as_errors():
                    await server.wait_for(
                        lambda: server.commit_point >= after.time, lsid, "reading at majority"
                    )
            at = server.commit_point
        else:
            at = server.optime
        if session is not None and session.options.causal_consistency:
            session.advance_operation_time(Timestamp(max(at, 1), 0))
        return server.view(self.name, at, None, keys), None

    async def find_one(
        self,
        flt: Mapping[str, Any] | None = None,
        projection: Mapping[str, Any] | None = None,
        *,
        session: Any = None,
        sort: Sequence[tuple[str, int]] | None = None,
        max_time_ms: int | None = None,
    ) -> dict[str, Any] | None:
        cursor = self.find(flt, projection, session=session)
        if sort:
            cursor.sort(list(sort))
        docs = await cursor.limit(1).to_list()
        return docs[0] if docs else None

    def find(
        self,
        flt: Mapping[str, Any] | None = None,
        projection: Mapping[str, Any] | None = None,
        *,
        session: Any = None,
    ) -> FakeCursor:
        return FakeCursor(self, dict(flt or {}), projection, session)

    # --- writes --------------------------------------------------------------------------

    async def _one(
        self, session: Any, op: str, target: Mapping[str, Any], change: Any = None, **kw: Any
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Apply one write statement: (document before, document after); None: none.
        A write error aborts the statement's transaction (the server's rule)."""
        txn = self.server.txn_for(session) if _in_transaction(session) else None
        if txn is not None:
            session._transaction.set_in_progress()
        try:
            return await self._apply(session, txn, op, target, change, **kw)
        except StatementError:
            if txn is not None:
                self.server.abort(txn)
            raise

    async def _apply(
        self,
        session: Any,
        txn: Txn | None,
        op: str,
        target: Mapping[str, Any],
        change: Any = None,
        **kw: Any,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        server = self.server
        if txn is None:
            # Outside a transaction: wait for any transaction holding the target, THEN
            # read it (the write applies to what that transaction committed).
            current = server.view(self.name, server.optime, None, _keys(target, op))
            keys = [k for k, d in current.items() if matches(d, target, server.now())]
            lsid = lsid_of(session) if session is not None else None

            def free() -> bool:
                return not any((self.name, k) in server.locks for k in keys)

            with interrupted_as_errors():
                await server.wait_for(free, lsid, "waiting for a transaction's lock")
        at = txn.snapshot if txn is not None else server.optime
        seen = server.view(self.name, at, txn, _keys(target, op))
        before: dict[str, Any] | None
        after: dict[str, Any] | None
        if op == "insert":
            before, after = None, clone(dict(target))
            if after["_id"] in seen:
                raise StatementError(11000, f"E11000 duplicate key error collection: {self.name}")
        else:
            found = [d for d in seen.values() if matches(d, target, server.now())]
            if kw.get("sort"):
                found = sorted_docs(found, kw["sort"])
            before = found[0] if found else None
            if op == "delete":
                after = None
            elif op == "replace" and (before is not None or kw.get("upsert")):
                # A replacement keeps the matched (or the filter's) _id:
                # https://www.mongodb.com/docs/manual/reference/method/db.collection.replaceOne/
                base = before if before is not None else upsert_base(target)
                after = {**clone(dict(change)), "_id": base["_id"]}
            elif before is not None:
                after = apply_update(before, change, server.now())
            elif kw.get("upsert"):
                after = apply_update(upsert_base(target), change, server.now(), inserting=True)
            else:
                after = None
        if after is not None:
            server.check(self.name, after, at, txn)
        key = (before or after or {}).get("_id")
        if before is None and after is None:
            return None, None
        if txn is not None:
            server.write_in(txn, self.name, key, after)
        else:
            optime = await server.write_alone(session, self.name, key, after)
            with interrupted_as_errors():
                await server.majority(optime, lsid_of(session) if session is not None else None)
            if session is not None and session.options.causal_consistency:
                session.advance_operation_time(Timestamp(optime, 0))
        return before, after

    async def _statement(self, session: Any, op: str, *args: Any, **kw: Any) -> Any:
        await self.server.round_trip(session, op, self.name, _in_transaction(session))
        try:
            return await self._one(session, op, *args, **kw)
        except StatementError as exc:
            raise exc.as_driver_error() from None

    async def insert_one(self, doc: Mapping[str, Any], *, session: Any = None) -> InsertOneResult:
        await self._statement(session, "insert", doc)
        return InsertOneResult(doc["_id"], True)

    async def update_one(
        self,
        flt: Mapping[str, Any],
        update: Any,
        upsert: bool = False,
        *,
        session: Any = None,
    ) -> UpdateResult:
        before, after = await self._statement(session, "update", flt, update, upsert=upsert)
        upserted = after["_id"] if before is None and after is not None else None
        n = 1 if after is not None else 0
        raw = {"n": n, "nModified": 1 if before is not None and before != after else 0}
        if upserted is not None:
            raw["upserted"] = upserted
        return UpdateResult(raw, True)

    async def find_one_and_update(
        self,
        flt: Mapping[str, Any],
        update: Any,
        projection: Mapping[str, Any] | None = None,
        *,
        upsert: bool = False,
        return_document: bool = ReturnDocument.BEFORE,
        session: Any = None,
        sort: Any = None,
    ) -> dict[str, Any] | None:
        before, after = await self._statement(
            session, "findAndModify", flt, update, upsert=upsert, sort=sort
        )
        doc = after if return_document == ReturnDocument.AFTER else before
        return project(doc, projection) if doc is not None else None

    async def delete_one(self, flt: Mapping[str, Any], *, session: Any = None) -> DeleteResult:
        before, _ = await self._statement(session, "delete", flt)
        return DeleteResult({"n": 1 if before is not None else 0}, True)

    async def delete_many(self, flt: Mapping[str, Any], *, session: Any = None) -> DeleteResult:
        await self.server.round_trip(session, "delete", self.name, _in_transaction(session))
        n = 0
        while True:
            before, _ = await self._one(session, "delete", flt)
            if before is None:
                return DeleteResult({"n": n}, True)
            n += 1

    async def bulk_write(
        self, requests: Sequence[Any], ordered: bool = True, *, session: Any = None
    ) -> BulkWriteResult:
        """Ordered: one command per run of one kind, stopping at the first write error."""
        assert ordered, "the store sends ordered bulk writes"
        counts = {"nInserted": 0, "nMatched": 0, "nModified": 0, "nRemoved": 0, "nUpserted": 0}
        index = 0
        for kind, run in itertools.groupby(requests, key=_kind):
            ops = list(run)
            await self.server.round_trip(session, kind, self.name, _in_transaction(session))
            for op in ops:
                try:
                    before, after = await self._request(session, op)
                except StatementError as exc:
                    error = {"index": index, "code": exc.code, "errmsg": exc.message}
                    raise BulkWriteError(
                        {**counts, "writeErrors": [error], "writeConcernErrors": [], "upserted": []}
                    ) from None
                if kind == "insert":
                    counts["nInserted"] += 1
                elif kind == "update" and (before is not None):
                    counts["nMatched"] += 1
                    counts["nModified"] += int(before != after)
                elif kind == "delete" and before is not None:
                    counts["nRemoved"] += 1
                index += 1
        return BulkWriteResult({**counts, "upserted": [], "writeErrors": []}, True)

    async def _request(self, session: Any, op: Any) -> Any:
        # What pymongo would encode for each request (its attributes, read here).
        if isinstance(op, InsertOne):
            return await self._one(session, "insert", op._doc)
        if isinstance(op, UpdateOne | UpdateMany):
            assert isinstance(op, UpdateOne), "the store updates one document per request"
            return await self._one(session, "update", op._filter, op._doc, upsert=op._upsert)
        if isinstance(op, ReplaceOne):
            return await self._one(session, "replace", op._filter, op._doc, upsert=op._upsert)
        if isinstance(op, DeleteOne | DeleteMany):
            assert isinstance(op, DeleteOne)
            return await self._one(session, "delete", op._filter)
        raise NotImplementedError(type(op).__name__)


def _keys(target: Mapping[str, Any], op: str) -> list[Any] | None:
    """The `_id`s a filter (or an inserted document) names, if it names them: only those
    documents can match (a shortcut: the answer is the same as a scan's)."""
    if op == "insert":
        return [target["_id"]]
    wanted = target.get("_id")
    if wanted is None:
        return None
    if isinstance(wanted, Mapping):
        if set(wanted) == {"$in"}:
            return list(wanted["$in"])
        if set(wanted) == {"$eq"}:
            return [wanted["$eq"]]
        return None
    return [wanted]


def _kind(op: Any) -> str:
    if isinstance(op, InsertOne):
        return "insert"
    if isinstance(op, UpdateOne | UpdateMany | ReplaceOne):
        return "update"
    return "delete"


def sorted_docs(docs: list[dict[str, Any]], spec: Any) -> list[dict[str, Any]]:
    """`docs` in a find's sort order (a field, or (field, 1/-1) pairs), by BSON order."""
    keys = [(spec, 1)] if isinstance(spec, str) else list(spec)

    def order(a: dict[str, Any], b: dict[str, Any]) -> int:
        for name, direction in keys:
            c = compare(get_path(a, name), get_path(b, name))
            if c:
                return c if direction > 0 else -c
        return 0

    return sorted(docs, key=functools.cmp_to_key(order))


class FakeCursor:
    """find(): sort, limit, max_time_ms, async iteration (one round trip), close."""

    def __init__(
        self,
        collection: FakeCollection,
        flt: dict[str, Any],
        projection: Mapping[str, Any] | None,
        session: Any,
    ) -> None:
        self.collection = collection
        self.flt = flt
        self.projection = projection
        self.session = session
        self._sort: list[tuple[str, int]] = []
        self._limit = 0
        self.max_time: int | None = None

    def sort(self, key: Any, direction: int | None = None) -> FakeCursor:
        self._sort = [(key, direction or 1)] if isinstance(key, str) else list(key)
        return self

    def limit(self, n: int) -> FakeCursor:
        self._limit = n
        return self

    def max_time_ms(self, ms: int) -> FakeCursor:
        self.max_time = ms
        return self

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        server = self.collection.server
        session = self.session
        await server.round_trip(session, "find", self.collection.name, _in_transaction(session))
        seen, _ = await self.collection._read_view(session, _keys(self.flt, "find"))
        docs = [d for d in seen.values() if matches(d, self.flt, server.now())]
        docs = sorted_docs(docs, self._sort) if self._sort else docs
        if self._limit:
            docs = docs[: self._limit]
        return [project(d, self.projection) for d in docs]

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        for doc in await self.to_list():
            yield doc

    async def close(self) -> None:
        return None
