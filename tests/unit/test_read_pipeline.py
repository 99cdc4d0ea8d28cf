"""The download pipeline: batched reads give exactly the asked bytes; chunk buffers are reused."""

from __future__ import annotations

import os
import resource
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service import allocator
from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.domain import keys
from asset_service.domain.errors import IntegrityError
from asset_service.storage.local import LocalStorage, _reads

ID = "0b1c2d3e-4f50-4a61-8b72-93a4b5c6d7e8"
CHUNK = 16
BATCH = 64  # four chunks per thread hop
DATA = bytes(range(256)) + bytes(range(45))  # 301 bytes: batches and chunks do not divide it


@pytest.fixture
async def stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LocalStorage, str]:
    monkeypatch.setattr(_reads, "READ_BATCH_BYTES", BATCH)
    storage = LocalStorage(tmp_path)
    await storage.open()
    writer = storage.new_writer()
    await writer.write(DATA)
    await writer.seal()
    path = await writer.commit(keys.upload_key(ID, "d.bin", datetime.now(UTC)))
    await writer.finish()
    return storage, path


async def read(storage: LocalStorage, path: str, offset: int, limit: int) -> list[bytes]:
    chunks = await storage.read(path, len(DATA), offset, limit, CHUNK)
    return [c async for c in chunks]


EDGES = sorted({0, 1, CHUNK - 1, CHUNK, CHUNK + 1, BATCH - 1, BATCH, BATCH + 1, 2 * BATCH + 3})


@pytest.mark.parametrize("offset", [*EDGES, len(DATA) - 1, len(DATA)])
@pytest.mark.parametrize("limit", [0, *EDGES[1:], len(DATA) + 10])
async def test_reads_return_exactly_the_bytes_asked_for(
    stored: tuple[LocalStorage, str], offset: int, limit: int
) -> None:
    storage, path = stored
    chunks = await read(storage, path, offset, limit)
    end = len(DATA) if limit == 0 else min(len(DATA), offset + limit)
    assert b"".join(chunks) == DATA[offset:end]
    assert all(0 < len(c) <= CHUNK for c in chunks), "every chunk is at most chunk_size"
    assert all(len(c) == CHUNK for c in chunks[:-1]), "only the last chunk may be short"


async def test_a_file_truncated_while_read_is_an_integrity_error(
    stored: tuple[LocalStorage, str],
) -> None:
    storage, path = stored
    chunks = await storage.read(path, len(DATA), 0, 0, CHUNK)
    got = [await anext(chunks)]  # the first batch is read
    os.truncate(path, BATCH + CHUNK)
    with pytest.raises(IntegrityError, match=f"ended at {BATCH + CHUNK} of {len(DATA)} bytes"):
        async for chunk in chunks:
            got.append(chunk)
    assert b"".join(got) == DATA[: BATCH + CHUNK], "what was there is sent, then the error"


def test_sent_chunks_reuse_memory_instead_of_faulting_it_in() -> None:
    """A 1 MiB message and its serialized copy, freed together, stay in the heap.

    Without the tuning glibc gives them back to the kernel and faults them in again: about
    two faults per 4 KiB page of every chunk ReadAsset sends.
    """
    if not allocator.keep_chunk_buffers():
        pytest.skip("not glibc: mallopt is not available")
    data = os.urandom(1024 * 1024)
    pb.ReadAssetResponse(chunk=data).SerializeToString()  # warm the heap once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for offset in range(32):
        pb.ReadAssetResponse(chunk=data, offset=offset).SerializeToString()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 32 * 256 // 4, f"{faults} page faults for 32 chunks sent"
