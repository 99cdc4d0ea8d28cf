"""SQLite: a replay narrowed to a task reads the task's index when the task is small, the
revision index when it is big, and both give the same changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from asset_service.domain.models import ChangeKind
from asset_service.store.sqlite import SqliteStore, _tombstones
from tests.records import pending_record


async def _store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "assets.db", reserve_bytes=0)
    await store.open()
    for i in range(12):
        asset = await store.insert(pending_record(task=f"t{i % 2}", label=f"o{i}"))
        if i % 5 == 0:
            await store.delete(asset.id)
    return store


def _plan(path: Path, task: str) -> str:
    with sqlite3.connect(path) as c:
        statement = _tombstones._records_since(c, 0, 10, task)
        rows = c.execute(f"EXPLAIN QUERY PLAN {statement}", (task, 0, 10)).fetchall()
    return " ".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize("index_max", [_tombstones.TASK_INDEX_MAX, 2])
async def test_either_index_gives_the_tasks_changes_in_revision_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index_max: int
) -> None:
    monkeypatch.setattr(_tombstones, "TASK_INDEX_MAX", index_max)
    store = await _store(tmp_path)
    try:
        whole = (await store.changes_since(0, 1000)).changes
        for task in ("t0", "t1"):
            expected = [(c.kind, c.asset.id) for c in whole if c.asset.created_by_task == task]
            got = (await store.changes_since(0, 1000, task)).changes
            assert [(c.kind, c.asset.id) for c in got] == expected
            assert {c.kind for c in got} == {ChangeKind.PUT, ChangeKind.DELETE}
        index = "assets_task" if index_max > 2 else "assets_revision"
        assert index in _plan(tmp_path / "assets.db", "t0")
    finally:
        await store.close()
