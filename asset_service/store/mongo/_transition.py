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
from asset_service.domain.models import EXPLICIT_EXPIRIES, Asset, Removal, Status
from asset_service.store._fields import LeaseTest
from asset_service.store.mongo import _retention
from asset_service.store.mongo._documents import Doc, doc_to_asset
from asset_service.store.mongo._promises import PromiseLeases, overlay

Apply = Callable[[Any, int], Awaitable[Asset]]


def transition_statements(
    assets: Any,
    promises: PromiseLeases,
    usage: Any,
    asset_id: str,
    expected: Status,
    sets: Doc,
    test: LeaseTest | None,
    now: datetime,
    by_rule: bool = False,
) -> Apply:
    """`sets` (and the revision) on the record if its status is `expected`, its lease
    passes `test` and (`by_rule`: an operator rule's expiry) no client chose its expiry;
    a move out of PENDING ends the lease and keeps its last end. The accounting cells
    move in the same transaction, and the task's holds go with its last PENDING promise."""
    leaves_pending = expected is Status.PENDING and sets.get("status", expected) != expected
    unchosen: Doc = {"expiry_rule": {"$nin": sorted(EXPLICIT_EXPIRIES)}} if by_rule else {}

    async def refusal(session: Any, current: Doc | None = None) -> Exception:
        """Why the write did not apply (read in the same transaction)."""
        if current is None:
            current = await assets.find_one(
                {"_id": asset_id},
                {"status": 1, "lease_seconds": 1, "expiry_rule": 1},
                session=session,
            )
        if current is None:
            return NotFound(f"asset {asset_id} not found")
        if by_rule and current.get("expiry_rule") in EXPLICIT_EXPIRIES:
            return Conflict(f"asset {asset_id}'s expiry was set by a client meanwhile")
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

    async def moved(doc: Doc, session: Any) -> Asset:
        after = doc_to_asset(doc)
        before = _retention.before_transition(after, expected)
        await _retention.account(usage, before, after, session)
        if leaves_pending:
            await _retention.settle_task(usage, assets, before, session)
        return after

    async def apply(session: Any, rev: int) -> Asset:
        where: Doc = {"_id": asset_id, "status": expected.value, **unchosen}
        fields = {**sets, "revision": rev}
        if leaves_pending and test != "run out":
            # A promise without a lease moves on in one statement, as before leases had
            # records of their own; the leases' collection is not touched.
            doc = await update({**where, "lease_seconds": {"$in": [0, None]}}, fields, session)
            if doc is not None:
                return await moved(doc, session)
            current = await assets.find_one(
                {"_id": asset_id},
                {"status": 1, "lease_seconds": 1, "expiry_rule": 1},
                session=session,
            )
            if (
                current is None
                or current["status"] != expected.value
                or (by_rule and current.get("expiry_rule") in EXPLICIT_EXPIRIES)
            ):
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
        return await moved(doc, session)

    return apply


def delete_statements(
    assets: Any,
    promises: PromiseLeases,
    usage: Any,
    asset_id: str,
    by: str,
    nothing: Callable[[str], Exception],
    then: Callable[[Asset, Any], Awaitable[None]] | None = None,
    removal: Removal | None = None,
    database_clock: bool = False,
) -> Apply:
    """Stamp the record with its new revision, the deleter and why (a `removal`'s reason)
    first, so that the change feed can number the delete and say who made it and why,
    then remove it, then `then(last state, session)` (its tombstone); `nothing(id)` is
    raised when there is no record. A `removal`'s conditions are in the stamp's filter."""
    condition = _retention.removal_filter(removal, database_clock) if removal else {}
    reason = removal.reason if removal is not None else ""

    async def apply(session: Any, rev: int) -> Asset:
        doc = await assets.find_one_and_update(
            {"_id": asset_id, **condition},
            {
                "$set": {
                    "revision": rev,
                    "deleted": True,
                    "updated_by": by,
                    "deletion_reason": reason,
                }
            },
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if doc is None and condition:
            current = await assets.find_one({"_id": asset_id}, session=session)
            if current is not None:
                assert removal is not None
                raise _retention.removal_refused(current, removal)
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
        last = Asset(**{**gone.__dict__, "holds": ()})
        await _retention.account(usage, last, None, session)
        await _retention.settle_task(usage, assets, last, session)
        if then is not None:
            await then(last, session)
        return last

    return apply
