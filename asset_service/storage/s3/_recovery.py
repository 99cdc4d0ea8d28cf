"""Start-up housekeeping for S3Storage: stale uploads and staging; settling journaled moves."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asset_service.storage.s3._config import is_missing, translate

if TYPE_CHECKING:
    from asset_service.storage.imports import ImportRoots
    from asset_service.storage.s3._bucket import Bucket

log = logging.getLogger(__name__)


def _instance_of(bucket: Bucket, key: str) -> str | None:
    """The instance that staged `key` (tmp/staging/<instance>/<blob>), None for other keys."""
    head = bucket.staging_area
    if not key.startswith(head):
        return None
    return key[len(head) :].split("/", 1)[0]


async def sweep_staging(bucket: Bucket, limit: int = 0) -> int:
    """Abort uploads and delete staging objects that no live process owns.

    An instance on this host is known live or dead by its state folder's lock: a dead one's
    staging goes at once, unless it holds unsettled moves. Staging of instances not known
    here (other hosts) goes only once idle past the grace: no part, no write within it, so
    a long upload still streaming on another server is left alone.
    """
    live, dead = await asyncio.to_thread(bucket.journal.instances)
    keep = live | await asyncio.to_thread(bucket.journal.blocked)
    grace = bucket.orphan_grace_seconds
    now = datetime.now(UTC)
    removed = 0
    prefix = bucket.location.prefix
    async for upload in bucket.uploads(prefix):
        key, upload_id = upload["Key"], upload["UploadId"]
        owner = _instance_of(bucket, key)
        if owner in keep or key.startswith(bucket.sessions_area):
            continue  # (resumable uploads' sessions live until they expire: sweep_sessions)
        if owner not in dead and (
            (now - upload["Initiated"]).total_seconds() < grace
            or await _recent_part(bucket, key, upload_id)
        ):
            continue
        log.warning("aborting a multipart upload of %s left by a dead upload", key)
        await bucket.abort_upload(key, upload_id)
        removed += 1
        if removed == limit:
            return removed
    async for item in bucket.listed(bucket.staging_area):
        owner = _instance_of(bucket, item["Key"])
        if owner in keep:
            continue
        if owner in dead or (now - item["LastModified"]).total_seconds() >= grace:
            await bucket.delete_quietly(item["Key"])
            removed += 1
            if removed == limit:
                return removed
    return removed + await asyncio.to_thread(
        bucket.journal.sweep_dead, limit - removed if limit else 0
    )


async def _recent_part(bucket: Bucket, key: str, upload_id: str) -> bool:
    now = datetime.now(UTC)
    try:
        parts = await bucket.client.list_parts(
            Bucket=bucket.location.bucket, Key=key, UploadId=upload_id
        )
    except Exception as exc:
        if is_missing(exc):
            return True  # completed or aborted meanwhile: nothing to do
        raise translate(exc, "listing an upload's parts", key) from exc
    return any(
        (now - part["LastModified"]).total_seconds() < bucket.orphan_grace_seconds
        for part in parts.get("Parts", ())
    )


async def clear_instance(bucket: Bucket, instance: str) -> None:
    """Abort the uploads and delete the staging objects of one instance (closing cleanly)."""
    prefix = f"{bucket.staging_area}{instance}/"
    async for upload in bucket.uploads(prefix):
        await bucket.abort_upload(upload["Key"], upload["UploadId"])
    async for item in bucket.listed(prefix):
        await bucket.delete_quietly(item["Key"])


class S3Move:
    """The object placed by a move is the one stamped with the journaled "blob_id"; its
    source, the server-side file (device, inode) the journal names."""

    def __init__(self, bucket: Bucket, imports: ImportRoots, intent: dict[str, Any]) -> None:
        self._bucket = bucket
        self._imports = imports
        self._intent = intent
        self._object_key = bucket.object_key(intent["final"])
        self.source: str | None = intent.get("source")

    async def placed_is_ours(self) -> bool:
        head = await self._bucket.head(self._object_key)
        return (
            head is not None and head.get("Metadata", {}).get("blob-id") == self._intent["blob_id"]
        )

    async def remove_source(self) -> bool:
        source = (self._intent["dev"], self._intent["ino"])
        return await asyncio.to_thread(self._imports.remove_if_same, self._intent["source"], source)

    async def remove_placed(self) -> bool:
        return await self._bucket.delete_if_ours(self._object_key, self._intent["blob_id"])
