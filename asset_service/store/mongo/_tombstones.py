"""MongoStore's tombstones of deleted assets, and the changes since a revision they serve.

Why not a TTL index: MongoDB's TTL monitor removes documents without telling anyone which,
so the store could no longer say from which revision on it still holds every deletion.
The sweep below first raises the horizon (`counters/_id: "tombstones"`) over what it is
about to remove, then removes it: a reader's one cut that lacks a swept tombstone also
shows the raised horizon, and refuses the resume (HistoryGone) rather than miss a DELETE.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, IndexModel, ReplaceOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from asset_service.domain.errors import HistoryGone
from asset_service.domain.models import Asset, Change, ChangeKind
from asset_service.domain.replay import EVERYTHING, Narrowing, Replay, merged, tombstone
from asset_service.store.mongo._documents import Doc, asset_to_doc, doc_to_asset, ms

HORIZON_ID = "tombstones"
# Tombstones removed per round of a sweep.
SWEEP_BATCH = 5000
TOMBSTONE_FIELDS = (
    "_id",
    "revision",
    "label",
    "status",
    "type",
    "media_type",
    "created_by_task",
    "tags",
    "created_at",
    "updated_at",
    "created_by",
    "updated_by",
    "deletion_reason",
    "key",
)
# The document field of each of a Narrowing's equalities, in records and tombstones alike.
DOC_FIELD = {"task": "created_by_task", "key": "key", "label": "label", "type": "type"}
TOMBSTONE_INDEXES = (
    # changes_since reads `revision > R` in order; the sweep takes the oldest deletions.
    IndexModel([("revision", ASCENDING)], name="revision", unique=True),
    IndexModel([("deleted_at", ASCENDING)], name="deleted_at"),
)


def tombstone_doc(gone: Asset) -> Doc:
    """tombstone(gone) as a document, stamped with when it was deleted (this server's
    clock: it only decides when the tombstone is swept, to within a sweep)."""
    full = asset_to_doc(tombstone(gone), gone.revision)
    doc = {name: full[name] for name in TOMBSTONE_FIELDS}
    doc["deleted_at"] = ms(datetime.now(UTC))
    return doc


async def keep(
    tombstones: AsyncCollection[Doc], gone: list[Asset], session: AsyncClientSession | None
) -> None:
    """In the deleting transaction: each deleted asset's tombstone (replacing an older one
    of the same id), in ONE command whatever the number of deletes in the batch."""
    if not gone:
        return
    docs = [tombstone_doc(asset) for asset in gone]
    await tombstones.bulk_write(
        [ReplaceOne({"_id": doc["_id"]}, doc, upsert=True) for doc in docs],
        ordered=True,
        session=session,
    )


async def begin_horizon(counters: AsyncCollection[Doc]) -> None:
    """Where tombstones begin: 0 on a new database; on one written by a release that kept
    none, the revision now (deletions before it left no trace). Set once."""
    doc = await counters.find_one({"_id": "revision"})
    now = int(doc["value"]) if doc else 0
    await counters.update_one({"_id": HORIZON_ID}, {"$setOnInsert": {"value": now}}, upsert=True)


def narrowed(where: Doc, narrow: Narrowing) -> Doc:
    """`where`, and what `narrow` requires of a record or a tombstone (the same fields)."""
    for name, value in narrow.equalities().items():
        where[DOC_FIELD[name]] = value
    if narrow.tags:
        where["tags"] = {"$all": list(narrow.tags)}
    return where


async def changes_since(
    assets: AsyncCollection[Doc],
    tombstones: AsyncCollection[Doc],
    counters: AsyncCollection[Doc],
    session: AsyncClientSession | None,
    after: int,
    limit: int,
    projection: dict[str, Any],
    max_time_ms: int,
    narrow: Narrowing = EVERYTHING,
) -> Replay:
    """Records and tombstones above `after` that `narrow` admits (the planner picks the
    index of one of its fields, or the revision one), every read in `session` (one cut)."""
    horizon_doc = await counters.find_one({"_id": HORIZON_ID}, session=session)
    horizon = int(horizon_doc["value"]) if horizon_doc else 0
    if after < horizon:
        raise HistoryGone(after, horizon)
    counter = await counters.find_one({"_id": "revision"}, session=session)
    revision = int(counter["value"]) if counter else 0
    where = narrowed({"revision": {"$gt": after}}, narrow)
    records = [
        Change(ChangeKind.PUT, doc_to_asset(doc))
        async for doc in assets.find(where, projection, session=session)
        .sort("revision", ASCENDING)
        .limit(limit)
        .max_time_ms(max_time_ms)
    ]
    gone = [
        Change(ChangeKind.DELETE, doc_to_asset(doc))
        async for doc in tombstones.find(where, {"deleted_at": 0}, session=session)
        .sort("revision", ASCENDING)
        .limit(limit)
        .max_time_ms(max_time_ms)
    ]
    return merged(records, gone, revision, limit)


async def sweep(
    tombstones: AsyncCollection[Doc], counters: AsyncCollection[Doc], before: datetime
) -> int:
    """Remove the tombstones of deletions before `before`, SWEEP_BATCH at a time in
    revision order, each batch only after the horizon (majority) is raised over it."""
    removed = 0
    while True:
        cursor = (
            tombstones.find({"deleted_at": {"$lt": ms(before)}}, {"revision": 1})
            .sort("revision", ASCENDING)
            .limit(SWEEP_BATCH)
        )
        batch = [int(doc["revision"]) async for doc in cursor]
        if not batch:
            return removed
        top = batch[-1]
        await counters.update_one({"_id": HORIZON_ID}, {"$max": {"value": top}}, upsert=True)
        done = await tombstones.delete_many({"revision": {"$lte": top}})
        removed += done.deleted_count
        if len(batch) < SWEEP_BATCH:
            return removed
