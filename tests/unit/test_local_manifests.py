"""Manifest folders on disk: written whole or not at all, swept after their TTL."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service.domain import keys
from asset_service.domain.errors import IntegrityError
from asset_service.domain.models import Asset, AssetType, Status, Value, ValueKind
from asset_service.storage.file_cache import FileCache
from asset_service.storage.manifests import LocalManifests
from asset_service.storage.memory import MemoryStorage

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def value(asset_id: str, kind: ValueKind, data: bytes) -> Asset:
    return Asset(
        asset_id, "v", Status.AVAILABLE, AssetType.VALUE, "x/y", NOW, NOW, value=Value(kind, data)
    )


async def test_a_manifest_appears_only_when_finished(tmp_path: Path) -> None:
    manifests = LocalManifests(tmp_path)
    await manifests.open()
    draft = await manifests.create()
    ids = ["5b0e4f0e-0000-4000-8000-00000000000a", "5b0e4f0e-0000-4000-8000-00000000000b"]
    paths = await draft.add_values(
        [value(ids[0], ValueKind.JSON, b'{"k": 1}'), value(ids[1], ValueKind.TEXT, b"hi")]
    )
    digest = hashlib.sha256(b'{"k": 1}').hexdigest()
    assert Path(paths[ids[0]]) == manifests.values.folder / f"{digest}.json"
    assert Path(paths[ids[1]]).read_bytes() == b"hi"
    assert not list(tmp_path.rglob("input_data.json")), "nothing to read before finish"
    index = await draft.finish({"a": paths[ids[0]]}, {"threshold": 0.5})
    assert json.loads(Path(index).read_text()) == {
        "inputs": {"a": paths[ids[0]]},
        "config_params": {"threshold": 0.5},
    }
    assert not list(tmp_path.rglob("*.part")), "no temporary files left"


async def test_discard_and_sweep_remove_folders(tmp_path: Path) -> None:
    manifests = LocalManifests(tmp_path)
    await manifests.open()
    dropped = await manifests.create()
    await dropped.add_values([value("5b0e4f0e-0000-4000-8000-00000000000c", ValueKind.TEXT, b"x")])
    await dropped.discard()
    assert list(manifests.area.iterdir()) == []
    old, fresh = await manifests.create(), await manifests.create()
    await old.finish({}, {})
    day_ago = time.time() - 86400
    os.utime(old.folder, (day_ago, day_ago))
    assert await manifests.sweep(3600) == 1
    assert not old.folder.exists() and fresh.folder.exists()


async def test_a_sweep_removes_at_most_its_limit(tmp_path: Path) -> None:
    manifests = LocalManifests(tmp_path)
    await manifests.open()
    day_ago = time.time() - 86400
    for _ in range(3):
        draft = await manifests.create()
        await draft.finish({}, {})
        os.utime(draft.folder, (day_ago, day_ago))
    assert await manifests.sweep(3600, limit=2) == 2
    assert await manifests.sweep(3600, limit=2) == 1
    assert list(manifests.area.iterdir()) == []


async def stored(storage: MemoryStorage, data: bytes, label: str) -> Asset:
    writer = storage.new_writer()
    await writer.write(data)
    await writer.seal()
    asset_id = str(uuid.uuid4())
    path = await writer.commit(keys.upload_key(asset_id, label, NOW))
    await writer.finish()
    return Asset(
        asset_id,
        label,
        Status.AVAILABLE,
        AssetType.FILE,
        "x/y",
        NOW,
        NOW,
        storage_path=path,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


async def test_files_kept_elsewhere_are_cached_locally_and_bounded(tmp_path: Path) -> None:
    """A non-local blob store (the in-memory fake here, an object store in production):
    manifests point at verified local copies; the cache stays within its budget, and an
    eviction never breaks a manifest already written."""
    storage = MemoryStorage()
    await storage.open()
    cache = FileCache(tmp_path / "cache", storage, max_bytes=2500)
    manifests = LocalManifests(tmp_path, cache)
    await manifests.open()
    assets = [await stored(storage, bytes([i]) * 1000, f"in{i}.bin") for i in range(4)]
    written = []
    for asset in assets:
        draft = await manifests.create()
        local = Path(await draft.add_file(asset))
        await draft.finish({"in": str(local)}, {})
        written.append((asset, local))
    for asset, local in written:  # every manifest still reads its input
        assert local.read_bytes() == bytes([assets.index(asset)]) * 1000
        assert local.is_relative_to(manifests.area)
    cached = list(cache.folder.iterdir())
    assert sum(p.stat().st_size for p in cached) <= 2500 and len(cached) == 2
    assert {p.name for p in cached} == {assets[2].sha256, assets[3].sha256}, "LRU kept"
    again = await manifests.create()  # a cached input is not downloaded again
    assert (
        Path(await again.add_file(assets[3])).stat().st_ino
        == (cache.folder / assets[3].sha256).stat().st_ino
    )


async def test_a_copy_that_does_not_match_its_record_is_refused(tmp_path: Path) -> None:
    storage = MemoryStorage()
    await storage.open()
    cache = FileCache(tmp_path / "cache", storage, max_bytes=10_000)
    manifests = LocalManifests(tmp_path, cache)
    await manifests.open()
    asset = await stored(storage, b"right bytes", "in.bin")
    wrong = dataclasses.replace(asset, sha256="0" * 64)
    draft = await manifests.create()
    with pytest.raises(IntegrityError, match="the record says"):
        await draft.add_file(wrong)
    assert list(cache.folder.iterdir()) == [], "nothing unverified is cached"
