"""A session held by a stream until it resumes: what is durable, and the writer to go on."""

from __future__ import annotations

import dataclasses

from asset_service.domain.uploads import UploadSession
from asset_service.storage.blocks import Digests
from asset_service.storage.s3._session_blob import S3SessionWriter
from asset_service.storage.s3._session_claim import Claim
from asset_service.storage.s3._session_objects import Durable


class S3Hold:
    """A session held by this stream, until it resumes (the writer holds it then)."""

    def __init__(self, claim: Claim) -> None:
        self._claim = claim

    @property
    def session(self) -> UploadSession:
        return self._claim.session

    async def save(self, session: UploadSession) -> None:
        await self._claim.save(session)

    async def remove(self) -> None:
        self._claim.end(unclaim=False)
        await self._claim.objects.remove_all(self._claim.key)

    def release(self) -> None:
        self._claim.end()

    async def resume(self) -> S3SessionWriter:
        claim = self._claim
        objects, key = claim.objects, claim.key
        multipart = str(claim.extra.get("multipart", ""))
        durable = await objects.durable(key, multipart)
        cached = objects.digests.pop(key, None)
        digests = Digests()
        parts = durable.parts
        if durable.upload_alive and durable.committed:
            if cached is not None and cached[:2] == (multipart, durable.committed):
                digests = cached[2]
            else:
                # After a restart, or on another server: parts cannot be read back while
                # their upload is open, so complete it, hash the object, and go on in a new
                # upload whose first parts are server-side copies of it.
                await objects.complete(key, multipart, parts)
                durable = Durable([], durable.committed, False)
        if not durable.upload_alive:
            if durable.committed:
                digests = await objects.read_back(key, durable.committed)
            checksummed = not durable.committed  # (copied parts have no crc32c to give)
            multipart = await objects.create_upload(key, checksummed)
            parts = await objects.copy_into(key, multipart, durable.committed)
            session = dataclasses.replace(claim.session, committed_bytes=durable.committed)
            await claim.save(session, multipart=multipart, crc32c=checksummed)
        return S3SessionWriter(claim, multipart, parts, durable.committed, digests)
