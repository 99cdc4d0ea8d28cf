"""Promise leases in MongoDB: records of their own in `leases`, judged by the database's clock.

A renewal is a heartbeat, not a change of the asset (issue 21, item 12): it updates the
lease's document only, outside the group writer: no revision, no counter held, no change
event or pre-image of `assets`. Time is the database's ($$NOW in `$expr` filters and in
update pipelines), so skewed server clocks neither fail live promises nor keep dead ones.

Atomicity: the lease document exists exactly while its asset is PENDING with a lease (it
is written in the transaction that inserts the asset and removed in the one that moves it
out of PENDING or deletes it). A fulfilment removes it with a filter "not run out by
$$NOW", the expiry with "run out by $$NOW", in the same transaction as the asset's
conditional update; a renewal updates it with "not run out by $$NOW". Two of these on one
lease write the same document, so MongoDB lets one commit and the other conflict (then
retry and find the lease gone): a fulfilment never wins against an expired lease, and a
renewal never revives one. FerretDB (tests only, no transactions) has neither `$expr` nor
update pipelines: there the caller's `now` is the clock, as in the SQLite store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, InsertOne, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from asset_service.domain.errors import Conflict, LeaseRanOut, NotFound
from asset_service.domain.models import Asset
from asset_service.store._fields import LeaseTest
from asset_service.store.mongo._documents import Doc, _aware, doc_to_asset, ms

# The sweep claims' documents in `sweeps`: f"{name}-sweep" (the lease sweep's is
# "lease-sweep", the retention sweep's "retention-sweep").
SWEEP_ID = "lease-sweep"


def _new_lease(seconds: int) -> list[Doc]:
    """The update pipeline (upserting) of a new promise's lease: `seconds` from $$NOW."""
    return [
        {
            "$set": {
                "expires_at": {"$add": ["$$NOW", seconds * 1000]},
                "seconds": seconds,
                "renewed_by": "",
                "renewed_at": "$$NOW",
            }
        }
    ]


class PromiseLeases:
    """The `leases` collection (one document per leased PENDING asset, `_id` its id) and
    the sweep claim in `sweeps`. `database_clock`: $$NOW decides (a replica set), else
    the `now` callers pass (FerretDB)."""

    def __init__(self, leases: Any, sweeps: Any, *, database_clock: bool) -> None:
        self.leases = leases
        self.sweeps = sweeps
        self.database_clock = database_clock

    # --- the clock ----------------------------------------------------------------------

    def _is(self, op: str, now: datetime) -> Doc:
        """A filter: the lease's end compares `op` with the clock."""
        if self.database_clock:
            return {"$expr": {op: ["$expires_at", "$$NOW"]}}
        return {"expires_at": {op: ms(now)}}

    def _from_now(self, milliseconds: Any, now: datetime) -> Any:
        """An update pipeline's value: the clock plus `milliseconds` (a number or a field)."""
        if self.database_clock:
            return {"$add": ["$$NOW", milliseconds]}
        assert isinstance(milliseconds, int)
        return ms(now) + timedelta(milliseconds=milliseconds)

    def condition(self, test: LeaseTest, now: datetime) -> Doc:
        """A filter on a lease: `test` holds by the clock."""
        return self._is("$gt" if test == "none or not run out" else "$lte", now)

    # --- writes inside the group writer's transaction -----------------------------------

    def create_request(
        self, asset_id: str, seconds: int, expires_at: datetime | None
    ) -> UpdateOne | InsertOne[Doc]:
        """create() as one request of the batch's bulk write on `leases` (_transition.py)."""
        if not self.database_clock:
            assert expires_at is not None
            return InsertOne({"_id": asset_id, "expires_at": ms(expires_at), "seconds": seconds})
        return UpdateOne({"_id": asset_id}, _new_lease(seconds), upsert=True)

    async def create(
        self, asset_id: str, seconds: int, expires_at: datetime, session: Any
    ) -> datetime:
        """The lease of a new promise: `seconds` from now (`expires_at` on the caller's
        clock); when it ends."""
        if not self.database_clock:
            await self.leases.insert_one(
                {"_id": asset_id, "expires_at": ms(expires_at), "seconds": seconds},
                session=session,
            )
            return ms(expires_at)
        doc = await self.leases.find_one_and_update(
            {"_id": asset_id},
            _new_lease(seconds),
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        assert doc is not None
        return _aware(doc["expires_at"])

    async def end(
        self, asset_id: str, test: LeaseTest | None, now: datetime, session: Any
    ) -> datetime | None:
        """Remove the lease of an asset leaving PENDING, if `test` holds; its last end.

        None: there was no lease (or, for a fulfilment, none that still runs: the asset's
        own condition then tells which). Conflict if an expiry finds the lease running.
        """
        where: Doc = {"_id": asset_id}
        if test == "none or not run out":
            where |= self._is("$gt", now)
        elif test == "run out":
            where |= self._is("$lte", now)
        doc = await self.leases.find_one_and_delete(where, session=session)
        if doc is not None:
            return _aware(doc["expires_at"])
        if test == "run out":
            running = await self.leases.find_one({"_id": asset_id}, session=session)
            if running is not None:
                end = _aware(running["expires_at"])
                raise Conflict(f"asset {asset_id}'s lease has not run out (it ends at {end})")
        return None

    async def ran_out(self, asset_id: str, session: Any) -> LeaseRanOut:
        """The error for a leased promise whose lease did not let a fulfilment through."""
        doc = await self.leases.find_one({"_id": asset_id}, session=session)
        return LeaseRanOut(asset_id, _aware(doc["expires_at"]) if doc else "its end")

    async def drop(self, asset_id: str, session: Any) -> datetime | None:
        """Remove the lease of an asset being deleted; its last end, if it had one."""
        doc = await self.leases.find_one_and_delete({"_id": asset_id}, session=session)
        return _aware(doc["expires_at"]) if doc is not None else None

    # --- heartbeats, outside any transaction --------------------------------------------

    async def renew(self, asset_id: str, seconds: int, now: datetime, by: str) -> datetime | None:
        """Extend a running lease to `seconds` (0: its own) from now; its new end, or
        None if it did not run (any more)."""
        where: Doc = {"_id": asset_id} | self._is("$gt", now)
        if self.database_clock:
            length: Any = seconds * 1000 if seconds else {"$multiply": ["$seconds", 1000]}
            update: Any = [
                {
                    "$set": {
                        "expires_at": self._from_now(length, now),
                        "renewed_by": by,
                        "renewed_at": "$$NOW",
                    }
                }
            ]
        else:
            if not seconds:
                own = await self.leases.find_one({"_id": asset_id}, {"seconds": 1})
                seconds = int(own["seconds"]) if own else 0
            update = {
                "$set": {
                    "expires_at": self._from_now(seconds * 1000, now),
                    "renewed_by": by,
                    "renewed_at": ms(now),
                }
            }
        doc = await self.leases.find_one_and_update(
            where, update, return_document=ReturnDocument.AFTER
        )
        return _aware(doc["expires_at"]) if doc is not None else None

    async def renew_and_read(
        self,
        assets: Any,
        asset_id: str,
        seconds: int,
        now: datetime,
        by: str,
        projection: Mapping[str, Any],
    ) -> Asset:
        """renew(), and the asset as a read shows it (read at the same time)."""
        end, doc = await asyncio.gather(
            self.renew(asset_id, seconds, now, by),
            assets.find_one({"_id": asset_id}, projection),
        )
        if end is None and doc is not None and overlay([doc]):
            end_now = await self.current_end(asset_id)
            if end_now is not None:
                raise LeaseRanOut(asset_id, end_now)
        if doc is None:
            raise NotFound(f"asset {asset_id} not found")
        if end is None:
            raise Conflict(f"asset {asset_id} has no lease to renew")
        if doc.get("status") == "PENDING":  # (it may have moved on since)
            doc["lease_expires_at"] = end
        return doc_to_asset(doc)

    async def current_end(self, asset_id: str) -> datetime | None:
        doc = await self.leases.find_one({"_id": asset_id}, {"expires_at": 1})
        return _aware(doc["expires_at"]) if doc is not None else None

    # --- reads -------------------------------------------------------------------------

    async def ends(self, asset_ids: Iterable[str], session: Any = None) -> dict[str, datetime]:
        """The current end of each of these assets' leases (one query)."""
        ids = list(asset_ids)
        if not ids:
            return {}
        cursor = self.leases.find({"_id": {"$in": ids}}, {"expires_at": 1}, session=session)
        return {str(d["_id"]): _aware(d["expires_at"]) async for d in cursor}

    async def due(self, now: datetime, limit: int, max_time_ms: int) -> list[tuple[str, datetime]]:
        """(asset id, end) of up to `limit` leases that ran out, earliest first."""
        cursor = (
            self.leases.find(self._is("$lte", now), {"expires_at": 1})
            .sort("expires_at", ASCENDING)
            .limit(limit)
            .max_time_ms(max_time_ms)
        )
        try:
            return [(str(d["_id"]), _aware(d["expires_at"])) async for d in cursor]
        finally:
            await cursor.close()

    # --- the sweep claim ----------------------------------------------------------------

    async def claim_sweep(
        self, holder: str, seconds: float, now: datetime, name: str = "lease"
    ) -> bool:
        free: Doc = {"holder": holder}
        if self.database_clock:
            expired: Doc = {"$expr": {"$lte": ["$until", "$$NOW"]}}
            update: Any = [
                {"$set": {"holder": holder, "until": self._from_now(int(seconds * 1000), now)}}
            ]
        else:
            expired = {"until": {"$lte": ms(now)}}
            until = self._from_now(int(seconds * 1000), now)
            update = {"$set": {"holder": holder, "until": until}}
        try:
            # Taken (or held on) when free, run out or ours; otherwise the upsert's insert
            # of the one `_id` collides with the holder's document.
            await self.sweeps.update_one(
                {"_id": f"{name}-sweep", "$or": [free, expired]}, update, upsert=True
            )
        except DuplicateKeyError:
            return False
        return True


def overlay(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Ids of the documents whose lease end a read must take from `leases`: PENDING ones
    promised with a lease."""
    return [
        str(d["_id"])
        for d in docs
        if d.get("status") == "PENDING" and int(d.get("lease_seconds") or 0) > 0
    ]
