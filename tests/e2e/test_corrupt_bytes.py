"""End to end: same-size changes to stored bytes (a flipped bit, a replacement) are DATA_LOSS.

Every 1 MiB block is checked against the crc32c kept since the bytes arrived before any of
it is sent; the first bad block ends the read naming the asset and its offset, and marks
the record. Local disk and a real MinIO; a background scrub and the admin RPC find it too.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from asset_client import AsyncAssetClient, DataLossError, ScrubOutcome

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.api.wire import MAX_MESSAGE_BYTES
from tests.backends import MinIO
from tests.conftest import StartServer
from tests.contract import s3_helpers
from tests.e2e.helpers import MiB, expect_error, pattern_chunks, read_all, upload
from tests.serverproc import ServerProcess, database_url_for, serving

LOSS = grpc.StatusCode.DATA_LOSS
SIZE = 3 * MiB + 123  # four blocks, the last one short
BAD = MiB + 4321  # a byte in the second block
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


def content() -> bytes:
    return b"".join(pattern_chunks(SIZE))


def flip_bit(path: Path, at: int = BAD) -> None:
    """One bit changed in place: same size, same inode, same mtime for all a size test knows."""
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x01]))


async def read_range(
    stub: pb_grpc.AssetServiceStub, asset_id: str, offset: int, limit: int
) -> bytes:
    request = pb.ReadAssetRequest(asset_id=asset_id, offset=offset, limit=limit)
    return b"".join([r.chunk async for r in stub.ReadAsset(request)])


async def read_until_error(
    stub: pb_grpc.AssetServiceStub, asset_id: str
) -> tuple[bytes, grpc.aio.AioRpcError]:
    """What a whole read sends before it fails, and its error."""
    got: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for response in stub.ReadAsset(pb.ReadAssetRequest(asset_id=asset_id)):
            got.append(response.chunk)
    return b"".join(got), info.value


async def check_found_corrupt(
    stub: pb_grpc.AssetServiceStub, asset: pb.Asset, data: bytes, bad_block: int
) -> None:
    """Ranges that miss the bad block are served; the whole read sends the good blocks
    before it, then DATA_LOSS naming the asset and the block's offset; then the record
    says so and every read and manifest is refused at once."""
    assert await read_range(stub, asset.id, 10, 1000) == data[10:1010]
    tail = 2 * MiB + 7
    assert await read_range(stub, asset.id, tail, 0) == data[tail:]
    sent, error = await read_until_error(stub, asset.id)
    assert error.code() == LOSS, error.details()
    assert asset.id in (error.details() or "") and f"offset {bad_block} " in (error.details() or "")
    assert sent == data[:bad_block], "only the blocks before the bad one are sent"
    marked = (await stub.GetAsset(pb.GetAssetRequest(asset_id=asset.id))).asset
    assert marked.corrupt_reason and f"offset {bad_block}" in marked.corrupt_reason
    assert marked.revision > asset.revision and marked.updated_by == "integrity-check"
    assert marked.status == pb.ASSET_STATUS_AVAILABLE and marked.sha256 == asset.sha256

    sent, error = await read_until_error(stub, asset.id)
    assert (error.code(), sent) == (LOSS, b""), "refused before any byte"
    assert "is corrupt" in (error.details() or "") and asset.id in (error.details() or "")
    again = stub.ReadAsset(pb.ReadAssetRequest(asset_id=asset.id, offset=10, limit=10))
    await expect_error(again.read(), LOSS, asset.id)
    await expect_error(
        stub.GetManifest(pb.GetManifestRequest(asset_mappings={"in": asset.id})), LOSS, asset.id
    )


async def test_a_flipped_bit_on_disk_is_data_loss_at_its_block(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    data = content()
    asset = await upload(stub, pattern_chunks(SIZE), label="flip.bin")
    healthy = await upload(stub, pattern_chunks(5000, seed=b"ok"), label="ok.bin")
    assert await read_all(stub, asset.id) == data
    flip_bit(Path(asset.storage_path))
    assert os.stat(asset.storage_path).st_size == SIZE
    await check_found_corrupt(stub, asset, data, MiB)
    # Other assets are not affected, and the corrupt one can be deleted.
    # A ranged read that touches a bad block fails at that block too.
    other = await upload(stub, pattern_chunks(SIZE), label="flip-ranged.bin")
    flip_bit(Path(other.storage_path))
    ranged = stub.ReadAsset(pb.ReadAssetRequest(asset_id=other.id, offset=MiB + 1, limit=3))
    await expect_error(ranged.read(), LOSS, other.id, f"offset {MiB} ")
    assert len(await read_all(stub, healthy.id)) == 5000
    manifest = await stub.GetManifest(pb.GetManifestRequest(asset_mappings={"ok": healthy.id}))
    assert dict(manifest.entries) == {"ok": healthy.storage_path}
    await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset.id))


async def test_a_same_size_replacement_is_refused_by_reads_and_manifests(
    stub: pb_grpc.AssetServiceStub, tmp_path: Path
) -> None:
    data = content()
    read_first = await upload(stub, pattern_chunks(SIZE), label="a.bin")
    listed_first = await upload(stub, pattern_chunks(SIZE), label="b.bin")
    await asyncio.sleep(1.2)  # past the storage's grace for a late ctime (a second)
    for asset in (read_first, listed_first):
        other = Path(asset.storage_path).with_name("replacement")
        other.write_bytes(b"\0" * SIZE)  # the same size, other bytes, a new inode
        os.replace(other, asset.storage_path)
    # A manifest lists the stored file itself: one changed since its record is read and
    # checked in full first (its ctime says so), never handed to a task.
    await expect_error(
        stub.GetManifest(pb.GetManifestRequest(asset_mappings={"in": listed_first.id})),
        LOSS,
        listed_first.id,
        "offset 0 ",
    )
    marked = (await stub.GetAsset(pb.GetAssetRequest(asset_id=listed_first.id))).asset
    assert marked.corrupt_reason
    sent, error = await read_until_error(stub, read_first.id)
    assert (error.code(), sent) == (LOSS, b"")
    assert read_first.id in (error.details() or "") and "offset 0 " in (error.details() or "")
    assert data  # the original content, for the record


async def test_bytes_touched_but_unchanged_are_still_listed(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    """A late ctime alone (chmod, a relink) costs one full check, not a refusal."""
    asset = await upload(stub, pattern_chunks(SIZE), label="touched.bin")
    await asyncio.sleep(1.2)
    os.chmod(asset.storage_path, 0o600)
    for _ in range(2):  # checked in full once, then remembered
        manifest = await stub.GetManifest(pb.GetManifestRequest(asset_mappings={"in": asset.id}))
        assert dict(manifest.entries) == {"in": asset.storage_path}
    got = (await stub.GetAsset(pb.GetAssetRequest(asset_id=asset.id))).asset
    assert got.corrupt_reason == "" and got.revision == asset.revision


# --- on an object store -------------------------------------------------------------------


@pytest.fixture
def s3_server(tmp_path: Path, minio: MinIO) -> Iterator[ServerProcess]:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    with serving(
        ServerProcess(
            tmp_path / "state",
            database_url_for(tmp_path),
            extra_args=["--storage-url", f"s3://{s3_helpers.BUCKET}/{prefix}"],
            env=minio.aws_env(),
        )
    ) as server:
        yield server


async def test_an_object_changed_in_the_bucket_is_data_loss_at_its_block(
    s3_server: ServerProcess, minio: MinIO
) -> None:
    data = content()
    async with grpc.aio.insecure_channel(s3_server.address, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.AssetServiceStub(ch)
        asset = await upload(stub, pattern_chunks(SIZE), label="s3.bin")
        # Other bytes: the same ones would be the same object (stored once, issue 24).
        listed = await upload(stub, pattern_chunks(SIZE, seed=b"l"), label="s3-listed.bin")
        flipped = bytearray(data)
        flipped[BAD] ^= 0x01
        await s3_helpers.overwrite(minio, asset.storage_path, bytes(flipped))
        await s3_helpers.overwrite(minio, listed.storage_path, bytes(SIZE))
        # A manifest copies the input into its local cache through the same checks.
        await expect_error(
            stub.GetManifest(pb.GetManifestRequest(asset_mappings={"in": listed.id})),
            LOSS,
            listed.id,
        )
        await check_found_corrupt(stub, asset, data, MiB)


# --- the scrub ------------------------------------------------------------------------------


async def wait_for(predicate: object, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {seconds}s")


async def test_the_background_scrub_finds_and_marks_corrupt_bytes(
    start_server: StartServer,
) -> None:
    server = start_server("--scrub-rate", "64", "--scrub-interval", "0.5")
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.AssetServiceStub(ch)
        healthy = await upload(stub, pattern_chunks(SIZE, seed=b"h"), label="healthy.bin")
        asset = await upload(stub, pattern_chunks(SIZE), label="rot.bin")
        flip_bit(Path(asset.storage_path), 3 * MiB + 5)  # in the short last block

        async def marked() -> bool:
            got = await stub.GetAsset(pb.GetAssetRequest(asset_id=asset.id))
            return bool(got.asset.corrupt_reason)

        await wait_for(marked)  # no client read it: the scrub did
        sent, error = await read_until_error(stub, asset.id)
        assert (error.code(), sent) == (LOSS, b"")
        await expect_error(
            stub.GetManifest(pb.GetManifestRequest(asset_mappings={"in": asset.id})),
            LOSS,
            asset.id,
        )
        ok = (await stub.GetAsset(pb.GetAssetRequest(asset_id=healthy.id))).asset
        assert ok.corrupt_reason == "" and ok.revision == healthy.revision
        log = "".join(server.log)
        assert f"asset {asset.id} is corrupt" in log and "scrub pass done" in log, log


async def test_the_scrub_rpc_reports_each_asset_and_unmarks_restored_bytes(
    stub: pb_grpc.AssetServiceStub, tmp_path: Path
) -> None:
    data = content()
    good = await upload(stub, pattern_chunks(SIZE, seed=b"g"), label="good.bin")
    bad = await upload(stub, pattern_chunks(SIZE), label="bad.bin")
    value = await stub.CreateValueAsset(
        pb.CreateValueAssetRequest(label="v", value=pb.Value(text="t"))
    )
    pending = await stub.CreatePendingAsset(pb.CreatePendingAssetRequest(task_id="t", label="p"))
    flip_bit(Path(bad.storage_path))

    every = [r async for r in stub.ScrubAssets(pb.ScrubAssetsRequest())]
    outcomes = {r.asset_id: r.outcome for r in every}
    assert outcomes == {good.id: pb.SCRUB_OUTCOME_OK, bad.id: pb.SCRUB_OUTCOME_CORRUPT}
    corrupt = next(r for r in every if r.asset_id == bad.id)
    assert f"offset {MiB} " in corrupt.detail and corrupt.size_bytes == SIZE
    assert (await stub.GetAsset(pb.GetAssetRequest(asset_id=bad.id))).asset.corrupt_reason

    # Named ones, in order; what is not an AVAILABLE FILE is skipped with the reason.
    unknown = str(uuid.uuid4())
    named = [
        r
        async for r in stub.ScrubAssets(
            pb.ScrubAssetsRequest(
                asset_ids=[value.asset.id, pending.asset.id, unknown, good.id],
                rate_mib_per_second=100,
            )
        )
    ]
    assert [(r.asset_id, r.outcome) for r in named] == [
        (value.asset.id, pb.SCRUB_OUTCOME_SKIPPED),
        (pending.asset.id, pb.SCRUB_OUTCOME_SKIPPED),
        (unknown, pb.SCRUB_OUTCOME_SKIPPED),
        (good.id, pb.SCRUB_OUTCOME_OK),
    ]
    assert named[2].detail == "not found"

    # Restored from a copy: the next scrub unmarks it and it is served again.
    Path(bad.storage_path).write_bytes(data)
    again = [r async for r in stub.ScrubAssets(pb.ScrubAssetsRequest(asset_ids=[bad.id]))]
    assert [r.outcome for r in again] == [pb.SCRUB_OUTCOME_RESTORED]
    assert await read_all(stub, bad.id) == data
    assert not (await stub.GetAsset(pb.GetAssetRequest(asset_id=bad.id))).asset.corrupt_reason

    bad_rate = stub.ScrubAssets(pb.ScrubAssetsRequest(rate_mib_per_second=-1))
    await expect_error(bad_rate.read(), grpc.StatusCode.INVALID_ARGUMENT, "rate_mib_per_second")


# --- assets stored before block checksums were kept --------------------------------------


def forget_block_sums(database: Path) -> None:
    """What a record written before this release looks like: no block sums."""
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE assets SET block_sums = NULL")


def stored_sums(database: Path, asset_id: str) -> bytes | None:
    with sqlite3.connect(database) as conn:
        row = conn.execute("SELECT block_sums FROM assets WHERE id = ?", (asset_id,)).fetchone()
    return None if row is None else row[0]


async def test_assets_without_block_sums_get_them_on_first_read(tmp_path: Path) -> None:
    """(SQLite: the test edits the database between two runs of the server.)"""
    data = content()
    database = tmp_path / "legacy.db"

    def start_server(*args: str) -> ServerProcess:
        proc = ServerProcess(tmp_path / "data", f"sqlite:///{database}", extra_args=list(args))
        started.append(proc)
        return proc.start()

    started: list[ServerProcess] = []
    try:
        await legacy_reads(start_server, database, data)
    finally:
        for proc in started:
            proc.stop()


async def legacy_reads(start_server: StartServer, database: Path, data: bytes) -> None:
    server = start_server("--scrub-rate", "0")
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.AssetServiceStub(ch)
        old = await upload(stub, pattern_chunks(SIZE), label="old.bin")
        rotten = await upload(stub, pattern_chunks(SIZE, seed=b"r"), label="rotten.bin")
    server.stop()
    forget_block_sums(database)
    assert stored_sums(database, old.id) is None
    flip_bit(Path(rotten.storage_path))  # changed while it had no block sums

    server = start_server("--scrub-rate", "0")
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.AssetServiceStub(ch)
        # A ranged first read: the whole file is read once, vouched for by its sha256,
        # its sums kept; then the range is served.
        assert await read_range(stub, old.id, MiB - 3, 10) == data[MiB - 3 : MiB + 7]
        kept = stored_sums(database, old.id)
        assert kept is not None and len(kept) == 4 + 4 * 4, "block size, then four sums"
        got = (await stub.GetAsset(pb.GetAssetRequest(asset_id=old.id))).asset
        assert got.revision == old.revision, "keeping sums is not a change of the asset"
        assert await read_all(stub, old.id) == data
        # Sums are never taken from bytes that no longer match the record's sha256.
        sent, error = await read_until_error(stub, rotten.id)
        assert (error.code(), sent) == (LOSS, b"")
        assert "sha256" in (error.details() or "") and rotten.id in (error.details() or "")
        assert stored_sums(database, rotten.id) is None
        marked = (await stub.GetAsset(pb.GetAssetRequest(asset_id=rotten.id))).asset
        assert marked.corrupt_reason
        # Now the sums catch a later change at its block.
        flip_bit(Path(old.storage_path))
        ranged = stub.ReadAsset(pb.ReadAssetRequest(asset_id=old.id, offset=MiB, limit=1))
        await expect_error(ranged.read(), LOSS, old.id, f"offset {MiB} ")


async def test_the_python_client_scrubs_and_sees_the_mark(
    server: ServerProcess, stub: pb_grpc.AssetServiceStub, tmp_path: Path
) -> None:
    asset = await upload(stub, pattern_chunks(SIZE), label="py.bin")
    async with AsyncAssetClient(server.address) as client:
        started = time.monotonic()
        [ok] = [r async for r in client.scrub([asset.id], rate_mib_per_second=16)]
        assert (ok.asset_id, ok.outcome, ok.size_bytes) == (asset.id, ScrubOutcome.OK, SIZE)
        assert time.monotonic() - started >= 0.9 * SIZE / (16 * MiB), "the rate is kept"
        flip_bit(Path(asset.storage_path))
        [bad] = [r async for r in client.scrub([asset.id])]
        assert bad.outcome is ScrubOutcome.CORRUPT and f"offset {MiB} " in bad.detail
        assert (await client.get(asset.id)).corrupt_reason
        with pytest.raises(DataLossError, match=asset.id):
            await client.download(asset.id, tmp_path / "out.bin", progress=False)
