"""What S3Storage's blobs, sessions and sweeps use of it: the client, key naming, placing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asset_service.domain.errors import Conflict, IntegrityError, NotFound, Unavailable
from asset_service.storage import keys
from asset_service.storage.journal import Journal
from asset_service.storage.s3._bulk import Bulk
from asset_service.storage.s3._config import (
    COPY_PART_SIZE,
    S3Location,
    is_missing,
    is_precondition,
    translate,
)
from asset_service.storage.s3._parts import crc32c_base64
from asset_service.storage.s3._reads import Object

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)


class Bucket:
    """One S3Storage instance's place in the bucket: a blob commits through it, never
    through the storage (as a BuildGrid write session never calls its storage).

    Keys: <prefix>uploads/..., <prefix>generated/..., this instance's staging under
    <prefix>tmp/staging/<instance>/, resumable uploads' sessions under <prefix>tmp/uploads/.
    Moves of server-side files are journaled in `journal`, on this host.
    """

    def __init__(
        self,
        location: S3Location,
        url: str,
        instance: str,
        journal: Journal,
        orphan_grace_seconds: float,
    ) -> None:
        self.location = location
        self.url = url
        self.instance = instance
        self.journal = journal
        # An object younger than this may be another server's commit in flight.
        self.orphan_grace_seconds = orphan_grace_seconds
        self.staging_area = f"{location.prefix}tmp/staging/"
        self.sessions_area = f"{location.prefix}tmp/uploads/"
        # Set by the storage's open(), None again once it is closed.
        self.open_client: S3Client | None = None
        self.open_bulk: Bulk | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> S3Client:
        if self.open_client is None:
            raise Unavailable(f"object storage {self.url} is not open")
        return self.open_client

    @property
    def bulk(self) -> Bulk:
        """Parts and ranged GETs, on threads (storage/s3/_bulk.py says why)."""
        if self.open_bulk is None:
            raise Unavailable(f"object storage {self.url} is not open")
        return self.open_bulk

    # --- cleanup a synchronous caller cannot await --------------------------------------

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run cleanup that a synchronous caller cannot await; the storage's close() waits
        for it."""

        async def logged() -> None:
            try:
                await work
            except Exception:
                # Whatever it left (an upload, an object) the start-up sweeps remove.
                log.exception("cleaning up a discarded upload failed")

        task = asyncio.get_running_loop().create_task(logged())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for cleanup started by discard(): later calls on this instance see it done."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=30)

    # --- keys -------------------------------------------------------------------------

    def object_key(self, key: str) -> str:
        return self.location.prefix + "/".join(keys.key_parts(key))

    def staging_key(self, blob_id: str) -> str:
        return f"{self.staging_area}{self.instance}/{blob_id}"

    def key_of(self, storage_path: str) -> str:
        head = self.location.path_of(self.location.prefix)
        if not storage_path.startswith(head):
            raise NotFound(f"{storage_path} is not a path in this storage ({self.url})")
        return self.object_key(storage_path[len(head) :])

    # --- placing ------------------------------------------------------------------------

    async def _placed(self, object_key: str, write: Any) -> None:
        """Run a conditional write; replace a crash leftover older than the grace, once."""
        for attempt in (1, 2):
            try:
                await write()
                return
            except Exception as exc:
                if not is_precondition(exc):
                    raise translate(exc, "committing bytes", object_key) from exc
            age = await self._age(object_key)
            if attempt == 2 or age is None or age < self.orphan_grace_seconds:
                raise Conflict(
                    "the asset's bytes are being committed by another request; retry shortly"
                )
            log.warning("replacing an object left %.0fs ago by an interrupted commit", age)
            await self.delete_quietly(object_key)

    async def place_bytes(self, object_key: str, body: bytes, blob_id: str) -> None:
        checksum = await asyncio.to_thread(crc32c_base64, body)

        async def write() -> None:
            await self.client.put_object(
                Bucket=self.location.bucket,
                Key=object_key,
                Body=body,
                IfNoneMatch="*",
                Metadata={"blob-id": blob_id},
                ChecksumCRC32C=checksum,  # checked by the store on receipt
            )

        await self._placed(object_key, write)

    async def place_upload(
        self, object_key: str, upload_id: str, parts: list[CompletedPartTypeDef]
    ) -> None:
        """Complete a multipart upload opened at its final key, only if the key is still
        free (a refused completion leaves the upload open: it can be retried, or aborted)."""

        async def write() -> None:
            await self.client.complete_multipart_upload(
                Bucket=self.location.bucket,
                Key=object_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )

        await self._placed(object_key, write)

    async def place_copy(self, object_key: str, source_key: str, blob_id: str) -> None:
        """Server-side multipart copy, completed only if the key is still free."""
        bucket = self.location.bucket
        size = await self._size(source_key)

        async def write() -> None:
            created = await self.client.create_multipart_upload(
                Bucket=bucket, Key=object_key, Metadata={"blob-id": blob_id}
            )
            upload_id = created["UploadId"]
            try:
                parts: list[CompletedPartTypeDef] = []
                for number, start in enumerate(range(0, max(size, 1), COPY_PART_SIZE), 1):
                    end = min(size, start + COPY_PART_SIZE) - 1
                    copied = await self.client.upload_part_copy(
                        Bucket=bucket,
                        Key=object_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": bucket, "Key": source_key},
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                    parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
                await self.client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=object_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )
            except BaseException:
                await self.abort_upload(object_key, upload_id)
                raise

        await self._placed(object_key, write)

    # --- removing -----------------------------------------------------------------------

    async def abort_upload(self, object_key: str, upload_id: str) -> None:
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.location.bucket, Key=object_key, UploadId=upload_id
            )
        except Exception as exc:
            if not is_missing(exc):
                log.warning("could not abort the upload of %s (%s); a sweep will", object_key, exc)

    async def delete_quietly(self, object_key: str) -> None:
        try:
            await self.client.delete_object(Bucket=self.location.bucket, Key=object_key)
        except Exception as exc:
            log.warning("could not delete %s (%s); a sweep will", object_key, exc)

    async def delete_if_ours(self, object_key: str, blob_id: str) -> bool:
        """Delete an object this blob placed; never one another writer put there since."""
        head = await self.head(object_key)
        if head is None or head.get("Metadata", {}).get("blob-id") != blob_id:
            return False
        try:
            await self.client.delete_object(
                Bucket=self.location.bucket, Key=object_key, IfMatch=head["ETag"]
            )
        except Exception as exc:
            if not (is_missing(exc) or is_precondition(exc)):
                raise translate(exc, "removing bytes", object_key) from exc
            return False
        return True

    # --- looking ------------------------------------------------------------------------

    async def head(self, object_key: str) -> dict[str, Any] | None:
        try:
            head = await self.client.head_object(Bucket=self.location.bucket, Key=object_key)
        except Exception as exc:
            if is_missing(exc):
                return None
            raise translate(exc, "checking bytes", object_key) from exc
        return dict(head)

    async def _age(self, object_key: str) -> float | None:
        head = await self.head(object_key)
        if head is None:
            return None
        modified: datetime = head["LastModified"]
        return (datetime.now(UTC) - modified).total_seconds()

    async def _size(self, object_key: str) -> int:
        head = await self.head(object_key)
        if head is None:
            raise IntegrityError(f"the staged upload {object_key} vanished before its commit")
        return int(head["ContentLength"])

    def ranged(
        self, object_key: str, shown: str, etag: str, offset: int, end: int, chunk_size: int
    ) -> AsyncIterator[bytes]:
        """One ranged GET pinned to `etag`, streamed chunk by chunk."""
        stored = Object(self.client, self.location.bucket, object_key, etag, shown)
        return stored.ranged(offset, end, chunk_size)

    async def uploads(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        """Multipart uploads in progress under `prefix`.

        Listed bucket-wide and filtered here: MinIO lists uploads for an empty prefix or
        one exact key only, not for a folder-like prefix (checked against the pinned build).
        """
        paginator = self.client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.location.bucket):
            for upload in page.get("Uploads", ()):
                if upload["Key"].startswith(prefix):
                    yield dict(upload)

    async def listed(self, prefix: str, after: str = "") -> AsyncIterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        bucket = self.location.bucket
        pages = (
            paginator.paginate(Bucket=bucket, Prefix=prefix, StartAfter=after)
            if after
            else paginator.paginate(Bucket=bucket, Prefix=prefix)
        )
        async for page in pages:
            for item in page.get("Contents", ()):
                yield dict(item)
