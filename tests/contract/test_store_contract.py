"""One MetadataStore contract, run against every backend (see conftest.py for which ran)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from asset_service.domain.errors import Conflict, InvalidArgument, NotFound, Unavailable
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    BlockSums,
    Change,
    ChangeKind,
    Corruption,
    Failure,
    Fulfillment,
    Status,
    Value,
    ValueKind,
    new_asset_id,
)
from asset_service.store.mongo import MongoStore
from asset_service.store.mongo._schema import ASSET_INDEXES
from asset_service.store.mongo._tombstones import TOMBSTONE_INDEXES
from tests.contract.conftest import Backend, _drop, _fresh_database, fresh_ferretdb
from tests.feeds import take
from tests.records import make_record, pending_record

T0 = datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)


def pending(label: str = "out.txt", task: str = "task-1", tags: tuple[str, ...] = ()) -> Asset:
    return pending_record(label=label, task=task, tags=tags, at=T0)


def value_asset(label: str = "v.json", tags: tuple[str, ...] = ()) -> Asset:
    return make_record(
        Status.AVAILABLE,
        AssetType.VALUE,
        "application/json",
        label=label,
        at=T0,
        value=Value(ValueKind.JSON, b'{"k": [1, 2]}'),
        size_bytes=13,
        sha256="ab" * 32,
        tags=tags,
    )


FULFILL = Fulfillment(
    size_bytes=5,
    sha256="cd" * 32,
    storage_path="/data/generated/task-1/x",
    fulfilled_from="/worker/x",
    media_type="text/csv",
)

# --- records ---------------------------------------------------------------------------


async def test_a_store_with_room_holds_no_write_back(backend: Backend) -> None:
    """check_room answers without error while writes fit (SQLite's full disk: test_sqlite_full)."""
    await backend.store.check_room()
    await backend.store.insert(value_asset())
    await backend.store.check_room()


async def test_insert_then_get_and_get_many(backend: Backend) -> None:
    store = backend.store
    a = await store.insert(pending(tags=("raw-upload", "user-id-5")))
    b = await store.insert(value_asset())
    assert a.revision > 0 and b.revision > a.revision
    got = await store.get(a.id)
    assert got == a
    assert got.tags == ("raw-upload", "user-id-5")
    assert got.created_at == T0 and got.created_at.tzinfo is not None
    got_b = await store.get(b.id)
    assert got_b == b
    assert got_b.value == Value(ValueKind.JSON, b'{"k": [1, 2]}')
    assert await store.get(new_asset_id()) is None
    many = await store.get_many([a.id, b.id, new_asset_id()])
    assert many == {a.id: a, b.id: b}
    assert await store.get_many([]) == {}


async def test_settled_records_are_what_every_write_left(backend: Backend) -> None:
    """settled(): the records as they will stay, once every write sent has its outcome
    (what bytes of an unknown commit are kept or removed by)."""
    store = backend.store
    a, b = await store.insert(pending()), await store.insert(value_asset())
    gone = await store.insert(pending())
    await store.delete(gone.id)
    failed = await store.transition(a.id, Status.PENDING, Failure("x"), T0)
    settled = await store.settled([a.id, b.id, gone.id, new_asset_id(), a.id])
    assert settled == {a.id: failed, b.id: b}
    assert await store.settled([]) == {}


async def test_insert_existing_id_is_a_conflict(backend: Backend) -> None:
    a = await backend.store.insert(pending())
    with pytest.raises(Conflict):
        await backend.store.insert(a)


async def test_revision_grows_with_every_change_across_assets(backend: Backend) -> None:
    store = backend.store
    seen = []
    a = await store.insert(pending())
    seen.append(a.revision)
    b = await store.insert(pending())
    seen.append(b.revision)
    seen.append((await store.transition(b.id, Status.PENDING, FULFILL, T0)).revision)
    seen.append((await store.transition(a.id, Status.PENDING, Failure("x"), T0)).revision)
    seen.append((await store.insert(value_asset())).revision)
    gone = await store.delete(b.id)
    assert gone is not None
    seen.append(gone.revision)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


async def test_fulfill_pending_to_available(backend: Backend) -> None:
    store = backend.store
    a = await store.insert(pending())
    later = T0 + timedelta(seconds=3)
    done = await store.transition(a.id, Status.PENDING, FULFILL, later)
    assert done.status is Status.AVAILABLE
    assert done.revision > a.revision
    assert (done.storage_path, done.size_bytes, done.sha256) == (FULFILL.storage_path, 5, "cd" * 32)
    assert done.fulfilled_from == "/worker/x" and done.media_type == "text/csv"
    assert done.updated_at == later and done.created_at == T0
    assert (done.label, done.created_by_task) == (a.label, a.created_by_task)
    assert await store.get(a.id) == done


async def test_fulfill_with_a_value(backend: Backend) -> None:
    store = backend.store
    a = await store.insert(pending())
    v = Value(ValueKind.BYTES, b"\x00\xffbinary")
    done = await store.transition(
        a.id, Status.PENDING, Fulfillment(size_bytes=8, sha256="ee" * 32, value=v), T0
    )
    assert done.value == v and done.media_type == "text/plain"
    assert await store.get(a.id) == done


async def test_fail_pending_to_failed(backend: Backend) -> None:
    store = backend.store
    a = await store.insert(pending())
    failed = await store.transition(a.id, Status.PENDING, Failure("worker crashed"), T0)
    assert failed.status is Status.FAILED and failed.failure_reason == "worker crashed"
    assert failed.revision > a.revision
    assert await store.get(a.id) == failed


@pytest.mark.parametrize("first", [FULFILL, Failure("first")], ids=["fulfilled", "failed"])
async def test_transition_of_a_terminal_asset_is_a_conflict(
    backend: Backend, first: Fulfillment | Failure
) -> None:
    store = backend.store
    a = await store.insert(pending())
    winner = await store.transition(a.id, Status.PENDING, first, T0)
    for change in (FULFILL, Failure("late")):
        with pytest.raises(Conflict) as err:
            await store.transition(a.id, Status.PENDING, change, T0)
        assert winner.status.value in err.value.message
    assert await store.get(a.id) == winner  # never silently overwritten


async def test_transition_of_an_unknown_asset_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound):
        await backend.store.transition(new_asset_id(), Status.PENDING, Failure("x"), T0)


@pytest.mark.needs("atomic_find_and_modify")
async def test_racing_transitions_have_exactly_one_winner(backend: Backend) -> None:
    store = backend.store
    a = await store.insert(pending())
    changes: list[Fulfillment | Failure] = [
        FULFILL if i % 2 else Failure(f"loser {i}") for i in range(20)
    ]
    results = await asyncio.gather(
        *(store.transition(a.id, Status.PENDING, c, T0) for c in changes),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Asset)]
    others = [r for r in results if not isinstance(r, Asset)]
    assert len(winners) == 1, results
    assert all(isinstance(r, Conflict) for r in others), others
    assert await store.get(a.id) == winners[0]


async def test_delete_returns_last_state_with_a_new_revision(backend: Backend) -> None:
    store = backend.store
    a = await store.insert(pending(tags=("t",)))
    done = await store.transition(a.id, Status.PENDING, FULFILL, T0)
    gone = await store.delete(a.id)
    assert gone is not None
    assert gone.revision > done.revision
    assert {**gone.__dict__, "revision": 0} == {**done.__dict__, "revision": 0}
    assert await store.get(a.id) is None
    assert await store.delete(a.id) is None
    assert (await store.query(AssetFilter(tags=("t",)), 10, "")).assets == []
    later = await store.insert(pending())
    assert later.revision > gone.revision


async def test_count_by_status_follows_inserts_transitions_and_deletes(backend: Backend) -> None:
    store = backend.store
    assert await store.count_by_status() == dict.fromkeys(Status, 0)
    a, b, c = [await store.insert(pending()) for _ in range(3)]
    await store.insert(value_asset())
    await store.transition(a.id, Status.PENDING, FULFILL, T0)
    await store.transition(b.id, Status.PENDING, Failure("gone"), T0)
    assert await store.count_by_status() == {
        Status.PENDING: 1,
        Status.AVAILABLE: 2,
        Status.FAILED: 1,
    }
    await store.delete(c.id)
    await store.delete(a.id)
    assert await store.count_by_status() == {
        Status.PENDING: 0,
        Status.AVAILABLE: 1,
        Status.FAILED: 1,
    }


# --- snapshot: one consistent cut without values ---------------------------------------


async def test_snapshot_is_get_many_without_values(backend: Backend) -> None:
    store = backend.store
    v, f = await store.insert(value_asset()), await store.insert(pending())
    cut = await store.snapshot([v.id, f.id, new_asset_id(), v.id])
    full = await store.get_many([v.id, f.id])
    assert set(cut) == {v.id, f.id}
    assert cut[v.id].value is None and full[v.id].value is not None
    assert {**cut[v.id].__dict__, "value": None} == {**full[v.id].__dict__, "value": None}
    assert cut[f.id] == full[f.id]
    assert await store.snapshot([]) == {}


@pytest.mark.needs("snapshot_reads")
async def test_snapshot_is_one_point_in_time_while_writes_land(backend: Backend) -> None:
    """Assets are failed one after another, in order, while snapshots are read: each cut
    must show a prefix of them failed (never asset k failed while an earlier one is
    still pending). 300 records take more than one batch on MongoDB (a find returns 101
    at first), so a cut that is not one point in time shows up here."""
    store = backend.store
    assets = [await store.insert(pending()) for _ in range(300)]
    ids = [a.id for a in assets]
    writing = True

    async def fail_in_order() -> None:
        for a in assets:
            await store.transition(a.id, Status.PENDING, Failure("in order"), T0)
        nonlocal writing
        writing = False

    writer = asyncio.create_task(fail_in_order())
    cuts = 0
    while writing or cuts < 2:
        cut = await store.snapshot(ids)
        cuts += 1
        statuses = [cut[i].status for i in ids]
        done = statuses.count(Status.FAILED)
        assert statuses == [Status.FAILED] * done + [Status.PENDING] * (300 - done), (
            f"cut {cuts}: not a prefix"
        )
        failed = [cut[i].revision for i in ids[:done]]
        assert failed == sorted(failed)
        await asyncio.sleep(0)
    await writer
    assert cuts >= 2


# --- listing ---------------------------------------------------------------------------


async def list_all(backend: Backend, flt: AssetFilter, page_size: int) -> list[Asset]:
    out: list[Asset] = []
    token = ""
    for _ in range(1000):
        page = await backend.store.query(flt, page_size, token)
        assert len(page.assets) <= page_size
        out.extend(page.assets)
        token = page.next_token
        if not token:
            return out
    raise AssertionError("pagination did not end")


async def test_a_page_says_the_revision_it_was_read_at(backend: Backend) -> None:
    store = backend.store
    assert await store.current_revision() == 0
    a = await store.insert(pending())
    b = await store.transition(a.id, Status.PENDING, FULFILL, T0)
    c = await store.insert(value_asset())
    assert await store.current_revision() == c.revision
    page = await store.query(AssetFilter(), 10, "")
    assert page.revision == c.revision
    assert [x.revision for x in page.assets] == [b.revision, c.revision]
    gone = await store.delete(c.id)
    assert gone is not None
    later = await store.query(AssetFilter(), 10, "")
    assert later.revision == gone.revision == await store.current_revision()
    assert [x.id for x in later.assets] == [a.id]


@pytest.mark.needs("snapshot_reads")
async def test_a_page_and_its_revision_are_one_cut_while_writes_land(backend: Backend) -> None:
    """Every record a page shows is at or below its revision, and every record whose
    state has not changed since that revision is in the page as it is now: listing, then
    watching from the page's revision, misses nothing and doubles nothing."""
    store = backend.store
    promises = [await store.insert(pending(label=f"p{i}.txt")) for i in range(40)]
    pages = []

    async def write(part: list[Asset]) -> None:
        for i, p in enumerate(part):
            await store.transition(p.id, Status.PENDING, FULFILL if i % 2 else Failure("x"), T0)
            await store.insert(value_asset(label=f"v{i}.json"))

    async def read() -> None:
        for _ in range(40):
            pages.append(await store.query(AssetFilter(), 1000, ""))

    # Four writers at once: a page is read while several commits land.
    await asyncio.gather(*(write(promises[i::4]) for i in range(4)), read(), read())
    final = {x.id: x for x in (await store.query(AssetFilter(), 1000, "")).assets}
    for page in pages:
        shown = {x.id: x for x in page.assets}
        assert all(x.revision <= page.revision for x in page.assets)
        for asset_id, now in final.items():
            if now.revision <= page.revision:
                assert shown.get(asset_id) == now, (asset_id, page.revision)


async def test_list_filters(backend: Backend) -> None:
    store = backend.store
    p1 = await store.insert(pending("a.txt", "task-a", ("raw", "user-1")))
    p2 = await store.insert(pending("b.txt", "task-a", ("raw",)))
    p3 = await store.insert(pending("a.txt", "task-b", ("user-1",)))
    v1 = await store.insert(value_asset("a.txt", ("raw", "user-1", "extra")))
    p2 = await store.transition(p2.id, Status.PENDING, FULFILL, T0)
    p3 = await store.transition(p3.id, Status.PENDING, Failure("no"), T0)

    async def ids(**kw: object) -> list[str]:
        return [a.id for a in await list_all(backend, AssetFilter(**kw), 100)]  # type: ignore[arg-type]

    assert await ids() == [p1.id, p2.id, p3.id, v1.id]  # oldest first
    assert await ids(status=Status.PENDING) == [p1.id]
    assert await ids(status=Status.AVAILABLE) == [p2.id, v1.id]
    assert await ids(status=Status.FAILED) == [p3.id]
    assert await ids(type=AssetType.VALUE) == [v1.id]
    assert await ids(type=AssetType.FILE, status=Status.AVAILABLE) == [p2.id]
    assert await ids(tags=("raw",)) == [p1.id, p2.id, v1.id]
    assert await ids(tags=("raw", "user-1")) == [p1.id, v1.id]  # all of them
    assert await ids(tags=("raw", "nope")) == []
    assert await ids(created_by_task="task-a") == [p1.id, p2.id]
    assert await ids(label="a.txt") == [p1.id, p3.id, v1.id]
    assert await ids(label="a.txt", tags=("user-1",), created_by_task="task-b") == [p3.id]


@pytest.mark.parametrize("page_size", [1, 4, 7, 50])
async def test_pagination_has_no_duplicates_or_gaps(backend: Backend, page_size: int) -> None:
    store = backend.store
    made = [
        (await store.insert(pending(f"f{i}.txt", tags=("even",) if i % 2 == 0 else ()))).id
        for i in range(23)
    ]
    listed = await list_all(backend, AssetFilter(), page_size)
    assert [a.id for a in listed] == made
    evens = await list_all(backend, AssetFilter(tags=("even",)), page_size)
    assert [a.id for a in evens] == made[::2]
    first = await store.query(AssetFilter(), 5, "")
    assert len(first.assets) == 5 and first.next_token
    exact = await store.query(AssetFilter(), 23, "")
    assert len(exact.assets) == 23 and exact.next_token == ""


async def test_pages_end_early_at_max_bytes_and_lose_nothing(backend: Backend) -> None:
    """Big VALUEs: a page stops before passing max_bytes, always holds one, and the pages
    together list every record exactly once, in order."""
    store = backend.store
    big = 256 * 1024
    made = []
    for i in range(7):
        asset = value_asset(f"big{i}")
        data = bytes([i]) * (big * 3 if i == 3 else big)  # one record alone over the budget
        asset = Asset(**{**asset.__dict__, "value": Value(ValueKind.BYTES, data)})
        made.append((await store.insert(asset)).id)
    pages, token = [], ""
    while True:
        page = await store.query(AssetFilter(), 100, token, max_bytes=2 * big + 4096)
        assert page.assets, "a page always holds at least one record"
        pages.append([a.id for a in page.assets])
        token = page.next_token
        if not token:
            break
    assert [i for page in pages for i in page] == made
    assert max(len(page) for page in pages) == 2
    assert [made[3]] in pages, "a record over the budget comes alone"
    unbounded = await store.query(AssetFilter(), 100, "")
    assert [a.id for a in unbounded.assets] == made and unbounded.next_token == ""


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "!!!",
        base64.urlsafe_b64encode(b"other-store:5").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
async def test_invalid_page_token(backend: Backend, token: str) -> None:
    await backend.store.insert(pending())
    with pytest.raises(InvalidArgument):
        await backend.store.query(AssetFilter(), 10, token)


async def test_a_page_token_is_refused_with_other_filters(backend: Backend) -> None:
    """Reused with other filters it would page through another list (an empty page that
    looks like the end); the same filters continue, tags in any order, any page size."""
    store = backend.store
    for i in range(3):
        await store.insert(pending(f"p{i}.txt", task="task-1", tags=("x", "y")))
    flt = AssetFilter(created_by_task="task-1", tags=("x", "y"))
    first = await store.query(flt, 1, "")
    assert len(first.assets) == 1 and first.next_token
    rest = await store.query(
        AssetFilter(created_by_task="task-1", tags=("y", "x")), 5, first.next_token
    )
    assert [a.label for a in rest.assets] == ["p1.txt", "p2.txt"]
    others = [
        AssetFilter(),
        dataclasses.replace(flt, created_by_task="task-2"),
        dataclasses.replace(flt, tags=("x",)),
        dataclasses.replace(flt, status=Status.PENDING),
        dataclasses.replace(flt, type=AssetType.FILE),
        dataclasses.replace(flt, label="p1.txt"),
    ]
    for other in others:
        with pytest.raises(InvalidArgument, match="issued for a ListAssets with other filters"):
            await store.query(other, 1, first.next_token)


# --- change feed -----------------------------------------------------------------------


@pytest.mark.needs("change_streams")
async def test_change_feed_yields_every_change_in_commit_order(backend: Backend) -> None:
    store = backend.store
    feed = store.changes()
    a = await store.insert(pending(tags=("x",)))
    b = await store.insert(value_asset())
    a2 = await store.transition(a.id, Status.PENDING, FULFILL, T0)
    c = await store.insert(pending())
    c2 = await store.transition(c.id, Status.PENDING, Failure("boom"), T0)
    gone_b = await store.delete(b.id)
    gone_a = await store.delete(a.id)
    assert gone_a is not None and gone_b is not None
    expected = [
        (ChangeKind.PUT, a),
        (ChangeKind.PUT, b),
        (ChangeKind.PUT, a2),
        (ChangeKind.PUT, c),
        (ChangeKind.PUT, c2),
        (ChangeKind.DELETE, gone_b),
        (ChangeKind.DELETE, gone_a),
    ]
    got = await take(feed, len(expected), seconds=20)
    assert all(isinstance(g, Change) for g in got), got
    changes = [g for g in got if isinstance(g, Change)]
    assert [(c.kind, c.asset.id, c.revision) for c in changes] == [
        (k, x.id, x.revision) for k, x in expected
    ]
    for change, (_, asset) in zip(changes, expected, strict=True):
        if change.kind is ChangeKind.PUT:
            assert change.asset == asset
    revisions = [c.revision for c in changes]
    assert revisions == sorted(revisions)


async def test_every_change_names_the_principal_that_made_it(backend: Backend) -> None:
    store = backend.store
    feed = store.changes() if "change_streams" not in backend.lacks else None
    made = dataclasses.replace(pending(), created_by="orchestrator", updated_by="orchestrator")
    a = await store.insert(made)
    assert (a.created_by, a.updated_by) == ("orchestrator", "orchestrator")
    a2 = await store.transition(
        a.id, Status.PENDING, dataclasses.replace(FULFILL, by="task:task-1"), T0
    )
    assert (a2.created_by, a2.updated_by) == ("orchestrator", "task:task-1")
    got = await store.get(a.id)
    assert got is not None and (got.created_by, got.updated_by) == (
        "orchestrator",
        "task:task-1",
    )
    b = await store.insert(dataclasses.replace(pending(), created_by="orchestrator"))
    b2 = await store.transition(b.id, Status.PENDING, Failure("no disk", by="cn:worker-7"), T0)
    assert (b2.created_by, b2.updated_by) == ("orchestrator", "cn:worker-7")
    gone = await store.delete(a.id, "admin")
    assert gone is not None and (gone.created_by, gone.updated_by) == ("orchestrator", "admin")
    if feed is None:
        return  # FerretDB: no change streams to check
    changes = [c for c in await take(feed, 5, seconds=20) if isinstance(c, Change)]
    assert [(c.kind, c.asset.updated_by) for c in changes] == [
        (ChangeKind.PUT, "orchestrator"),
        (ChangeKind.PUT, "task:task-1"),
        (ChangeKind.PUT, ""),
        (ChangeKind.PUT, "cn:worker-7"),
        (ChangeKind.DELETE, "admin"),
    ]
    assert changes[-1].revision == gone.revision


@pytest.mark.needs("change_streams", "transactions")
async def test_change_feed_orders_concurrent_writers_by_revision(backend: Backend) -> None:
    store = backend.store
    feed = store.changes()
    assets = await asyncio.gather(*(store.insert(pending(f"c{i}")) for i in range(15)))
    moved = await asyncio.gather(
        *(store.transition(a.id, Status.PENDING, Failure("x"), T0) for a in assets)
    )
    got = await take(feed, 30, seconds=20)
    revisions = [g.revision for g in got if isinstance(g, Change)]
    assert len(revisions) == 30
    assert revisions == sorted(revisions)  # commit order == revision order
    assert sorted(revisions) == sorted(a.revision for a in [*assets, *moved])


# --- wire-level checks that need a server but no replica set ------------------------------


async def test_mongo_store_refuses_a_server_without_replica_set(ferretdb_url: str) -> None:
    """A standalone server (here FerretDB: its `hello` has no setName) fails with a fix-it."""
    store = MongoStore(ferretdb_url + "refused")
    with pytest.raises(Unavailable) as err:
        await store.open()
    assert "standalone" in err.value.message and "rs.initiate" in err.value.message
    await store.close()


async def test_reopening_never_reuses_a_revision_after_the_counter_was_lost(
    ferretdb_url: str,
) -> None:
    """Counter dropped, then restored from an older backup: each open lifts it above every
    stored revision (the highest one here belongs to an updated record, not the last insert)."""
    async with fresh_ferretdb(ferretdb_url) as ferret:
        store = ferret.store
        assets = [await store.insert(pending()) for _ in range(3)]
        moved = await store.transition(assets[0].id, Status.PENDING, FULFILL, T0)
        used = {a.revision for a in assets} | {moved.revision}
        for lose in ("drop", "older backup"):
            if lose == "drop":
                await ferret.db.drop_collection("counters")
            else:
                await ferret.db["counters"].update_one({"_id": "revision"}, {"$set": {"value": 1}})
            store = await ferret.reopen()
            fresh = await store.insert(pending())
            assert fresh.revision == max(used) + 1, lose
            used.add(fresh.revision)


async def test_a_restart_finds_every_index_and_creates_none(
    ferretdb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FerretDB's listIndexes shows every wanted index after the first start; the second
    start compares and sends no createIndexes (an index build locks the collection)."""
    url, name = _fresh_database(ferretdb_url)
    first = MongoStore(url, allow_standalone=True)
    await first.open()
    await first.close()
    again = MongoStore(url, allow_standalone=True)
    created: list[object] = []

    async def spy(*args: object, **kwargs: object) -> list[str]:
        created.append(args)
        return []

    for collection in (again._assets, again._tombstones):
        monkeypatch.setattr(collection, "create_indexes", spy)
        monkeypatch.setattr(collection, "create_index", spy)
    try:
        await again.open()
        assert created == []
        names = {ix["name"] async for ix in await again._assets.list_indexes()}
        assert {m.document["name"] for m in ASSET_INDEXES} <= names
        names = {ix["name"] async for ix in await again._tombstones.list_indexes()}
        assert {m.document["name"] for m in TOMBSTONE_INDEXES} <= names
    finally:
        await again.close()
        await _drop(ferretdb_url, name)


# --- block sums and corrupt marks (issue 18 item 2) --------------------------------------

SUMS = BlockSums(1024 * 1024, bytes(range(12)))  # three blocks' crc32c


def file_asset(sums: BlockSums | None = SUMS) -> Asset:
    return make_record(
        Status.AVAILABLE,
        AssetType.FILE,
        "application/octet-stream",
        label="f.bin",
        at=T0,
        storage_path=f"/data/uploads/2026-01-02/{new_asset_id()}/f.bin",
        size_bytes=3 * 1024 * 1024 - 5,
        sha256="ef" * 32,
        block_sums=sums,
    )


async def test_block_sums_are_kept_but_left_out_of_slim_reads(backend: Backend) -> None:
    store = backend.store
    a = await store.insert(file_asset())
    assert (await store.get(a.id)) == a and a.block_sums == SUMS
    listed = dataclasses.replace(a, block_sums=None)
    assert (await store.get_many([a.id]))[a.id] == listed, "only get() reads block sums"
    page = await store.query(AssetFilter(type=AssetType.FILE), 10, "")
    assert page.assets == [listed]
    assert (await store.snapshot([a.id]))[a.id].block_sums is None, "snapshots are slim"
    fulfilled = await store.transition(
        (await store.insert(pending())).id,
        Status.PENDING,
        dataclasses.replace(FULFILL, block_sums=SUMS),
        T0,
    )
    assert fulfilled.block_sums == SUMS
    assert (await store.get(fulfilled.id)) == fulfilled


async def test_block_sums_kept_later_are_not_a_change(backend: Backend) -> None:
    store = backend.store
    feed = store.changes() if "change_streams" not in backend.lacks else None
    a = await store.insert(file_asset(sums=None))
    before = await store.current_revision()
    assert not await store.set_block_sums(a.id, "/elsewhere", SUMS), "points elsewhere"
    assert not await store.set_block_sums(new_asset_id(), a.storage_path, SUMS), "no record"
    assert await store.set_block_sums(a.id, a.storage_path, SUMS)
    got = await store.get(a.id)
    assert got is not None and got.block_sums == SUMS
    assert got.revision == a.revision and await store.current_revision() == before
    marked = await store.transition(a.id, Status.AVAILABLE, Corruption("bad", by="check"), T0)
    if feed is None:
        return  # FerretDB: no change streams to check
    changes = [c for c in await take(feed, 2, seconds=20) if isinstance(c, Change)]
    assert [(c.asset.id, c.revision) for c in changes] == [
        (a.id, a.revision),
        (a.id, marked.revision),
    ], "the sums written in between are no event"


async def test_a_corruption_marks_an_available_asset_and_can_be_cleared(backend: Backend) -> None:
    store = backend.store
    a = await store.insert(file_asset())
    marked = await store.transition(a.id, Status.AVAILABLE, Corruption("bad block", by="c"), T0)
    assert (marked.corrupt_reason, marked.updated_by, marked.status) == (
        "bad block",
        "c",
        Status.AVAILABLE,
    )
    assert marked.revision > a.revision and marked.block_sums == SUMS
    assert (await store.get(a.id)) == marked
    slim = (await store.snapshot([a.id]))[a.id]
    assert slim.corrupt_reason == "bad block", "manifests see the mark in their snapshot"
    cleared = await store.transition(a.id, Status.AVAILABLE, Corruption("", by="c"), T0)
    assert cleared.corrupt_reason == "" and cleared.revision > marked.revision
    p = await store.insert(pending())
    with pytest.raises(Conflict):
        await store.transition(p.id, Status.AVAILABLE, Corruption("x"), T0)
