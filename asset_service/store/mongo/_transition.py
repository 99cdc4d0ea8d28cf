"""A record's conditional change and its delete, as statements of a group transaction.

Each returns the `apply(session, revision)` the group writer runs (_writer.py): it writes
nothing and raises the AssetError saying why when its condition does not hold. A promise
with a lease changes with its lease's document (_promises.py) in the same transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument

from asset_service.domain.errors import Conflict, NotFound
from asset_service.domain.models import Asset, Status
from asset_service.store._fields import LeaseTest
from asset_service.store.mongo._documents import Doc, doc_to_asset
from asset_service.store.mongo._promises import PromiseLeases, overlay

Apply = Callable[[Any, int], Awaitable[Asset]]


def transition_statements(
    assets: Any,
    promises: PromiseLeases,
    asset_id: str,
    expected: Status,
    sets: Doc,
    test: LeaseTest | None,
    now: datetime,
) -> Apply:
    """`sets` (and the revision) on the record if its status is `expected` and its lease
    passes `test`; a move out of PENDING ends the lease and keeps its last end."""
    leaves_pending = expected is Status.PENDING and sets.get("status", expected) != expected

    async def refusal(session: Any, current: Doc | None = None) -> Exception:
        """Why the write did not apply (read in the same transaction)."""
        if current is None:
            current = await assets.find_one(
                {"_id": asset_id}, {"status": 1, "lease_seconds": 1}, session=session
            )
        if current is None:
            return NotFound(f"asset {asset_id} not found")
        if current["status"] != expected.value or test is None:
            return Conflict(f"asset {asset_id} is {current['status']}, expected {expected}")
        if test == "run out":
            return Conflict(f"asset {asset_id} has no lease to run out")
        return await promises.ran_out(asset_id, session)

    async def update(where: Doc, fields: Doc, session: Any) -> Doc | None:
        doc: Doc | None = await assets.find_one_and_update(
            where, {"$set": fields}, return_document=ReturnDocument.AFTER, session=session
        )
        return doc

    async def apply(session: Any, rev: int) -> Asset:
        where: Doc = {"_id": asset_id, "status": expected.value}
        fields = {**sets, "revision": rev}
        if leaves_pending and test != "run out":
            # A promise without a lease moves on in one statement, as before leases had
            # records of their own; the leases' collection is not touched.
            doc = await update({**where, "lease_seconds": {"$in": [0, None]}}, fields, session)
            if doc is not None:
                return doc_to_asset(doc)
            current = await assets.find_one(
                {"_id": asset_id}, {"status": 1, "lease_seconds": 1}, session=session
            )
            if current is None or current["status"] != expected.value:
                raise await refusal(session, current)
        if leaves_pending:
            # The lease first (_promises.py): it exists only while the asset is PENDING
            # with a lease, so once it is removed (if its condition held) the asset's own
            # condition holds too, and the record keeps its last end.
            last_end = await promises.end(asset_id, test, now, session)
            if last_end is None:
                raise await refusal(session)
            fields["lease_expires_at"] = last_end
        doc = await update(where, fields, session)
        if doc is None:
            raise await refusal(session)
        return doc_to_asset(doc)

    return apply


def delete_statements(
    assets: Any,
    promises: PromiseLeases,
    asset_id: str,
    by: str,
    nothing: Callable[[str], Exception],
    then: Callable[[Asset, Any], Awaitable[None]] | None = None,
) -> Apply:
    """Stamp the record with its new revision (and the deleter) first, so that the change
    feed can number the delete and say who made it, then remove it, then `then(last
    state, session)` (its tombstone); `nothing(id)` is raised when there is no record."""

    async def apply(session: Any, rev: int) -> Asset:
        doc = await assets.find_one_and_update(
            {"_id": asset_id},
            {"$set": {"revision": rev, "deleted": True, "updated_by": by}},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if doc is None:
            raise nothing(asset_id)
        if overlay([doc]):
            # A live promise: its lease goes too, its last end onto the stamp.
            last_end = await promises.drop(asset_id, session)
            if last_end is not None:
                doc = await assets.find_one_and_update(
                    {"_id": asset_id},
                    {"$set": {"lease_expires_at": last_end}},
                    return_document=ReturnDocument.AFTER,
                    session=session,
                )
                assert doc is not None
        await assets.delete_one({"_id": asset_id}, session=session)
        gone = doc_to_asset(doc)
        if then is not None:
            await then(gone, session)
        return gone

    return apply
