"""The UploadSessions contract (resumable uploads), over every blob storage backend."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from asset_service.domain.errors import Conflict
from asset_service.domain.models import UploadHeader
from asset_service.domain.ports import BlobStorage, SessionWriter
from asset_service.domain.uploads import UploadSession
from asset_service.storage.blocks import sums_of
from tests.contract.blob_backends import BlobBackend, blob_backend, blob_backend_names
from tests.contract.test_blob_contract import DAY, ID, content

MiB = 1024 * 1024
NOW = datetime(2026, 1, 2, 12, tzinfo=UTC)
KEY = "a" * 40
# 2.5 object-store parts: a cut keeps two of them there, every byte elsewhere.
DATA = os.urandom(20 * MiB + 12345)
SHA = hashlib.sha256(DATA).hexdigest()
SUMS = sums_of(DATA)


@pytest.fixture(params=blob_backend_names())
async def blob(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobBackend]:
    async with blob_backend(request.param, tmp_path, request) as backend:
        yield backend


def record(expires: datetime = NOW + timedelta(hours=1)) -> UploadSession:
    header = UploadHeader(label="big.bin", tags=("t",), expected_sha256=SHA)
    return UploadSession("upload-0001", "worker-1", header, NOW, expires)


async def fed(writer: SessionWriter, data: bytes, step: int = 1000 * 1000) -> None:
    for start in range(0, len(data), step):
        await writer.write(data[start : start + step])


def durable(blob: BlobBackend, received: int) -> int:
    return received - received % blob.durable_unit


async def cut_at(blob: BlobBackend, storage: BlobStorage, received: int) -> UploadSession:
    """A first stream that got `received` bytes, then was cut."""
    writer = await storage.new_session(KEY, record())
    await fed(writer, DATA[:received])
    return await writer.suspend(NOW + timedelta(hours=2))


async def test_a_cut_stream_keeps_what_is_durable_and_says_so(blob: BlobBackend) -> None:
    storage = await blob.start()
    received = 13 * MiB + 5
    saved = await cut_at(blob, storage, received)
    assert saved.committed_bytes == durable(blob, received)
    assert saved.expires_at == NOW + timedelta(hours=2)
    # Any instance (a restarted server, another one) reads the same.
    for reader in (storage, await blob.start()):
        found = await reader.read_session(KEY)
        assert found is not None
        assert found.committed_bytes == durable(blob, received)
        assert (found.upload_id, found.owner, found.header) == (
            "upload-0001",
            "worker-1",
            record().header,
        )
    assert await storage.read_session("b" * 40) is None


@pytest.mark.parametrize("where", ["same instance", "after a restart"])
async def test_a_resumed_upload_hashes_and_commits_the_whole_file(
    blob: BlobBackend, where: str
) -> None:
    storage = await blob.start()
    await cut_at(blob, storage, 9 * MiB + 77)
    if where == "after a restart":
        await storage.close()
        storage = await blob.start()
    hold = await storage.take_session(KEY)
    assert hold is not None
    offset = hold.session.committed_bytes
    assert offset == durable(blob, 9 * MiB + 77)
    writer = await hold.resume()
    assert writer.size_bytes == offset
    await fed(writer, DATA[offset:])
    await writer.seal()
    assert (writer.size_bytes, writer.sha256) == (len(DATA), SHA)
    assert writer.block_sums == SUMS  # the block checksums of the whole file too
    path = await writer.commit(f"uploads/2026-01-02/{ID}/big.bin")
    await writer.finish()
    assert await content(storage, path, len(DATA)) == DATA
    done = dataclasses.replace(writer.session, asset_id=ID, sha256=SHA, done=True)
    await writer.save(done)
    writer.release()
    found = await (await blob.start()).read_session(KEY)
    assert found is not None and found.done and found.asset_id == ID
    # The bytes moved out: only the record is left of the session.
    assert len(await blob.session_leftovers()) == 1


async def test_one_stream_at_a_time_across_instances(blob: BlobBackend) -> None:
    first, second = await blob.start(), await blob.start()
    writer = await first.new_session(KEY, record())
    with pytest.raises(Conflict):
        await second.new_session(KEY, record())  # two first streams racing
    for storage in (first, second):
        with pytest.raises(Conflict):
            await storage.take_session(KEY)
    await fed(writer, DATA[: 3 * MiB])
    await writer.suspend(NOW + timedelta(hours=1))
    hold = await second.take_session(KEY)
    assert hold is not None
    with pytest.raises(Conflict):
        await first.take_session(KEY)
    hold.release()  # (ends in the background on an object store: the same instance waits)
    again = await second.take_session(KEY)
    assert again is not None
    again.release()


async def test_expired_sessions_are_swept_with_everything_they_staged(blob: BlobBackend) -> None:
    storage = await blob.start()
    await cut_at(blob, storage, 17 * MiB)
    assert await blob.session_leftovers()
    assert await storage.sweep_sessions(NOW + timedelta(hours=2) - timedelta(seconds=1)) == 0
    assert await blob.session_leftovers()
    # A session a stream holds stays, expired or not.
    hold = await storage.take_session(KEY)
    assert hold is not None
    assert await (await blob.start()).sweep_sessions(NOW + timedelta(days=9)) == 0
    hold.release()
    assert await (await blob.start()).sweep_sessions(NOW + timedelta(hours=2)) == 1
    assert await blob.session_leftovers() == []
    assert await storage.read_session(KEY) is None
    assert await storage.take_session(KEY) is None


async def test_a_bounded_sweep_removes_that_many_sessions_and_the_next_the_rest(
    blob: BlobBackend,
) -> None:
    storage = await blob.start()
    for key in ("b" * 40, "c" * 40, "d" * 40):
        writer = await storage.new_session(key, record())
        await fed(writer, DATA[:1000])
        await writer.suspend(NOW + timedelta(hours=1))
    later = NOW + timedelta(hours=2)
    assert [await storage.sweep_sessions(later, 2), await storage.sweep_sessions(later, 2)] == [
        2,
        1,
    ]
    assert await storage.sweep_sessions(later, 2) == 0
    assert await blob.session_leftovers() == []


async def test_removing_a_session_leaves_nothing(blob: BlobBackend) -> None:
    storage = await blob.start()
    await cut_at(blob, storage, 11 * MiB)
    hold = await storage.take_session(KEY)
    assert hold is not None
    writer = await hold.resume()
    await fed(writer, DATA[writer.size_bytes : 12 * MiB])
    await writer.remove()
    assert await blob.session_leftovers() == []
    assert await storage.take_session(KEY) is None


async def test_a_rolled_back_commit_drops_the_bytes_and_keeps_the_record(
    blob: BlobBackend,
) -> None:
    storage = await blob.start()
    writer = await storage.new_session(KEY, record())
    await fed(writer, DATA)
    await writer.seal()
    path = await writer.commit(f"uploads/2026-01-02/{ID}/big.bin")
    await writer.rollback()
    writer.release()
    with pytest.raises(Exception, match="missing"):
        await storage.check(path, len(DATA))
    assert await storage.read_session(KEY) is not None
    assert DAY  # (the key's date)
