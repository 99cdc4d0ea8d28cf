"""AssetManager.watch over the real SQLite store: a watcher that overflows catches up exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asset_service.domain.manager import AssetManager, Limits, WatchEvent
from asset_service.domain.models import AssetType, Value, ValueKind
from asset_service.domain.watch import EVENT_OVERHEAD_BYTES, WatchStream
from asset_service.storage.local import LocalStorage
from asset_service.store.sqlite import SqliteStore


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[AssetManager]:
    # Room for about one small change: any burst overflows it.
    limits = Limits(watch_buffer_bytes=EVENT_OVERHEAD_BYTES + 512)
    mgr = AssetManager(SqliteStore(tmp_path / "a.db"), LocalStorage(tmp_path / "s"), limits)
    await mgr.start()
    yield mgr
    await mgr.stop()


async def test_overflowing_watcher_re_reads_and_misses_no_final_state(
    manager: AssetManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    catch_ups = 0
    original = WatchStream._catch_up

    def counting(self: WatchStream) -> Any:
        nonlocal catch_ups
        catch_ups += 1
        return original(self)

    monkeypatch.setattr(WatchStream, "_catch_up", counting)
    ids = [
        (await manager.create_pending("t", f"a{i}", "", AssetType.VALUE, ())).id for i in range(4)
    ]
    stream = await manager.watch(ids, 0, follow=False)
    snapshot = [await anext(stream) for _ in ids]
    assert [e.kind for e in snapshot] == ["SNAPSHOT"] * 4
    # A burst while the watcher is not reading: far more than its buffer of one.
    await manager.fulfill_with_value(ids[0], Value(ValueKind.TEXT, b"x"), "")
    await manager.fail(ids[1], "boom")
    await manager.fulfill_with_value(ids[2], Value(ValueKind.JSON, b"[1]"), "")
    deleted = await manager.delete(ids[3])
    rest: list[WatchEvent] = [e async for e in stream]  # ends: all terminal or deleted
    by_id = {e.asset.id: e for e in rest}
    assert set(by_id) == set(ids)
    assert by_id[ids[0]].asset.status.value == "AVAILABLE"
    assert by_id[ids[1]].asset.failure_reason == "boom"
    assert by_id[ids[2]].asset.value == Value(ValueKind.JSON, b"[1]")
    assert by_id[ids[3]].kind == "DELETED" and by_id[ids[3]].asset.id == deleted.id
    revisions = [e.revision for e in snapshot + rest]
    assert revisions == sorted(revisions), "events must stay in revision order"
    assert catch_ups >= 1, "the burst should have overflowed the one-slot buffer"
    assert manager.hub.subscriber_count == 0


async def test_resume_sends_only_what_changed_after_the_cursor(manager: AssetManager) -> None:
    a = await manager.create_pending("t", "a", "", AssetType.VALUE, ())
    b = await manager.create_pending("t", "b", "", AssetType.VALUE, ())
    cursor = b.revision
    done = await manager.fulfill_with_value(a.id, Value(ValueKind.TEXT, b"x"), "")
    stream = await manager.watch([a.id, b.id], cursor, follow=False)
    first = await anext(stream)
    assert (first.kind, first.asset.id, first.revision) == ("SNAPSHOT", a.id, done.revision)
    failed = await manager.fail(b.id, "no")
    second = await anext(stream)
    assert (second.kind, second.asset.id, second.revision) == ("CHANGED", b.id, failed.revision)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
