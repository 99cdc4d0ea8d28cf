"""Resumable uploads in-process: the AssetManager over MemoryStore and LocalStorage."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asset_service.domain.errors import Conflict, NotFound, TooLarge
from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.models import AssetType, Status, UploadHeader
from asset_service.storage.local import LocalStorage
from asset_service.store.memory import MemoryStore
from tests.managers import running

KiB = 1024
DATA = os.urandom(300 * KiB)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[AssetManager]:
    manager = AssetManager(
        MemoryStore(), LocalStorage(tmp_path), Limits(max_upload_bytes=400 * KiB)
    )
    async with running(manager):
        yield manager


async def chunks(data: bytes, step: int = 64 * KiB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), step):
        yield data[start : start + step]


def header(upload_id: str = "upload-0001", offset: int = 0, **fields: object) -> UploadHeader:
    base = UploadHeader(label="f.bin", expected_sha256=SHA, upload_id=upload_id)
    return dataclasses.replace(base, write_offset=offset, **fields)  # type: ignore[arg-type]


async def test_a_stream_cancelled_while_its_session_opens_does_not_keep_it(
    manager: AssetManager,
) -> None:
    """A client that gives up at once must not leave the session held (ABORTED forever)."""
    for turns in range(6):
        task = asyncio.create_task(manager.upload(header(), chunks(DATA), by="w"))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises((asyncio.CancelledError, Conflict)):
            await task
        await manager.settle_sessions()
    committed = (await manager.query_upload("upload-0001", by="w")).committed_bytes
    asset = await manager.upload(header(offset=committed), chunks(DATA[committed:]), by="w")
    assert asset.sha256 == SHA


async def test_a_stream_past_the_size_limit_ends_the_upload(
    manager: AssetManager, tmp_path: Path
) -> None:
    big = DATA + DATA
    with pytest.raises(TooLarge):
        await manager.upload(header(expected_sha256=""), chunks(big), by="w")
    with pytest.raises(NotFound):
        await manager.query_upload("upload-0001", by="w")
    assert not list((tmp_path / "tmp" / "uploads").iterdir())


async def test_a_resumable_upload_fulfills_a_promise_once(manager: AssetManager) -> None:
    promise = await manager.create_pending("t-1", "out.bin", "", AssetType.FILE, [], by="o")
    head = header(pending_asset_id=promise.id, label="")

    async def cut(data: bytes) -> AsyncIterator[bytes]:
        yield data[: 100 * KiB]
        raise ConnectionResetError("the stream was cut")

    with pytest.raises(ConnectionResetError):
        await manager.upload(head, cut(DATA), by="task:t-1")
    committed = (await manager.query_upload("upload-0001", by="task:t-1")).committed_bytes
    assert committed == 100 * KiB
    done = await manager.upload(
        dataclasses.replace(head, write_offset=committed), chunks(DATA[committed:]), by="task:t-1"
    )
    assert (done.id, done.status, done.sha256) == (promise.id, Status.AVAILABLE, SHA)
    # The answer was lost: the same upload again answers the same asset, nothing twice.
    again = await manager.upload(head, chunks(DATA), by="task:t-1")
    assert (again.id, again.revision) == (done.id, done.revision)
    state = await manager.query_upload("upload-0001", by="task:t-1")
    assert state.asset is not None and state.asset.id == promise.id
