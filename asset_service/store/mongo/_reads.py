"""MongoStore's reads: records, pages, counts, the changes since a revision, due leases."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import pymongo
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern

from asset_service.domain.models import Asset, AssetFilter, Page, Status
from asset_service.domain.replay import EVERYTHING, Narrowing, Replay
from asset_service.store import _paging
from asset_service.store.mongo import _references, _schema, _tombstones
from asset_service.store.mongo._documents import (
    Doc,
    _doc_bytes,
    _unavailable,
    decode_token,
    doc_to_asset,
    encode_token,
)
from asset_service.store.mongo._promises import PromiseLeases, overlay

# A record without its inline value (nor holds, which only reads show): what snapshot()
# reads.
SLIM_PROJECTION: dict[str, Any] = {
    "value_content": 0,
    "value_kind": 0,
    "block_sums": 0,
    "holds": 0,
}
# A record without its block sums (only get() reads them: ReadAsset checks with them).
LISTED_PROJECTION: dict[str, Any] = {"block_sums": 0}


class MongoReads:
    """The reads of MongoStore (a mixin, as MongoRetention: it uses the store's client,
    collections and settings)."""

    _client: Any
    _assets: Any
    _counters: Any
    _tombstones: Any
    _lease_docs: Any
    _sweeps: Any
    _transactions: bool
    operation_timeout: float

    @property
    def _promises(self) -> PromiseLeases:
        # The database's clock wherever it can judge ($expr, update pipelines: a replica
        # set); FerretDB (allow_standalone, tests) has neither.
        return PromiseLeases(self._lease_docs, self._sweeps, database_clock=self._transactions)

    async def get(self, asset_id: str) -> Asset | None:
        try:
            doc = await self._assets.find_one({"_id": asset_id})
            if doc is not None and overlay([doc]):
                end = await self._promises.current_end(asset_id)
                if end is None:
                    # Its lease ended since the first read: the promise left PENDING, and
                    # its record now holds the last end.
                    doc = await self._assets.find_one({"_id": asset_id})
                else:
                    doc["lease_expires_at"] = end
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return doc_to_asset(doc) if doc is not None else None

    async def _with_leases(self, docs: list[Doc], session: AsyncClientSession | None) -> None:
        """Show each PENDING promise's lease as its record in `leases` says (one query)."""
        ends = await self._promises.ends(overlay(docs), session)
        for doc in docs:
            end = ends.get(str(doc["_id"]))
            if end is not None:
                doc["lease_expires_at"] = end

    async def referenced(self, storage_paths: Sequence[str]) -> set[str]:
        try:
            return await _references.referenced(self._assets, storage_paths)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def get_many(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        try:
            return await self._by_ids(list(dict.fromkeys(asset_ids)), LISTED_PROJECTION, None)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def _by_ids(
        self,
        ids: list[str],
        projection: dict[str, Any],
        session: AsyncClientSession | None,
        max_time_ms: int | None = None,
    ) -> dict[str, Asset]:
        """The records of `ids`, 1000 per find, leases shown as of the same reads."""
        found: dict[str, Asset] = {}
        for start in range(0, len(ids), 1000):
            part = ids[start : start + 1000]
            cursor = self._assets.find({"_id": {"$in": part}}, projection, session=session)
            if max_time_ms is not None:
                cursor = cursor.max_time_ms(max_time_ms)
            docs = [doc async for doc in cursor]
            await self._with_leases(docs, session)  # the same cut, in a session
            for doc in docs:
                asset = doc_to_asset(doc)
                found[asset.id] = asset
        return found

    @contextlib.asynccontextmanager
    async def _one_cut(self) -> AsyncIterator[AsyncClientSession | None]:
        """A snapshot session: every read in it sees one majority-committed cluster time
        (the first read's). None without transactions (FerretDB): plain reads."""
        if not self._transactions:
            yield None
            return
        async with self._client.start_session(snapshot=True, causal_consistency=False) as s:
            yield s

    async def snapshot(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        """One consistent cut without values: a snapshot session (MongoDB 5.0+).

        Every find in a `snapshot=True` session reads at the cluster time of the first
        one (readConcern "snapshot" with atClusterTime), which holds majority-committed
        writes only: what a failover may roll back is never shown, and a change missing
        from the cut has a higher revision than every one in it (revision order is
        commit order). The session must finish within the server's
        minSnapshotHistoryWindowInSeconds (5 min); an older snapshot fails with
        SnapshotTooOld (239), which is UNAVAILABLE: the watcher retries with a new one.
        Without transactions (allow_standalone: FerretDB) these are plain reads.
        """
        ids = list(dict.fromkeys(asset_ids))
        if not ids:
            return {}
        try:
            async with self._one_cut() as session:
                return await self._by_ids(ids, SLIM_PROJECTION, session, _schema.QUERY_MAX_TIME_MS)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def query(
        self, flt: AssetFilter, limit: int, page_token: str, max_bytes: int | None = None
    ) -> Page:
        after = decode_token(page_token, flt) if page_token else 0
        where: Doc = {"seq": {"$gt": after}}
        if flt.status is not None:
            where["status"] = flt.status.value
        if flt.type is not None:
            where["type"] = flt.type.value
        if flt.created_by_task:
            where["created_by_task"] = flt.created_by_task
        if flt.label:
            where["label"] = flt.label
        if flt.key:
            where["key"] = flt.key
        if flt.sha256:
            where["sha256"] = flt.sha256
        if flt.tags:
            where["tags"] = {"$all": list(flt.tags)}
        docs: list[Doc] = []
        used, full = 0, False
        try:
            async with self._one_cut() as session:  # the counter and the page: one cut
                revision = await self._revision_in(session)
                cursor = (
                    self._assets.find(where, LISTED_PROJECTION, session=session)
                    .sort("seq", ASCENDING)
                    .limit(limit + 1)
                    .max_time_ms(_schema.QUERY_MAX_TIME_MS)
                )
                try:
                    # Read only what the page can hold, plus one document past it (so
                    # that fill_page knows more follow): the rest stays on the server.
                    async for doc in cursor:
                        docs.append(doc)
                        if len(docs) > limit or full:
                            break
                        used += _doc_bytes(doc)
                        full = max_bytes is not None and used > max_bytes
                finally:
                    await cursor.close()
                await self._with_leases(docs, session)  # the same cut
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        assets, last = _paging.fill_page(
            docs, limit, max_bytes, doc_to_asset, lambda d: int(d["seq"])
        )
        return Page(assets, encode_token(last, flt) if last is not None else "", revision)

    async def _revision_in(self, session: AsyncClientSession | None) -> int:
        doc = await self._counters.find_one({"_id": "revision"}, session=session)
        return int(doc["value"]) if doc else 0

    async def current_revision(self) -> int:
        """Read at majority: a counter value a failover may roll back (and the new
        primary then hand out again, for other writes) would make the watch history
        begin above revisions it must still replay."""
        majority = self._counters.with_options(read_concern=ReadConcern("majority"))
        try:
            doc = await majority.find_one({"_id": "revision"})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return int(doc["value"]) if doc else 0

    async def changes_since(self, after: int, limit: int, narrow: Narrowing = EVERYTHING) -> Replay:
        """One snapshot session (majority, one cluster time): the horizon, the counter,
        the records and the tombstones above `after`, through their revision indexes."""
        try:
            async with self._one_cut() as session:
                return await _tombstones.changes_since(
                    self._assets,
                    self._tombstones,
                    self._counters,
                    session,
                    after,
                    limit,
                    SLIM_PROJECTION,
                    _schema.QUERY_MAX_TIME_MS,
                    narrow,
                )
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def sweep_tombstones(self, before: datetime) -> int:
        try:
            with pymongo.timeout(self.operation_timeout * 4):
                return await _tombstones.sweep(self._tombstones, self._counters, before)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def count_by_status(self) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        try:
            for status in Status:
                # A count of the (status, seq) index's range: no document is fetched.
                counts[status] = await self._assets.count_documents(
                    {"status": status.value}, maxTimeMS=_schema.QUERY_MAX_TIME_MS
                )
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return counts

    async def leases_run_out(self, now: datetime, limit: int) -> list[Asset]:
        """By the database's clock ($$NOW) on a replica set: `now` is not used there."""
        try:
            due = await self._promises.due(now, limit, _schema.QUERY_MAX_TIME_MS)
            ends = dict(due)
            docs = await self._assets.find(
                {"_id": {"$in": list(ends)}, "status": Status.PENDING.value}, SLIM_PROJECTION
            ).to_list()
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        for doc in docs:
            doc["lease_expires_at"] = ends[str(doc["_id"])]
        assets = sorted((doc_to_asset(d) for d in docs), key=lambda a: (a.lease_expires_at, a.id))
        return assets

    async def claim_sweep(
        self, holder: str, seconds: float, now: datetime, name: str = "lease"
    ) -> bool:
        try:
            return await self._promises.claim_sweep(holder, seconds, now, name)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def key_holder(self, key: str) -> Asset | None:
        try:
            doc = await self._assets.find_one({"key_slot": key}, LISTED_PROJECTION)
            if doc is None:
                return None
            await self._with_leases([doc], None)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return doc_to_asset(doc)
