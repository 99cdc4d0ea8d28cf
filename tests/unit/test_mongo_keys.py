"""MongoStore's get-or-create keys on the fake replica set (issue 24): a keyed insert in a
group transaction that hits the sparse unique index key_slot fails alone, as KeyTaken."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from asset_service.domain.errors import Conflict, KeyTaken
from asset_service.domain.models import Asset, Failure, Status
from asset_service.store.mongo import MongoStore
from tests.unit.mongo_fake import Server
from tests.unit.test_mongo_group_writes import NOW, new
from tests.unit.test_mongo_group_writes import server as server  # fixture
from tests.unit.test_mongo_group_writes import store as store  # fixture


def keyed(label: str, key: str = "k1") -> Asset:
    return dataclasses.replace(new(label), key=key)


async def test_keyed_inserts_in_one_batch_have_one_holder(
    server: Server, store: MongoStore
) -> None:
    busy = asyncio.create_task(store.insert(new("first")))  # the rest queue behind it
    await asyncio.sleep(0)
    results = await asyncio.gather(
        *(store.insert(keyed(f"k{i}")) for i in range(5)),
        store.insert(new("plain")),
        store.insert(keyed("other", key="k2")),
        return_exceptions=True,
    )
    await busy
    won = [r for r in results[:5] if isinstance(r, Asset)]
    assert len(won) == 1 and all(isinstance(r, KeyTaken) for r in results[:5] if r not in won)
    assert isinstance(results[5], Asset) and isinstance(results[6], Asset)
    docs = server.documents("assets")
    assert sorted(d["key_slot"] for d in docs.values() if "key_slot" in d) == ["k1", "k2"]
    holder = await store.key_holder("k1")
    assert holder is not None and holder.id == won[0].id and holder.key == "k1"


async def test_release_takes_no_revision_and_frees_the_key(
    server: Server, store: MongoStore
) -> None:
    first = await store.insert(keyed("a"))
    await store.transition(first.id, Status.PENDING, Failure("died"), NOW)
    revision = server.documents("counters")["revision"]["value"]
    assert not await store.release_key(first.id, "k2")
    assert await store.release_key(first.id, "k1")
    assert server.documents("counters")["revision"]["value"] == revision
    doc = server.documents("assets")[first.id]
    assert "key_slot" not in doc and doc["key"] == "k1" and doc["revision"] == revision
    assert await store.key_holder("k1") is None
    second = await store.insert(keyed("b"))
    with pytest.raises(Conflict):
        await store.insert(keyed("c"))
    holder = await store.key_holder("k1")
    assert holder is not None and holder.id == second.id
