"""The assets collection's shape: indexes, the revision floor, change-stream images."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from asset_service.domain.errors import Unavailable
from asset_service.store.mongo._documents import Doc

log = logging.getLogger(__name__)

# Server-side limit of one read (maxTimeMS): below socketTimeoutMS, so the server gives
# up (and frees its resources) before the client does. A client-side operation timeout
# (pymongo.timeout), when one is active, replaces it with the time that is left.
QUERY_MAX_TIME_MS = 15000

# ListAssets reads `seq > token` in `seq` order plus equality on any of these fields:
# each one leads an (field, seq) index, so whatever the filter the planner walks one
# index range in page order (no collection scan, no in-memory sort) and checks the
# other filter fields on the documents it fetches. `revision` serves open()'s floor.
ASSET_INDEXES = (
    IndexModel([("seq", ASCENDING)], name="seq", unique=True),
    IndexModel([("status", ASCENDING), ("seq", ASCENDING)], name="status_seq"),
    IndexModel([("type", ASCENDING), ("seq", ASCENDING)], name="type_seq"),
    IndexModel([("created_by_task", ASCENDING), ("seq", ASCENDING)], name="task_seq"),
    IndexModel([("label", ASCENDING), ("seq", ASCENDING)], name="label_seq"),
    IndexModel([("tags", ASCENDING), ("seq", ASCENDING)], name="tags_seq"),
    IndexModel([("revision", DESCENDING)], name="revision"),
    # The expiry sweep reads `expires_at <= now` in order (a range of dates holds no
    # record without one); a task's holds are released by owner (_retention.py).
    IndexModel([("expires_at", ASCENDING)], name="expires_at"),
    IndexModel([("holds.owner", ASCENDING)], name="holds_owner", sparse=True),
    IndexModel([("key", ASCENDING), ("seq", ASCENDING)], name="key_seq"),
    IndexModel([("sha256", ASCENDING), ("seq", ASCENDING)], name="sha256_seq"),
    # One holder per get-or-create key (issue 24): `key_slot` is set (to the key) only
    # while a record holds its key; sparse, so records holding none are not indexed.
    IndexModel([("key_slot", ASCENDING)], name="key_slot", unique=True, sparse=True),
    # Bytes stored once (issue 24): the records at a storage path are its references
    # (_references.py), read before the bytes go and by a shared write's transaction.
    IndexModel([("storage_path", ASCENDING)], name="storage_path"),
)
# The lease sweep reads `leases` (records of their own, issue 21 item 12) by their end.
LEASE_INDEXES = (IndexModel([("expires_at", ASCENDING)], name="expires_at"),)
# A document of `sweeps` saying the leases of an older release were moved (once).
LEASES_MOVED_ID = "leases-moved"


def _key_list(key: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v if isinstance(v, str) else int(v)) for k, v in key.items()]


def _same_index(wanted: Mapping[str, Any], have: Mapping[str, Any]) -> bool:
    """Same keys in the same order and directions, and unique exactly when wanted."""
    return _key_list(wanted["key"]) == _key_list(have.get("key", {})) and bool(
        wanted.get("unique")
    ) == bool(have.get("unique"))


async def ensure_indexes(
    assets: AsyncCollection[Doc],
    db_name: str,
    wanted_indexes: tuple[IndexModel, ...] = ASSET_INDEXES,
    name: str = "assets",
) -> None:
    """Create the ASSET_INDEXES (or `wanted_indexes` of another collection) that are
    missing; nothing at all when every one exists.

    An index build locks the collection exclusively at its start and end, and even a
    createIndexes that finds everything in place is a write command on the primary:
    so compare with listIndexes (a read) first. An index that holds a wanted NAME with
    other keys or options is not replaced (dropping an index under live traffic is an
    operator's decision): start-up fails and says which one to drop.
    """
    have: list[Mapping[str, Any]] = []
    async with await assets.list_indexes() as cursor:
        async for index in cursor:
            have.append(index)
    missing = []
    for model in wanted_indexes:
        wanted = model.document
        if any(_same_index(wanted, index) for index in have):
            continue
        clash = next((i for i in have if i.get("name") == wanted["name"]), None)
        if clash is not None:
            raise Unavailable(
                f"index {wanted['name']!r} of {db_name}.{name} is "
                f"{dict(clash['key'])} (unique={bool(clash.get('unique'))}), expected "
                f"{dict(wanted['key'])} (unique={bool(wanted.get('unique'))}); drop it "
                f"(db.{name}.dropIndex({wanted['name']!r})) and start again"
            )
        missing.append(model)
    if missing:
        log.info(
            "creating indexes %s on %s.%s",
            ", ".join(m.document["name"] for m in missing),
            db_name,
            name,
        )
        await assets.create_indexes(missing)


async def raise_revision_floor(
    assets: AsyncCollection[Doc], counters: AsyncCollection[Doc], tombstones: AsyncCollection[Doc]
) -> None:
    """Never hand out a revision at or below one already stored (issue 10, item 9).

    The counter document may have been restored from an older backup, or dropped:
    `$max` lifts it (creating it if need be) to the highest revision a record or a
    tombstone holds, and leaves a counter that is already ahead alone (so a concurrent
    `$inc` by another process is never undone). Served by the `revision` indexes: one
    key read each. A delete's revision is on its tombstone until that is swept.
    """
    floor = 0
    for collection in (assets, tombstones):
        top = await collection.find_one(
            {}, {"revision": 1}, sort=[("revision", DESCENDING)], max_time_ms=QUERY_MAX_TIME_MS
        )
        floor = max(floor, int(top.get("revision", 0)) if top is not None else 0)
    await counters.update_one({"_id": "revision"}, {"$max": {"value": floor}}, upsert=True)


async def enable_pre_images(db: AsyncDatabase[Doc]) -> bool:
    """Turn on change-stream pre- and post-images for assets (True if they are on)."""
    try:
        # collMod locks the collection exclusively: only when not enabled already.
        infos = await (await db.list_collections(filter={"name": "assets"})).to_list()
        options = infos[0].get("options", {}) if infos else {}
        if options.get("changeStreamPreAndPostImages", {}).get("enabled") is True:
            return True
        await db.command("collMod", "assets", changeStreamPreAndPostImages={"enabled": True})
        return True
    except PyMongoError as exc:
        log.info("change stream pre-images unavailable (%s); deletes carry id and revision", exc)
        return False


async def prepare_leases(
    assets: AsyncCollection[Doc],
    leases: AsyncCollection[Doc],
    sweeps: AsyncCollection[Doc],
    db_name: str,
) -> None:
    """The `leases` index, and (once) a lease record for each PENDING promise an older
    release kept its lease in: its last end, as the asset record holds it."""
    await ensure_indexes(leases, db_name, LEASE_INDEXES, "leases")
    if await sweeps.find_one({"_id": LEASES_MOVED_ID}) is not None:
        return
    moved = 0
    cursor = assets.find(
        {"status": "PENDING", "lease_seconds": {"$gt": 0}, "lease_expires_at": {"$ne": None}},
        {"lease_seconds": 1, "lease_expires_at": 1},
    )
    async for doc in cursor:
        await leases.update_one(
            {"_id": doc["_id"]},
            {
                "$setOnInsert": {
                    "expires_at": doc["lease_expires_at"],
                    "seconds": doc["lease_seconds"],
                    "renewed_by": "",
                }
            },
            upsert=True,
        )
        moved += 1
    await sweeps.update_one({"_id": LEASES_MOVED_ID}, {"$set": {"moved": moved}}, upsert=True)
    if moved:
        log.info("moved the leases of %d PENDING promises into %s.leases", moved, db_name)
