"""SQLite: a replay narrowed by a task, key, label or tag reads that field's index when its
set is small, the revision index when it is big, and both give the same changes."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from asset_service.domain.models import ChangeKind
from asset_service.domain.replay import Narrowing
from asset_service.store.sqlite import SqliteStore, _tombstones
from tests.records import pending_record

# Each narrowing, and the index its small set is read through.
SMALL = [
    (Narrowing(task="t0"), "assets_task"),
    (Narrowing(key="k6"), "assets_key"),
    (Narrowing(label="o1"), "assets_label"),
    (Narrowing(tags=("g1",)), "asset_tags"),
    (Narrowing(task="t0", key="k6"), "assets_key"),
    (Narrowing(task="t1", label="o2"), "assets_task"),
    (Narrowing(label="o1", tags=("g1", "all")), "assets_label"),
    (Narrowing(tags=("all", "g1")), "asset_tags"),
]


async def _store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "assets.db", reserve_bytes=0)
    await store.open()
    for i in range(12):
        record = pending_record(task=f"t{i % 2}", label=f"o{i % 3}", tags=(f"g{i % 3}", "all"))
        asset = await store.insert(dataclasses.replace(record, key=f"k{i}" if i % 4 else ""))
        if i % 5 == 0 or i == 6:
            await store.delete(asset.id)
    return store


def _plan(path: Path, narrow: Narrowing) -> str:
    with sqlite3.connect(path) as c:
        statement, args = _tombstones._records_since(c, 0, 10, narrow)
        rows = c.execute(f"EXPLAIN QUERY PLAN {statement}", args).fetchall()
    return " ".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize(("narrow", "index"), SMALL)
@pytest.mark.parametrize("index_max", [_tombstones.INDEX_MAX, 2])
async def test_either_index_gives_the_narrowed_changes_in_revision_order(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    index_max: int,
    narrow: Narrowing,
    index: str,
) -> None:
    monkeypatch.setattr(_tombstones, "INDEX_MAX", index_max)
    store = await _store(tmp_path)
    try:
        whole = (await store.changes_since(0, 1000)).changes
        expected = [(c.kind, c.asset.id) for c in whole if narrow.admits(c.asset)]
        got = (await store.changes_since(0, 1000, narrow)).changes
        assert [(c.kind, c.asset.id) for c in got] == expected
        if not narrow.key:
            assert {c.kind for c in got} == {ChangeKind.PUT, ChangeKind.DELETE}
        plan = _plan(tmp_path / "assets.db", narrow)
        # A key of one asset is small whatever the bound: its index all the same.
        small = index_max > 2 or narrow.key
        assert (index if small else "assets_revision") in plan, plan
        assert "SCAN assets" not in plan.replace("USING INDEX assets_revision", ""), plan
    finally:
        await store.close()
