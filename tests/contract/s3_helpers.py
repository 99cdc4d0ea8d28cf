"""Reaching past S3Storage into the MinIO bucket, as an operator would (contract helpers)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asset_service.storage.s3 import S3Storage
from asset_service.storage.s3._config import Credentials, create_client
from tests.backends import MinIO

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

BUCKET = "asset-contract"


def credentials(minio: MinIO) -> dict[str, str]:
    """S3Storage keyword arguments for this MinIO."""
    return {
        "endpoint_url": minio.endpoint,
        "region": minio.region,
        "access_key_id": minio.access_key,
        "secret_access_key": minio.secret_key,
    }


@asynccontextmanager
async def opened(minio: MinIO, state: Path, grace: float = 60.0) -> AsyncIterator[S3Storage]:
    """An open S3Storage under a fresh prefix of the bucket, closed on the way out."""
    url = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    storage = S3Storage(url, state, grace, **credentials(minio))
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


@asynccontextmanager
async def client(minio: MinIO) -> AsyncIterator[S3Client]:
    creds = Credentials(minio.endpoint, minio.region, minio.access_key, minio.secret_key)
    async with create_client(creds, 4) as s3:
        yield s3


async def create_bucket(minio: MinIO) -> None:
    async with client(minio) as s3:
        await s3.create_bucket(Bucket=BUCKET)


async def backdate(minio: MinIO, storage_path: str, seconds: float) -> None:
    """Rewrite the object with an older modification time (MinIO's replication header)."""
    key = storage_path.removeprefix(f"s3://{BUCKET}/")
    async with client(minio) as s3:
        head = await s3.head_object(Bucket=BUCKET, Key=key)
        older = (head["LastModified"] - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")

        def stamp(request: Any, **_: Any) -> None:
            request.headers["X-Minio-Source-Mtime"] = older

        s3.meta.events.register("before-sign.s3.PutObject", stamp)
        answer = await s3.get_object(Bucket=BUCKET, Key=key)
        async with answer["Body"] as body:
            data = await body.read()
        await s3.put_object(Bucket=BUCKET, Key=key, Body=data, Metadata=head["Metadata"])


async def staged(minio: MinIO, prefix: str) -> int:
    """Uncommitted blobs under `prefix`, whichever instance made them: multipart uploads in
    progress (at a staging key, or at the final key of a writer opened for it), and staging
    objects. Resumable upload sessions (tmp/uploads/) are not counted."""
    area, sessions = f"{prefix}tmp/staging/", f"{prefix}tmp/uploads/"
    async with client(minio) as s3:
        # MinIO lists uploads for no prefix or an exact key only: filter here.
        uploads = await s3.list_multipart_uploads(Bucket=BUCKET)
        objects = await s3.list_objects_v2(Bucket=BUCKET, Prefix=area)
    in_progress = [
        u
        for u in uploads.get("Uploads", ())
        if u["Key"].startswith(prefix) and not u["Key"].startswith(sessions)
    ]
    return len(in_progress) + len(objects.get("Contents", ()))


async def session_leftovers(minio: MinIO, prefix: str) -> list[str]:
    """Objects and multipart uploads of resumable upload sessions under `prefix`."""
    area = f"{prefix}tmp/uploads/"
    async with client(minio) as s3:
        uploads = await s3.list_multipart_uploads(Bucket=BUCKET)
        objects = await s3.list_objects_v2(Bucket=BUCKET, Prefix=area)
    found = [f"upload {u['Key']}" for u in uploads.get("Uploads", ()) if u["Key"].startswith(area)]
    return sorted(found + [o["Key"] for o in objects.get("Contents", ())])


async def overwrite(minio: MinIO, storage_path: str, data: bytes) -> None:
    """Put other bytes at a stored object's key (its metadata kept), behind S3Storage."""
    key = storage_path.removeprefix(f"s3://{BUCKET}/")
    async with client(minio) as s3:
        head = await s3.head_object(Bucket=BUCKET, Key=key)
        await s3.put_object(Bucket=BUCKET, Key=key, Body=data, Metadata=head["Metadata"])
