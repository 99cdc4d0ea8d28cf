"""End to end on a real MinIO: the server keeps FILE bytes in s3://bucket/prefix."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.backends import MinIO
from tests.contract import s3_helpers
from tests.e2e.helpers import (
    MiB,
    digest_of,
    expect_error,
    pattern_chunks,
    pending_asset,
    read_all,
    upload,
)
from tests.serverproc import ServerProcess, database_url_for, serving


@pytest.fixture
def s3_server(tmp_path: Path, import_root: Path, minio: MinIO) -> Iterator[ServerProcess]:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    with serving(
        ServerProcess(
            tmp_path / "state",
            database_url_for(tmp_path),
            import_roots=[import_root],
            extra_args=["--storage-url", f"s3://{s3_helpers.BUCKET}/{prefix}"],
            env=minio.aws_env(),  # endpoint, region and keys from the standard AWS variables
        )
    ) as server:
        yield server


async def objects(minio: MinIO, storage_path: str) -> int:
    """How many objects exist at that storage path (0 or 1), asked of MinIO directly."""
    key = storage_path.removeprefix(f"s3://{s3_helpers.BUCKET}/")
    async with s3_helpers.client(minio) as s3:
        found = await s3.list_objects_v2(Bucket=s3_helpers.BUCKET, Prefix=key)
        return int(found.get("KeyCount", 0))


async def test_upload_read_fulfill_manifest_delete_on_minio(
    s3_server: ServerProcess, import_root: Path, minio: MinIO
) -> None:
    async with grpc.aio.insecure_channel(s3_server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        # Several 8 MiB parts: a multipart upload hashed while streaming.
        sha, size = digest_of(pattern_chunks(20 * MiB))
        big = await upload(stub, pattern_chunks(20 * MiB), label="big.bin", expected_sha256=sha)
        assert big.storage_path.startswith(f"s3://{s3_helpers.BUCKET}/")
        assert (big.size_bytes, big.sha256) == (size, sha)
        assert hashlib.sha256(await read_all(stub, big.id)).hexdigest() == sha
        assert await objects(minio, big.storage_path) == 1
        assert not list((s3_server.root / "uploads").rglob("*")), "no bytes on the local disk"

        # A worker's file is copied into the bucket; the source goes once the record commits.
        promise = await pending_asset(stub, "o.csv")
        source = import_root / "o.csv"
        source.write_text("a,b\n1,2\n")
        done = await stub.FulfillAsset(
            pb.FulfillAssetRequest(asset_id=promise.id, source_path=str(source))
        )
        assert done.asset.status == pb.ASSET_STATUS_AVAILABLE and not source.exists()
        assert await read_all(stub, promise.id) == b"a,b\n1,2\n"

        # The manifest maps keys to LOCAL files: copies of the objects, verified.
        manifest = await stub.GetManifest(
            pb.GetManifestRequest(asset_mappings={"big": big.id, "table": promise.id})
        )
        body = json.loads(Path(manifest.manifest_path).read_text())
        assert Path(body["inputs"]["table"]).read_text() == "a,b\n1,2\n"
        local_big = Path(body["inputs"]["big"])
        assert local_big.is_absolute() and local_big.stat().st_size == size

        await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=big.id))
        assert await objects(minio, big.storage_path) == 0, "the object goes after the record"
        await expect_error(
            stub.GetAsset(pb.GetAssetRequest(asset_id=big.id)), grpc.StatusCode.NOT_FOUND
        )


async def test_an_object_tampered_with_in_the_bucket_is_data_loss(
    s3_server: ServerProcess, minio: MinIO
) -> None:
    async with grpc.aio.insecure_channel(s3_server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        asset = await upload(stub, [b"0123456789"], label="t.bin")
        key = asset.storage_path.removeprefix(f"s3://{s3_helpers.BUCKET}/")
        async with s3_helpers.client(minio) as s3:
            await s3.put_object(Bucket=s3_helpers.BUCKET, Key=key, Body=b"01234")
        read = stub.ReadAsset(pb.ReadAssetRequest(asset_id=asset.id))
        await expect_error(read.read(), grpc.StatusCode.DATA_LOSS, "record says 10")
