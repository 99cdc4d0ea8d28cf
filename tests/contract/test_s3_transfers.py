"""How the S3 backend moves bytes (MinIO): parts in parallel to their final key, reads ahead."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from asset_service.domain import keys
from asset_service.domain.errors import CorruptBytes, Unavailable
from asset_service.domain.models import BLOCK_BYTES
from asset_service.storage.blocks import sums_of
from asset_service.storage.s3 import S3Storage, _parts, _reads
from asset_service.storage.s3._config import PART_SIZE
from tests.backends import MinIO
from tests.contract import s3_helpers

ID = "5b0e4f0e-0000-4000-8000-000000000000"
DAY = datetime(2026, 1, 2, tzinfo=UTC)
MiB = 1 << 20


@pytest.fixture
async def storage(minio: MinIO, tmp_path: Path) -> AsyncIterator[S3Storage]:
    async with s3_helpers.opened(minio, tmp_path / "state") as s3:
        yield s3


class Calls:
    """Wraps one method of a botocore client: counts calls, how many run at once, the most
    at once, in which order they return; `before` runs first on the calling thread."""

    def __init__(self, real: Callable[..., Any], before: Callable[[dict[str, Any]], None]) -> None:
        self.real, self.before = real, before
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.calls: list[dict[str, Any]] = []
        self.returned: list[int] = []

    def __call__(self, **kwargs: Any) -> Any:
        with self.lock:
            self.calls.append(kwargs)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.before(kwargs)
            answer = self.real(**kwargs)
            with self.lock:
                self.returned.append(kwargs.get("PartNumber", 0))
            return answer
        finally:
            with self.lock:
                self.running -= 1


def wrap(
    storage: S3Storage,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    before: Callable[[dict[str, Any]], None] = lambda _: None,
) -> Calls:
    client = storage.bulk.client
    calls = Calls(getattr(client, name), before)
    monkeypatch.setattr(client, name, calls)
    return calls


async def upload_keyed(storage: S3Storage, data: bytes, key: str) -> str:
    writer = storage.new_writer(key)
    for start in range(0, len(data), MiB):
        await writer.write(data[start : start + MiB])
    await writer.seal()
    path = await writer.commit(key)
    await writer.finish()
    return path


async def in_progress(minio: MinIO, prefix: str) -> list[str]:
    """Keys of the multipart uploads in progress under `prefix`."""
    async with s3_helpers.client(minio) as s3:
        uploads = await s3.list_multipart_uploads(Bucket=s3_helpers.BUCKET)
    return [u["Key"] for u in uploads.get("Uploads", ()) if u["Key"].startswith(prefix)]


async def test_parts_go_up_a_few_at_once_land_in_any_order_and_complete_in_order(
    storage: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Barrier(_parts.PARTS_IN_FLIGHT, timeout=10)

    def hold(kwargs: dict[str, Any]) -> None:
        if kwargs["PartNumber"] <= _parts.PARTS_IN_FLIGHT:
            started.wait()  # the first parts are all on their way at once...
        if kwargs["PartNumber"] == 1:
            time.sleep(0.3)  # ...and the first of them lands last

    calls = wrap(storage, monkeypatch, "upload_part", hold)
    data = os.urandom(4 * PART_SIZE + PART_SIZE // 2)
    key = keys.upload_key(ID, "big.bin", DAY)
    path = await upload_keyed(storage, data, key)
    assert len(calls.calls) == 5
    assert calls.most == _parts.PARTS_IN_FLIGHT, "never more parts in flight than the bound"
    assert calls.returned.index(1) > calls.returned.index(2), "part 1 landed after part 2"
    chunks = await storage.read(path, len(data), 0, 0, MiB, sums_of(data))
    assert b"".join([c async for c in chunks]) == data


async def test_a_keyed_upload_goes_to_its_key_unseen_until_commit_and_is_not_copied(
    storage: S3Storage, minio: MinIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies: list[dict[str, Any]] = []
    real_copy = storage.client.upload_part_copy

    async def counting(**kwargs: Any) -> Any:
        copies.append(kwargs)
        return await real_copy(**kwargs)

    monkeypatch.setattr(storage.client, "upload_part_copy", counting)
    data = os.urandom(2 * PART_SIZE + 7)
    key = keys.upload_key(ID, "big.bin", DAY)
    object_key = storage.object_key(key)
    writer = storage.new_writer(key)
    for start in range(0, len(data), MiB):
        await writer.write(data[start : start + MiB])
    await writer.seal()
    assert await in_progress(minio, storage.location.prefix) == [object_key]
    assert await storage.head(object_key) is None, "no object before the commit"
    path = await writer.commit(key)
    await writer.finish()
    assert copies == [], "the upload was completed where it was, not copied"
    assert await in_progress(minio, storage.location.prefix) == []
    assert path == storage.location.path_of(object_key)
    await storage.check(path, len(data))


async def test_a_failed_part_fails_the_upload_and_its_rollback_leaves_no_upload(
    storage: S3Storage, minio: MinIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Part 3 fails while later parts are still on their way: the error reaches the writer,
    and the rollback waits for them before it aborts, so no part can land after the abort."""

    def fail(kwargs: dict[str, Any]) -> None:
        if kwargs["PartNumber"] == 3:
            time.sleep(0.1)  # part 4 has started
            raise OSError("connection reset by the test")
        if kwargs["PartNumber"] >= 4:
            time.sleep(0.5)

    calls = wrap(storage, monkeypatch, "upload_part", fail)
    data = os.urandom(PART_SIZE)
    key = keys.upload_key(ID, "big.bin", DAY)
    writer = storage.new_writer(key)
    with pytest.raises(Unavailable, match="uploading a part"):
        for _ in range(8):
            await writer.write(data)
        await writer.seal()
    assert calls.running >= 1, "later parts were still on their way when the error surfaced"
    await writer.rollback()
    assert calls.running == 0, "the rollback waited for the parts under way"
    assert await in_progress(minio, storage.location.prefix) == []
    assert await storage.head(storage.object_key(key)) is None


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> int:
    """Reads in 2-block windows, two ahead: a few MiB cross many window edges."""
    monkeypatch.setattr(_reads, "READ_WINDOW_BYTES", 2 * BLOCK_BYTES)
    monkeypatch.setattr(_reads, "READ_AHEAD_WINDOWS", 2)
    return 2 * BLOCK_BYTES


async def test_checked_reads_ahead_return_the_exact_bytes_across_blocks_and_windows(
    storage: S3Storage, small_windows: int
) -> None:
    data = os.urandom(5 * BLOCK_BYTES + BLOCK_BYTES // 2 + 3)
    path = await upload_keyed(storage, data, keys.upload_key(ID, "x.bin", DAY))
    sums = sums_of(data)
    edge = small_windows
    for offset, limit, chunk in (
        (0, 0, MiB),
        (0, 0, 4096),
        (BLOCK_BYTES - 5, 10, 4096),  # across a block edge inside a window
        (edge - 3, 6, 1000),  # across a window edge
        (edge - 1, 2 * edge + 2, 65536),  # across two window edges
        (len(data) - 4, 0, 4096),  # the short last block
        (3 * BLOCK_BYTES + 1, BLOCK_BYTES, MiB),
    ):
        chunks = [c async for c in await storage.read(path, len(data), offset, limit, chunk, sums)]
        end = len(data) if limit == 0 else offset + limit
        assert b"".join(chunks) == data[offset:end], (offset, limit, chunk)
        assert all(0 < len(c) <= chunk for c in chunks)


async def test_a_bad_block_mid_read_ends_it_at_its_offset_though_windows_were_read_ahead(
    storage: S3Storage, minio: MinIO, monkeypatch: pytest.MonkeyPatch, small_windows: int
) -> None:
    data = os.urandom(8 * BLOCK_BYTES)
    path = await upload_keyed(storage, data, keys.upload_key(ID, "x.bin", DAY))
    bad = 5 * BLOCK_BYTES
    flipped = bytearray(data)
    flipped[bad + 10] ^= 0x01  # one bit of block 5 (the second block of the third window)
    await s3_helpers.overwrite(minio, path, bytes(flipped))
    gets = wrap(storage, monkeypatch, "get_object")
    got: list[bytes] = []
    with pytest.raises(CorruptBytes, match=f"offset {bad} ") as info:
        async for chunk in await storage.read(path, len(data), 0, 0, MiB, sums_of(data)):
            got.append(chunk)
    assert info.value.offset == bad
    assert b"".join(got) == data[:bad], "every good block before it, and nothing after"
    ranges = [call["Range"] for call in gets.calls]
    assert f"bytes={3 * small_windows}-{4 * small_windows - 1}" in ranges, (
        "the window after the bad one had been asked for: the read was ahead"
    )


async def test_an_upload_a_crash_left_at_its_final_key_is_swept_once_idle_past_the_grace(
    minio: MinIO, tmp_path: Path
) -> None:
    async with s3_helpers.opened(minio, tmp_path / "state", grace=1.0) as storage:
        key = keys.upload_key(ID, "big.bin", DAY)
        writer = storage.new_writer(key)
        await writer.write(os.urandom(PART_SIZE + 1))  # one part sent, at the final key
        writer.abandon()  # as if the server died here: nothing rolls it back
        prefix = storage.location.prefix
        assert await in_progress(minio, prefix) == [storage.object_key(key)]
        assert await storage.sweep_dead_staging() == 0, "younger than the grace"
        await asyncio.sleep(1.2)
        assert await storage.sweep_dead_staging() == 1
        assert await in_progress(minio, prefix) == []
        assert await storage.head(storage.object_key(key)) is None
