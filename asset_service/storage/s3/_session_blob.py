"""A resumable upload's bytes on their way into the bucket: the session's multipart upload."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from asset_service.domain.errors import Conflict
from asset_service.domain.models import BlockSums
from asset_service.domain.ports import Chunk
from asset_service.domain.uploads import UploadSession
from asset_service.storage.blocks import Digests
from asset_service.storage.s3._config import PART_SIZE, translate
from asset_service.storage.s3._parts import crc32c_base64
from asset_service.storage.s3._placement import Placement

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from asset_service.storage.s3._session_claim import Claim

log = logging.getLogger(__name__)


class S3SessionWriter:
    """Appends parts to the session's multipart upload (memory holds at most one part).

    The sha256 covers exactly the bytes of the uploaded parts until seal() adds the last,
    so that what suspend() keeps for this process is the hash of what is durable. seal()
    completes the upload as the session's data object (or keeps a small file in memory),
    and commit() copies it to its key without clobbering, as S3Writer does.
    """

    def __init__(
        self,
        claim: Claim,
        multipart: str,
        parts: list[CompletedPartTypeDef],
        size: int,
        digests: Digests,
    ) -> None:
        self._claim = claim
        self._bucket = claim.objects.bucket
        self._data_key = claim.objects.data_key(claim.key)
        self._parts = list(parts)
        # The sha256 and block sums of the uploaded parts (PART_SIZE is a multiple of the
        # block size: a part boundary never splits a block).
        self._digests = digests
        self._checksummed = bool(claim.extra.get("crc32c"))
        self.size_bytes = size
        self.sha256 = digests.sha.hexdigest()
        self.block_sums: BlockSums = digests.blocks.result()
        self.blob_id = uuid.uuid4().hex  # stamped on the final object: "is it ours?"
        # The session's multipart upload; staged once completed as the data object.
        self._placement = Placement(self._bucket, self._data_key, self.blob_id)
        self._placement.upload_id = multipart
        self._buffer = bytearray()
        self._sealed = False

    @property
    def session(self) -> UploadSession:
        return self._claim.session

    # --- writing ------------------------------------------------------------------------

    async def write(self, chunk: Chunk) -> None:
        if self._claim.lost:
            raise Conflict("another stream took this upload over while this one was idle")
        self._buffer += chunk
        self.size_bytes += len(chunk)
        while len(self._buffer) >= PART_SIZE:
            part = bytes(self._buffer[:PART_SIZE])
            del self._buffer[:PART_SIZE]
            await self._upload_part(part)

    async def _upload_part(self, data: bytes) -> None:
        assert self._placement.upload_id is not None
        number = len(self._parts) + 1
        # Checked by the store on receipt (a part damaged on the way is refused).
        checksum = await asyncio.to_thread(crc32c_base64, data) if self._checksummed else ""
        extra: dict[str, Any] = {"ChecksumCRC32C": checksum} if checksum else {}
        try:
            answer = await self._bucket.client.upload_part(
                Bucket=self._bucket.location.bucket,
                Key=self._data_key,
                UploadId=self._placement.upload_id,
                PartNumber=number,
                Body=data,
                **extra,
            )
        except Exception as exc:
            raise translate(exc, "uploading a part", self._data_key) from exc
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": answer["ETag"]}
        if checksum:
            part["ChecksumCRC32C"] = checksum
        self._parts.append(part)
        await asyncio.to_thread(self._digests.update, data)

    @property
    def durable_bytes(self) -> int:
        return self.size_bytes - len(self._buffer)

    async def seal(self) -> None:
        """No more writes: complete the data object (unless the file fits in memory)."""
        self._sealed = True
        if not self._parts:
            self._digests.update(bytes(self._buffer))  # held here: commit() PUTs it
            self._final_digests()
            return
        if self._buffer:
            await self._upload_part(bytes(self._buffer))
            self._buffer = bytearray()
        placement = self._placement
        assert placement.upload_id is not None
        await self._claim.objects.complete(self._claim.key, placement.upload_id, self._parts)
        placement.upload_id, placement.staged = None, True
        self._final_digests()

    def _final_digests(self) -> None:
        self.sha256 = self._digests.sha.hexdigest()
        self.block_sums = self._digests.blocks.result()

    async def suspend(self, expires_at: datetime) -> UploadSession:
        # A part not filled is not durable: it goes, and the next stream sends it again.
        durable = self.size_bytes if self._placement.staged else self.durable_bytes
        self._buffer = bytearray()
        self.size_bytes = durable
        saved = dataclasses.replace(
            self._claim.session, committed_bytes=durable, expires_at=expires_at
        )
        try:
            await self._claim.close(saved)
            multipart = self._placement.upload_id
            if multipart is not None and not self._sealed:
                objects = self._claim.objects
                objects.digests[self._claim.key] = (multipart, durable, self._digests.copy())
        finally:
            self.release()
        return saved

    # --- the session ----------------------------------------------------------------------

    async def save(self, session: UploadSession) -> None:
        await self._claim.save(session)

    async def remove(self) -> None:
        self._claim.end(unclaim=False)
        self._placement.finish()  # its bytes go with the session's objects
        await self._claim.objects.remove_all(self._claim.key)

    def release(self) -> None:
        self._claim.end()

    # --- placing and settling (the bytes only: the record stays) -------------------------

    async def commit(self, key: str) -> str:
        # Unless the upload was completed as the data object, the file fits one part.
        body = bytes(self._buffer)
        path = await self._placement.place(self._bucket.object_key(key), body, [])
        self._buffer = bytearray()
        return path

    async def finish(self) -> None:
        self._placement.finish()

    async def rollback(self) -> None:
        self._buffer = bytearray()
        await self._placement.rollback()

    def discard(self) -> None:
        self._placement.discard(self.rollback)

    def abandon(self) -> None:
        self._placement.abandon()
