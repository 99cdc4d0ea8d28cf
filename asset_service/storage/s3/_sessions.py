"""Resumable upload sessions in the bucket: a record object and one multipart upload each."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import uuid
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
from asset_service.storage.s3._session_blob import S3SessionWriter
from asset_service.storage.s3._session_hold import CLAIM_SECONDS, Claim, Durable, S3Hold

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from asset_service.storage.s3._bucket import Bucket

log = logging.getLogger(__name__)


@dataclass
class _Record:
    session: UploadSession
    extra: dict[str, Any]
    etag: str
    age: float  # seconds since it was written, by the object store's clock


class S3Sessions:
    """The UploadSessions port of S3Storage.

    Under <prefix>tmp/uploads/<key>/: `session.json` (the record, the multipart upload's id,
    the stream holding the session) and `data` (the multipart upload's key). Completed parts
    are the durable unit: a session holds the sum of its parts 1..n (ListParts), and the
    unfinished part of a cut stream is lost. Every server sharing the bucket sees the same.
    """

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.area = bucket.sessions_area
        # (multipart id, offset, sha256) of sessions this process suspended last: resuming
        # here needs no read-back while the upload is as it was left.
        self.digests: dict[str, tuple[str, int, Digests]] = {}
        # Who holds a session: this host and state folder, then the instance. A holder
        # named with this host and folder whose instance is not alive here (its lock in
        # the state folder is free) died: its hold is void at once, without waiting.
        self.here = f"{socket.gethostname()}:{bucket.journal.parent}"

    def holder(self) -> str:
        return f"{self.here}|{self.bucket.instance}|{uuid.uuid4().hex}"

    async def held(self, record: _Record) -> bool:
        """Whether a stream holds the session (on an unrefreshed record: until it is
        CLAIM_SECONDS old, or its holder is known dead)."""
        holder = str(record.extra.get("stream", ""))
        if not holder or record.age >= CLAIM_SECONDS:
            return False
        here, _, rest = holder.partition("|")
        if here != self.here:
            return True
        live, _ = await asyncio.to_thread(self.bucket.journal.instances)
        return rest.split("|", 1)[0] in live

    def record_key(self, key: str) -> str:
        return f"{self.area}{key}/session.json"

    def data_key(self, key: str) -> str:
        return f"{self.area}{key}/data"

    # --- the record -------------------------------------------------------------------

    async def get(self, key: str) -> _Record | None:
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
        return _Record(session, extra, str(answer["ETag"]), age)

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

    # --- the port -----------------------------------------------------------------------

    async def new_session(self, key: str, session: UploadSession) -> S3SessionWriter:
        hold = self.holder()
        etag = await self.put(key, session, {"stream": hold}, None)
        try:
            multipart = await self.create_upload(key, checksummed=True)
            extra = {"stream": hold, "multipart": multipart, "crc32c": True}
            etag = await self.put(key, session, extra, etag)
        except BaseException:
            await self.remove_all(key)
            raise
        claim = Claim(self, key, session, extra, etag)
        return S3SessionWriter(claim, multipart, [], 0, Digests())

    async def take_session(self, key: str) -> S3Hold | None:
        record = await self.get(key)
        if record is None:
            return None
        if await self.held(record):
            raise Conflict("another stream of this upload is open")
        extra = {**record.extra, "stream": self.holder()}
        etag = await self.put(key, record.session, extra, record.etag)
        try:
            durable = await self.durable(key, str(extra.get("multipart", "")))
        except BaseException:
            with contextlib.suppress(Exception):
                await self.put(key, record.session, record.extra, etag)
            raise
        session = dataclasses.replace(record.session, committed_bytes=durable.committed)
        return S3Hold(Claim(self, key, session, extra, etag))

    async def read_session(self, key: str) -> UploadSession | None:
        record = await self.get(key)
        if record is None:
            return None
        if record.session.asset_id:
            return record.session  # completing or completed: the record says it all
        durable = await self.durable(key, str(record.extra.get("multipart", "")))
        return dataclasses.replace(record.session, committed_bytes=durable.committed)

    async def sweep_sessions(self, now: datetime, limit: int = 0) -> int:
        removed = 0
        uploads: dict[str, str] = {}  # key -> the multipart upload its record names
        async for item in self.bucket.listed(self.area):
            name = item["Key"][len(self.area) :]
            if not name.endswith("/session.json"):
                continue
            key = name.split("/", 1)[0]
            record = await self.get(key)
            if record is None:
                continue
            if await self.held(record):
                uploads[key] = str(record.extra.get("multipart", ""))
                continue  # a stream holds it
            if record.session.expires_at > now:
                uploads[key] = str(record.extra.get("multipart", ""))
                continue
            await self.remove_all(key)
            removed += 1
            if removed == limit:
                return removed  # the strays wait for a call with budget left
        removed += await self._sweep_strays(uploads, now, limit - removed if limit else 0)
        return removed

    async def _sweep_strays(self, kept: dict[str, str], now: datetime, limit: int = 0) -> int:
        """Multipart uploads and objects of sessions that have no record (a crash while one
        was created or removed) or that their record no longer names (a crash mid-resume),
        once older than the orphan grace."""
        grace = self.bucket.orphan_grace_seconds
        removed = 0
        async for upload in self.bucket.uploads(self.area):
            key = upload["Key"][len(self.area) :].split("/", 1)[0]
            if kept.get(key) == upload["UploadId"]:
                continue
            if (now - upload["Initiated"]).total_seconds() >= grace:
                await self.bucket.abort_upload(upload["Key"], upload["UploadId"])
                removed += 1
                if removed == limit:
                    return removed
        async for item in self.bucket.listed(self.area):
            key = item["Key"][len(self.area) :].split("/", 1)[0]
            if key in kept or (now - item["LastModified"]).total_seconds() < grace:
                continue
            if await self.get(key) is None:
                await self.bucket.delete_quietly(item["Key"])
                removed += 1
                if removed == limit:
                    break
        return removed
