"""GetManifest's files: complete before input_data.json appears, synced a constant number of
times whatever the number of inputs, FILE inputs checked in one thread hop."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from asset_service.domain import keys
from asset_service.domain.errors import IntegrityError
from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.models import UploadHeader, Value, ValueKind
from asset_service.storage import manifests as manifests_module
from asset_service.storage.local import LocalStorage
from asset_service.storage.manifests import INDEX_NAME, LocalManifests
from asset_service.store.memory import MemoryStore
from tests.contract.blob_backends import BlobBackend, blob_backend, blob_backend_names
from tests.managers import running

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class World:
    manager: AssetManager
    root: Path

    @property
    def area(self) -> Path:
        return self.root / "tmp" / "manifests"

    def indexes(self) -> list[Path]:
        return list(self.area.rglob(INDEX_NAME))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    root = (tmp_path / "blobs").resolve()
    manager = AssetManager(MemoryStore(), LocalStorage(root), Limits(), LocalManifests(root))
    async with running(manager):
        yield World(manager, root)


async def inputs(w: World, files: int, values: int) -> dict[str, str]:
    mappings = {}
    for i in range(files):

        async def chunk(i: int = i) -> AsyncIterator[bytes]:
            yield f"file {i}".encode()

        asset = await w.manager.upload(UploadHeader(label=f"in{i}.bin"), chunk())
        mappings[f"file{i:03d}"] = asset.id
    for i in range(values):
        kind = ValueKind.JSON if i % 2 else ValueKind.TEXT
        data = json.dumps({"i": i}).encode() if i % 2 else f"text {i}".encode()
        asset = await w.manager.create_value(f"v{i}", "", Value(kind, data), ())
        mappings[f"value{i:03d}"] = asset.id
    return mappings


def counting(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str) -> list[Any]:
    calls: list[Any] = []
    real: Callable[..., Any] = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


async def test_every_file_is_complete_when_the_index_appears(world: World) -> None:
    mappings = await inputs(world, 3, 6)
    manifest = await world.manager.manifest(mappings, {"n": 3})
    index = json.loads(Path(manifest.path).read_text())
    assert index["config_params"] == {"n": 3}
    assert index["inputs"] == manifest.entries and set(index["inputs"]) == set(mappings)
    for key, path in index["inputs"].items():
        i = int(key[-3:])
        if key.startswith("file"):
            assert Path(path).read_bytes() == f"file {i}".encode()
        elif i % 2:
            assert json.loads(Path(path).read_text()) == {"i": i} and path.endswith(".json")
        else:
            assert Path(path).read_text() == f"text {i}" and path.endswith(".txt")
    assert not list(world.area.rglob("*.part")), "no temporary files left"


async def test_syncs_per_manifest_do_not_grow_with_its_inputs(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    small, big = await inputs(world, 2, 2), await inputs(world, 40, 120)
    monkeypatch.setattr(manifests_module, "dirty_bytes", lambda: 0)  # a quiet system
    fsyncs = counting(monkeypatch, os, "fsync")
    syncfs = counting(monkeypatch, manifests_module, "syncfs")
    counts = []
    for mappings in (small, big):
        fsyncs.clear()
        syncfs.clear()
        await world.manager.manifest(mappings, {})
        counts.append((len(fsyncs), len(syncfs)))
    assert counts[0] == counts[1], "the same syncs for 4 inputs as for 160"
    assert counts[0][1] == 1 and counts[0][0] <= 2


async def test_without_syncfs_each_file_is_fsynced_instead(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    mappings = await inputs(world, 1, 5)
    monkeypatch.setattr(manifests_module, "_SYNCFS", None)
    fsynced = counting(monkeypatch, os, "fsync")
    manifest = await world.manager.manifest(mappings, {})
    assert len(fsynced) >= 5 + 1, "every VALUE file and the index"
    assert Path(manifest.path).exists()


async def test_with_much_dirty_data_pending_each_file_is_fsynced_not_the_file_system(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """syncfs would wait for every dirty page (a big upload in flight): not past the cap."""
    mappings = await inputs(world, 1, 5)
    monkeypatch.setattr(
        manifests_module, "dirty_bytes", lambda: manifests_module.SYNCFS_MAX_DIRTY_BYTES + 1
    )
    syncfs = counting(monkeypatch, manifests_module, "syncfs")
    fsynced = counting(monkeypatch, os, "fsync")
    manifest = await world.manager.manifest(mappings, {})
    assert syncfs == []
    assert len(fsynced) >= 5 + 1, "every VALUE file and the index"
    assert Path(manifest.path).exists()


def test_dirty_bytes_reads_the_kernels_count() -> None:
    dirty = manifests_module.dirty_bytes()
    assert dirty is not None and dirty >= 0


async def test_a_fault_before_the_rename_leaves_no_index(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    mappings = await inputs(world, 2, 4)
    real_rename = os.rename

    def failing(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if str(dst).endswith(INDEX_NAME):
            raise OSError(5, "injected I/O error")
        real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError, match="injected"):
        await world.manager.manifest(mappings, {})
    assert world.indexes() == []
    assert list(world.area.iterdir()) == [], "the failed draft was discarded"


async def test_a_draft_left_by_a_crash_is_never_read_and_is_swept(world: World) -> None:
    manifests = world.manager.manifests
    assert isinstance(manifests, LocalManifests)
    mappings = await inputs(world, 0, 2)
    done = Path((await world.manager.manifest(mappings, {})).path).parent
    # A crash after the VALUE files were written and before finish(): no index.
    draft = await manifests.create()
    assets = await world.manager.store.get_many(list(mappings.values()))
    await draft.add_values(list(assets.values()))
    assert [p.parent for p in world.indexes()] == [done]
    hour_and_more = time.time() - manifests_module.DRAFT_GRACE_SECONDS - 60
    os.utime(draft.folder, (hour_and_more, hour_and_more))
    young = await manifests.create()  # a draft being written now is left alone
    assert await manifests.sweep(30 * 86400) == 1, "only the old draft: TTL not reached"
    assert not draft.folder.exists()
    assert done.exists() and young.folder.exists()


async def test_file_inputs_are_checked_in_one_thread_hop(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    mappings = await inputs(world, 30, 0)
    storage = world.manager.storage
    hops = counting(monkeypatch, asyncio, "to_thread")
    ids = list(mappings.values())
    records = await world.manager.store.get_many(ids)
    found = await storage.check_many([(a.storage_path, a.size_bytes) for a in records.values()])
    assert list(found) == [None] * 30 and len(hops) == 1
    gone = records[ids[7]]
    Path(gone.storage_path).unlink()
    with pytest.raises(IntegrityError, match=f"asset {gone.id} is AVAILABLE but .* missing"):
        await world.manager.manifest(mappings, {})
    assert world.indexes() == []


@pytest.fixture(params=blob_backend_names())
async def blob(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobBackend]:
    async with blob_backend(request.param, tmp_path, request) as backend:
        yield backend


async def test_check_many_answers_each_input_in_order_on_every_backend(
    blob: BlobBackend,
) -> None:
    """The port's batch check, as GetManifest uses it: each one's problem, or None."""
    storage = await blob.start()
    stored = []
    for i in range(3):
        writer = storage.new_writer()
        await writer.write(b"x" * (i + 1))
        await writer.seal()
        key = keys.upload_key(f"5b0e4f0e-0000-4000-8000-00000000000{i}", "in.bin", NOW)
        stored.append((await writer.commit(key), i + 1))
        await writer.finish()
    path, size = stored[1]
    found = await storage.check_many([stored[0], (path, size + 1), stored[2]])
    assert found[0] is None and found[2] is None
    assert isinstance(found[1], IntegrityError) and "the record says" in found[1].message
    assert list(await storage.check_many([])) == []


async def test_local_check_many_says_what_check_says_for_each_path(tmp_path: Path) -> None:
    """The batch check opens shared folders once (at most 64 fds at a time) but must judge
    every path as check() does: missing, wrong size, a symlink, a symlinked folder, fine."""
    storage = LocalStorage(tmp_path / "root")
    await storage.open()
    stored = []
    for i in range(150):  # more folders than the batch keeps open at once
        writer = storage.new_writer()
        await writer.write(b"y" * (i + 1))
        await writer.seal()
        day = datetime(2026, 1, 1 + i % 20, tzinfo=UTC)
        key = keys.upload_key(f"5b0e4f0e-0000-4000-8000-{i:012d}", "in.bin", day)
        stored.append((await writer.commit(key), i + 1))
        await writer.finish()
    items = list(stored)
    Path(items[3][0]).unlink()  # missing
    items[5] = (items[5][0], items[5][1] + 1)  # the record says another size
    Path(items[8][0]).unlink()
    Path(items[8][0]).symlink_to(items[9][0])  # a symlink where the bytes should be
    folder = Path(items[11][0]).parent
    moved = folder.with_name(folder.name + "-real")
    folder.rename(moved)
    folder.symlink_to(moved)  # a symlinked folder on the way
    items.append((str(tmp_path / "root" / "uploads" / "nowhere" / "x.bin"), 1))

    async def one(path: str, size: int) -> str | None:
        try:
            await storage.check(path, size)
        except IntegrityError as exc:
            return exc.message
        return None

    expected = [await one(path, size) for path, size in items]
    got = [None if e is None else e.message for e in await storage.check_many(items)]
    assert got == expected
    assert [i for i, e in enumerate(got) if e is not None] == [3, 5, 8, 11, 150]
    assert "missing" in (got[3] or "") and "the record says" in (got[5] or "")
    assert "not a regular file" in (got[8] or "") and "not a regular file" in (got[11] or "")
    # No fd left open by the batch.
    before = len(os.listdir("/proc/self/fd"))
    await storage.check_many(items)
    assert len(os.listdir("/proc/self/fd")) == before
