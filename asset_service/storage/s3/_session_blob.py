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
        self._multipart: str | None = multipart
        self._parts = list(parts)
        # The sha256 and block sums of the uploaded parts (PART_SIZE is a multiple of the
        # block size: a part boundary never splits a block).
        self._digests = digests
        self._checksummed = bool(claim.extra.get("crc32c"))
        self.size_bytes = size
        self.sha256 = digests.sha.hexdigest()
        self.block_sums: BlockSums = digests.blocks.result()
        self.blob_id = uuid.uuid4().hex  # stamped on the final object: "is it ours?"
        self._buffer = bytearray()
        self._staged = False  # the upload was completed as the data object
        self._sealed = False
        self._final_key: str | None = None
        self._done = False

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
        assert self._multipart is not None
        number = len(self._parts) + 1
        # Checked by the store on receipt (a part damaged on the way is refused).
        checksum = await asyncio.to_thread(crc32c_base64, data) if self._checksummed else ""
        extra: dict[str, Any] = {"ChecksumCRC32C": checksum} if checksum else {}
        try:
            answer = await self._bucket.client.upload_part(
                Bucket=self._bucket.location.bucket,
                Key=self._data_key,
                UploadId=self._multipart,
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
        assert self._multipart is not None
        await self._claim.objects.complete(self._claim.key, self._multipart, self._parts)
        self._multipart, self._staged = None, True
        self._final_digests()

    def _final_digests(self) -> None:
        self.sha256 = self._digests.sha.hexdigest()
        self.block_sums = self._digests.blocks.result()

    async def suspend(self, expires_at: datetime) -> UploadSession:
        # A part not filled is not durable: it goes, and the next stream sends it again.
        durable = self.size_bytes if self._staged else self.durable_bytes
        self._buffer = bytearray()
        self.size_bytes = durable
        saved = dataclasses.replace(
            self._claim.session, committed_bytes=durable, expires_at=expires_at
        )
        try:
            await self._claim.close(saved)
            if self._multipart is not None and not self._sealed:
                objects = self._claim.objects
                objects.digests[self._claim.key] = (self._multipart, durable, self._digests.copy())
        finally:
            self.release()
        return saved

    # --- the session ----------------------------------------------------------------------

    async def save(self, session: UploadSession) -> None:
        await self._claim.save(session)

    async def remove(self) -> None:
        self._claim.end(unclaim=False)
        self._done = True
        await self._claim.objects.remove_all(self._claim.key)

    def release(self) -> None:
        self._claim.end()

    # --- placing and settling (the bytes only: the record stays) -------------------------

    async def commit(self, key: str) -> str:
        object_key = self._bucket.object_key(key)
        if self._staged:
            await self._bucket.place_copy(object_key, self._data_key, self.blob_id)
            self._final_key = object_key
            await self._bucket.delete_quietly(self._data_key)
            self._staged = False
        else:
            await self._bucket.place_bytes(object_key, bytes(self._buffer), self.blob_id)
            self._final_key = object_key
            self._buffer = bytearray()
            await self._abort_upload()
        return self._bucket.location.path_of(object_key)

    async def finish(self) -> None:
        self._done = True

    async def rollback(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        await self._abort_upload()
        if self._staged:
            await self._bucket.delete_quietly(self._data_key)
            self._staged = False
        if self._final_key is not None:
            await self._bucket.delete_if_ours(self._final_key, self.blob_id)

    def discard(self) -> None:
        if not self._done:
            self._bucket.in_background(self.rollback())

    def abandon(self) -> None:
        self._done = True

    async def _abort_upload(self) -> None:
        if self._multipart is not None:
            multipart, self._multipart = self._multipart, None
            await self._bucket.abort_upload(self._data_key, multipart)
