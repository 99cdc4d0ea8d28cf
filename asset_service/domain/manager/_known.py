"""Uploads of bytes the server already stores: the client sends a header and no chunk."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator

from asset_service.domain.commits import Handover
from asset_service.domain.errors import (
    IntegrityError,
    InvalidArgument,
    NotFound,
    SharedBytesGone,
)
from asset_service.domain.manager import _creation, _resumable
from asset_service.domain.manager._base import READ_CHUNK_BYTES, verify
from asset_service.domain.manager._context import Context
from asset_service.domain.manager._creation import UploadPlan
from asset_service.domain.manager._stored import clone_of, shareable, stored_source
from asset_service.domain.models import (
    Asset,
    UploadHeader,
)
from asset_service.domain.ports import Chunk

log = logging.getLogger(__name__)

# Stored copies tried in turn when each one's last holder goes while it is being shared.
MAX_SHARE_ROUNDS = 3


async def upload(
    ctx: Context, header: UploadHeader, chunks: AsyncIterator[Chunk], *, by: str = ""
) -> Asset:
    """UploadAsset, every kind: of stored bytes (reuse_stored_bytes), resumable
    (upload_id) or streamed once; bytes sent that the server already stores are kept
    once (complete_deduplicated)."""
    if not header.reuse_stored_bytes:
        complete = functools.partial(complete_deduplicated, ctx)
        return await _resumable.upload(ctx, header, chunks, by=by, complete=complete)
    return await _upload_reusing(ctx, header, chunks, by)


async def _upload_reusing(
    ctx: Context, header: UploadHeader, chunks: AsyncIterator[Chunk], by: str
) -> Asset:
    """UploadHeader.reuse_stored_bytes: an upload that skips stored bytes (issue 24).

    A declared sha256 is never trusted: the bytes come from a stored AVAILABLE FILE asset
    whose sha256 the server computed itself when they arrived, and whose file still checks
    out (presence, size, the corrupt mark, a full check if changed since); they are copied
    on the server, through the block checks a read makes, and hashed again as they are
    written, and the copy must hash to the declared sha256 like any upload. Where the
    storage can (BlobStorage.clone: a hard link on the local disk, shared bytes in memory,
    the same object in a bucket) nothing is copied at all: the new asset is a second name
    for the same bytes, stored once; the file system's link count, or the records
    pointing at the object (domain/references.py), are their reference count.
    """
    if header.upload_id:
        raise InvalidArgument(
            "header.reuse_stored_bytes is not for a resumable upload (header.upload_id): "
            "it sends no bytes to resume; send it without upload_id"
        )
    if header.expected_size_bytes is None or not header.expected_sha256:
        raise InvalidArgument(
            "header.reuse_stored_bytes needs expected_size_bytes and expected_sha256: the "
            "server looks the bytes up by both"
        )
    plan = await _creation.upload_plan(ctx, header)
    async for _ in chunks:
        raise InvalidArgument(
            "header.reuse_stored_bytes: the stream must carry no chunk (the server copies "
            "bytes it stores); to send the bytes, send a stream without it"
        )
    assert plan.expected_size is not None
    missing = f"no stored bytes of {plan.expected_size} bytes with sha256 {plan.expected_sha}"
    await ctx.store.check_room()
    asset_id, key = _creation.upload_target(plan)
    for _ in range(MAX_SHARE_ROUNDS):
        source = await stored_source(ctx, plan.expected_sha, plan.expected_size)
        if source is None:
            raise NotFound(f"{missing}: send them (a stream without reuse_stored_bytes)")
        try:
            cloned = await clone_of(ctx, source)
        except IntegrityError as exc:
            raise NotFound(f"{missing} that check out ({exc.message}): send them") from None
        if cloned is None:
            break
        # Stored once: a second name for the same bytes (their record's sha256 and sums,
        # just checked); the file system counts the names, or the records pointing at
        # one object do (domain/references.py).
        try:
            with Handover(cloned, source.storage_path) as handover:
                return await complete_deduplicated(ctx, plan, handover, by, asset_id, key)
        except SharedBytesGone:
            # Its last holder was deleted meanwhile: look again (another asset may hold
            # the same bytes), else the client sends them.
            log.info("stored bytes of asset %s went meanwhile; looking again", source.id)
            continue
    else:
        raise NotFound(f"{missing} that stay stored while this runs: send them")
    writer = ctx.storage.new_writer(key)
    with Handover(writer) as handover:
        try:
            reading = await ctx.integrity.open_read(source, 0, 0, READ_CHUNK_BYTES)
            async for chunk in reading:
                await writer.write(chunk)
        except IntegrityError as exc:
            # Corrupt bytes are marked by the read; the client sends its own instead.
            raise NotFound(
                f"{missing} that check out (asset {source.id}: {exc.message}): send them"
            ) from None
        await writer.seal()
        return await complete_deduplicated(ctx, plan, handover, by, asset_id, key)
    raise AssertionError("unreachable")  # pragma: no cover


async def complete_deduplicated(
    ctx: Context, plan: UploadPlan, handover: Handover, by: str, asset_id: str = "", key: str = ""
) -> Asset:
    """Bytes sent that the server already stores are kept once: the staged copy goes,
    and the asset is a second name for the stored bytes (where the storage can: a hard
    link on the local disk, the same object in a bucket).

    A resumable upload's too, completed in its first stream or a later one (whose plan
    is the session's header, without upload_id): its session is already recorded as
    completing this asset id and sha256 (_resumable._complete_session), so dropping the
    session's bytes (the blob's rollback: the bytes only, the record stays) leaves a
    later stream of the upload_id finding the asset, as it would its own bytes."""
    blob = handover.blob
    if plan.header.reuse_stored_bytes:
        return await _creation.complete_upload(ctx, plan, handover, by, asset_id, key)
    verify(blob, plan.expected_size, plan.expected_sha)
    source, cloned = await shareable(ctx, blob.sha256, blob.size_bytes)
    if source is None or cloned is None:
        return await _creation.complete_upload(ctx, plan, handover, by, asset_id, key)
    try:
        with Handover(cloned, source.storage_path) as shared:
            stored = await _creation.complete_upload(ctx, plan, shared, by, asset_id, key)
    except SharedBytesGone:
        # The last asset holding those bytes was deleted meanwhile: keep the bytes sent.
        log.info("stored bytes of asset %s went meanwhile; keeping those sent", source.id)
        return await _creation.complete_upload(ctx, plan, handover, by, asset_id, key)
    blob.discard()  # the bytes sent, identical to the stored ones, are not kept
    return stored
