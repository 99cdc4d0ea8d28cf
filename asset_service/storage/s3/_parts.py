"""A multipart upload's parts, a few in flight at once, behind a bounded buffer."""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import Future
from typing import TYPE_CHECKING

from asset_service.domain.ports import Chunk
from asset_service.storage.blocks import crc32c
from asset_service.storage.s3._bulk import Bulk, settled
from asset_service.storage.s3._config import translate

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

# Parts of one upload on their way to the store at once. The store answers a part only
# once it has it on disk: with one at a time the stream waits for each answer, and the
# store (MinIO here) works on one request of the upload at a time. Three kept it busy
# (docs/object-store.md); memory per upload is then at most (PARTS_IN_FLIGHT + 1) parts:
# those in flight and the one being filled.
PARTS_IN_FLIGHT = 3


def crc32c_base64(data: bytes) -> str:
    """An S3 ChecksumCRC32C value: the big-endian crc32c, base64-encoded."""
    return base64.b64encode(crc32c(data).to_bytes(4, "big")).decode()


class PartBuffer:
    """Chunks gathered until they make a part: a part is copied once, when it is taken."""

    def __init__(self) -> None:
        self._chunks: list[Chunk] = []
        self.size = 0

    def add(self, chunk: Chunk) -> None:
        if len(chunk):
            self._chunks.append(chunk)
            self.size += len(chunk)

    def take(self, size: int) -> bytes:
        """The first `size` bytes (or all there are), removed from the buffer."""
        taken: list[Chunk] = []
        need = min(size, self.size)
        while need:
            chunk = self._chunks[0]
            if len(chunk) <= need:
                taken.append(self._chunks.pop(0))
                need -= len(chunk)
                continue
            view = memoryview(chunk).cast("B")
            taken.append(view[:need])
            self._chunks[0] = view[need:]
            need = 0
        data = b"".join(taken)
        self.size -= len(data)
        return data

    def clear(self) -> None:
        self._chunks, self.size = [], 0


class Parts:
    """Sends the parts of one multipart upload, each as its own request on a bulk thread
    (storage/s3/_bulk.py), at most PARTS_IN_FLIGHT at once and in any order; their list
    comes back in part-number order.

    add() waits while PARTS_IN_FLIGHT parts are on their way (back-pressure to the stream that
    fills them). The first failure is raised by the next add() or by done(); a part that
    failed is not retried here (botocore has already retried it). cancel() drops the parts
    not yet started and waits for those under way, so that an abort of the upload after it
    leaves no part behind.
    """

    def __init__(self, bulk: Bulk, bucket: str, key: str, upload_id: str) -> None:
        self._bulk = bulk
        self._bucket = bucket
        self._key = key
        self._upload_id = upload_id
        self._slots = asyncio.Semaphore(PARTS_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sent: set[Future[CompletedPartTypeDef]] = set()  # on bulk threads
        self._done: list[CompletedPartTypeDef] = []
        self._error: Exception | None = None
        self.count = 0  # parts handed to add()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    async def add(self, data: bytes) -> None:
        """Start sending `data` as the next part; waits for a free slot first."""
        self._raise()
        await self._slots.acquire()
        if self._error is not None:
            self._slots.release()
            raise self._error
        self.count += 1
        sent = self._bulk.submit(self._send, self.count, data)
        self._sent.add(sent)
        task = asyncio.get_running_loop().create_task(self._landed(sent))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, number: int, data: bytes) -> CompletedPartTypeDef:
        """On a bulk thread: one UploadPart. The store checks the part against its crc32c
        on receipt (a part damaged on the way is refused, not stored)."""
        checksum = crc32c_base64(data)
        answer = self._bulk.client.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
            ChecksumCRC32C=checksum,
        )
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumCRC32C": checksum}

    async def _landed(self, sent: Future[CompletedPartTypeDef]) -> None:
        try:
            self._done.append(await asyncio.wrap_future(sent))
        except Exception as exc:
            if self._error is None:
                self._error = translate(exc, "uploading a part", self._key)
        finally:
            self._sent.discard(sent)
            self._slots.release()

    async def done(self) -> list[CompletedPartTypeDef]:
        """Wait for every part; the list CompleteMultipartUpload wants, in order."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        self._raise()
        return sorted(self._done, key=lambda part: part["PartNumber"])

    async def cancel(self) -> None:
        """Drop the parts not started, and wait until those under way have ended."""
        sent = set(self._sent)
        for task in set(self._tasks):
            task.cancel()
        await settled(sent)
