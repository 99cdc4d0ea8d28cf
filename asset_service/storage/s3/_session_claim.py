"""A stream's hold on a session in the bucket: its record names the stream, renewed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from asset_service.domain.errors import Conflict
from asset_service.domain.uploads import UploadSession
from asset_service.storage.s3._session_objects import SessionObjects

log = logging.getLogger(__name__)

# A stream's hold on a session: the record names it, and the holder rewrites the record
# every CLAIM_REFRESH_SECONDS. Another server takes a session whose record is older than
# CLAIM_SECONDS by the object store's own clock (its Date header against the record's
# LastModified): a server that died mid-stream blocks its session's resumption that long.
CLAIM_SECONDS = 90.0
CLAIM_REFRESH_SECONDS = 30.0


class Claim:
    """This stream's hold on a session: the record names it, and is rewritten every
    CLAIM_REFRESH_SECONDS (If-Match its last ETag) until the hold ends."""

    def __init__(
        self,
        objects: SessionObjects,
        key: str,
        session: UploadSession,
        extra: dict[str, Any],
        etag: str,
    ) -> None:
        self.objects = objects
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
            self._etag = await self.objects.put(self.key, session, fields, self._etag)
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
            self._etag = await self.objects.put(self.key, session, fields, self._etag)
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
            put = self.objects.put(self.key, self.session, fields, self._etag)
            self.objects.bucket.in_background(_quietly(put))


async def _quietly(work: Any) -> None:
    with contextlib.suppress(Conflict):
        await work
