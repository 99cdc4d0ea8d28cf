"""Server-side files adopted (RegisterFile, a path FulfillAsset) whose bytes are stored
already: the asset is a second name for them, and the worker's file goes as a move takes
it (issue 24), in-process over SQLite and the local disk."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.models import AssetType
from asset_service.storage.imports import ImportRoots
from asset_service.storage.local import LocalStorage
from asset_service.store.sqlite import SqliteStore
from tests.managers import running

DATA = os.urandom(2 * 1024 * 1024 + 5)


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[AssetManager]:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    storage = LocalStorage(tmp_path / "blobs", imports=ImportRoots([incoming]))
    m = AssetManager(SqliteStore(tmp_path / "db.sqlite"), storage, Limits())
    async with running(m):
        yield m


def worker_file(tmp_path: Path, name: str, data: bytes = DATA) -> Path:
    path = tmp_path / "incoming" / name
    path.write_bytes(data)
    return path


def inode(path: str) -> int:
    return os.stat(path).st_ino


async def test_a_moved_file_of_stored_bytes_is_a_second_name_and_the_file_goes(
    manager: AssetManager, tmp_path: Path
) -> None:
    first = await manager.register_file(str(worker_file(tmp_path, "a.bin")), "", "", (), move=True)
    source = worker_file(tmp_path, "b.bin")  # the same bytes, another file
    again = await manager.register_file(str(source), "", "", (), move=True)
    assert again.storage_path != first.storage_path
    assert inode(again.storage_path) == inode(first.storage_path), "stored once"
    assert os.stat(first.storage_path).st_nlink == 2
    assert not source.exists(), "a move takes the worker's file"
    assert list((tmp_path / "blobs" / "tmp" / "staging").glob("*/[0-9a-f]*")) == []
    await manager.delete(first.id)
    assert Path(again.storage_path).read_bytes() == DATA


async def test_a_copied_file_of_stored_bytes_is_shared_and_the_file_stays(
    manager: AssetManager, tmp_path: Path
) -> None:
    first = await manager.register_file(str(worker_file(tmp_path, "a.bin")), "", "", (), move=True)
    source = worker_file(tmp_path, "b.bin")
    again = await manager.register_file(str(source), "", "", (), move=False)
    assert inode(again.storage_path) == inode(first.storage_path)
    assert source.read_bytes() == DATA, "a copy leaves the worker's file"


async def test_a_path_fulfilment_of_stored_bytes_shares_them_and_a_retry_is_answered(
    manager: AssetManager, tmp_path: Path
) -> None:
    first = await manager.register_file(str(worker_file(tmp_path, "a.bin")), "", "", (), move=True)
    promise = await manager.create_pending("task-1", "out.bin", "", AssetType.FILE, ())
    source = worker_file(tmp_path, "out.bin")
    done = await manager.fulfill_from_path(promise.id, str(source), "")
    assert inode(done.storage_path) == inode(first.storage_path)
    assert not source.exists()
    # A retry with the same bytes in a new file: answered as it is, the file left alone.
    again = worker_file(tmp_path, "out.bin")
    assert (await manager.fulfill_from_path(promise.id, str(again), "")).id == promise.id
    assert again.read_bytes() == DATA


async def test_other_bytes_are_moved_in_as_they_come(manager: AssetManager, tmp_path: Path) -> None:
    await manager.register_file(str(worker_file(tmp_path, "a.bin")), "", "", (), move=True)
    other = worker_file(tmp_path, "b.bin", DATA[::-1])
    source_inode = os.stat(other).st_ino
    stored = await manager.register_file(str(other), "", "", (), move=True)
    assert inode(stored.storage_path) == source_inode, "the worker's own file, linked in"
