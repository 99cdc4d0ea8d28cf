"""New assets, AVAILABLE at once or PENDING promises: uploads, server-side files, values."""

from __future__ import annotations

import functools
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from dataclasses import dataclass

from asset_service.domain import keys, leases
from asset_service.domain.commits import Handover
from asset_service.domain.errors import (
    InvalidArgument,
    TooLarge,
)
from asset_service.domain.manager import _base, _stored, _transitions
from asset_service.domain.manager._base import new_record, verify
from asset_service.domain.manager._context import Context, get, with_expiry
from asset_service.domain.models import (
    Asset,
    AssetType,
    PromiseRequest,
    Status,
    UploadHeader,
    Value,
    new_asset_id,
    validate_label,
    validate_media_type,
    validate_server_path,
    validate_sha256,
    validate_tags,
    validate_task_id,
)
from asset_service.domain.ports import (
    Chunk,
    StagingWriter,
)
from asset_service.domain.retention import check_ttl
from asset_service.domain.values import parse_value, value_sha256


@dataclass(frozen=True)
class UploadPlan:
    """An upload's header, checked: what it makes and what its bytes must match."""

    header: UploadHeader
    media_type: str
    tags: tuple[str, ...]
    expected_size: int | None
    expected_sha: str
    # The promise it fulfills (as read before the bytes came), or None for a new asset.
    pending: Asset | None


# How an upload's sealed bytes become an asset (complete_upload, or a variant of it).
Complete = Callable[[UploadPlan, Handover, str, str, str], Awaitable[Asset]]


async def upload(
    ctx: Context,
    header: UploadHeader,
    chunks: AsyncIterator[Chunk],
    *,
    by: str = "",
    complete: Complete | None = None,
) -> Asset:
    """An upload streamed once: its bytes staged, sealed and verified, then `complete`
    (complete_upload if None) makes the asset."""
    complete = complete or functools.partial(complete_upload, ctx)
    plan = await upload_plan(ctx, header)
    # Refused before any byte arrives if its record would be (the store's disk-full
    # reserve is missing): the bytes would take the room the reserve is waiting for.
    await ctx.store.check_room()
    # The key is chosen before the bytes come: an object store streams them to it and
    # needs no copy at commit.
    asset_id, key = upload_target(plan)
    writer = ctx.storage.new_writer(key)
    with Handover(writer) as handover:
        await take_in(ctx, writer, chunks)
        await writer.seal()
        return await complete(plan, handover, by, asset_id, key)
    raise AssertionError("unreachable")  # pragma: no cover


def upload_target(plan: UploadPlan) -> tuple[str, str]:
    """The asset id and storage key an upload's bytes will be committed at."""
    if plan.pending is not None:
        pending = plan.pending
        key = keys.generated_key(pending.created_by_task, pending.id, pending.label)
        return pending.id, key
    asset_id = new_asset_id()
    return asset_id, keys.upload_key(asset_id, plan.header.label, _base.now())


async def upload_plan(ctx: Context, header: UploadHeader) -> UploadPlan:
    """The header checked: what the upload will make, and what it must verify."""
    media_type = validate_media_type(header.media_type, "")
    tags = validate_tags(header.tags)
    check_ttl(header.ttl_seconds)
    expected_sha = validate_sha256(header.expected_sha256)
    expected_size = header.expected_size_bytes
    limit = ctx.limits.max_upload_bytes
    if expected_size is not None:
        if expected_size < 0:
            raise InvalidArgument(f"expected_size_bytes is negative ({expected_size})")
        if expected_size > limit:
            raise TooLarge(
                f"expected_size_bytes {expected_size} exceeds the server's limit of "
                f"{limit} bytes (--max-upload-bytes)"
            )
    pending: Asset | None = None
    if header.pending_asset_id:
        pending = await get(ctx, header.pending_asset_id)
        _transitions.check_fulfillable(pending, AssetType.FILE, allow_done=True)
    else:
        validate_label(header.label)
    return UploadPlan(header, media_type, tags, expected_size, expected_sha, pending)


async def take_in(ctx: Context, writer: StagingWriter, chunks: AsyncIterator[Chunk]) -> None:
    limit = ctx.limits.max_upload_bytes
    async for chunk in chunks:
        if writer.size_bytes + len(chunk) > limit:
            raise TooLarge(
                f"upload exceeds the server's limit of {limit} bytes (--max-upload-bytes)"
            )
        await writer.write(chunk)


async def complete_upload(
    ctx: Context, plan: UploadPlan, handover: Handover, by: str, asset_id: str = "", key: str = ""
) -> Asset:
    """Verify the sealed bytes, then fulfill the promise or insert the new record."""
    verify(handover.blob, plan.expected_size, plan.expected_sha)
    if plan.pending is not None:
        async with ctx.locks.hold(plan.pending.id):
            # Re-read: the state may have moved while the bytes streamed in.
            current = await get(ctx, plan.pending.id)
            return await _transitions.fulfill_with_blob(
                ctx, current, handover, plan.media_type, "", by
            )
    media_type = plan.media_type or "application/octet-stream"
    return await insert_file(
        ctx,
        handover,
        plan.header.label,
        media_type,
        plan.tags,
        by,
        asset_id,
        key,
        plan.header.ttl_seconds,
    )


async def register_file(
    ctx: Context,
    path: str,
    label: str,
    media_type: str,
    tags: Sequence[str],
    move: bool,
    *,
    by: str = "",
    ttl_seconds: int = 0,
) -> Asset:
    check_ttl(ttl_seconds)
    path = validate_server_path(path)
    label = validate_label(label or path.rsplit("/", 1)[-1])
    media_type = validate_media_type(media_type, "application/octet-stream")
    tag_tuple = validate_tags(tags)
    await ctx.store.check_room()  # before a copy takes the room
    staged = await ctx.storage.adopt(path, move=move)

    async def commit(handover: Handover) -> Asset:
        return await insert_file(
            ctx, handover, label, media_type, tag_tuple, by, ttl_seconds=ttl_seconds
        )

    return await _stored.commit_adopted(ctx, staged, commit)


async def insert_file(
    ctx: Context,
    handover: Handover,
    label: str,
    media_type: str,
    tags: tuple[str, ...],
    by: str,
    asset_id: str = "",
    key: str = "",
    ttl_seconds: int = 0,
) -> Asset:
    """Bytes into uploads/ (at `key` if given), then the AVAILABLE record (under
    `asset_id` if given)."""
    blob = handover.blob
    asset_id, now = asset_id or new_asset_id(), _base.now()
    key = key or keys.upload_key(asset_id, label, now)

    def record(path: str) -> Asset:
        return with_expiry(ctx, record_at(path), ttl_seconds)

    def record_at(path: str) -> Asset:
        return new_record(
            Status.AVAILABLE,
            AssetType.FILE,
            label,
            media_type,
            by,
            asset_id=asset_id,
            at=now,
            storage_path=path,
            tags=tags,
            size_bytes=blob.size_bytes,
            sha256=blob.sha256,
            block_sums=blob.block_sums,
        )

    return await ctx.commits.publish(
        handover,
        asset_id,
        key,
        lambda path: ctx.store.insert(record(path), shared=handover.shared(path)),
    )


async def create_value(
    ctx: Context,
    label: str,
    media_type: str,
    value: Value,
    tags: Sequence[str],
    *,
    by: str = "",
    ttl_seconds: int = 0,
) -> Asset:
    check_ttl(ttl_seconds)
    label = validate_label(label)
    value = parse_value(value.kind, value.data)
    media_type = validate_media_type(media_type, value.kind.default_media_type)
    asset = new_record(
        Status.AVAILABLE,
        AssetType.VALUE,
        label,
        media_type,
        by,
        value=value,
        tags=validate_tags(tags),
        size_bytes=len(value.data),
        sha256=value_sha256(value),
    )
    return await ctx.store.insert(with_expiry(ctx, asset, ttl_seconds))


async def create_pending(ctx: Context, promise: PromiseRequest, *, by: str = "") -> Asset:
    check_ttl(promise.ttl_seconds)
    asset = pending_record(ctx, promise, by=by)
    return await ctx.store.insert(with_expiry(ctx, asset, promise.ttl_seconds))


def pending_record(ctx: Context, promise: PromiseRequest, *, by: str) -> Asset:
    """A new promise's record, every field checked (InvalidArgument)."""
    task_id = validate_task_id(promise.task_id)
    label = validate_label(promise.label)
    lease_seconds = leases.check_seconds(promise.lease_seconds, ctx.limits.max_lease_seconds)
    now = _base.now()
    type_ = promise.type
    return new_record(
        Status.PENDING,
        type_,
        label,
        # A VALUE promise without a media type gets its value kind's on fulfillment.
        validate_media_type(
            promise.media_type, "application/octet-stream" if type_ is AssetType.FILE else ""
        ),
        by,
        at=now,
        created_by_task=task_id,
        tags=validate_tags(promise.tags),
        lease_seconds=lease_seconds,
        lease_expires_at=leases.deadline(now, lease_seconds) if lease_seconds else None,
    )
