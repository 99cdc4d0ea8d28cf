"""MongoStore's retention: holds inside records, the expiry index, the accounting cells.

Holds live in their record (`holds`: owner, kind, reason, when, by), so that the expiry's
conditional delete tests them in its own filter (`holds.0` absent) and a hold placed at the
same moment either lands first (the delete's filter no longer matches) or finds the record
gone: one document, one winner, no transaction needed for it. Placing or releasing one is
an update without a revision, which the change feed passes over (not a change).

The accounting cells (`usage`: one document per group, key and status) are incremented in
the transaction of the record write that moves them. A task's PENDING cell is also what
serializes its holds: MintTaskToken's holds are placed in a transaction that writes that
cell (only while it counts a PENDING promise), and every promise of the task leaving
PENDING writes it too, then releases the holds once it reaches zero; two of these at once
write the same document, so MongoDB commits one and retries the other, which then sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne

from asset_service.domain.errors import Conflict, Held
from asset_service.domain.models import Asset, Removal, Status
from asset_service.domain.retention._ports import TASK_OWNER
from asset_service.domain.usage import Cell, UsageGroup, deltas
from asset_service.store._retention import holders
from asset_service.store.mongo._documents import Doc, doc_to_asset, ms

# (The assets' expiry and hold indexes are among _schema.ASSET_INDEXES.)
USAGE_INDEXES = (
    IndexModel(
        [
            ("grp", ASCENDING),
            ("status", ASCENDING),
            ("bytes", DESCENDING),
            ("count", DESCENDING),
            ("key", ASCENDING),
        ],
        name="largest",
    ),
)
# A separator no tag or task id holds (they are printable).
_SEP = "\x1f"


def cell_id(cell: Cell) -> str:
    return _SEP.join(cell)


def usage_updates(before: Asset | None, after: Asset | None) -> list[UpdateOne]:
    return [
        UpdateOne(
            {"_id": cell_id(cell)},
            {
                "$inc": {"count": count, "bytes": size},
                "$setOnInsert": {"grp": cell[0], "key": cell[1], "status": cell[2]},
            },
            upsert=True,
        )
        for cell, (count, size) in deltas(before, after).items()
    ]


async def account(usage: Any, before: Asset | None, after: Asset | None, session: Any) -> None:
    """The cells a write moves, in its transaction: one command (and one more to drop the
    cells it emptied)."""
    updates = usage_updates(before, after)
    if not updates:
        return
    await usage.bulk_write(updates, ordered=True, session=session)
    emptied = [u._filter["_id"] for u in updates]
    await usage.delete_many({"_id": {"$in": emptied}, "count": 0, "bytes": 0}, session=session)


async def settle_task(usage: Any, assets: Any, before: Asset, session: Any) -> None:
    """After `before`, a PENDING promise, left PENDING or went (its cell already moved, in
    this transaction): its task's holds go once the task has no PENDING promise left."""
    task = before.created_by_task
    if before.status is not Status.PENDING or not task:
        return
    cell = await usage.find_one(
        {"_id": cell_id((UsageGroup.TASK.value, task, Status.PENDING.value))}, session=session
    )
    if cell is not None and int(cell.get("count", 0)) > 0:
        return
    owner = TASK_OWNER + task
    await assets.update_many(
        {"holds.owner": owner}, {"$pull": {"holds": {"owner": owner}}}, session=session
    )


def before_transition(after: Asset, expected: Status) -> Asset:
    """The record before a transition, as the accounting sees it: the status it had, and
    no size if it was a promise (a promise holds no bytes)."""
    size = 0 if expected is Status.PENDING else after.size_bytes
    return Asset(**{**after.__dict__, "status": expected, "size_bytes": size})


def _not_after(field: str, now: datetime, database_clock: bool) -> Doc:
    """A filter: `field` is unset or not after the clock (the database's on a replica set)."""
    if database_clock:
        # In an expression a missing or null field compares below any date.
        return {"$expr": {"$lte": [f"${field}", "$$NOW"]}}
    return {"$or": [{field: None}, {field: {"$lte": ms(now)}}]}


def removal_filter(removal: Removal, database_clock: bool) -> Doc:
    """What the stamping update of a conditional delete requires, in its own filter."""
    now = removal.now
    assert now is not None
    parts: list[Doc] = []
    if removal.expired:
        parts.append({"status": {"$ne": Status.PENDING.value}})
        parts.append({"expires_at": {"$type": "date"}})
        parts.append(_not_after("expires_at", now, database_clock))
    if removal.unheld or removal.expired:
        parts.append({"holds.0": {"$exists": False}})
        parts.append(_not_after("retained_until", now, database_clock))
    return {"$and": parts} if parts else {}


def removal_refused(doc: Doc, removal: Removal) -> Exception:
    """Why a conditional delete's filter did not match an existing record."""
    asset = doc_to_asset(doc)
    now = removal.now
    assert now is not None
    found = holders(asset, now)
    if found:
        return Held(asset.id, found)
    return Conflict(f"asset {asset.id} has not expired (it expires at {asset.expires_at})")


def expired_filter(now: datetime) -> Doc:
    """The sweep's query: the expiry index's range up to `now`, held ones passed over."""
    return {
        "expires_at": {"$lte": ms(now)},
        "status": {"$in": [Status.AVAILABLE.value, Status.FAILED.value]},
        "holds.0": {"$exists": False},
        "$or": [{"retained_until": None}, {"retained_until": {"$lte": ms(now)}}],
    }


def cells_of(docs: Sequence[Doc]) -> dict[Cell, tuple[int, int]]:
    return {
        (str(d["grp"]), str(d["key"]), str(d["status"])): (int(d["count"]), int(d["bytes"]))
        for d in docs
    }
