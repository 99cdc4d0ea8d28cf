"""MongoStore start-up and listing at the driver boundary: indexes, time limits, revision floor."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from pymongo import AsyncMongoClient, IndexModel

from asset_service.domain.errors import Unavailable
from asset_service.domain.models import AssetFilter, AssetType, Status
from asset_service.store.mongo import MongoStore, asset_to_doc

# The equality fields query() may put in a ListAssets filter, besides the `seq` keyset.
FILTERS: dict[str, dict[str, Any]] = {
    "status": {"status": Status.PENDING},
    "type": {"type": AssetType.VALUE},
    "created_by_task": {"created_by_task": "task-1"},
    "label": {"label": "out.txt"},
    "tags": {"tags": ("a", "b")},
}


class FakeCommandCursor:
    """What listIndexes/listCollections return: async iterable, async context manager."""

    def __init__(self, docs: Sequence[Mapping[str, Any]]) -> None:
        self._docs = list(docs)

    async def __aenter__(self) -> FakeCommandCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> AsyncIterator[Mapping[str, Any]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Mapping[str, Any]]:
        for doc in self._docs:
            yield doc

    async def to_list(self) -> list[Mapping[str, Any]]:
        return list(self._docs)


class FakeFind:
    """A find cursor that records how it was shaped and yields nothing."""

    def __init__(self, where: Mapping[str, Any]) -> None:
        self.where = dict(where)
        self.sorted: Any = None
        self.limited: int | None = None
        self.max_time_ms_: int | None = None

    def sort(self, *args: Any) -> FakeFind:
        self.sorted = args
        return self

    def limit(self, n: int) -> FakeFind:
        self.limited = n
        return self

    def max_time_ms(self, ms: int) -> FakeFind:
        self.max_time_ms_ = ms
        return self

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[dict[str, Any]]:
        for doc in ():
            yield doc

    async def close(self) -> None:
        return None


class FakeCollection:
    """The slice of pymongo's AsyncCollection that open() and query() use, recording calls."""

    def __init__(self, docs: Sequence[dict[str, Any]] = (), name: str = "assets") -> None:
        self.name = name
        self.docs = [dict(d) for d in docs]
        self.indexes: list[dict[str, Any]] = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]
        self.calls: list[tuple[str, Any]] = []
        self.finds: list[FakeFind] = []

    async def list_indexes(self) -> FakeCommandCursor:
        self.calls.append(("list_indexes", None))
        return FakeCommandCursor(self.indexes)

    def _add(self, document: Mapping[str, Any]) -> None:
        self.indexes.append({"v": 2, **document})

    async def create_indexes(self, models: Sequence[IndexModel]) -> list[str]:
        self.calls.append(("create_indexes", [m.document["name"] for m in models]))
        for m in models:
            self._add(m.document)
        return [m.document["name"] for m in models]

    async def create_index(self, keys: Any, **kwargs: Any) -> str:
        model = IndexModel(keys, **kwargs)
        self.calls.append(("create_index", model.document["name"]))
        self._add(model.document)
        return str(model.document["name"])

    async def find_one(
        self, where: Mapping[str, Any] | None = None, *args: Any, **kwargs: Any
    ) -> dict[str, Any] | None:
        self.calls.append(("find_one", (where, kwargs)))
        docs = [d for d in self.docs if all(d.get(k) == v for k, v in (where or {}).items())]
        for field, direction in reversed(kwargs.get("sort") or []):
            docs.sort(key=lambda d: d.get(field, 0), reverse=direction < 0)
        return docs[0] if docs else None

    async def update_one(
        self, where: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False
    ) -> None:
        self.calls.append(("update_one", (dict(where), dict(update))))
        doc = next((d for d in self.docs if d["_id"] == where["_id"]), None)
        if doc is None:
            if not upsert:
                return
            doc = dict(where)
            self.docs.append(doc)
            for field, value in update.get("$setOnInsert", {}).items():
                doc[field] = value
        for field, value in update.get("$max", {}).items():
            doc[field] = max(doc[field], value) if field in doc else value
        for field, value in update.get("$set", {}).items():
            doc[field] = value

    def find(self, where: Mapping[str, Any], *args: Any, **kwargs: Any) -> FakeFind:
        cursor = FakeFind(where)
        self.finds.append(cursor)
        return cursor

    def writes(self) -> list[tuple[str, Any]]:
        return [c for c in self.calls if c[0] in ("create_indexes", "create_index")]


class FakeAdmin:
    def __init__(self, hello: dict[str, Any]) -> None:
        self.hello = hello

    async def command(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.hello if name == "hello" else {"ok": 1}


class FakeClient:
    def __init__(self, hello: dict[str, Any]) -> None:
        self.admin = FakeAdmin(hello)

    async def close(self) -> None:
        return None


class FakeDatabase:
    name = "db"

    def __init__(self, assets_options: dict[str, Any] | None = None) -> None:
        self.assets_options = assets_options or {}
        self.commands: list[tuple[Any, ...]] = []

    async def list_collections(self, filter: Mapping[str, Any]) -> FakeCommandCursor:
        return FakeCommandCursor([{"name": "assets", "options": self.assets_options}])

    async def command(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.commands.append((*args, kwargs))
        return {"ok": 1}


def faked(
    assets: FakeCollection,
    counters: FakeCollection,
    db: FakeDatabase | None = None,
    tombstones: FakeCollection | None = None,
) -> MongoStore:
    """A MongoStore whose driver objects are the fakes (a standalone server, no feed)."""
    store = MongoStore("mongodb://127.0.0.1:1/db", allow_standalone=True)
    store._client = FakeClient({"isWritablePrimary": True})  # type: ignore[assignment]
    store._db = db or FakeDatabase()  # type: ignore[assignment]
    store._assets = assets  # type: ignore[assignment]
    store._counters = counters  # type: ignore[assignment]
    store._tombstones = tombstones or FakeCollection(name="tombstones")  # type: ignore[assignment]
    store._lease_docs = FakeCollection(name="leases")  # type: ignore[assignment]
    store._sweeps = FakeCollection(name="sweeps")  # type: ignore[assignment]
    store._usage = FakeCollection(name="usage")  # type: ignore[assignment]
    store._transactions = False  # what open() finds on a standalone server
    return store


def combinations() -> Iterator[tuple[str, ...]]:
    for n in range(len(FILTERS) + 1):
        yield from itertools.combinations(FILTERS, n)


# --- item 10: indexes ------------------------------------------------------------------


async def test_every_listing_filter_is_led_by_an_index_on_a_filter_field_then_seq() -> None:
    """For each of the 32 filter combinations query() builds, some index created at open()
    starts with one of its equality fields and continues with `seq`: the page is one index
    range in order (no collection scan, no in-memory sort). Type alone used to have none."""
    assets = FakeCollection()
    store = faked(assets, FakeCollection())
    await store.open()
    keys = [list(ix["key"].items()) for ix in assets.indexes]
    assert [("seq", 1)] in keys
    for combo in combinations():
        flt = AssetFilter(**{k: v for f in combo for k, v in FILTERS[f].items()})
        await store.query(flt, 10, "")
        find = assets.finds[-1]
        assert set(find.where) == {"seq", *combo}
        assert find.sorted == ("seq", 1)
        leading = [[(f, 1), ("seq", 1)] for f in combo] or [[("seq", 1)]]
        assert any(k in keys for k in leading), f"no index serves the filter {combo}"


async def test_queries_carry_a_server_side_time_limit() -> None:
    assets = FakeCollection()
    store = faked(assets, FakeCollection())
    await store.query(AssetFilter(type=AssetType.FILE), 5, "")
    await store.query(AssetFilter(), 5, "")
    assert [f.max_time_ms_ for f in assets.finds] == [15000, 15000]
    assert [f.limited for f in assets.finds] == [6, 6]


async def test_a_second_start_creates_no_index() -> None:
    """The first start builds every index in ONE createIndexes; the next ones only read
    listIndexes, so a restart takes no exclusive collection lock."""
    assets = FakeCollection()
    await faked(assets, FakeCollection()).open()
    created = assets.writes()
    assert len(created) == 1 and created[0][0] == "create_indexes"
    assert "type_seq" in created[0][1] and "revision" in created[0][1]
    assets.calls.clear()
    await faked(assets, FakeCollection()).open()
    assert assets.writes() == []
    assert ("list_indexes", None) in assets.calls


async def test_an_older_deployment_gets_only_its_missing_indexes() -> None:
    assets = FakeCollection()
    for name, keys, unique in (
        ("seq", {"seq": 1}, True),
        ("status_seq", {"status": 1, "seq": 1}, False),
        ("task_seq", {"created_by_task": 1, "seq": 1}, False),
        ("tags_seq", {"tags": 1, "seq": 1}, False),
        ("label_seq", {"label": 1, "seq": 1}, False),
    ):
        assets.indexes.append(
            {"v": 2, "key": keys, "name": name, **({"unique": True} if unique else {})}
        )
    await faked(assets, FakeCollection()).open()
    assert assets.writes() == [
        (
            "create_indexes",
            [
                "type_seq",
                "revision",
                "expires_at",
                "holds_owner",
                "key_seq",
                "sha256_seq",
                "key_slot",
                "storage_path",
            ],
        )
    ]


async def test_a_wanted_name_with_other_keys_stops_start_up_with_a_fix() -> None:
    assets = FakeCollection()
    assets.indexes.append({"v": 2, "key": {"seq": 1}, "name": "seq"})  # not unique
    with pytest.raises(Unavailable) as err:
        await faked(assets, FakeCollection()).open()
    assert "dropIndex('seq')" in err.value.message and "unique=True" in err.value.message
    assert assets.writes() == []


async def test_pre_images_are_switched_on_only_when_off() -> None:
    """collMod takes an exclusive collection lock: not on every start."""
    off = FakeDatabase()
    store = faked(FakeCollection(), FakeCollection(), off)
    await store._enable_pre_images()
    assert [c[0] for c in off.commands] == ["collMod"] and store._pre_images
    on = FakeDatabase({"changeStreamPreAndPostImages": {"enabled": True}})
    store = faked(FakeCollection(), FakeCollection(), on)
    await store._enable_pre_images()
    assert on.commands == [] and store._pre_images


# --- item 9: the revision counter never goes backwards -----------------------------------


@pytest.mark.parametrize(
    ("counter", "expected"),
    [(None, 9), (0, 9), (4, 9), (9, 9), (12, 12)],
    ids=["dropped", "reset", "older-backup", "in-step", "ahead-stays"],
)
async def test_open_lifts_the_counter_to_the_highest_stored_revision(
    counter: int | None, expected: int
) -> None:
    stored = [("a", 1, 3), ("b", 2, 9), ("c", 5, 5)]  # the top revision is not the last seq
    assets = FakeCollection([{"_id": i, "seq": s, "revision": r} for i, s, r in stored])
    counters = FakeCollection([] if counter is None else [{"_id": "revision", "value": counter}])
    await faked(assets, counters).open()
    assert counters.docs[0] == {"_id": "revision", "value": expected}
    # One keyed read of the top revision (the `revision` index), one $max update.
    top = [c for c in assets.calls if c[0] == "find_one"]
    assert len(top) == 1 and top[0][1][1]["sort"] == [("revision", -1)]
    assert next(c for c in counters.calls if c[0] == "update_one") == (
        "update_one",
        ({"_id": "revision"}, {"$max": {"value": 9}}),
    )


async def test_open_on_an_empty_database_starts_the_counter_at_zero() -> None:
    counters = FakeCollection()
    await faked(FakeCollection(), counters).open()
    assert counters.docs == [{"_id": "revision", "value": 0}, {"_id": "tombstones", "value": 0}]


async def test_a_deletes_revision_on_its_tombstone_lifts_the_counter_too() -> None:
    """Before tombstones, a delete that was the last write before the counter was lost
    could have its revision handed out again."""
    assets = FakeCollection([{"_id": "a", "seq": 1, "revision": 3}])
    tombstones = FakeCollection([{"_id": "b", "revision": 8}], name="tombstones")
    counters = FakeCollection([{"_id": "revision", "value": 2}])
    await faked(assets, counters, tombstones=tombstones).open()
    assert counters.docs[0] == {"_id": "revision", "value": 8}


@pytest.mark.parametrize(
    ("horizon", "expected"), [(None, 12), (5, 5)], ids=["from-before-tombstones", "kept"]
)
async def test_tombstones_begin_where_the_first_start_that_keeps_them_found_the_counter(
    horizon: int | None, expected: int
) -> None:
    """A database written by a release that kept no tombstones: its deletions left no
    trace, so replays reach back to the upgrade only; a horizon once set stays."""
    counters = FakeCollection(
        [{"_id": "revision", "value": 12}]
        + ([] if horizon is None else [{"_id": "tombstones", "value": horizon}])
    )
    await faked(FakeCollection(), counters).open()
    assert {"_id": "tombstones", "value": expected} in counters.docs


# --- on a real replica set (MONGODB_URI) --------------------------------------------------


def _stages(plan: Any) -> Iterator[Mapping[str, Any]]:
    """Every stage of an explain plan (classic or SBE `queryPlan` nesting)."""
    if isinstance(plan, Mapping):
        if isinstance(plan.get("stage"), str):
            yield plan
        for value in plan.values():
            yield from _stages(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from _stages(item)


def _record(n: int, match: bool) -> dict[str, Any]:
    """Mostly records no filter matches, a few that match every one of FILTERS."""
    from datetime import UTC, datetime

    from asset_service.domain.models import Asset

    t = datetime(2026, 1, 1, tzinfo=UTC)
    asset = Asset(
        id=f"rec-{n}",
        label="out.txt" if match else f"other-{n}",
        status=Status.PENDING if match else Status.AVAILABLE,
        type=AssetType.VALUE if match else AssetType.FILE,
        media_type="text/plain",
        created_at=t,
        updated_at=t,
        created_by_task="task-1" if match else f"task-{n + 2}",
        tags=("a", "b") if match else ("c",),
    )
    return asset_to_doc(asset, n)


# The query planner's choice needs real MongoDB.
@pytest.mark.requires("mongo")
async def test_every_listing_filter_runs_on_an_index_without_sorting_on_mongodb() -> None:
    base = os.environ["MONGODB_URI"]
    name = f"asset_open_{uuid.uuid4().hex[:12]}"
    url = urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    store = MongoStore(url)
    await store.open()
    try:
        real = store._assets
        # Enough non-matching records that an index on `seq` alone loses the trial.
        await real.insert_many([_record(n, match=n % 100 == 0) for n in range(1, 1001)])
        wheres: list[dict[str, Any]] = []

        def spy(where: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            wheres.append(where)
            return real.find(where, *args, **kwargs)

        for combo in combinations():
            flt = AssetFilter(**{k: v for f in combo for k, v in FILTERS[f].items()})
            store._assets = type("Spy", (), {"find": staticmethod(spy)})()  # type: ignore[assignment]
            try:
                await store.query(flt, 10, "")
            finally:
                store._assets = real
            plan = await real.find(wheres[-1]).sort("seq", 1).limit(11).explain()
            stages = list(_stages(plan["queryPlanner"]["winningPlan"]))
            kinds = {st["stage"] for st in stages}
            assert "COLLSCAN" not in kinds and "SORT" not in kinds, (combo, kinds)
            # The index walked is led by a filter field (by `seq` only without one).
            leads = {next(iter(st["keyPattern"])) for st in stages if "keyPattern" in st}
            assert leads & (set(combo) or {"seq"}), (combo, leads)
        # A restart finds every index in place.
        names = {ix["name"] async for ix in await real.list_indexes()}
        assert {"seq", "type_seq", "revision"} <= names
    finally:
        await store.close()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(base)
        await client.drop_database(name)
        await client.close()
