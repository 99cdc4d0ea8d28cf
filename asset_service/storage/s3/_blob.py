"""Bytes on their way into the bucket: a multipart upload while hashing, a no-clobber commit."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from asset_service.domain.errors import Unavailable
from asset_service.domain.models import BlockSums
from asset_service.domain.ports import Chunk
from asset_service.storage import journal
from asset_service.storage.adoption import Source
from asset_service.storage.blocks import Digests, sums_of
from asset_service.storage.s3._config import PART_SIZE, translate
from asset_service.storage.s3._parts import PartBuffer, Parts
from asset_service.storage.s3._placement import Placement

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from asset_service.storage.s3._bucket import Bucket


class S3Writer:
    """Streams chunks into a multipart upload, hashing as it goes, parts sent a few at once.

    Memory holds at most PARTS_IN_FLIGHT + 1 parts (storage/s3/_parts.py). An upload
    smaller than one part never touches the bucket until commit(), which then writes it
    with one conditional PUT. A bigger one goes, part by part, to a multipart upload:

    - opened at its final key (`key`, when the caller knows it before the bytes come, as
      uploads do): commit() completes it there with a conditional CompleteMultipartUpload
      (If-None-Match: *), and nothing is copied. Until then it is no object: nothing can
      read, list or head it, so the key is still only ever written whole, never over
      another object (docs/object-store.md argues the crash cases);
    - otherwise opened at a staging key and completed there by seal(); commit() copies it
      server-side to its key with the same conditional completion, then drops the staging.
    """

    def __init__(self, bucket: Bucket, key: str | None = None) -> None:
        self._bucket = bucket
        self.size_bytes = 0
        self.sha256 = hashlib.sha256().hexdigest()
        self.block_sums: BlockSums = sums_of(b"")
        self.blob_id = uuid.uuid4().hex  # stamped on the final object: "is it ours?"
        self._digests = Digests()
        self._buffer = PartBuffer()
        self._key = key
        self._target = bucket.object_key(key) if key is not None else None
        upload_key = self._target or bucket.staging_key(self.blob_id)
        self._placement = Placement(bucket, upload_key, self.blob_id)
        self._completed: list[CompletedPartTypeDef] = []

    # --- writing ------------------------------------------------------------------------

    async def write(self, chunk: Chunk) -> None:
        if self._placement.upload_id is None:
            # Opened at once, even for bytes that will fit one part: the upload in flight is
            # visible in the bucket, so a sweep can tell a live server's from a dead one's.
            await self._create_upload()
        if len(chunk) < 64 * 1024:  # a thread hop costs more than hashing a small chunk
            self._digests.update(chunk)
        else:
            await asyncio.to_thread(self._digests.update, chunk)
        self._buffer.add(chunk)
        self.size_bytes += len(chunk)
        while self._buffer.size >= PART_SIZE:
            await self._send_part(self._buffer.take(PART_SIZE))

    async def _create_upload(self) -> None:
        placement = self._placement
        try:
            created = await self._bucket.client.create_multipart_upload(
                Bucket=self._bucket.location.bucket,
                Key=placement.upload_key,
                ChecksumAlgorithm="CRC32C",
                # What delete_if_ours() looks for once the upload is completed at its key.
                Metadata={"blob-id": self.blob_id},
            )
        except Exception as exc:
            raise translate(exc, "starting an upload", placement.upload_key) from exc
        placement.upload_id = created["UploadId"]
        placement.parts = Parts(
            self._bucket.bulk,
            self._bucket.location.bucket,
            placement.upload_key,
            placement.upload_id,
        )

    async def _send_part(self, data: bytes) -> None:
        assert self._placement.parts is not None
        await self._placement.parts.add(data)

    async def seal(self) -> None:
        """No more writes: every part sent; a staging upload is completed."""
        self.sha256 = self._digests.sha.hexdigest()
        self.block_sums = self._digests.blocks.result()
        placement = self._placement
        if placement.parts is None or not placement.parts.count:
            return  # at most one part, held in memory: commit() PUTs it
        if self._buffer.size:
            await self._send_part(self._buffer.take(self._buffer.size))
        self._completed = await placement.parts.done()
        if self._target is not None:
            return  # completed at its key by commit()
        assert placement.upload_id is not None
        try:
            await self._bucket.client.complete_multipart_upload(
                Bucket=self._bucket.location.bucket,
                Key=placement.upload_key,
                UploadId=placement.upload_id,
                MultipartUpload={"Parts": self._completed},
            )
        except Exception as exc:
            raise translate(exc, "completing an upload", placement.upload_key) from exc
        placement.upload_id, placement.staged = None, True

    # --- placing and settling -----------------------------------------------------------

    async def commit(self, key: str) -> str:
        object_key = self._bucket.object_key(key)
        if self._target is not None and object_key != self._target:
            raise ValueError(f"a writer opened for {self._key!r} cannot commit at {key!r}")
        # Only a blob that fits one part still holds its bytes here (seal() sent the rest).
        body = self._buffer.take(self._buffer.size)
        return await self._placement.place(object_key, body, self._completed)

    async def finish(self) -> None:
        self._placement.finish()

    async def rollback(self) -> None:
        """Stop the parts in flight, abort the multipart upload, remove the staging object
        and the placed one (if ours)."""
        self._buffer.clear()
        await self._placement.rollback()

    def discard(self) -> None:
        """rollback() from synchronous cleanup: run as a task the storage awaits on close."""
        self._placement.discard(self.rollback)

    def abandon(self) -> None:
        """Outcome unknown: keep everything; the orphan and upload sweeps settle it later."""
        self._placement.abandon()


class S3Adopted:
    """A server-side file under an import root, copied into the bucket while hashed.

    The file stays open (and flocked) from hash to finish. With `move`, a journal entry
    written before the object is placed lets start-up recovery remove the source (record
    committed) or the object (record not committed) after a crash.
    """

    def __init__(self, bucket: Bucket, source: Source) -> None:
        self._bucket = bucket
        self.source = source
        self._writer = S3Writer(bucket)
        self.size_bytes: int = 0
        self.sha256: str = hashlib.sha256().hexdigest()
        self.block_sums: BlockSums = sums_of(b"")
        self._journal: Path | None = None
        self._done = False

    async def stage(self) -> None:
        offset = 0
        while chunk := await asyncio.to_thread(os.pread, self.source.opened.fd, PART_SIZE, offset):
            offset += len(chunk)
            await self._writer.write(chunk)
        await self._writer.seal()
        self.size_bytes, self.sha256 = self._writer.size_bytes, self._writer.sha256
        self.block_sums = self._writer.block_sums
        self.source.check_unchanged(self.size_bytes)

    async def commit(self, key: str) -> str:
        moved = self.source.intent()
        if moved is not None:
            intent = {**moved, "final": key, "blob_id": self._writer.blob_id}
            try:
                self._journal = await asyncio.to_thread(self._bucket.journal.write, intent)
            except OSError as exc:
                where = self._bucket.journal.intents
                raise Unavailable(f"could not journal a move in {where}: {exc}") from exc
        try:
            self.source.check_unchanged(self.size_bytes)
            path = await self._writer.commit(key)
        except BaseException:
            await self._writer.rollback()
            journal.forget(self._journal)
            self._journal = None
            raise
        return path

    async def finish(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            await self._writer.finish()
            self.source.remove()
            journal.forget(self._journal)
        finally:
            self.source.close()

    async def forgo(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            await self._writer.rollback()  # the staged copy (never placed)
            self.source.remove()
        finally:
            self.source.close()

    async def rollback(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            await self._writer.rollback()
            journal.forget(self._journal)
        finally:
            self.source.close()

    def discard(self) -> None:
        if not self._done:
            self._bucket.in_background(self.rollback())

    def abandon(self) -> None:
        """Keep object, source and journal: the next start-up settles them."""
        if self._done:
            return
        self._done = True
        self._writer.abandon()
        self.source.close()
