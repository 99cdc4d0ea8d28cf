"""Transitions: PENDING -> AVAILABLE | FAILED (fulfil, fail), renewing and expiring leases."""

from __future__ import annotations

import dataclasses
import logging

from asset_service.domain import keys, leases
from asset_service.domain.commits import Handover
from asset_service.domain.errors import (
    AssetError,
    Conflict,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    LeaseRanOut,
    NotFound,
    SharedBytesGone,
    shown,
)
from asset_service.domain.manager import _base, _stored
from asset_service.domain.manager._base import (
    MAX_REASON_CHARS,
    SWEEP_HOLD_SECONDS,
    not_pending,
)
from asset_service.domain.manager._context import Context, get, rule_expiry
from asset_service.domain.models import (
    Asset,
    AssetType,
    Failure,
    Fulfillment,
    Status,
    Value,
    parse_asset_id,
    validate_server_path,
    validate_sha256,
)
from asset_service.domain.values import parse_value, value_sha256

log = logging.getLogger(__name__)


async def fulfill_from_path(
    ctx: Context, asset_id: str, source_path: str, expected_sha: str, *, by: str = ""
) -> Asset:
    asset_id = parse_asset_id(asset_id)
    expected_sha = validate_sha256(expected_sha)
    source = validate_server_path(source_path, "source_path")
    async with ctx.locks.hold(asset_id):
        current = await get(ctx, asset_id)
        check_fulfillable(current, AssetType.FILE, allow_done=True)
        await ctx.store.check_room()  # before a copy takes the room
        try:
            staged = await ctx.storage.adopt(source, move=True)
        except NotFound:
            if current.status is Status.AVAILABLE and current.fulfilled_from == source:
                # A retry of the fulfill that moved this very file: same answer.
                return current
            raise
        if (expected_sha and staged.sha256 != expected_sha) or (
            current.status is Status.AVAILABLE and current.sha256 == staged.sha256
        ):
            # Refused, or an identical retry (fulfill_with_blob answers it as it is, and
            # the file stays where it was): never shared.
            with Handover(staged) as handover:
                if expected_sha and staged.sha256 != expected_sha:
                    raise IntegrityError(
                        f"{shown(source)} has sha256 {staged.sha256}, expected {expected_sha}"
                    )
                return await fulfill_with_blob(ctx, current, handover, "", source, by)

        async def commit(handover: Handover) -> Asset:
            return await fulfill_with_blob(ctx, current, handover, "", source, by)

        return await _stored.commit_adopted(ctx, staged, commit)


async def fulfill_with_value(
    ctx: Context, asset_id: str, value: Value, expected_sha: str, *, by: str = ""
) -> Asset:
    asset_id = parse_asset_id(asset_id)
    expected_sha = validate_sha256(expected_sha)
    value = parse_value(value.kind, value.data)
    digest = value_sha256(value)
    if expected_sha and digest != expected_sha:
        raise IntegrityError(f"value has sha256 {digest}, expected {expected_sha}")
    async with ctx.locks.hold(asset_id):
        current = await get(ctx, asset_id)
        if current.status is Status.AVAILABLE and current.value == value:
            return current
        check_fulfillable(current, AssetType.VALUE, allow_done=False)
        change = Fulfillment(
            size_bytes=len(value.data),
            sha256=digest,
            value=value,
            media_type="" if current.media_type else value.kind.default_media_type,
            by=by,
        )
        return await transition(ctx, current, change)


async def fail(ctx: Context, asset_id: str, reason: str, *, by: str = "") -> Asset:
    asset_id = parse_asset_id(asset_id)
    reason = reason.strip()
    if not reason:
        raise InvalidArgument("reason is required: say why the asset could not be produced")
    reason = reason[:MAX_REASON_CHARS]
    async with ctx.locks.hold(asset_id):
        current = await get(ctx, asset_id)
        if current.status is Status.FAILED and current.failure_reason == reason:
            return current
        if current.status is not Status.PENDING:
            raise FailedPrecondition(not_pending(current, "failed"))
        return await transition(ctx, current, Failure(reason, by=by))


async def renew_lease(
    ctx: Context, asset_id: str, lease_seconds: int = 0, *, by: str = ""
) -> Asset:
    """Extend a PENDING asset's lease to now + lease_seconds (0: its own lease).

    Only the lease's record is written (a heartbeat is not a change of the asset); the
    store decides, by its clock, whether the lease is still running.
    """
    asset_id = parse_asset_id(asset_id)
    if lease_seconds:
        leases.check_seconds(lease_seconds, ctx.limits.max_lease_seconds)
    try:
        return await ctx.store.renew_lease(asset_id, lease_seconds, _base.now(), by)
    except LeaseRanOut as exc:
        raise FailedPrecondition(leases.ran_out(asset_id, exc.expires_at)) from None
    except Conflict as exc:
        # No lease (any more): say why from the record.
        latest = await get(ctx, asset_id)
        why = leases.not_renewable(latest)
        raise FailedPrecondition(why or f"asset {asset_id}: {exc.message}") from None


async def expire_leases(ctx: Context, hold_seconds: float = SWEEP_HOLD_SECONDS) -> int:
    """Fail every PENDING asset whose lease has run out; how many this call failed.

    Only while this manager holds the store's sweep claim (for `hold_seconds` more:
    a few sweep intervals, so that a dead sweeper's successor takes over soon): one
    server process sweeps at a time.
    """
    now = _base.now()
    if not await ctx.store.claim_sweep(ctx.sweeper, hold_seconds, now):
        return 0
    return await leases.expire_due(
        ctx.store, now, rules=lambda asset: rule_expiry(ctx, asset, Status.FAILED, now)
    )


async def release_sweep(ctx: Context) -> None:
    """Give up the sweep claim (at a clean stop), so that a peer takes over at once."""
    try:
        await ctx.store.claim_sweep(ctx.sweeper, 0, _base.now())
    except AssetError as exc:
        log.info("could not give up the lease sweep: %s", exc)


def check_fulfillable(asset: Asset, type_: AssetType, allow_done: bool) -> None:
    # The state first: an asset that can no longer be fulfilled at all is the answer, not
    # "fulfil it the other way", which would only lead to that answer a call later.
    if asset.status is not Status.PENDING and not (allow_done and asset.status is Status.AVAILABLE):
        raise FailedPrecondition(not_pending(asset, "fulfilled"))
    if asset.type is not type_:
        how = "with source_path or UploadAsset" if asset.type is AssetType.FILE else "with a value"
        raise FailedPrecondition(
            f"asset {asset.id} is a {asset.type.value} asset; fulfill it {how}"
        )
    # Whether the lease still runs is the store's to say, by its clock (the database's
    # on MongoDB), in the conditional write: this server's clock may be skewed.


async def fulfill_with_blob(
    ctx: Context, current: Asset, handover: Handover, media_type: str, origin: str, by: str
) -> Asset:
    """Commit staged bytes as the content of `current`, a FILE asset read under its lock.

    The conditional write still guards against another process having moved the asset
    since `current` was read.
    """
    blob = handover.blob
    if current.status is Status.AVAILABLE and current.sha256 == blob.sha256:
        return current  # an identical retry: keep the first copy only (handover rolls back)
    check_fulfillable(current, AssetType.FILE, allow_done=False)
    key = keys.generated_key(current.created_by_task, current.id, current.label)

    def change(path: str) -> Fulfillment:
        return Fulfillment(
            size_bytes=blob.size_bytes,
            sha256=blob.sha256,
            storage_path=path,
            fulfilled_from=origin,
            media_type=media_type,
            by=by,
            block_sums=blob.block_sums,
        )

    return await ctx.commits.publish(
        handover,
        current.id,
        key,
        lambda path: transition(ctx, current, change(path), shared=handover.shared(path)),
    )


async def transition(
    ctx: Context, current: Asset, change: Fulfillment | Failure, *, shared: bool = False
) -> Asset:
    now = _base.now()
    status = Status.AVAILABLE if isinstance(change, Fulfillment) else Status.FAILED
    expiry = rule_expiry(ctx, current, status, now)
    if expiry is not None:
        change = dataclasses.replace(change, expiry=expiry)
    try:
        return await ctx.store.transition(current.id, Status.PENDING, change, now, shared=shared)
    except SharedBytesGone:
        raise  # the caller stores the bytes anew
    except LeaseRanOut as exc:
        # Out is out for every caller: said as a renewal says it.
        raise FailedPrecondition(leases.ran_out(current.id, exc.expires_at, "fulfilled")) from None
    except Conflict as exc:
        raise Conflict(
            f"asset {current.id} changed while this request ran ({exc.message}); "
            "re-read it before retrying"
        ) from None
