"""What every storage's reads share: the span a read asks for, and block sums read back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from asset_service.domain.models import BLOCK_BYTES, BlockSums
from asset_service.storage import blocks


@dataclass(frozen=True)
class Span:
    """Bytes [offset, end) of the stored file at `storage_path` (`size_bytes` long, as its
    record says), in chunks of at most `chunk_size`."""

    storage_path: str
    size_bytes: int
    offset: int
    end: int
    chunk_size: int


class SpanReads(ABC):
    """read(), summed() and verify() of BlobStorage over the one step a storage supplies:
    open_span(), the bytes of a span from wherever it keeps them."""

    async def read(
        self,
        storage_path: str,
        size_bytes: int,
        offset: int,
        limit: int,
        chunk_size: int,
        sums: BlockSums | None = None,
    ) -> AsyncIterator[bytes]:
        end = size_bytes if limit <= 0 else min(size_bytes, offset + limit)
        return await self.open_span(Span(storage_path, size_bytes, offset, end, chunk_size), sums)

    @abstractmethod
    async def open_span(self, span: Span, sums: BlockSums | None) -> AsyncIterator[bytes]:
        """The span's bytes; IntegrityError before any if the stored file is missing or
        not size_bytes long. With `sums`, each block is checked before any of its bytes
        is yielded."""

    async def summed(
        self, storage_path: str, size_bytes: int, sha256: str, pace: blocks.Pace | None = None
    ) -> BlockSums:
        chunks = await self.read(storage_path, size_bytes, 0, 0, BLOCK_BYTES)
        return await blocks.summed_from(chunks, sha256, storage_path, pace)

    async def verify(self, storage_path: str, size_bytes: int, sums: BlockSums) -> None:
        await blocks.drain(await self.read(storage_path, size_bytes, 0, 0, BLOCK_BYTES, sums))
