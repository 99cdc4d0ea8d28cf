"""Unknown commit outcomes settled by what will stay, not by what the primary shows.

Issue 21 item 3, on the fake replica set (tests/unit/mongo_fake): the real Committer
publishes bytes and writes their record through a real MongoStore; the commit applies on
the primary and then its outcome is unknown to the store. Bytes are kept while that is
unknown, kept when a majority holds the record, and removed when a failover rolled it
back, or when the commit was killed before it could arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from asset_service.domain.commits import Committer, Handover
from asset_service.domain.errors import OutcomeUnknown
from asset_service.domain.models import Asset, AssetFilter, BlockSums, Status, new_asset_id
from asset_service.store.mongo import MongoStore
from tests.unit.mongo_fake import Server
from tests.unit.test_mongo_group_writes import process
from tests.unit.test_mongo_group_writes import server as server  # fixture
from tests.unit.test_mongo_writes import ASSET


class Blob:
    """A staged blob that records how its life ended."""

    size_bytes = 3
    sha256 = "abc"
    block_sums = BlockSums(1024, b"")

    def __init__(self) -> None:
        self.ended: str | None = None

    async def commit(self, key: str) -> str:
        return f"/stored/{key}"

    async def finish(self) -> None:
        self.ended = "kept"

    async def rollback(self) -> None:
        self.ended = "removed"

    def discard(self) -> None:
        self.ended = "removed"

    def abandon(self) -> None:
        self.ended = "abandoned"


@pytest.fixture
async def store(server: Server) -> AsyncIterator[MongoStore]:
    one = process(server, timeout=0.5)
    yield one
    await one.close()


async def publish(store: MongoStore, blob: Blob) -> tuple[Committer, Asset | BaseException]:
    committer = Committer(store)
    asset_id = new_asset_id()

    async def write(path: str) -> Asset:
        available = Asset(
            **{
                **ASSET.__dict__,
                "id": asset_id,
                "status": Status.AVAILABLE,
                "storage_path": path,
                "size_bytes": 3,
            }
        )
        return await store.insert(available)

    try:
        return committer, await committer.publish(Handover(blob), asset_id, f"k/{asset_id}", write)
    except BaseException as exc:  # the outcome under test
        return committer, exc


async def test_bytes_are_kept_while_the_outcome_is_unknown_then_removed_after_a_rollback(
    server: Server, store: MongoStore
) -> None:
    server.replicate = False  # the commit applies on the primary only
    blob = Blob()
    committer, outcome = await publish(store, blob)
    # The primary shows the record (a local read would call it a success), but no
    # majority has it: the caller hears OutcomeUnknown and the bytes stay.
    assert isinstance(outcome, OutcomeUnknown), outcome
    assert len(server.documents("assets", at="local")) == 1
    assert blob.ended is None and len(committer.unsettled) == 1
    assert await committer.settle() == 0, "nothing can be known while no majority answers"
    assert blob.ended is None
    server.fail_over()  # the primary dies before replicating: its commit is rolled back
    server.replicate = True
    assert await committer.settle() == 1
    assert blob.ended == "removed" and committer.unsettled == []
    assert server.documents("assets", at="majority") == {}


async def test_bytes_are_kept_when_a_majority_holds_the_record(
    server: Server, store: MongoStore
) -> None:
    server.replicate = False
    blob = Blob()
    committer, outcome = await publish(store, blob)
    assert isinstance(outcome, OutcomeUnknown)
    server.replicate = True
    server.commit_point = server.optime  # the secondaries catch up
    assert await committer.settle() == 1
    assert blob.ended == "kept"
    (record,) = server.documents("assets", at="majority").values()
    assert record["storage_path"].startswith("/stored/k/")


async def test_a_commit_still_on_its_way_is_killed_before_the_record_is_read(
    server: Server, store: MongoStore
) -> None:
    """The reply to commitTransaction is lost and the command reaches the server later.
    Reading first and deciding would race it; the doubtful session is killed first, so
    whatever the read says stays true."""
    server.late_commits = 0.8  # later than the write's whole 0.5 s
    blob = Blob()
    committer, outcome = await publish(store, blob)
    assert isinstance(outcome, OutcomeUnknown), outcome
    server.late_commits = None
    await committer.settle()
    await asyncio.sleep(1.0)  # the late commit arrives (and finds its transaction gone)
    records = server.documents("assets", at="local")
    kept = blob.ended == "kept"
    assert kept == bool(records), (blob.ended, records)


async def test_get_asset_and_list_assets_agree_on_a_lagging_majority(
    server: Server, store: MongoStore
) -> None:
    """Issue 21 item 10: reads are at majority, so GetAsset never shows a record that
    ListAssets (and watch snapshots) do not, nor one a failover may roll back."""
    store._transactions = False  # plain reads here: the point is the read concern
    server.replicate = False
    server.optime += 1
    doc = {
        "_id": ASSET.id,
        "seq": 1,
        "revision": 1,
        "status": "PENDING",
        "label": ASSET.label,
        "type": "FILE",
        "created_at": ASSET.created_at,
        "updated_at": ASSET.updated_at,
    }
    server.versions.setdefault("assets", {})[ASSET.id] = [(server.optime, doc)]
    assert await store.get(ASSET.id) is None
    assert (await store.query(AssetFilter(), 10, "")).assets == []
    server.commit_point = server.optime
    got = await store.get(ASSET.id)
    assert got is not None and got.revision == 1
    assert [a.id for a in (await store.query(AssetFilter(), 10, "")).assets] == [ASSET.id]
