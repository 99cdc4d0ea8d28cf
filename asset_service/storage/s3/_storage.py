"""S3Storage: the BlobStorage port over an S3-compatible bucket (keys, reads, sweeps, recovery)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asset_service.domain.errors import AssetError, IntegrityError, InvalidArgument, Unavailable
from asset_service.domain.models import BlockSums, parse_asset_id
from asset_service.domain.uploads import UploadSession
from asset_service.modes import Modes, report
from asset_service.storage import blocks, journal
from asset_service.storage.adoption import Source
from asset_service.storage.imports import ImportRoots
from asset_service.storage.journal import Journal, Leftover
from asset_service.storage.reads import Span, SpanReads
from asset_service.storage.s3 import _recovery
from asset_service.storage.s3._blob import S3Adopted, S3Writer
from asset_service.storage.s3._bucket import Bucket
from asset_service.storage.s3._bulk import Bulk
from asset_service.storage.s3._config import (
    Credentials,
    S3Location,
    create_client,
    is_missing,
    translate,
)
from asset_service.storage.s3._reads import Object
from asset_service.storage.s3._session_blob import S3SessionWriter
from asset_service.storage.s3._session_hold import S3Hold
from asset_service.storage.s3._sessions import S3Sessions
from asset_service.storage.s3._shared import S3Shared

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

_AREAS = ("uploads", "generated")
# HEAD requests in flight at once when a manifest checks its inputs.
CHECK_CONCURRENCY = 16


class S3Storage(SpanReads):
    """<prefix>uploads/YYYY-MM-DD/<id>/<name>, <prefix>generated/<task>/<id>/<name>, tmp/.

    storage_path values are `s3://bucket/<object key>`. Moves of server-side files are
    journaled in `state_dir` on this host (their sources are on this host).
    """

    def __init__(
        self,
        url: str,
        state_dir: Path,
        orphan_grace_seconds: float = 600.0,
        imports: ImportRoots | None = None,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        max_connections: int = 64,
        modes: Modes | None = None,
    ) -> None:
        self.location = S3Location.parse(url)
        self.url = url
        # An object younger than this may be another server's commit in flight.
        self.orphan_grace_seconds = orphan_grace_seconds
        self.imports = imports or ImportRoots(())
        self._creds = Credentials(endpoint_url, region, access_key_id, secret_access_key)
        self._max_connections = max_connections
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.journal = Journal(state_dir.resolve(), self.instance, modes)
        # What its blobs, sessions and sweeps use: they never call the storage.
        self.bucket = Bucket(self.location, url, self.instance, self.journal, orphan_grace_seconds)
        self._stack = contextlib.AsyncExitStack()
        # Resumable uploads' sessions, in tmp/uploads/ of the bucket.
        self.sessions = S3Sessions(self.bucket)

    @property
    def client(self) -> S3Client:
        return self.bucket.client

    @property
    def bulk(self) -> Bulk:
        """Parts and ranged GETs, on threads (storage/s3/_bulk.py says why)."""
        return self.bucket.bulk

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        creds = self._creds.resolved()
        client: S3Client = await self._stack.enter_async_context(
            create_client(creds, self._max_connections)
        )
        self.bucket.open_client = client
        try:
            await client.head_bucket(Bucket=self.location.bucket)
        except Exception as exc:
            await self._stack.aclose()
            self.bucket.open_client = None
            raise Unavailable(
                f"bucket {self.location.bucket!r} at {creds.endpoint_url or 'AWS S3'} is not "
                f"usable ({exc}); create it, or check --s3-endpoint-url (or AWS_ENDPOINT_URL), "
                "--s3-region and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            ) from exc
        bulk = Bulk(creds, self._max_connections)
        await asyncio.to_thread(bulk.open)
        self.bucket.open_bulk = bulk
        await asyncio.to_thread(self._open_journal)

    def _open_journal(self) -> None:
        try:
            report([self.journal.open()], "the object store's state")
        except OSError as exc:
            raise Unavailable(f"state folder {self.journal.parent} is not usable: {exc}") from exc

    async def ping(self) -> None:
        """A HEAD of the bucket: the endpoint answers and the credentials still work."""
        try:
            await self.client.head_bucket(Bucket=self.location.bucket)
        except AssetError:
            raise
        except Exception as exc:
            raise Unavailable(f"bucket {self.location.bucket!r} is not reachable: {exc}") from exc

    async def close(self) -> None:
        await self.drain()
        bucket = self.bucket
        if bucket.open_client is not None and not await asyncio.to_thread(self.journal.unsettled):
            # Like a local staging folder removed on close; kept while moves are unsettled.
            with contextlib.suppress(AssetError):
                await _recovery.clear_instance(bucket, self.instance)
        await self._stack.aclose()
        bucket.open_client = None
        if bucket.open_bulk is not None:
            bucket.open_bulk.close()
            bucket.open_bulk = None
        await asyncio.to_thread(self.journal.close)

    async def drain(self) -> None:
        """Wait for cleanup started by discard(): later calls on this instance see it done."""
        await self.bucket.drain()

    # --- keys and paths ---------------------------------------------------------------

    def object_key(self, key: str) -> str:
        return self.bucket.object_key(key)

    def key_of(self, storage_path: str) -> str:
        return self.bucket.key_of(storage_path)

    async def head(self, object_key: str) -> dict[str, Any] | None:
        return await self.bucket.head(object_key)

    # --- writing ----------------------------------------------------------------------

    def new_writer(self, key: str | None = None) -> S3Writer:
        return S3Writer(self.bucket, key)

    async def clone(
        self, storage_path: str, size_bytes: int, sha256: str, sums: BlockSums
    ) -> S3Shared:
        """The same object for another record (storage/s3/_shared.py): stored once."""
        self.key_of(storage_path)  # NotFound for a path of another storage
        return S3Shared(self.bucket, storage_path, size_bytes, sha256, sums)

    async def adopt(self, path: str, move: bool) -> S3Adopted:
        """Copy a server-side file under an import root into the bucket while hashing it."""
        opened = await asyncio.to_thread(self.imports.open, path, move)
        blob = S3Adopted(self.bucket, Source(path, opened, move))
        try:
            await blob.stage()
        except BaseException:
            await blob.rollback()
            raise
        return blob

    # --- resumable upload sessions (storage/s3/_sessions.py) ----------------------------

    async def new_session(self, key: str, session: UploadSession) -> S3SessionWriter:
        return await self.sessions.new_session(key, session)

    async def take_session(self, key: str) -> S3Hold | None:
        await self.drain()  # a release in the background has ended its hold
        return await self.sessions.take_session(key)

    async def read_session(self, key: str) -> UploadSession | None:
        await self.drain()
        return await self.sessions.read_session(key)

    async def sweep_sessions(self, now: datetime, limit: int = 0) -> int:
        await self.drain()
        return await self.sessions.sweep_sessions(now, limit)

    # --- reading ----------------------------------------------------------------------

    async def _checked(self, storage_path: str, size_bytes: int) -> tuple[str, str]:
        await self.drain()
        object_key = self.key_of(storage_path)
        head = await self.head(object_key)
        if head is None:
            raise IntegrityError(f"its bytes at {storage_path} are missing")
        if int(head["ContentLength"]) != size_bytes:
            raise IntegrityError(
                f"its bytes at {storage_path} are {head['ContentLength']} bytes long; the "
                f"record says {size_bytes} (truncated or replaced in the bucket)"
            )
        return object_key, str(head["ETag"])

    async def check(self, storage_path: str, size_bytes: int) -> None:
        await self._checked(storage_path, size_bytes)

    async def check_many(
        self, items: Sequence[tuple[str, int]], since: Sequence[datetime] | None = None
    ) -> Sequence[IntegrityError | None]:
        """HEAD requests a few at a time: each one's IntegrityError, or None. `since` is not
        used: manifests read FILE inputs into their cache through checked reads."""
        gate = asyncio.Semaphore(CHECK_CONCURRENCY)

        async def one(storage_path: str, size_bytes: int) -> IntegrityError | None:
            async with gate:
                try:
                    await self._checked(storage_path, size_bytes)
                except IntegrityError as exc:
                    return exc
                return None

        return await asyncio.gather(*(one(path, size) for path, size in items))

    async def open_span(self, span: Span, sums: BlockSums | None) -> AsyncIterator[bytes]:
        object_key, etag = await self._checked(span.storage_path, span.size_bytes)
        stored = Object(self.client, self.location.bucket, object_key, etag, span.storage_path)
        if sums is None:
            return stored.ranged(span.offset, span.end, span.chunk_size)
        blocks_read = blocks.aligned(sums, span.offset, span.end, span.size_bytes)
        return stored.checked(self.bulk, blocks_read, span.offset, span.end, span.chunk_size, sums)

    # --- housekeeping -----------------------------------------------------------------

    async def remove(self, storage_path: str) -> None:
        object_key = self.key_of(storage_path)
        try:
            await self.client.delete_object(Bucket=self.location.bucket, Key=object_key)
        except Exception as exc:
            if not is_missing(exc):
                raise translate(exc, "removing bytes", storage_path) from exc

    async def remove_orphan(
        self, storage_path: str, unclaimed: Callable[[], Awaitable[bool]]
    ) -> bool:
        # No lock in a bucket: a commit replaces only an object past the orphan grace
        # (Bucket.place_*), as the sweep's candidates are; the records are asked again.
        if not await unclaimed():
            return False
        await self.remove(storage_path)
        return True

    def listed(self, prefix: str, after: str = "") -> AsyncIterator[dict[str, Any]]:
        return self.bucket.listed(prefix, after)

    async def orphans(self, after: str = "") -> AsyncIterator[tuple[str, str]]:
        """Objects in uploads/ and generated/ older than the grace, as (asset id, path), in
        the order of their keys (the listing's: it starts after `after`'s)."""
        await self.drain()
        now = datetime.now(UTC)
        start = self.key_of(after) if after else ""
        for area in sorted(_AREAS):
            prefix = f"{self.location.prefix}{area}/"
            if start > prefix and not start.startswith(prefix):
                continue  # `after` is in a later area
            async for item in self.listed(prefix, start if start > prefix else ""):
                parts = item["Key"][len(self.location.prefix) :].split("/")
                if len(parts) != 4:
                    continue
                try:
                    asset_id = parse_asset_id(parts[2])
                except InvalidArgument:
                    continue
                if (now - item["LastModified"]).total_seconds() < self.orphan_grace_seconds:
                    continue  # may be another server's commit in flight
                yield asset_id, self.location.path_of(item["Key"])

    async def sweep_dead_staging(self, limit: int = 0) -> int:
        """Abort uploads and delete staging that dead processes left; return how many."""
        await self.drain()
        return await _recovery.sweep_staging(self.bucket, limit)

    # --- recovery of moves ------------------------------------------------------------

    async def leftovers(self, past_grace: bool = False) -> list[Leftover]:
        """Moves journaled (on this host) by processes that died, for recovery to settle."""
        await self.drain()
        older_than = self.orphan_grace_seconds if past_grace else 0.0
        return await asyncio.to_thread(self.journal.leftovers, self._path_of, older_than)

    def _path_of(self, key: str) -> str:
        return self.location.path_of(self.object_key(key))

    async def settle(self, leftover: Leftover, committed: bool) -> None:
        steps = _recovery.S3Move(self.bucket, self.imports, leftover.intent)
        await journal.settle(leftover, committed, steps, partial(journal.forget, leftover.journal))
