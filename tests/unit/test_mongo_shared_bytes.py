"""MongoStore's shared writes (issue 24 item 2) on the fake replica set: the batch's share
step finds a live record at the path and touches it (no revision, no change), and a refused
shared write leaves the batch's other writes and the accounting as if it was never sent."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from asset_service.domain.errors import SharedBytesGone
from asset_service.domain.models import Asset, AssetType, Fulfillment, Status
from asset_service.store.mongo import MongoStore
from asset_service.store.mongo._references import TOUCH_FIELD
from tests.unit.mongo_fake import Server
from tests.unit.test_mongo_group_writes import NOW, new
from tests.unit.test_mongo_group_writes import server as server  # fixture
from tests.unit.test_mongo_group_writes import store as store  # fixture

PATH = "s3://bucket/uploads/2026-05-06/x/data.bin"


def counted(server: Server) -> dict[str, int]:
    """Records by status, as the accounting (group "all") keeps them."""
    cells = server.documents("usage").values()
    return {c["status"]: c["count"] for c in cells if c["grp"] == "all" and c["status"]}


def at_path(label: str, path: str = PATH) -> Asset:
    return dataclasses.replace(
        new(label),
        status=Status.AVAILABLE,
        type=AssetType.FILE,
        storage_path=path,
        size_bytes=3,
        sha256="ab" * 32,
    )


async def test_a_shared_insert_touches_its_reference_without_a_revision(
    server: Server, store: MongoStore
) -> None:
    source = await store.insert(at_path("first"))
    shared = await store.insert(at_path("again"), shared=True)
    assert shared.storage_path == source.storage_path
    doc = server.documents("assets")[source.id]
    # Written (so a racing delete of it conflicts), but no change: same revision.
    assert doc[TOUCH_FIELD] == 1 and doc["revision"] == source.revision
    assert await store.get(source.id) == source
    assert await store.referenced([PATH, PATH + ".none"]) == {PATH}


async def test_a_refused_shared_write_leaves_its_batch_and_accounting_alone(
    server: Server, store: MongoStore
) -> None:
    busy = asyncio.create_task(store.insert(new("first")))  # the rest queue behind it
    await asyncio.sleep(0)
    promise = new("promise")
    results = await asyncio.gather(
        store.insert(at_path("orphan"), shared=True),
        store.insert(at_path("plain", PATH + ".own")),
        store.insert(promise),
        return_exceptions=True,
    )
    await busy
    assert isinstance(results[0], SharedBytesGone), results
    assert isinstance(results[1], Asset) and isinstance(results[2], Asset)
    assert counted(server) == {"PENDING": 2, "AVAILABLE": 1}
    assert await store.referenced([PATH]) == set()
    change = Fulfillment(size_bytes=3, sha256="ab" * 32, storage_path=PATH)
    with pytest.raises(SharedBytesGone):
        await store.transition(promise.id, Status.PENDING, change, NOW, shared=True)
    assert counted(server)["AVAILABLE"] == 1
    await store.insert(at_path("source"))
    done = await store.transition(promise.id, Status.PENDING, change, NOW, shared=True)
    assert (done.status, done.storage_path) == (Status.AVAILABLE, PATH)
    assert counted(server) == {"PENDING": 1, "AVAILABLE": 3}


async def test_a_shared_write_and_the_delete_of_its_reference_in_one_batch(
    server: Server, store: MongoStore
) -> None:
    """The share step runs before the batch's deletes: the new record applies, and the
    deleter's read after its commit sees it (the bytes stay)."""
    source = await store.insert(at_path("first"))
    busy = asyncio.create_task(store.insert(new("busy")))
    await asyncio.sleep(0)
    shared, gone = await asyncio.gather(
        store.insert(at_path("again"), shared=True), store.delete(source.id)
    )
    await busy
    assert isinstance(shared, Asset) and gone is not None and gone.id == source.id
    assert await store.referenced([PATH]) == {PATH}
