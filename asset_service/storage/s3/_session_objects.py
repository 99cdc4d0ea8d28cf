"""A resumable upload session's objects in the bucket: its record, its upload, its data."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from asset_service.domain.errors import Conflict, IntegrityError
from asset_service.domain.uploads import UploadSession
from asset_service.storage import sessions
from asset_service.storage.blocks import Digests
from asset_service.storage.s3._config import (
    COPY_PART_SIZE,
    PART_SIZE,
    is_missing,
    is_precondition,
    translate,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from asset_service.storage.s3._bucket import Bucket

log = logging.getLogger(__name__)


@dataclass
class Record:
    session: UploadSession
    extra: dict[str, Any]
    etag: str
    age: float  # seconds since it was written, by the object store's clock


@dataclass(frozen=True)
class Durable:
    """What a session holds in the bucket: the parts 1..n of its multipart upload, or (once
    that upload was completed: about to commit, or read back) its data object."""

    parts: list[CompletedPartTypeDef]
    committed: int
    upload_alive: bool


class SessionObjects:
    """Under <prefix>tmp/uploads/<key>/: `session.json` (the record, the multipart upload's
    id, the stream holding the session) and `data` (the multipart upload's key). What the
    sessions port, its holds and its writers use: none of them calls the storage.
    """

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.area = bucket.sessions_area
        # (multipart id, offset, sha256) of sessions this process suspended last: resuming
        # here needs no read-back while the upload is as it was left.
        self.digests: dict[str, tuple[str, int, Digests]] = {}

    def record_key(self, key: str) -> str:
        return f"{self.area}{key}/session.json"

    def data_key(self, key: str) -> str:
        return f"{self.area}{key}/data"

    # --- the record -------------------------------------------------------------------

    async def get(self, key: str) -> Record | None:
        object_key = self.record_key(key)
        client = self.bucket.client
        try:
            answer = await client.get_object(Bucket=self.bucket.location.bucket, Key=object_key)
        except Exception as exc:
            if is_missing(exc):
                return None
            raise translate(exc, "reading an upload session", object_key) from exc
        async with answer["Body"] as body:
            raw = await body.read()
        try:
            session, extra = sessions.decode_with_extra(raw)
        except ValueError as exc:
            log.error("upload session %s has an unusable record (%s)", object_key, exc)
            return None
        date = answer["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        age = (now - answer["LastModified"]).total_seconds()
        return Record(session, extra, str(answer["ETag"]), age)

    async def put(
        self, key: str, session: UploadSession, extra: dict[str, Any], if_match: str | None
    ) -> str:
        """Write the record (If-Match `if_match`, or only if there is none); its ETag.
        Conflict if another writer got there first."""
        object_key = self.record_key(key)
        condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        try:
            answer = await self.bucket.client.put_object(
                Bucket=self.bucket.location.bucket,
                Key=object_key,
                Body=sessions.encode(session, extra),
                **condition,  # type: ignore[arg-type]
            )
        except Exception as exc:
            if is_precondition(exc):
                raise Conflict("another stream holds this upload") from None
            raise translate(exc, "recording an upload session", object_key) from exc
        return str(answer["ETag"])

    # --- what is durable ----------------------------------------------------------------

    async def durable(self, key: str, multipart: str) -> Durable:
        if multipart:
            listed = await self._parts(key, multipart)
            if listed is not None:
                return Durable([p for p, _ in listed], sum(size for _, size in listed), True)
        head = await self.bucket.head(self.data_key(key))
        return Durable([], int(head["ContentLength"]) if head is not None else 0, False)

    async def _parts(
        self, key: str, multipart: str
    ) -> list[tuple[CompletedPartTypeDef, int]] | None:
        """Parts 1..n of the upload with their sizes, None if the upload is gone."""
        found: list[Any] = []
        paginator = self.bucket.client.get_paginator("list_parts")
        try:
            async for page in paginator.paginate(
                Bucket=self.bucket.location.bucket, Key=self.data_key(key), UploadId=multipart
            ):
                found += page.get("Parts", ())
        except Exception as exc:
            if is_missing(exc):
                return None
            raise translate(exc, "listing an upload's parts", self.data_key(key)) from exc
        parts: list[tuple[CompletedPartTypeDef, int]] = []
        for part in sorted(found, key=lambda p: p["PartNumber"]):
            if part["PartNumber"] != len(parts) + 1:
                break  # a gap: later parts are overwritten by the next stream
            completed: CompletedPartTypeDef = {
                "PartNumber": part["PartNumber"],
                "ETag": part["ETag"],
            }
            if "ChecksumCRC32C" in part:
                completed["ChecksumCRC32C"] = part["ChecksumCRC32C"]
            parts.append((completed, part["Size"]))
        return parts

    async def create_upload(self, key: str, checksummed: bool) -> str:
        """A multipart upload for the session's bytes. `checksummed`: the store checks each
        part against its crc32c on receipt (as S3Writer's parts); the store then also wants
        one for every part copied in, so an upload that starts with copies goes without."""
        extra: dict[str, Any] = {"ChecksumAlgorithm": "CRC32C"} if checksummed else {}
        try:
            created = await self.bucket.client.create_multipart_upload(
                Bucket=self.bucket.location.bucket, Key=self.data_key(key), **extra
            )
        except Exception as exc:
            raise translate(exc, "starting an upload", self.data_key(key)) from exc
        return created["UploadId"]

    async def complete(self, key: str, multipart: str, parts: list[CompletedPartTypeDef]) -> None:
        try:
            await self.bucket.client.complete_multipart_upload(
                Bucket=self.bucket.location.bucket,
                Key=self.data_key(key),
                UploadId=multipart,
                MultipartUpload={"Parts": parts},
            )
        except Exception as exc:
            raise translate(exc, "completing an upload", self.data_key(key)) from exc

    async def read_back(self, key: str, size: int) -> Digests:
        """The sha256 and block sums of the first `size` bytes of the data object."""
        digest = Digests()
        data = self.data_key(key)
        head = await self.bucket.head(data)
        if head is None or int(head["ContentLength"]) < size:
            raise IntegrityError(f"the staged bytes of an upload at {data} are missing")
        path = self.bucket.location.path_of(data)
        async for chunk in self.bucket.ranged(data, path, str(head["ETag"]), 0, size, PART_SIZE):
            await asyncio.to_thread(digest.update, chunk)
        return digest

    async def copy_into(self, key: str, multipart: str, size: int) -> list[CompletedPartTypeDef]:
        """The data object's first `size` bytes as the first parts of `multipart`
        (server-side copies, at least 8 MiB each as `size` is a multiple of the part size)."""
        bucket, data = self.bucket.location.bucket, self.data_key(key)
        parts: list[CompletedPartTypeDef] = []
        for number, start in enumerate(range(0, size, COPY_PART_SIZE), 1):
            end = min(size, start + COPY_PART_SIZE) - 1
            try:
                copied = await self.bucket.client.upload_part_copy(
                    Bucket=bucket,
                    Key=data,
                    UploadId=multipart,
                    PartNumber=number,
                    CopySource={"Bucket": bucket, "Key": data},
                    CopySourceRange=f"bytes={start}-{end}",
                )
            except Exception as exc:
                raise translate(exc, "copying an upload's bytes", data) from exc
            parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
        return parts

    async def remove_all(self, key: str) -> None:
        """Abort the session's multipart uploads and delete its objects (record last)."""
        folder = f"{self.area}{key}/"
        self.digests.pop(key, None)
        async for upload in self.bucket.uploads(folder):
            await self.bucket.abort_upload(upload["Key"], upload["UploadId"])
        async for item in self.bucket.listed(folder):
            if item["Key"] != self.record_key(key):
                await self.bucket.delete_quietly(item["Key"])
        await self.bucket.delete_quietly(self.record_key(key))
