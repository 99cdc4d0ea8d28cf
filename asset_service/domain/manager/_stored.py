"""Bytes the server already stores: finding a copy that checks out, sharing it (a second
name on the local disk, the same object in a bucket), and adopted files that share it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from asset_service.domain.commits import Handover
from asset_service.domain.errors import IntegrityError, SharedBytesGone
from asset_service.domain.manager._context import Context
from asset_service.domain.models import Asset, AssetFilter, AssetType, Status
from asset_service.domain.ports import AdoptedBlob, StagedBlob

log = logging.getLogger(__name__)

# Stored assets of the declared sha256 tried as the source of a copy before the upload is
# answered NOT_FOUND (each costs a read of its record and a check of its file).
MAX_SOURCES = 16


async def stored_source(ctx: Context, sha256: str, size: int) -> Asset | None:
    """An AVAILABLE FILE asset of that sha256 and size whose file checks out, with its
    block sums (what the copy's read checks each block against)."""
    found = await ctx.store.query(
        AssetFilter(status=Status.AVAILABLE, type=AssetType.FILE, sha256=sha256),
        MAX_SOURCES,
        "",
    )
    for candidate in found.assets:
        if candidate.size_bytes != size or candidate.corrupt_reason:
            continue
        asset = await ctx.store.get(candidate.id)
        if asset is None or asset.status is not Status.AVAILABLE:
            continue
        try:
            await ctx.integrity.check_inputs([asset])
        except IntegrityError:
            continue
        return asset
    return None


async def clone_of(ctx: Context, source: Asset) -> StagedBlob | None:
    """`source`'s bytes staged as a second name (None where the storage cannot), read
    whole and checked block by block first (corrupt bytes are marked): what a second
    name stands for must check out when it is given. IntegrityError if they do not."""
    # Bytes stored before block sums were kept get them now (read whole, checked
    # against their sha256).
    sums = source.block_sums or await ctx.integrity.sums_for(source)
    cloned = await ctx.storage.clone(source.storage_path, source.size_bytes, source.sha256, sums)
    if cloned is not None and source.block_sums is not None:
        await ctx.integrity.verify(source)
    return cloned


async def shareable(
    ctx: Context, sha256: str, size: int
) -> tuple[Asset, StagedBlob] | tuple[None, None]:
    """A stored asset of these bytes and its bytes staged as a second name for a new
    record, or (None, None): none stored, none that checks out, or a storage that cannot
    share (the caller keeps the bytes it has)."""
    source = await stored_source(ctx, sha256, size)
    if source is None:
        return None, None
    try:
        cloned = await clone_of(ctx, source)
    except IntegrityError as exc:
        log.warning("asset %s not shared: %s", source.id, exc.message)
        return None, None
    return (source, cloned) if cloned is not None else (None, None)


async def commit_adopted(
    ctx: Context, staged: AdoptedBlob, commit: Callable[[Handover], Awaitable[Asset]]
) -> Asset:
    """The asset of an adopted server-side file, committed by `commit`: a second name for
    the same bytes where they are stored already (the staged copy goes and a move's
    source with it, once the record is in), else the file itself. A retry whose asset
    already holds these bytes is `commit`'s to answer, with the file as it came."""
    try:
        source, cloned = await shareable(ctx, staged.sha256, staged.size_bytes)
    except BaseException:
        staged.discard()  # the store or storage failed: the file stays where it was
        raise
    if cloned is None or source is None:
        with Handover(staged) as handover:
            return await commit(handover)
    try:
        with Handover(cloned, source.storage_path) as shared:
            asset = await commit(shared)
    except SharedBytesGone:
        # The last asset holding those bytes was deleted meanwhile: store the file.
        log.info("stored bytes of asset %s went meanwhile; storing the file", source.id)
        with Handover(staged) as handover:
            return await commit(handover)
    except BaseException:
        staged.discard()  # the source stays where it was
        raise
    if shared.taken:
        await staged.forgo()  # the record is in: the staged copy goes, a move's source too
    else:
        staged.discard()  # answered without committing (an identical retry): as it came
    return asset
