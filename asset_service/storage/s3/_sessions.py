"""Resumable upload sessions in the bucket: a record object and one multipart upload each."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from asset_service.domain.errors import Conflict
from asset_service.domain.uploads import UploadSession
from asset_service.storage.blocks import Digests
from asset_service.storage.s3._session_blob import S3SessionWriter
from asset_service.storage.s3._session_claim import CLAIM_SECONDS, Claim
from asset_service.storage.s3._session_hold import S3Hold
from asset_service.storage.s3._session_objects import Record, SessionObjects

if TYPE_CHECKING:
    from asset_service.storage.s3._bucket import Bucket


class S3Sessions:
    """The UploadSessions port of S3Storage, over each session's record and multipart
    upload in the bucket (storage/s3/_session_objects.py). Completed parts are the durable
    unit: a session holds the sum of its parts 1..n (ListParts), and the
    unfinished part of a cut stream is lost. Every server sharing the bucket sees the same.
    """

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.objects = SessionObjects(bucket)
        self.area = bucket.sessions_area
        # Who holds a session: this host and state folder, then the instance. A holder
        # named with this host and folder whose instance is not alive here (its lock in
        # the state folder is free) died: its hold is void at once, without waiting.
        self.here = f"{socket.gethostname()}:{bucket.journal.parent}"

    def holder(self) -> str:
        return f"{self.here}|{self.bucket.instance}|{uuid.uuid4().hex}"

    async def held(self, record: Record) -> bool:
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

    # --- the port -----------------------------------------------------------------------

    async def new_session(self, key: str, session: UploadSession) -> S3SessionWriter:
        hold = self.holder()
        etag = await self.objects.put(key, session, {"stream": hold}, None)
        try:
            multipart = await self.objects.create_upload(key, checksummed=True)
            extra = {"stream": hold, "multipart": multipart, "crc32c": True}
            etag = await self.objects.put(key, session, extra, etag)
        except BaseException:
            await self.objects.remove_all(key)
            raise
        claim = Claim(self.objects, key, session, extra, etag)
        return S3SessionWriter(claim, multipart, [], 0, Digests())

    async def take_session(self, key: str) -> S3Hold | None:
        record = await self.objects.get(key)
        if record is None:
            return None
        if await self.held(record):
            raise Conflict("another stream of this upload is open")
        extra = {**record.extra, "stream": self.holder()}
        etag = await self.objects.put(key, record.session, extra, record.etag)
        try:
            durable = await self.objects.durable(key, str(extra.get("multipart", "")))
        except BaseException:
            with contextlib.suppress(Exception):
                await self.objects.put(key, record.session, record.extra, etag)
            raise
        session = dataclasses.replace(record.session, committed_bytes=durable.committed)
        return S3Hold(Claim(self.objects, key, session, extra, etag))

    async def read_session(self, key: str) -> UploadSession | None:
        record = await self.objects.get(key)
        if record is None:
            return None
        if record.session.asset_id:
            return record.session  # completing or completed: the record says it all
        durable = await self.objects.durable(key, str(record.extra.get("multipart", "")))
        return dataclasses.replace(record.session, committed_bytes=durable.committed)

    async def sweep_sessions(self, now: datetime, limit: int = 0) -> int:
        removed = 0
        uploads: dict[str, str] = {}  # key -> the multipart upload its record names
        async for item in self.bucket.listed(self.area):
            name = item["Key"][len(self.area) :]
            if not name.endswith("/session.json"):
                continue
            key = name.split("/", 1)[0]
            record = await self.objects.get(key)
            if record is None:
                continue
            if await self.held(record):
                uploads[key] = str(record.extra.get("multipart", ""))
                continue  # a stream holds it
            if record.session.expires_at > now:
                uploads[key] = str(record.extra.get("multipart", ""))
                continue
            await self.objects.remove_all(key)
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
            if await self.objects.get(key) is None:
                await self.bucket.delete_quietly(item["Key"])
                removed += 1
                if removed == limit:
                    break
        return removed
