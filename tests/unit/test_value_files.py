"""VALUE inputs as shared files (<root>/tmp/values): one per distinct content, checked byte
for byte on every use, rewritten when they differ, swept when unused for the TTL."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.models import Asset, AssetType, Status, Value, ValueKind
from asset_service.storage import manifests as manifests_module
from asset_service.storage import value_files
from asset_service.storage.local import LocalStorage
from asset_service.storage.manifests import LocalManifests
from asset_service.storage.value_files import DRAFT_GRACE_SECONDS, VALUE_TOUCH_SECONDS, ValueFiles
from asset_service.store.memory import MemoryStore
from tests.managers import running

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def value(asset_id: str, kind: ValueKind, data: bytes) -> Asset:
    return Asset(
        asset_id, "v", Status.AVAILABLE, AssetType.VALUE, "x/y", NOW, NOW, value=Value(kind, data)
    )


def ids(n: int) -> list[str]:
    return [f"5b0e4f0e-0000-4000-8000-{i:012d}" for i in range(n)]


@pytest.fixture
async def manifests(tmp_path: Path) -> LocalManifests:
    m = LocalManifests(tmp_path)
    await m.open()
    return m


def files_in(values: ValueFiles) -> list[str]:
    return sorted(p.name for p in values.folder.iterdir() if not p.name.startswith("."))


async def test_one_read_only_file_per_distinct_content_shared_by_manifests(
    manifests: LocalManifests,
) -> None:
    a, b, c = ids(3)
    first = await manifests.create()
    paths1 = await first.add_values(
        [value(a, ValueKind.TEXT, b"same"), value(b, ValueKind.TEXT, b"same")]
    )
    second = await manifests.create()
    paths2 = await second.add_values(
        [value(c, ValueKind.TEXT, b"same"), value(a, ValueKind.JSON, b'"same"')]
    )
    same = manifests.values.folder / (hashlib.sha256(b"same").hexdigest() + ".txt")
    assert paths1[a] == paths1[b] == paths2[c] == str(same)
    assert Path(paths2[a]).read_bytes() == b'"same"' and paths2[a].endswith(".json")
    assert len(files_in(manifests.values)) == 2, "two distinct contents (kind included)"
    assert stat.S_IMODE(same.stat().st_mode) == 0o400, "created read-only, owner-only"
    assert not list(manifests.values.folder.glob("*.part"))


@pytest.mark.parametrize("damage", ["same size", "longer", "shorter", "symlink"])
async def test_a_shared_file_that_differs_from_its_value_is_written_again(
    manifests: LocalManifests, tmp_path: Path, damage: str
) -> None:
    (a,) = ids(1)
    data = b"the value"
    path = Path((await (await manifests.create()).add_values([value(a, ValueKind.TEXT, data)]))[a])
    path.chmod(0o644)  # what a task writing to its input would do first
    if damage == "same size":
        path.write_bytes(b"the VALUE")
    elif damage == "longer":
        path.write_bytes(data + b"!")
    elif damage == "shorter":
        path.write_bytes(data[:3])  # as a crash before the sync may leave it
    elif damage == "symlink":
        other = tmp_path / "elsewhere"
        other.write_bytes(b"the other")
        path.unlink()
        path.symlink_to(other)
    paths = await (await manifests.create()).add_values([value(a, ValueKind.TEXT, data)])
    assert paths[a] == str(path)
    assert not path.is_symlink() and path.read_bytes() == data
    if damage == "symlink":
        assert (tmp_path / "elsewhere").read_bytes() == b"the other", "never written through"


async def test_each_use_is_written_durably_before_its_index_appears(
    manifests: LocalManifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file found already written is synced again: its writer may have failed first."""
    (a,) = ids(1)
    await (await manifests.create()).add_values([value(a, ValueKind.TEXT, b"v")])
    monkeypatch.setattr(manifests_module, "_SYNCFS", None)  # each file fsynced instead
    fsynced: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        fsynced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    draft = await manifests.create()
    paths = await draft.add_values([value(a, ValueKind.TEXT, b"v")])
    await draft.finish({"k": paths[a]}, {})
    assert Path(paths[a]).stat().st_ino in fsynced


async def test_a_use_touches_an_old_file_and_the_sweep_keeps_it(
    manifests: LocalManifests,
) -> None:
    a, b = ids(2)
    ttl = 3600.0
    paths = await (await manifests.create()).add_values(
        [value(a, ValueKind.TEXT, b"used again"), value(b, ValueKind.TEXT, b"unused")]
    )
    long_ago = time.time() - ttl - VALUE_TOUCH_SECONDS - 60
    for p in paths.values():
        os.utime(p, (long_ago, long_ago))
    await (await manifests.create()).add_values([value(a, ValueKind.TEXT, b"used again")])
    assert Path(paths[a]).stat().st_mtime > time.time() - 60, "touched by the use"
    part = manifests.values.folder / "x.0.part"
    part.write_bytes(b"crash")
    await manifests.sweep(ttl)
    assert Path(paths[a]).exists()
    assert not Path(paths[b]).exists(), "unused past the TTL"
    assert part.exists(), "a part is young: it may be being written"
    old = time.time() - DRAFT_GRACE_SECONDS - 60
    os.utime(part, (old, old))
    await manifests.sweep(ttl)
    assert not part.exists()
    assert (manifests.values.folder / ".lock").exists()


async def test_a_recent_use_is_not_rewritten_to_touch_it(manifests: LocalManifests) -> None:
    (a,) = ids(1)
    paths = await (await manifests.create()).add_values([value(a, ValueKind.TEXT, b"v")])
    recent = time.time() - VALUE_TOUCH_SECONDS / 2
    os.utime(paths[a], (recent, recent))
    await (await manifests.create()).add_values([value(a, ValueKind.TEXT, b"v")])
    assert Path(paths[a]).stat().st_mtime == pytest.approx(recent, abs=0.01)


async def test_the_sweep_waits_for_manifests_using_the_files(manifests: LocalManifests) -> None:
    """A sweep never removes a file between a manifest's check of it and its use."""
    (a,) = ids(1)
    paths = await (await manifests.create()).add_values([value(a, ValueKind.TEXT, b"v")])
    long_ago = time.time() - 10 * 86400
    os.utime(paths[a], (long_ago, long_ago))
    lock = os.open(manifests.values.folder / ".lock", os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)  # as place() holds it, from another process
        sweep = asyncio.create_task(manifests.sweep(3600))
        await asyncio.sleep(0.3)
        assert not sweep.done() and Path(paths[a]).exists()
    finally:
        os.close(lock)
    await asyncio.wait_for(sweep, 5)
    assert not Path(paths[a]).exists()


async def test_concurrent_manifests_writing_the_same_value_agree(
    manifests: LocalManifests,
) -> None:
    data = json.dumps({"k": list(range(1000))}).encode()
    drafts = [await manifests.create() for _ in range(8)]
    found = await asyncio.gather(
        *(
            d.add_values([value(i, ValueKind.JSON, data)])
            for d, i in zip(drafts, ids(8), strict=True)
        )
    )
    assert len({p for paths in found for p in paths.values()}) == 1
    assert Path(next(iter(found[0].values()))).read_bytes() == data
    assert files_in(manifests.values) == [hashlib.sha256(data).hexdigest() + ".json"]


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[AssetManager]:
    root = (tmp_path / "blobs").resolve()
    m = AssetManager(MemoryStore(), LocalStorage(root), Limits(), LocalManifests(root))
    async with running(m):
        yield m


async def test_a_manifest_reads_the_values_it_was_built_from(manager: AssetManager) -> None:
    """Through the manager: repeated manifests over the same values read them back right."""
    made = [
        await manager.create_value(f"v{i}", "", Value(ValueKind.TEXT, f"text {i % 3}".encode()), ())
        for i in range(9)
    ]
    mappings = {f"k{i}": a.id for i, a in enumerate(made)}
    for _ in range(3):
        manifest = await manager.manifest(mappings, {})
        index = json.loads(Path(manifest.path).read_text())
        for key, path in index["inputs"].items():
            assert Path(path).read_text() == f"text {int(key[1:]) % 3}"
    assert manager.manifests is not None
    assert isinstance(manager.manifests, LocalManifests)
    assert len(files_in(manager.manifests.values)) == 3


def test_place_holds_a_shared_lock_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Manifests do not wait for each other: two place() calls hold the lock at once."""
    values = ValueFiles(tmp_path / "values")
    values.open_sync()
    inside = threading.Barrier(2, timeout=5)
    real = value_files._holds

    def holds(folder: int, name: str, data: bytes, now: float) -> bool:
        inside.wait()  # raises BrokenBarrierError unless both are inside place() at once
        return real(folder, name, data, now)

    monkeypatch.setattr(value_files, "_holds", holds)
    done: list[dict[str, str]] = []
    threads = [
        threading.Thread(
            target=lambda i=i: done.append(values.place([value(i, ValueKind.TEXT, b"x")])[0])
        )
        for i in ids(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(done) == 2, "both placed their value while the other held the lock"
    assert files_in(values) == [hashlib.sha256(b"x").hexdigest() + ".txt"]
