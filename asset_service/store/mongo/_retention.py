"""MongoStore's retention: holds inside records, the expiry index, the accounting cells.

Holds live in their record (`holds`: owner, kind, reason, when, by), so that the expiry's
conditional delete tests them in its own filter (`holds.0` absent) and a hold placed at the
same moment either lands first (the delete's filter no longer matches) or finds the record
gone: one document, one winner, no transaction needed for it. Placing or releasing one is
an update without a revision, which the change feed passes over (not a change).

The accounting cells (`usage`: one document per group, key and status) are incremented in
the group transaction of the record writes that move them (one command per batch). A
task's PENDING cell is also what serializes its holds: MintTaskToken's holds are placed
in a transaction that writes that cell (only while it counts a PENDING promise), and
every batch in which a promise of the task leaves PENDING writes it too, then releases
the holds once it reaches zero; two of these at once write the same document, so MongoDB
commits one and retries the other, which then sees it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def usage_updates(moved: Mapping[Cell, tuple[int, int]]) -> list[UpdateOne]:
    return [
        UpdateOne(
            {"_id": cell_id(cell)},
            {
                "$inc": {"count": count, "bytes": size},
                "$setOnInsert": {"grp": cell[0], "key": cell[1], "status": cell[2]},
            },
            upsert=True,
        )
        for cell, (count, size) in moved.items()
    ]


async def account(
    usage: Any, assets: Any, moves: Sequence[tuple[Asset | None, Asset | None]], session: Any
) -> None:
    """A batch's accounting, in its transaction, whatever its size: one command for the
    cells it moves; if promises of a task left
    PENDING, one read of those tasks' PENDING cells and one update releasing the holds
    of each task that has none left."""
    total: dict[Cell, tuple[int, int]] = {}
    tasks: set[str] = set()
    for before, after in moves:
        for cell, (count, size) in deltas(before, after).items():
            old = total.get(cell, (0, 0))
            total[cell] = (old[0] + count, old[1] + size)
        if (
            before is not None
            and before.status is Status.PENDING
            and before.created_by_task
            and (after is None or after.status is not Status.PENDING)
        ):
            tasks.add(before.created_by_task)
    # Cells that reach zero stay (reads pass them over): one command, not two, while the
    # batch holds the counter.
    updates = usage_updates({c: v for c, v in total.items() if v != (0, 0)})
    if updates:
        await usage.bulk_write(updates, ordered=True, session=session)
    if not tasks:
        return
    ids = {cell_id((UsageGroup.TASK.value, t, Status.PENDING.value)): t for t in tasks}
    busy = {
        ids[str(d["_id"])]
        async for d in usage.find(
            {"_id": {"$in": sorted(ids)}, "count": {"$gt": 0}}, {"_id": 1}, session=session
        )
    }
    owners = sorted(TASK_OWNER + t for t in tasks - busy)
    if owners:
        await release_owners(assets, owners, session)


def holds_filter(doc: Doc) -> Doc:
    """A filter matching the record only while its holds are still those of `doc` (the
    holds are rewritten whole, compared whole: no positional or conditional array
    operators, which FerretDB lacks)."""
    if "holds" in doc:
        return {"_id": doc["_id"], "holds": doc["holds"]}
    return {"_id": doc["_id"], "holds": {"$exists": False}}


async def release_owners(assets: Any, owners: Sequence[str], session: Any) -> None:
    """Remove these owners' holds from every record: one read, one bulk command."""
    gone = set(owners)
    docs = [
        d
        async for d in assets.find(
            {"holds.owner": {"$in": list(owners)}}, {"holds": 1}, session=session
        )
    ]
    if docs:
        await assets.bulk_write(
            [
                UpdateOne(
                    holds_filter(d),
                    {"$set": {"holds": [h for h in d["holds"] if h.get("owner") not in gone]}},
                )
                for d in docs
            ],
            ordered=True,
            session=session,
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
    if removal.expired:  # a manifest within its TTL defers expiry, not DeleteAsset
        parts.append(_not_after("retained_until", now, database_clock))
    return {"$and": parts} if parts else {}


def removal_refused(doc: Doc, removal: Removal) -> Exception:
    """Why a conditional delete's filter did not match an existing record."""
    asset = doc_to_asset(doc)
    now = removal.now
    assert now is not None
    found = holders(asset, now, manifests=removal.expired)
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
    """The cells read, without those a write emptied (they stay, at zero)."""
    return {
        (str(d["grp"]), str(d["key"]), str(d["status"])): (int(d["count"]), int(d["bytes"]))
        for d in docs
        if d.get("count") or d.get("bytes")
    }
