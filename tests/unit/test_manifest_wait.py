"""GetManifest with wait: it returns once its inputs are settled, never polls, never leaks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asset_service.domain.errors import ManifestBlocked, ManifestWaitTimeout
from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.models import Asset, AssetType, Value, ValueKind
from asset_service.storage.local import LocalStorage
from asset_service.storage.manifests import LocalManifests
from asset_service.store.memory import MemoryStore
from tests.managers import running


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[AssetManager]:
    root = tmp_path / "root"
    m = AssetManager(MemoryStore(), LocalStorage(root), Limits(), LocalManifests(root))
    async with running(m):
        yield m


async def promise(m: AssetManager, label: str = "out.txt") -> Asset:
    return await m.create_pending("task-1", label, "", AssetType.VALUE, ())


def text(s: str) -> Value:
    return Value(ValueKind.TEXT, s.encode())


async def later(seconds: float, step: object) -> None:
    await asyncio.sleep(seconds)
    await step  # type: ignore[misc]


async def test_it_returns_once_every_input_is_fulfilled(manager: AssetManager) -> None:
    a, b = await promise(manager, "a.txt"), await promise(manager, "b.txt")
    ready = await manager.create_value("c.txt", "", text("ready"), ())
    started = time.monotonic()
    built, _, _ = await asyncio.gather(
        manager.manifest({"a": a.id, "b": b.id, "c": ready.id}, {}, wait=True, wait_seconds=10),
        later(0.2, manager.fulfill_with_value(a.id, text("A"), "")),
        later(0.4, manager.fulfill_with_value(b.id, text("B"), "")),
    )
    assert 0.35 < time.monotonic() - started < 5
    body = json.loads(Path(built.path).read_text())
    assert {k: Path(p).read_text() for k, p in body["inputs"].items()} == {
        "a": "A",
        "b": "B",
        "c": "ready",
    }
    assert manager.hub.subscriber_count == 0


async def test_a_failed_input_ends_the_wait_at_once_naming_it(manager: AssetManager) -> None:
    a, b = await promise(manager, "a.txt"), await promise(manager, "b.txt")
    started = time.monotonic()
    with pytest.raises(ManifestBlocked) as err:
        await asyncio.gather(
            manager.manifest({"a": a.id, "b": b.id}, {}, wait=True, wait_seconds=30),
            later(0.1, manager.fail(b.id, "encoder crashed")),
        )
    assert time.monotonic() - started < 5, "it must not wait for the deadline"
    assert f"b={b.id} is FAILED (encoder crashed)" in err.value.message
    assert f"a={a.id} is PENDING" in err.value.message
    assert manager.hub.subscriber_count == 0


async def test_the_deadline_ends_the_wait_naming_what_is_still_pending(
    manager: AssetManager,
) -> None:
    a, b = await promise(manager, "a.txt"), await promise(manager, "b.txt")
    await manager.fulfill_with_value(b.id, text("B"), "")
    started = time.monotonic()
    with pytest.raises(ManifestWaitTimeout) as err:
        await manager.manifest({"a": a.id, "b": b.id}, {}, wait=True, wait_seconds=0.3)
    assert 0.25 < time.monotonic() - started < 3
    assert [x.key for x in err.value.blocking] == ["a"]
    assert "waited 0.3s (the call's deadline)" in err.value.message
    assert f"a={a.id} is PENDING" in err.value.message
    assert manager.hub.subscriber_count == 0


async def test_missing_and_deleted_inputs_end_the_wait(manager: AssetManager) -> None:
    a = await promise(manager)
    gone = "6a1c3d9e-0000-4000-8000-000000000000"
    with pytest.raises(ManifestBlocked, match=f"x={gone} is NOT_FOUND"):
        await manager.manifest({"a": a.id, "x": gone}, {}, wait=True, wait_seconds=30)
    with pytest.raises(ManifestBlocked, match=f"a={a.id} is NOT_FOUND"):
        await asyncio.gather(
            manager.manifest({"a": a.id}, {}, wait=True, wait_seconds=30),
            later(0.1, manager.delete(a.id)),
        )
    assert manager.hub.subscriber_count == 0


async def test_without_wait_a_pending_input_is_refused_at_once(manager: AssetManager) -> None:
    a = await promise(manager)
    with pytest.raises(ManifestBlocked, match="is PENDING"):
        await manager.manifest({"a": a.id}, {})
    ready = await manager.create_value("r.txt", "", text("r"), ())
    built = await manager.manifest({"r": ready.id}, {}, wait=True, wait_seconds=0.01)
    assert Path(built.path).exists()


async def test_a_cancelled_wait_leaves_no_subscription(manager: AssetManager) -> None:
    a = await promise(manager)
    task = asyncio.create_task(manager.manifest({"a": a.id}, {}, wait=True))
    await asyncio.sleep(0.1)
    assert manager.hub.subscriber_count == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert manager.hub.subscriber_count == 0
