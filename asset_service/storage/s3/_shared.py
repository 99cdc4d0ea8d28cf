"""Bytes stored once in the bucket: a second record for an object already there (no copy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from asset_service.domain.errors import SharedBytesGone
from asset_service.domain.models import BlockSums

if TYPE_CHECKING:
    from asset_service.storage.s3._bucket import Bucket


class S3Shared:
    """A stored object staged as the bytes of another record: commit() returns the object's
    own storage path, and nothing this blob does ever writes or removes it.

    An object store has no hard links, so the records pointing at one storage path are its
    references (MetadataStore.referenced): the new record is written with shared=True,
    which applies only while a live record still points there (in the same atomic write),
    and whoever deletes a record removes the object only once none points there any more.
    So rollback(), discard() and abandon() leave the object alone: until the record write
    is known to have failed, another record (or this one) may point at it. Nothing is
    journaled either: no bytes are placed, so a crash leaves nothing to settle.
    """

    def __init__(
        self, bucket: Bucket, storage_path: str, size_bytes: int, sha256: str, sums: BlockSums
    ) -> None:
        self._bucket = bucket
        self._path = storage_path
        self.size_bytes, self.sha256, self.block_sums = size_bytes, sha256, sums

    async def commit(self, key: str) -> str:
        # A HEAD answers the common case early (removed since the caller checked them:
        # the caller stores the bytes anew, as when the shared record write is refused);
        # that write is what decides, atomically, in the store.
        head = await self._bucket.head(self._bucket.key_of(self._path))
        if head is None or int(head["ContentLength"]) != self.size_bytes:
            raise SharedBytesGone(self._path)
        return self._path

    async def finish(self) -> None:
        return None

    async def rollback(self) -> None:
        return None  # shared bytes go with their last reference, never with a write

    def discard(self) -> None:
        return None

    def abandon(self) -> None:
        return None
