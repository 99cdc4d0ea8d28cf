"""A stream's hold on a session in the bucket, and the hold until the stream resumes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asset_service.domain.errors import Conflict
from asset_service.domain.uploads import UploadSession
from asset_service.storage.blocks import Digests
from asset_service.storage.s3._session_blob import S3SessionWriter

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from asset_service.storage.s3._sessions import S3Sessions

log = logging.getLogger(__name__)

# A stream's hold on a session: the record names it, and the holder rewrites the record
# every CLAIM_REFRESH_SECONDS. Another server takes a session whose record is older than
# CLAIM_SECONDS by the object store's own clock (its Date header against the record's
# LastModified): a server that died mid-stream blocks its session's resumption that long.
CLAIM_SECONDS = 90.0
CLAIM_REFRESH_SECONDS = 30.0


@dataclass(frozen=True)
class Durable:
    """What a session holds in the bucket: the parts 1..n of its multipart upload, or (once
    that upload was completed: about to commit, or read back) its data object."""

    parts: list[CompletedPartTypeDef]
    committed: int
    upload_alive: bool


class Claim:
    """This stream's hold on a session: the record names it, and is rewritten every
    CLAIM_REFRESH_SECONDS (If-Match its last ETag) until the hold ends."""

    def __init__(
        self,
        sessions_: S3Sessions,
        key: str,
        session: UploadSession,
        extra: dict[str, Any],
        etag: str,
    ) -> None:
        self.sessions = sessions_
        self.key = key
        self.session = session
        self.extra = extra
        self._etag = etag
        self._lock = asyncio.Lock()
        self.lost = False
        self._refresher: asyncio.Task[None] | None = asyncio.create_task(self._refresh())

    async def save(self, session: UploadSession, **extra: Any) -> None:
        async with self._lock:
            fields = {**self.extra, **extra}
            self._etag = await self.sessions.put(self.key, session, fields, self._etag)
            self.session, self.extra = session, fields

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(CLAIM_REFRESH_SECONDS)
            try:
                await self.save(self.session)
            except Conflict:
                log.warning("upload session %s: another stream took it over", self.key)
                self.lost = True
                return
            except Exception as exc:  # the store unreachable: try again at the next turn
                log.warning("upload session %s: renewing its hold failed: %s", self.key, exc)

    async def close(self, session: UploadSession) -> None:
        """End the hold by saving `session` without it (a stream that was cut)."""
        self._stop()
        async with self._lock:
            fields = {k: v for k, v in self.extra.items() if k != "stream"}
            self._etag = await self.sessions.put(self.key, session, fields, self._etag)
            self.session, self.extra = session, fields

    def _stop(self) -> bool:
        if self._refresher is None:
            return False
        self._refresher.cancel()
        self._refresher = None
        return True

    def end(self, unclaim: bool = True) -> None:
        """Stop renewing; with `unclaim`, rewrite the record without the hold (in the
        background: callers may be synchronous cleanup)."""
        if self._stop() and unclaim and not self.lost:
            fields = {k: v for k, v in self.extra.items() if k != "stream"}
            put = self.sessions.put(self.key, self.session, fields, self._etag)
            self.sessions.bucket.in_background(_quietly(put))


class S3Hold:
    """A session held by this stream, until it resumes (the writer holds it then)."""

    def __init__(self, claim: Claim) -> None:
        self._claim = claim

    @property
    def session(self) -> UploadSession:
        return self._claim.session

    async def save(self, session: UploadSession) -> None:
        await self._claim.save(session)

    async def remove(self) -> None:
        self._claim.end(unclaim=False)
        await self._claim.sessions.remove_all(self._claim.key)

    def release(self) -> None:
        self._claim.end()

    async def resume(self) -> S3SessionWriter:
        claim = self._claim
        sessions_, key = claim.sessions, claim.key
        multipart = str(claim.extra.get("multipart", ""))
        durable = await sessions_.durable(key, multipart)
        cached = sessions_.digests.pop(key, None)
        digests = Digests()
        parts = durable.parts
        if durable.upload_alive and durable.committed:
            if cached is not None and cached[:2] == (multipart, durable.committed):
                digests = cached[2]
            else:
                # After a restart, or on another server: parts cannot be read back while
                # their upload is open, so complete it, hash the object, and go on in a new
                # upload whose first parts are server-side copies of it.
                await sessions_.complete(key, multipart, parts)
                durable = Durable([], durable.committed, False)
        if not durable.upload_alive:
            if durable.committed:
                digests = await sessions_.read_back(key, durable.committed)
            checksummed = not durable.committed  # (copied parts have no crc32c to give)
            multipart = await sessions_.create_upload(key, checksummed)
            parts = await sessions_.copy_into(key, multipart, durable.committed)
            session = dataclasses.replace(claim.session, committed_bytes=durable.committed)
            await claim.save(session, multipart=multipart, crc32c=checksummed)
        return S3SessionWriter(claim, multipart, parts, durable.committed, digests)


async def _quietly(work: Any) -> None:
    with contextlib.suppress(Conflict):
        await work
