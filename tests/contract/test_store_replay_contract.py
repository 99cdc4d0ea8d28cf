"""The store's changes since a revision, with tombstones: the same contract on every store."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from asset_service.domain.errors import HistoryGone
from asset_service.domain.models import Asset, AssetType, Change, ChangeKind, Failure, Status
from asset_service.domain.reads import slim
from asset_service.domain.replay import EVERYTHING, Narrowing, Replay, tombstone
from tests.contract.conftest import Backend, fresh_ferretdb
from tests.contract.test_store_contract import FULFILL, T0, pending, value_asset


def seen(replay: Replay) -> list[tuple[ChangeKind, str, int]]:
    return [(c.kind, c.asset.id, c.revision) for c in replay.changes]


async def walk(
    backend: Backend, after: int, limit: int, narrow: Narrowing = EVERYTHING
) -> list[tuple[ChangeKind, str, int]]:
    """Every change after `after` that `narrow` admits, a page of `limit` at a time."""
    return seen(Replay(await walk_changes(backend, after, limit, narrow)))


async def walk_changes(
    backend: Backend, after: int, limit: int, narrow: Narrowing = EVERYTHING
) -> list[Change]:
    out: list[Change] = []
    for _ in range(1000):
        replay = await backend.store.changes_since(after, limit, narrow)
        assert len(replay.changes) <= limit
        out += replay.changes
        if not replay.more:
            return out
        after = replay.reaches
    raise AssertionError("the replay did not end")


async def test_changes_since_a_revision_are_each_record_and_each_deletion_once(
    backend: Backend,
) -> None:
    """The latest state of each record changed after R (not its earlier ones), and each
    asset deleted after R as its tombstone, in revision order."""
    store = backend.store
    a, b, c = [await store.insert(pending(tags=("x",))) for _ in range(3)]
    d = await store.insert(value_asset(tags=("y",)))
    start = await store.current_revision()
    assert start == d.revision
    failed_a = await store.transition(a.id, Status.PENDING, Failure("first"), T0)
    gone_b = await store.delete(b.id, by="admin")
    e = await store.insert(pending(label="e.txt"))
    done_c = await store.transition(c.id, Status.PENDING, FULFILL, T0)
    gone_e = await store.delete(e.id, by="cleaner")
    assert gone_b is not None and gone_e is not None
    replay = await store.changes_since(start, 100)
    assert seen(replay) == [
        (ChangeKind.PUT, a.id, failed_a.revision),
        (ChangeKind.DELETE, b.id, gone_b.revision),
        (ChangeKind.PUT, c.id, done_c.revision),
        (ChangeKind.DELETE, e.id, gone_e.revision),
    ]
    assert not replay.more and replay.revision == gone_e.revision == replay.reaches
    cut = await store.snapshot([a.id, c.id])
    puts = [x.asset for x in replay.changes if x.kind is ChangeKind.PUT]
    assert puts == [cut[a.id], cut[c.id]], "a record's state as snapshot() reads it"
    # A tombstone: the last state's selector fields and who deleted it, nothing more.
    tombstones = [x.asset for x in replay.changes if x.kind is ChangeKind.DELETE]
    assert tombstones == [tombstone(gone_b), tombstone(gone_e)]
    assert tombstones[1].updated_by == "cleaner" and tombstones[0].tags == ("x",)
    assert tombstones[1].label == "e.txt" and tombstones[1].created_by_task == "task-1"
    # The value never comes back (d did not change after `start` anyway).
    everything = await store.changes_since(0, 100)
    assert [x.asset.id for x in everything.changes if x.kind is ChangeKind.PUT] == [
        d.id,
        a.id,
        c.id,
    ]
    assert all(x.asset.value is None for x in everything.changes)
    assert everything.changes[0].asset == slim((await store.get_many([d.id]))[d.id])
    assert (await store.changes_since(replay.revision, 100)).changes == []


async def test_a_replay_read_a_page_at_a_time_misses_and_doubles_nothing(
    backend: Backend,
) -> None:
    store = backend.store
    made = [await store.insert(pending()) for _ in range(12)]
    for asset in made[::3]:
        await store.delete(asset.id)
    for asset in made[1::3]:
        await store.transition(asset.id, Status.PENDING, FULFILL, T0)
    whole = await walk(backend, 0, 1000)
    assert len(whole) == 12 and [r for *_, r in whole] == sorted(r for *_, r in whole)
    for limit in (1, 2, 5):
        assert await walk(backend, 0, limit) == whole, limit
    assert await walk(backend, whole[5][2], 3) == whole[6:]


async def test_a_replay_narrowed_to_a_task_holds_its_changes_and_no_others(
    backend: Backend,
) -> None:
    """changes_since(..., Narrowing(task=T)): the records and tombstones of T's assets, the same as
    the whole replay's of T, page by page; the cut's revision is still the store's."""
    store = backend.store
    made = [await store.insert(pending(task=f"t{i % 3}", label=f"o{i}")) for i in range(15)]
    start = made[2].revision
    for asset in made[::4]:
        await store.delete(asset.id)
    for asset in made[1::4]:
        await store.transition(asset.id, Status.PENDING, FULFILL, T0)
    everything = await walk(backend, 0, 1000)
    task_of = {a.id: a.created_by_task for a in made}
    for task in ("t0", "t1", "t2"):
        mine = [c for c in everything if task_of[c[1]] == task]
        narrow = Narrowing(task=task)
        assert mine and await walk(backend, 0, 1000, narrow) == mine, task
        for limit in (1, 2, 3):
            assert await walk(backend, 0, limit, narrow) == mine, (task, limit)
        assert await walk(backend, start, 2, narrow) == [c for c in mine if c[2] > start]
    narrowed = await store.changes_since(0, 1000, Narrowing(task="t1"))
    assert narrowed.revision == await store.current_revision() and not narrowed.more
    assert (await store.changes_since(0, 1000, Narrowing(task="nobody"))).changes == []
    kinds = {c[0] for c in await walk(backend, 0, 1000, Narrowing(task="t0"))}
    assert kinds == {ChangeKind.PUT, ChangeKind.DELETE}, "records and tombstones alike"


# Each narrowing, and what it must keep, said again here rather than by Narrowing.admits.
NARROWINGS: list[tuple[Narrowing, Callable[[Asset], bool]]] = [
    (Narrowing(key="k10"), lambda a: a.key == "k10"),
    (Narrowing(key="k2"), lambda a: a.key == "k2"),
    (Narrowing(label="l1"), lambda a: a.label == "l1"),
    (Narrowing(tags=("g2",)), lambda a: "g2" in a.tags),
    (Narrowing(tags=("g1", "x")), lambda a: {"g1", "x"} <= set(a.tags)),
    (Narrowing(label="l0", tags=("x",)), lambda a: a.label == "l0" and "x" in a.tags),
    (Narrowing(task="t0", label="l2"), lambda a: a.created_by_task == "t0" and a.label == "l2"),
    (Narrowing(key="k10", label="l0"), lambda a: False),
    (Narrowing(type=AssetType.VALUE), lambda a: a.type is AssetType.VALUE),
    (
        Narrowing(label="l1", type=AssetType.FILE),
        lambda a: a.label == "l1" and a.type is AssetType.FILE,
    ),
    (Narrowing(tags=("nobody",)), lambda a: False),
]


async def test_a_replay_narrowed_by_key_label_tags_or_type_is_the_whole_one_filtered(
    backend: Backend,
) -> None:
    """changes_since(..., narrow): exactly the whole replay's records and tombstones whose
    state has the narrowing's fields, in the same order, page by page."""
    store = backend.store
    made: list[Asset] = []
    for i in range(24):
        tags = (f"g{i % 4}", "x") if i % 3 == 0 else (f"g{i % 4}",)
        if i % 6 == 5:
            asset = value_asset(label=f"l{i % 3}", tags=tags)
        else:
            asset = pending(task=f"t{i % 2}", label=f"l{i % 3}", tags=tags)
        made.append(
            await store.insert(dataclasses.replace(asset, key=f"k{i}" if i % 2 == 0 else ""))
        )
    start = made[5].revision
    for asset in made[1::4]:
        if asset.status is Status.PENDING:
            await store.transition(asset.id, Status.PENDING, FULFILL, T0)
    for asset in made[::5]:
        await store.delete(asset.id)
    everything = await walk_changes(backend, 0, 1000)
    assert len(everything) == 24
    for narrow, keeps in NARROWINGS:
        mine = seen(Replay([c for c in everything if keeps(c.asset)]))
        assert await walk(backend, 0, 1000, narrow) == mine, narrow
        for limit in (1, 2, 3):
            assert await walk(backend, 0, limit, narrow) == mine, (narrow, limit)
        assert await walk(backend, start, 2, narrow) == [c for c in mine if c[2] > start]
    # Records and tombstones alike, through each index.
    for narrow in (Narrowing(label="l1"), Narrowing(tags=("g2",))):
        kinds = {c[0] for c in await walk(backend, 0, 1000, narrow)}
        assert kinds == {ChangeKind.PUT, ChangeKind.DELETE}, narrow
    gone = await store.changes_since(0, 1000, Narrowing(key="k10"))
    assert [c.kind for c in gone.changes] == [ChangeKind.DELETE]
    assert gone.revision == await store.current_revision() and not gone.more
    live = await store.changes_since(0, 1000, Narrowing(key="k2"))
    assert [(c.kind, c.asset.id) for c in live.changes] == [(ChangeKind.PUT, made[2].id)]


async def test_swept_tombstones_refuse_a_replay_from_before_them(backend: Backend) -> None:
    store = backend.store
    a, b = await store.insert(pending()), await store.insert(pending())
    start = await store.current_revision()
    gone_a = await store.delete(a.id)
    gone_b = await store.delete(b.id)
    assert gone_a is not None and gone_b is not None
    now = datetime.now(UTC)
    assert await store.sweep_tombstones(now - timedelta(hours=1)) == 0, "too young"
    assert len((await store.changes_since(start, 10)).changes) == 2
    assert await store.sweep_tombstones(now + timedelta(minutes=1)) == 2
    with pytest.raises(HistoryGone) as info:
        await store.changes_since(start, 10)
    assert info.value.floor == gone_b.revision and "tombstones" in info.value.message
    with pytest.raises(HistoryGone):
        await store.changes_since(gone_a.revision, 10)
    assert (await store.changes_since(gone_b.revision, 10)).changes == []
    assert await store.sweep_tombstones(now + timedelta(minutes=1)) == 0
    c = await store.insert(pending())
    assert seen(await store.changes_since(gone_b.revision, 10)) == [
        (ChangeKind.PUT, c.id, c.revision)
    ]


@pytest.mark.needs("snapshot_reads")
async def test_a_replay_is_one_cut_while_writes_land(backend: Backend) -> None:
    """Every change at or below a replay's revision is in it, and none above: a replay
    read in pieces could show a later insert without an earlier one."""
    store = backend.store
    start = await store.current_revision()
    written: list[Asset] = []
    writing = True

    async def insert_many() -> None:
        nonlocal writing
        for i in range(150):
            written.append(await store.insert(pending(label=f"w{i}.txt")))
        writing = False

    replays: list[Replay] = []
    writer = asyncio.create_task(insert_many())
    while writing or len(replays) < 2:
        replays.append(await store.changes_since(start, 1000))
        await asyncio.sleep(0)
    await writer
    for replay in replays:
        expected = [a.revision for a in written if a.revision <= replay.revision]
        assert [c.revision for c in replay.changes] == expected, replay.revision


async def test_a_counter_lost_after_a_delete_never_hands_its_revision_out_again(
    ferretdb_url: str,
) -> None:
    """The delete's revision is on its tombstone: reopening lifts the counter above it.
    Before, a delete that was the last write before the counter was lost had its number
    reused."""
    async with fresh_ferretdb(ferretdb_url) as ferret:
        store = ferret.store
        a = await store.insert(pending())
        gone = await store.delete(a.id)
        assert gone is not None
        await ferret.db["counters"].update_one({"_id": "revision"}, {"$set": {"value": 1}})
        store = await ferret.reopen()
        fresh = await store.insert(pending())
        assert fresh.revision == gone.revision + 1


async def test_a_database_from_before_tombstones_replays_only_from_its_upgrade(
    ferretdb_url: str,
) -> None:
    """Deletions made before tombstones were kept left no trace: replays begin at the
    revision of the first start that keeps them; a new database begins at 0."""
    async with fresh_ferretdb(ferretdb_url) as ferret:
        store = ferret.store
        assert (await store.changes_since(0, 10)).changes == []
        a = await store.insert(pending())
        await store.insert(pending())
        # As an older release left it: no horizon, a delete without a tombstone.
        await ferret.db["counters"].delete_one({"_id": "tombstones"})
        await ferret.db["assets"].delete_one({"_id": a.id})
        upgraded_at = await store.current_revision()
        store = await ferret.reopen()
        with pytest.raises(HistoryGone):
            await store.changes_since(0, 10)
        assert (await store.changes_since(upgraded_at, 10)).changes == []
