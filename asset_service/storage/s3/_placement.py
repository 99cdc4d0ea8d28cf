"""A writer's bytes on their way to one object: its upload, its staged object, the placed one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from asset_service.storage.s3._bucket import Bucket
    from asset_service.storage.s3._parts import Parts


class Placement:
    """What S3Writer and S3SessionWriter have in the bucket, placed at a key or undone.

    The bytes go to a multipart upload at `upload_key` (`upload_id` while it is open, its
    parts still on their way in `parts`), which is either completed there as a staged
    object (`staged`) or, for an upload opened at its final key, completed by place(). Once
    placed, `final_key` names the object, stamped with `blob_id`: rollback() removes it only
    while it is still this writer's.
    """

    def __init__(self, bucket: Bucket, upload_key: str, blob_id: str) -> None:
        self.bucket = bucket
        self.upload_key = upload_key
        self.blob_id = blob_id
        self.upload_id: str | None = None
        self.parts: Parts | None = None
        self.staged = False  # the upload was completed at upload_key
        self.final_key: str | None = None
        self.done = False

    async def place(self, object_key: str, body: bytes, parts: list[CompletedPartTypeDef]) -> str:
        """Copy the staged object to `object_key`, complete the upload there (its `parts`),
        or PUT `body` there, never over another object; the storage path."""
        if self.staged:
            await self.bucket.place_copy(object_key, self.upload_key, self.blob_id)
            self.final_key = object_key
            await self._drop_staging()
        elif parts:
            assert self.upload_id is not None
            await self.bucket.place_upload(object_key, self.upload_id, parts)
            self.final_key, self.upload_id = object_key, None
        else:
            await self.bucket.place_bytes(object_key, body, self.blob_id)
            self.final_key = object_key
            await self.abort_upload()
        return self.bucket.location.path_of(object_key)

    def finish(self) -> None:
        self.done = True

    async def rollback(self) -> None:
        """Stop the parts in flight, abort the multipart upload, remove the staged object
        and the placed one (if ours)."""
        if self.done:
            return
        self.done = True
        await self.abort_upload()
        await self._drop_staging()
        if self.final_key is not None:
            await self.bucket.delete_if_ours(self.final_key, self.blob_id)

    def discard(self, rollback: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """`rollback` from synchronous cleanup: run as a task the storage awaits on close."""
        if not self.done:
            self.bucket.in_background(rollback())

    def abandon(self) -> None:
        """Outcome unknown: keep everything; the orphan and upload sweeps settle it later."""
        self.done = True

    async def abort_upload(self) -> None:
        if self.parts is not None:
            # A part still on its way could land after the abort and leave the upload
            # behind (S3 says to abort again then): none is.
            await self.parts.cancel()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            await self.bucket.abort_upload(self.upload_key, upload_id)

    async def _drop_staging(self) -> None:
        if self.staged:
            await self.bucket.delete_quietly(self.upload_key)
            self.staged = False
