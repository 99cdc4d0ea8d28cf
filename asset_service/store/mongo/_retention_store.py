"""MongoStore's RetentionStore methods (the statements themselves: _retention.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pymongo
from pymongo import ASCENDING, DESCENDING, ReturnDocument, UpdateOne
from pymongo.errors import PyMongoError

from asset_service.domain.errors import NotFound, ResourceExhausted
from asset_service.domain.models import Asset, Hold, Status
from asset_service.domain.usage import ALL, TOTAL, UsageCells, UsageGroup, recount
from asset_service.store._retention import first_keys, usage_keys
from asset_service.store.mongo import _retention, _schema
from asset_service.store.mongo._documents import (
    Doc,
    _unavailable,
    _write_error,
    doc_to_asset,
    hold_to_doc,
    ms,
)
from asset_service.store.mongo._transactions import Transactional

log = logging.getLogger(__name__)

# A document of `sweeps` saying the accounting cells were counted from the records (once,
# for a database written before they were kept).
USAGE_COUNTED_ID = "usage-counted"
_SLIM: dict[str, Any] = {"value_content": 0, "value_kind": 0, "block_sums": 0, "holds": 0}


class MongoRetention(Transactional):
    """Holds, retention, the expiry query and accounting reads of MongoStore (a mixin: it
    uses the store's collections, group writer and settings)."""

    _assets: Any
    _usage: Any
    _one_cut: Any
    _sweeps: Any
    _transactions: bool
    operation_timeout: float

    async def _prepare_retention(self, db_name: str) -> None:
        """Indexes, and (once) the accounting cells of the records stored before."""
        await _schema.ensure_indexes(self._usage, db_name, _retention.USAGE_INDEXES, "usage")
        if await self._sweeps.find_one({"_id": USAGE_COUNTED_ID}) is not None:
            return
        projection = {"status": 1, "type": 1, "created_by_task": 1, "tags": 1, "size_bytes": 1}
        records = [doc_to_asset(doc) async for doc in self._assets.find({}, projection)]
        counted = recount(records)
        if counted:
            await self._usage.bulk_write(
                [
                    UpdateOne(
                        {"_id": _retention.cell_id(cell)},
                        {
                            "$set": {"count": c, "bytes": b},
                            "$setOnInsert": {"grp": cell[0], "key": cell[1], "status": cell[2]},
                        },
                        upsert=True,
                    )
                    for cell, (c, b) in counted.items()
                ]
            )
            log.info("counted the storage of %d asset(s) into %s.usage", len(records), db_name)
        await self._sweeps.update_one(
            {"_id": USAGE_COUNTED_ID}, {"$set": {"assets": len(records)}}, upsert=True
        )

    async def _one(self, asset_id: str) -> Asset:
        doc = await self._assets.find_one({"_id": asset_id}, {"value_content": 0, "block_sums": 0})
        if doc is None:
            raise NotFound(f"asset {asset_id} not found")
        return doc_to_asset(doc)

    async def place_hold(self, asset_id: str, hold: Hold, limit: int) -> Asset:
        """A compare-and-set of the record's holds, without a revision (the change feed
        passes it over): retried if they changed in between."""
        entry = hold_to_doc(hold)

        def placed(holds: list[Doc]) -> list[Doc]:
            others = [h for h in holds if h.get("owner") != hold.owner]
            if len(others) >= limit:
                raise ResourceExhausted(
                    f"asset {asset_id} has {len(others)} holds, the most it may have; release one"
                )
            if len(others) == len(holds):
                return [*holds, entry]
            return [entry if h.get("owner") == hold.owner else h for h in holds]

        asset, _ = await self._set_holds(asset_id, placed)
        return asset

    async def release_hold(self, asset_id: str, owner: str) -> tuple[Asset, bool]:
        def released(holds: list[Doc]) -> list[Doc]:
            return [h for h in holds if h.get("owner") != owner]

        return await self._set_holds(asset_id, released)

    async def _set_holds(
        self, asset_id: str, change: Callable[[list[Doc]], list[Doc]]
    ) -> tuple[Asset, bool]:
        """The record with its holds rewritten by `change` (if that changes them), and
        whether it did. NotFound without a record."""
        try:
            with pymongo.timeout(self.operation_timeout):
                for _ in range(8):
                    doc = await self._assets.find_one({"_id": asset_id})
                    if doc is None:
                        raise NotFound(f"asset {asset_id} not found")
                    holds = list(doc.get("holds") or [])
                    wanted = change(holds)
                    if wanted == holds:
                        return doc_to_asset(doc), False
                    done = await self._assets.find_one_and_update(
                        _retention.holds_filter(doc),
                        {"$set": {"holds": wanted}},
                        return_document=ReturnDocument.AFTER,
                    )
                    if done is not None:
                        return doc_to_asset(done), True
        except PyMongoError as exc:
            raise _write_error(exc, transaction=False) from exc
        raise ResourceExhausted(f"asset {asset_id}'s holds kept changing; try again")

    async def hold_inputs(self, task_id: str, asset_ids: Sequence[str], hold: Hold) -> list[str]:
        """In a transaction of its own that writes the task's PENDING cell (_retention.py):
        the cell, one read of the records, one bulk rewrite of their holds."""
        ids = list(dict.fromkeys(asset_ids))
        cell = _retention.cell_id((UsageGroup.TASK.value, task_id, Status.PENDING.value))
        entry = hold_to_doc(hold)

        async def apply(session: Any) -> list[str]:
            pending = await self._usage.find_one_and_update(
                {"_id": cell, "count": {"$gt": 0}},
                {"$inc": {"holds_placed": 1}},
                session=session,
            )
            if pending is None or not ids:
                return []
            docs = await self._assets.find(
                {"_id": {"$in": ids}}, {"holds": 1}, session=session
            ).to_list()
            changes = [
                UpdateOne(
                    _retention.holds_filter(d),
                    {"$set": {"holds": [*(d.get("holds") or []), entry]}},
                )
                for d in docs
                if all(h.get("owner") != hold.owner for h in d.get("holds") or [])
            ]
            if changes:
                await self._assets.bulk_write(changes, ordered=True, session=session)
            found = {str(d["_id"]) for d in docs}
            return [i for i in ids if i in found]

        # Its own transaction (not the group writer's: it takes no revision).
        result: list[str] = await self._transact(apply, self.operation_timeout)
        return result

    async def retain(self, asset_ids: Sequence[str], until: datetime) -> None:
        ids = list(dict.fromkeys(asset_ids))
        try:
            with pymongo.timeout(self.operation_timeout):
                for start in range(0, len(ids), 1000):
                    await self._assets.bulk_write(
                        [
                            UpdateOne({"_id": i}, {"$max": {"retained_until": ms(until)}})
                            for i in ids[start : start + 1000]
                        ],
                        ordered=True,
                    )
        except PyMongoError as exc:
            raise _write_error(exc, transaction=False) from exc

    async def expired(self, now: datetime, limit: int) -> list[Asset]:
        try:
            cursor = (
                self._assets.find(_retention.expired_filter(now), _SLIM)
                .sort([("expires_at", ASCENDING), ("_id", ASCENDING)])
                .limit(limit)
                .max_time_ms(_schema.QUERY_MAX_TIME_MS)
            )
            return [doc_to_asset(doc) async for doc in cursor]
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def usage(self, group: str, keys: Sequence[str], limit: int) -> UsageCells:
        try:
            async with self._one_cut() as session:  # the totals and the group: one cut
                docs = await self._usage.find({"grp": ALL}, session=session).to_list()
                found = _retention.cells_of(docs)
                chosen, more = usage_keys(group, keys), False
                if chosen is None:
                    cursor = (
                        self._usage.find(
                            {"grp": group, "status": TOTAL, "count": {"$gt": 0}},
                            {"key": 1},
                            session=session,
                        )
                        .sort([("bytes", DESCENDING), ("count", DESCENDING), ("key", ASCENDING)])
                        .limit(limit + 1)
                    )
                    chosen, more = first_keys([str(d["key"]) async for d in cursor], limit)
                for start in range(0, len(chosen), 1000):
                    part = chosen[start : start + 1000]
                    docs = await self._usage.find(
                        {"grp": group, "key": {"$in": part}}, session=session
                    ).to_list()
                    found.update(_retention.cells_of(docs))
                return UsageCells(found, chosen, more)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
