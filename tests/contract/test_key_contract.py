"""Get-or-create keys (issue 24 item 1), one contract over every store.

The store keeps one holder per key: a keyed insert takes the key or writes nothing
(KeyTaken); release_key lets a holder go without a revision. Over that, the AssetManager's
get_or_create_pending answers HIT, JOIN or PRODUCE with exactly one producer per key, here
with two managers (two servers: their own locks, one store and one storage) racing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asset_service.domain.errors import Conflict, InvalidArgument, KeyTaken
from asset_service.domain.manager import AssetManager, KeyAnswer, KeyOutcome, Limits
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    ChangeKind,
    Corruption,
    Failure,
    Fulfillment,
    Status,
    UploadHeader,
    new_asset_id,
)
from asset_service.storage.memory import MemoryState, MemoryStorage
from asset_service.store.memory import MemoryStore
from asset_service.store.sqlite import SqliteStore
from tests.contract.conftest import Backend
from tests.contract.test_store_contract import T0
from tests.records import pending_record

KEY = "build:v1/sha256=ab12cd"


def keyed(key: str = KEY, task: str = "task-1") -> Asset:
    return dataclasses.replace(pending_record(task=task, at=T0), key=key)


# --- the store: one holder per key ---------------------------------------------------------


async def test_a_keyed_insert_takes_the_key_once(backend: Backend) -> None:
    store = backend.store
    first = await store.insert(keyed())
    assert first.key == KEY
    holder = await store.key_holder(KEY)
    assert holder is not None and holder.id == first.id and holder.key == KEY
    revision = await store.current_revision()
    with pytest.raises(KeyTaken):
        await store.insert(keyed())
    # Nothing was written: no record, no revision (without transactions, FerretDB, the
    # batch's counter step stands: a revision is skipped, never reused).
    if "transactions" not in backend.lacks:
        assert await store.current_revision() == revision
    page = await store.query(AssetFilter(key=KEY), 10, "")
    assert [a.id for a in page.assets] == [first.id]
    assert await store.key_holder("other-key") is None
    # Records without a key hold none, however many there are.
    await store.insert(pending_record(at=T0))
    await store.insert(pending_record(at=T0))


async def test_release_lets_the_key_go_without_a_revision(backend: Backend) -> None:
    store = backend.store
    first = await store.insert(keyed())
    failed = await store.transition(first.id, Status.PENDING, Failure("boom"), T0)
    # A FAILED holder still holds the key until it is let go (get-or-create does).
    holder = await store.key_holder(KEY)
    assert holder is not None and holder.id == first.id
    revision = await store.current_revision()
    assert not await store.release_key(first.id, "another-key")
    assert await store.release_key(first.id, KEY)
    assert not await store.release_key(first.id, KEY)  # once
    assert await store.current_revision() == revision
    assert await store.get(first.id) == failed  # the record itself is unchanged
    assert await store.key_holder(KEY) is None
    second = await store.insert(keyed())
    holder = await store.key_holder(KEY)
    assert holder is not None and holder.id == second.id
    # Listing by key shows every asset made for it; the other filters still apply.
    listed = await store.query(AssetFilter(key=KEY), 10, "")
    assert [a.id for a in listed.assets] == [first.id, second.id]
    only_failed = await store.query(AssetFilter(key=KEY, status=Status.FAILED), 10, "")
    assert [a.id for a in only_failed.assets] == [first.id]
    # A release by an id that does not hold it changes nothing.
    assert not await store.release_key(first.id, KEY)
    holder = await store.key_holder(KEY)
    assert holder is not None and holder.id == second.id


async def test_a_deleted_holder_frees_its_key_and_its_tombstone_keeps_it(
    backend: Backend,
) -> None:
    store = backend.store
    first = await store.insert(keyed())
    after = await store.current_revision()
    await store.delete(first.id)
    assert await store.key_holder(KEY) is None
    second = await store.insert(keyed())
    replay = await store.changes_since(after, 10)
    deleted = [c for c in replay.changes if c.kind is ChangeKind.DELETE]
    assert [c.asset.key for c in deleted] == [KEY]
    assert [c.asset.key for c in replay.changes if c.kind is ChangeKind.PUT] == [KEY]
    holder = await store.key_holder(KEY)
    assert holder is not None and holder.id == second.id


async def test_listing_by_sha256(backend: Backend) -> None:
    store = backend.store
    a = await store.insert(pending_record(at=T0))
    done = Fulfillment(size_bytes=5, sha256="cd" * 32, storage_path="/data/generated/t/x")
    await store.transition(a.id, Status.PENDING, done, T0)
    await store.insert(pending_record(at=T0))
    page = await store.query(AssetFilter(sha256="cd" * 32), 10, "")
    assert [x.id for x in page.assets] == [a.id]
    assert (await store.query(AssetFilter(sha256="ef" * 32), 10, "")).assets == []


async def test_racing_keyed_inserts_have_one_winner(backend: Backend) -> None:
    store = backend.store

    async def one() -> str:
        try:
            return (await store.insert(keyed())).id
        except KeyTaken:
            return ""

    won = [w for w in await asyncio.gather(*(one() for _ in range(50))) if w]
    assert len(won) == 1
    holder = await store.key_holder(KEY)
    assert holder is not None and holder.id == won[0]
    assert len((await store.query(AssetFilter(key=KEY), 100, "")).assets) == 1


# --- get-or-create over the store: two servers --------------------------------------------


@dataclasses.dataclass
class Servers:
    one: AssetManager
    two: AssetManager


@pytest.fixture
async def servers(backend: Backend) -> AsyncIterator[Servers]:
    state = MemoryState()
    storages = [MemoryStorage(state), MemoryStorage(state)]
    for storage in storages:
        await storage.open()
    managers = [AssetManager(backend.store, s, Limits()) for s in storages]
    try:
        yield Servers(*managers)
    finally:
        for storage in storages:
            await storage.close()


async def get_or_create(manager: AssetManager, key: str = KEY, lease: int = 0) -> KeyAnswer:
    return await manager.get_or_create_pending(
        key, "task-1", "out.bin", "", AssetType.FILE, (), lease_seconds=lease, by="orch"
    )


async def upload_into(manager: AssetManager, asset_id: str, data: bytes) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    await manager.upload(UploadHeader(pending_asset_id=asset_id), chunks(), by="worker")


async def test_produce_then_join_then_hit(servers: Servers) -> None:
    first = await get_or_create(servers.one)
    assert first.outcome is KeyOutcome.PRODUCE
    promise = first.asset
    assert promise.status is Status.PENDING and promise.key == KEY
    joined = await get_or_create(servers.two)
    assert joined.outcome is KeyOutcome.JOIN
    assert joined.asset.id == promise.id
    await upload_into(servers.two, promise.id, b"produced once")
    hit = await get_or_create(servers.one)
    assert hit.outcome is KeyOutcome.HIT
    assert hit.asset.id == promise.id and hit.asset.status is Status.AVAILABLE
    assert hit.asset.size_bytes == len(b"produced once")


async def test_a_failed_or_deleted_holder_does_not_block(servers: Servers) -> None:
    first = (await get_or_create(servers.one)).asset
    await servers.one.fail(first.id, "the task crashed")
    second = await get_or_create(servers.two)
    assert second.outcome is KeyOutcome.PRODUCE
    assert second.asset.id != first.id
    await servers.two.delete(second.asset.id)
    third = await get_or_create(servers.one)
    assert third.outcome is KeyOutcome.PRODUCE
    assert third.asset.id not in (first.id, second.asset.id)
    assert (await get_or_create(servers.two)).outcome is KeyOutcome.JOIN


async def test_a_hit_whose_bytes_are_gone_or_corrupt_is_a_miss(
    servers: Servers, backend: Backend
) -> None:
    made = (await get_or_create(servers.one)).asset
    await upload_into(servers.one, made.id, b"some bytes")
    stored = await backend.store.get(made.id)
    assert stored is not None
    await servers.one.storage.remove(stored.storage_path)  # bytes gone behind its back
    again = await get_or_create(servers.two)
    assert again.outcome is KeyOutcome.PRODUCE
    await upload_into(servers.two, again.asset.id, b"other bytes")
    await backend.store.transition(
        again.asset.id,
        Status.AVAILABLE,
        Corruption("block 0 does not match"),
        T0,
    )
    third = await get_or_create(servers.one)
    assert third.outcome is KeyOutcome.PRODUCE
    assert third.asset.id not in (made.id, again.asset.id)


async def test_a_run_out_lease_is_failed_and_taken_over(servers: Servers, backend: Backend) -> None:
    """Real time: on MongoDB the database's clock judges leases (1 s here)."""
    first = (await get_or_create(servers.one, lease=1)).asset
    assert (await get_or_create(servers.two, lease=1)).outcome is KeyOutcome.JOIN
    await asyncio.sleep(1.2)  # past its end: the producer stopped renewing
    taken = await get_or_create(servers.two, lease=5)
    assert taken.outcome is KeyOutcome.PRODUCE and taken.asset.id != first.id
    old = await backend.store.get(first.id)
    assert old is not None and old.status is Status.FAILED
    assert old.failure_reason.startswith("lease expired") and old.updated_by == "lease"
    assert (await get_or_create(servers.one, lease=5)).outcome is KeyOutcome.JOIN


async def test_a_hundred_get_or_creates_on_two_servers_have_one_producer(
    servers: Servers,
) -> None:
    calls = [get_or_create(servers.one if i % 2 else servers.two) for i in range(100)]
    answers = await asyncio.gather(*calls)
    producers = [a for a in answers if a.outcome is KeyOutcome.PRODUCE]
    assert len(producers) == 1
    ids = {a.asset.id for a in answers}
    assert ids == {producers[0].asset.id}
    assert {a.outcome for a in answers} == {KeyOutcome.PRODUCE, KeyOutcome.JOIN}


@pytest.mark.parametrize(
    "key",
    ["", "-leading-dash", "has space", "x" * 257, "tab\tkey", "ключ"],
)
async def test_bad_keys_are_invalid_arguments(servers: Servers, key: str) -> None:
    with pytest.raises(InvalidArgument, match="key"):
        await get_or_create(servers.one, key)


async def test_two_servers_on_one_sqlite_file_have_one_producer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stores (two connections, two writer threads) on one database file, as two
    processes would be if the file lock let them: only the unique index stands between
    them. (A real second process is refused by that lock: SqliteStore serves one.)"""
    db = tmp_path / "shared.db"
    first = SqliteStore(db)
    await first.open()
    monkeypatch.setattr(SqliteStore, "_claim", lambda self: None)
    second = SqliteStore(db)
    await second.open()
    state = MemoryState()
    managers = [AssetManager(store, MemoryStorage(state), Limits()) for store in (first, second)]
    for manager in managers:
        await manager.storage.open()
    try:
        answers = await asyncio.gather(*(get_or_create(managers[i % 2]) for i in range(100)))
        producers = [a for a in answers if a.outcome is KeyOutcome.PRODUCE]
        assert len(producers) == 1
        assert {a.asset.id for a in answers} == {producers[0].asset.id}
        assert len((await first.query(AssetFilter(key=KEY), 100, "")).assets) == 1
    finally:
        for manager in managers:
            await manager.storage.close()
        await second.close()
        await first.close()


async def test_a_key_that_keeps_changing_hands_ends_in_aborted() -> None:
    """Every round finds a holder that cannot serve and loses the insert to another: the
    call gives up (Conflict: ABORTED, retry) instead of looping forever."""

    class Thrashing(MemoryStore):
        async def insert(self, asset: Asset, *, shared: bool = False) -> Asset:
            if asset.key:
                stale = await super().insert(dataclasses.replace(asset, id=new_asset_id()))
                await self.transition(stale.id, Status.PENDING, Failure("died"), T0)
                raise KeyTaken(asset.key)
            return await super().insert(asset)

    store = Thrashing()
    await store.open()
    storage = MemoryStorage(MemoryState())
    await storage.open()
    manager = AssetManager(store, storage, Limits())
    with pytest.raises(Conflict, match="changed hands 8 times"):
        await get_or_create(manager)
