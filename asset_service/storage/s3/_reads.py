"""Reading objects: ranged GETs pinned to an ETag, fetched ahead, blocks checked in order."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from asset_service.domain.errors import CorruptBytes, IntegrityError
from asset_service.domain.models import BlockSums
from asset_service.storage import blocks
from asset_service.storage.s3._bulk import Bulk
from asset_service.storage.s3._config import is_precondition, translate

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# A checked read fetches the object in windows of this many bytes (whole blocks), each
# with its own ranged GET on a bulk thread (storage/s3/_bulk.py), READ_AHEAD_WINDOWS of
# them on their way at once: the next window comes in (and is checked) while the blocks
# before are sent. Memory per read is at most READ_AHEAD_WINDOWS windows (16 MiB), held
# while its client does not read (the windows fetched wait; no new one starts). Smaller
# windows cost the store more per byte (MinIO: 1.4 ms of CPU per MiB in 4 MiB GETs, 1.2 in
# 8 MiB ones, 1.0 in one GET of 64 MiB); docs/object-store.md has the measurements.
READ_WINDOW_BYTES = 8 * 1024 * 1024
READ_AHEAD_WINDOWS = 2


class Object:
    """One stored object as a read sees it: pinned to the ETag its size was checked with."""

    def __init__(self, client: S3Client, bucket: str, key: str, etag: str, shown: str) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.etag = etag
        self.shown = shown

    def _request(self, offset: int, end: int) -> dict[str, Any]:
        """A GET of [offset, end), answered only while the object has the checked ETag."""
        range_ = f"bytes={offset}-{end - 1}"
        return {"Bucket": self.bucket, "Key": self.key, "Range": range_, "IfMatch": self.etag}

    def _failed(self, exc: Exception) -> Exception:
        if is_precondition(exc):
            return IntegrityError(f"its bytes at {self.shown} were replaced while read")
        return translate(exc, "reading bytes", self.shown)

    async def _get(self, offset: int, end: int) -> Any:
        """The body of a GET of [offset, end)."""
        try:
            answer = await self.client.get_object(**self._request(offset, end))
        except Exception as exc:
            raise self._failed(exc) from exc
        return answer["Body"]

    def _cut_short(self, offset: int, end: int) -> IntegrityError:
        return IntegrityError(
            f"its bytes at {self.shown} ended at {offset} of {end} bytes while read"
        )

    async def ranged(self, offset: int, end: int, chunk_size: int) -> AsyncIterator[bytes]:
        """[offset, end) from one ranged GET, streamed in pieces of at most chunk_size."""
        if offset >= end:
            return
        async with await self._get(offset, end) as body:
            while offset < end:
                chunk = await body.read(min(chunk_size, end - offset))
                if not chunk:
                    raise self._cut_short(offset, end)
                offset += len(chunk)
                yield chunk

    def _window(
        self, bulk: Bulk, start: int, stop: int, sums: BlockSums
    ) -> tuple[list[bytes], IntegrityError | None]:
        """On a bulk thread: the whole blocks of [start, stop) from one ranged GET, each
        checked against its sum here (crc32c releases the GIL): the good blocks, and the
        error that ends the read at the first bad or missing one."""
        try:
            answer = bulk.client.get_object(**self._request(start, stop))
        except Exception as exc:
            raise self._failed(exc) from exc
        body = answer["Body"]
        found: list[bytes] = []
        try:
            while start < stop:
                wanted = min(sums.block_bytes, stop - start)
                data = body.read(wanted)
                while 0 < len(data) < wanted:  # a read may return less than asked
                    more = body.read(wanted - len(data))
                    if not more:
                        break
                    data += more
                if len(data) < wanted:
                    body.close()
                    return found, self._cut_short(start + len(data), stop)
                try:
                    blocks.check_block(sums, self.shown, start, data)
                except CorruptBytes as exc:
                    body.close()  # the rest of the window is not wanted
                    return found, exc
                found.append(data)
                start += wanted
        except Exception as exc:
            body.close()
            raise translate(exc, "reading bytes", self.shown) from exc
        return found, None

    async def checked(
        self,
        bulk: Bulk,
        span: tuple[int, int],
        offset: int,
        end: int,
        chunk_size: int,
        sums: BlockSums,
    ) -> AsyncIterator[bytes]:
        """The bytes in [offset, end) from whole blocks (`span`), each checked before any of
        it is yielded, in order, while the windows after it are fetched on bulk threads. A
        bad block ends the stream with CorruptBytes naming its offset (after every good
        block before it); the windows fetched beyond it are dropped."""
        start, stop = span
        if offset >= end or start >= stop:
            return
        block = sums.block_bytes
        size = max(block, READ_WINDOW_BYTES - READ_WINDOW_BYTES % block)
        windows = collections.deque(range(start, stop, size))
        fetching: collections.deque[
            tuple[int, asyncio.Future[tuple[list[bytes], IntegrityError | None]]]
        ] = collections.deque()
        try:
            while windows or fetching:
                while windows and len(fetching) < READ_AHEAD_WINDOWS:
                    at = windows.popleft()
                    window = bulk.submit(self._window, bulk, at, min(stop, at + size), sums)
                    fetching.append((at, asyncio.wrap_future(window)))
                at, fetch = fetching.popleft()
                found, error = await fetch
                for data in found:
                    for piece in blocks.pieces(data, at, offset, end, chunk_size):
                        yield piece
                    at += len(data)
                if error is not None:
                    raise error
        finally:
            _drop([fetch for _, fetch in fetching])


def _drop(fetches: list[asyncio.Future[Any]]) -> None:
    """Windows no one will read: not started, they never will be; under way, they end on
    their own (at most one window each) and nobody looks at what they bring."""
    for fetch in fetches:
        fetch.cancel()
