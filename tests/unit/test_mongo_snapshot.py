"""MongoStore.snapshot at the driver boundary: one snapshot session, no values, errors.

No server runs here: the store keeps its real AsyncMongoClient and real sessions; the
assets collection is a fake that records what each find was given. That the server then
reads every batch at one majority-committed cluster time is MongoDB's documented
semantics of `snapshot=True` sessions, checked on a replica set by the contract case
`test_snapshot_is_one_point_in_time_while_writes_land` (MONGODB_URI).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import OperationFailure

from asset_service.domain.errors import Unavailable
from asset_service.store.mongo import MongoStore
from asset_service.store.mongo._documents import asset_to_doc
from tests.unit.test_mongo_writes import ASSET, closed_port


class FakeCursor:
    def __init__(self, docs: list[dict[str, Any]], error: Exception | None) -> None:
        self.docs, self.error = docs, error
        self.max_time: int | None = None

    def max_time_ms(self, ms: int) -> FakeCursor:
        self.max_time = ms
        return self

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        for doc in self.docs:
            yield doc

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()


class FakeAssets:
    def __init__(self, error: Exception | None = None) -> None:
        self.finds: list[tuple[dict[str, Any], dict[str, Any], AsyncClientSession | None]] = []
        self.cursors: list[FakeCursor] = []
        self.error = error

    def find(
        self,
        where: dict[str, Any],
        projection: dict[str, Any],
        session: AsyncClientSession | None = None,
    ) -> FakeCursor:
        self.finds.append((where, projection, session))
        ids = where["_id"]["$in"]
        docs = [{**asset_to_doc(ASSET, 5), "_id": i} for i in ids]
        for doc in docs:  # what the projection leaves out never comes back
            for field in projection:
                doc.pop(field, None)
        cursor = FakeCursor(docs, self.error)
        self.cursors.append(cursor)
        return cursor


def store_with(assets: FakeAssets, *, transactions: bool = True) -> MongoStore:
    store = MongoStore(f"mongodb://127.0.0.1:{closed_port()}/db")
    store._assets = assets  # type: ignore[assignment]
    store._transactions = transactions
    return store


async def test_every_find_of_one_cut_runs_in_one_snapshot_session() -> None:
    assets = FakeAssets()
    store = store_with(assets)
    ids = [f"id-{n:04d}" for n in range(1500)]
    try:
        cut = await store.snapshot(ids)
    finally:
        await store.close()
    assert set(cut) == set(ids)
    assert [len(w["_id"]["$in"]) for w, _, _ in assets.finds] == [1000, 500]
    sessions = {id(s) for _, _, s in assets.finds}
    session = assets.finds[0][2]
    assert len(sessions) == 1 and session is not None, "one session for the whole cut"
    # snapshot=True: the driver reads every find (and getMore) of this session at the
    # cluster time of the first: readConcern {level: "snapshot", atClusterTime}.
    assert session.options.snapshot is True
    assert session.options.causal_consistency is False
    assert session.has_ended, "the session ends with the cut"
    # No value bytes are read; every query is bounded on the server.
    for _, projection, _ in assets.finds:
        assert projection == {"value_content": 0, "value_kind": 0, "block_sums": 0, "holds": 0}
    assert all(c.max_time is not None and c.max_time > 0 for c in assets.cursors)
    assert all(a.value is None for a in cut.values())


async def test_without_transactions_the_cut_is_plain_reads() -> None:
    """allow_standalone (FerretDB): there are no snapshot sessions to use."""
    assets = FakeAssets()
    store = store_with(assets, transactions=False)
    try:
        await store.snapshot(["a", "b"])
    finally:
        await store.close()
    assert [s for _, _, s in assets.finds] == [None]


@pytest.mark.parametrize(("code", "name"), [(239, "SnapshotTooOld"), (246, "SnapshotUnavailable")])
async def test_a_snapshot_the_server_cannot_give_is_unavailable(code: int, name: str) -> None:
    """A cut older than minSnapshotHistoryWindowInSeconds: the watcher retries anew."""
    store = store_with(FakeAssets(OperationFailure(name, code=code)))
    try:
        with pytest.raises(Unavailable, match=name):
            await store.snapshot(["a"])
    finally:
        await store.close()


async def test_an_empty_cut_sends_nothing() -> None:
    assets = FakeAssets()
    store = store_with(assets)
    try:
        assert await store.snapshot([]) == {}
    finally:
        await store.close()
    assert assets.finds == []


class OldServer:
    """A replica set member that says it speaks an older wire version."""

    def __init__(self, wire: int) -> None:
        self.admin = self
        self.closed = False
        self.wire = wire

    async def command(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"setName": "rs0", "isWritablePrimary": True, "maxWireVersion": self.wire}

    async def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("wire", [9, 13, 16], ids=["4.4", "5.0", "5.3"])
async def test_a_server_older_than_6_0_is_refused_at_open_with_why(wire: int) -> None:
    """Watch events are built from change-stream post-images (6.0+, issue 21 item 1)."""
    store = MongoStore(f"mongodb://127.0.0.1:{closed_port()}/db")
    await store._client.close()
    old = OldServer(wire)
    store._client = old  # type: ignore[assignment]
    with pytest.raises(Unavailable, match=r"older than 6\.0.*post-images"):
        await store.open()
    assert old.closed


class FakePageCursor(FakeCursor):
    def sort(self, key: str, direction: int) -> FakePageCursor:
        return self

    def limit(self, n: int) -> FakePageCursor:
        return self

    async def close(self) -> None:
        return None


class FakePageAssets:
    """The assets collection as ListAssets uses it: find(where, session=...)."""

    def __init__(self) -> None:
        self.sessions: list[AsyncClientSession | None] = []

    def find(
        self,
        where: dict[str, Any],
        projection: dict[str, Any] | None = None,
        session: AsyncClientSession | None = None,
    ) -> FakePageCursor:
        self.sessions.append(session)
        return FakePageCursor([{**asset_to_doc(ASSET, 5), "seq": 1}], None)


class FakeCounters:
    def __init__(self) -> None:
        self.sessions: list[AsyncClientSession | None] = []

    async def find_one(
        self, where: dict[str, Any], session: AsyncClientSession | None = None
    ) -> dict[str, Any]:
        self.sessions.append(session)
        return {"_id": "revision", "value": 42}


@pytest.mark.parametrize("transactions", [True, False])
async def test_a_page_and_the_counter_are_read_in_one_snapshot_session(
    transactions: bool,
) -> None:
    """ListAssets' revision: the counter and the page at one cluster time (plain reads
    without transactions, as on FerretDB)."""
    from asset_service.domain.models import AssetFilter

    assets, counters = FakePageAssets(), FakeCounters()
    store = store_with(assets, transactions=transactions)  # type: ignore[arg-type]
    store._counters = counters  # type: ignore[assignment]
    try:
        page = await store.query(AssetFilter(), 10, "")
    finally:
        await store.close()
    assert page.revision == 42 and len(page.assets) == 1
    session = counters.sessions[0]
    assert assets.sessions == [session]
    if transactions:
        assert session is not None and session.options.snapshot is True
        assert session.has_ended
    else:
        assert session is None
