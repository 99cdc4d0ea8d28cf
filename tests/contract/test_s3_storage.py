"""What only the S3 backend does: multipart staging, stale-upload sweeps, AWS settings (MinIO)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service.domain import keys
from asset_service.domain.errors import Conflict, InvalidArgument, Unavailable
from asset_service.storage.s3 import S3Location, S3Storage
from asset_service.storage.s3._config import PART_SIZE
from tests.backends import MinIO
from tests.contract import s3_helpers

ID = "5b0e4f0e-0000-4000-8000-000000000000"
DAY = datetime(2026, 1, 2, tzinfo=UTC)


@pytest.fixture
async def storage(minio: MinIO, tmp_path: Path) -> AsyncIterator[S3Storage]:
    async with s3_helpers.opened(minio, tmp_path / "state") as s3:
        yield s3


async def test_a_blob_over_one_part_streams_as_multipart_and_commits_whole(
    storage: S3Storage, minio: MinIO
) -> None:
    data = os.urandom(PART_SIZE + PART_SIZE // 2 + 123)  # two parts, the last one short
    writer = storage.new_writer()
    for start in range(0, len(data), 1 << 20):
        await writer.write(data[start : start + (1 << 20)])
    assert await s3_helpers.staged(minio, storage.location.prefix) == 1
    await writer.seal()
    assert (writer.size_bytes, writer.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    key = keys.upload_key(ID, "big.bin", DAY)
    path = await writer.commit(key)
    await writer.finish()
    assert path == f"s3://{s3_helpers.BUCKET}/{storage.location.prefix}{key}"
    assert await s3_helpers.staged(minio, storage.location.prefix) == 0, "staging copied away"
    chunks = [c async for c in await storage.read(path, len(data), 0, 0, 1 << 20)]
    assert b"".join(chunks) == data
    tail = [c async for c in await storage.read(path, len(data), PART_SIZE - 5, 10, 4096)]
    assert b"".join(tail) == data[PART_SIZE - 5 : PART_SIZE + 5]
    # The conditional CompleteMultipartUpload refuses a second big commit to the same key.
    rival = storage.new_writer()
    await rival.write(os.urandom(PART_SIZE + 1))
    await rival.seal()
    with pytest.raises(Conflict, match="another request"):
        await rival.commit(key)
    await rival.rollback()
    assert await s3_helpers.staged(minio, storage.location.prefix) == 0
    assert b"".join([c async for c in await storage.read(path, len(data), 0, 0, 1 << 20)]) == data


async def test_stale_uploads_of_unknown_instances_go_once_idle_past_the_grace(
    minio: MinIO, tmp_path: Path
) -> None:
    async with s3_helpers.opened(minio, tmp_path / "state", grace=1.0) as storage:
        # Another host's upload: its instance has no state folder here.
        async with s3_helpers.client(minio) as s3:
            key = f"{storage.location.prefix}tmp/staging/otherhost-1/blob"
            await s3.create_multipart_upload(Bucket=s3_helpers.BUCKET, Key=key)
        live = storage.new_writer()  # this instance's own upload: never swept while alive
        await live.write(b"mine")
        assert await storage.sweep_dead_staging() == 0, "younger than the grace"
        await asyncio.sleep(1.2)
        assert await storage.sweep_dead_staging() == 1
        assert await s3_helpers.staged(minio, storage.location.prefix) == 1
        await live.rollback()


async def test_settings_come_from_the_aws_variables(
    minio: MinIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in minio.aws_env().items():
        monkeypatch.setenv(name, value)
    storage = S3Storage(f"s3://{s3_helpers.BUCKET}/env", tmp_path / "state")
    await storage.open()
    await storage.close()
    missing = S3Storage("s3://no-such-bucket-here/x", tmp_path / "state")
    with pytest.raises(Unavailable, match=r"no-such-bucket-here.*create it"):
        await missing.open()


def test_storage_urls_are_parsed_strictly() -> None:
    assert S3Location.parse("s3://b/a/b/") == S3Location("b", "a/b/")
    assert S3Location.parse("s3://b") == S3Location("b", "")
    for bad in ("http://b/x", "s3:///x", "s3://b/a/../c", "s3://b/x?y=1"):
        with pytest.raises(InvalidArgument, match="storage url"):
            S3Location.parse(bad)


@pytest.mark.parametrize("size", [100, PART_SIZE + 5], ids=["one PUT", "multipart"])
async def test_the_store_refuses_bytes_whose_crc32c_is_not_the_one_sent(
    storage: S3Storage, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Each part (and a small object's PUT) carries its ChecksumCRC32C: bytes damaged on
    the way are refused by the store, not kept. Here the checksum sent is wrong instead."""
    from asset_service.storage.s3 import _bucket, _parts

    right = _parts.crc32c_base64

    def wrong(data: bytes) -> str:
        return right(data + b"!")

    monkeypatch.setattr(_parts, "crc32c_base64", wrong)
    monkeypatch.setattr(_bucket, "crc32c_base64", wrong)
    writer = storage.new_writer()
    with pytest.raises(Unavailable, match=r"(?i)checksum|digest"):
        for start in range(0, size, 1 << 20):
            await writer.write(os.urandom(min(1 << 20, size - start)))
        await writer.seal()
        await writer.commit(keys.upload_key(ID, "x.bin", DAY))
    await writer.rollback()
