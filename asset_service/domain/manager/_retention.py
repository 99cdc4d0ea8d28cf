"""Retention: how long an asset lives (expiries, holds, deletes, sweeps), what it takes up."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from asset_service.domain import recovery
from asset_service.domain.errors import (
    AssetError,
    Conflict,
    FailedPrecondition,
    Held,
    InvalidArgument,
    NotFound,
)
from asset_service.domain.manager import _base
from asset_service.domain.manager._base import SWEEP_HOLD_SECONDS
from asset_service.domain.manager._context import Context, get, space_freed
from asset_service.domain.models import (
    EXPIRY_NEVER,
    EXPIRY_TTL,
    Asset,
    ExpiryChange,
    Hold,
    HoldKind,
    Removal,
    Status,
    parse_asset_id,
    validate_task_id,
)
from asset_service.domain.references import remove_unreferenced
from asset_service.domain.retention import TASK_OWNER, check_ttl, deletion_reason
from asset_service.domain.usage import ALL, Usage, UsageGroup, rows_of

log = logging.getLogger(__name__)

# The principal named as the deleter of expired assets (DELETED events' updated_by).
RETENTION_PRINCIPAL = "retention"
# Holds an asset may carry when PlaceHold adds one (beyond: RESOURCE_EXHAUSTED); a task
# token's input holds are placed whatever their number.
MAX_HOLDS = 64
MAX_OWNER_CHARS = 200
MAX_HOLD_REASON_CHARS = 1024
MAX_USAGE_ROWS = 1000
# Expired assets removed at once (their deletes share a MongoDB group transaction).
EXPIRY_CONCURRENCY = 16


async def set_expiry(
    ctx: Context, asset_id: str, ttl_seconds: int, *, clear: bool = False, by: str = ""
) -> Asset:
    """Expire the asset `ttl_seconds` from now, or (`clear`) never: a client's choice,
    which operator rules do not replace. Not a removal: a held asset keeps its holds."""
    asset_id = parse_asset_id(asset_id)
    if clear == bool(ttl_seconds):
        raise InvalidArgument("give ttl_seconds above 0, or clear (never expire), not both")
    check_ttl(ttl_seconds)
    async with ctx.locks.hold(asset_id):
        current = await get(ctx, asset_id)
        now = _base.now()
        if clear:
            change = ExpiryChange(None, EXPIRY_NEVER, by)
        else:
            change = ExpiryChange(now + timedelta(seconds=ttl_seconds), EXPIRY_TTL, by)
        try:
            return await ctx.store.transition(asset_id, current.status, change, now)
        except Conflict as exc:
            raise Conflict(
                f"asset {asset_id} changed while this request ran ({exc.message}); retry"
            ) from None


async def place_hold(
    ctx: Context, asset_id: str, owner: str, reason: str, *, by: str = ""
) -> Asset:
    """Keep the asset (no expiry, no DeleteAsset without force) until `owner` releases
    it; placing it again replaces the reason. Not a change of the asset."""
    asset_id = parse_asset_id(asset_id)
    owner = _owner(owner)
    reason = reason.strip()
    if len(reason) > MAX_HOLD_REASON_CHARS:
        raise InvalidArgument(f"reason is over {MAX_HOLD_REASON_CHARS} characters")
    hold = Hold(owner, HoldKind.EXPLICIT, reason, _base.now(), by)
    return await ctx.store.place_hold(asset_id, hold, MAX_HOLDS)


async def release_hold(ctx: Context, asset_id: str, owner: str) -> Asset:
    """Remove `owner`'s hold; NOT_FOUND naming the holds there are if it has none."""
    asset_id = parse_asset_id(asset_id)
    owner = _owner(owner)
    asset, released = await ctx.store.release_hold(asset_id, owner)
    if not released:
        there = ", ".join(h.owner for h in asset.holds) or "none"
        raise NotFound(f"asset {asset_id} has no hold of {owner!r} (its holds: {there})")
    return asset


async def hold_task_inputs(ctx: Context, task_id: str, asset_ids: Sequence[str], by: str) -> int:
    """A task token names these inputs: they are held until the task has no PENDING
    promise left (none now: nothing is held). How many were held."""
    task_id = validate_task_id(task_id)
    ids = [parse_asset_id(i) for i in asset_ids]
    if not ids:
        return 0
    hold = Hold(TASK_OWNER + task_id, HoldKind.TASK, f"input of task {task_id}", _base.now(), by)
    return len(await ctx.store.hold_inputs(task_id, ids, hold))


async def delete(ctx: Context, asset_id: str, *, by: str = "", force: bool = False) -> Asset:
    """Remove the asset and its bytes; refused (Held, naming the holders) while
    anything holds it, unless `force` (the caller checked it may)."""
    asset_id = parse_asset_id(asset_id)
    removal = None if force else Removal(unheld=True, now=_base.now())
    async with ctx.locks.hold(asset_id):
        removed = await ctx.store.delete(asset_id, by, removal)
        if removed is None:
            raise NotFound(f"asset {asset_id} not found")
        # Record first, bytes second (and only if no other record shares them): a crash
        # in between leaves an orphan file that reconcile removes, never a record
        # without its bytes (domain/references.py).
        if removed.storage_path and await remove_unreferenced(
            ctx.store, ctx.storage, removed.storage_path
        ):
            await space_freed(ctx)
        return removed


async def expire_assets(ctx: Context, hold_seconds: float = SWEEP_HOLD_SECONDS) -> dict[str, int]:
    """Remove expired assets nothing holds, at most --retention-sweep-limit per call,
    while this manager holds the store's retention sweep claim (one server sweeps at
    a time; each removal is one conditional delete, so an asset goes once whatever
    happens). How many went, by deletion reason."""
    now = _base.now()
    if not await ctx.store.claim_sweep(ctx.sweeper, hold_seconds, now, "retention"):
        return {}
    due = await ctx.store.expired(now, ctx.limits.retention_sweep_limit)
    removed: collections.Counter[str] = collections.Counter()
    # A few at a time: on MongoDB they share group transactions (the counter is held
    # once for several), and the store's writers stay free for live writes.
    for start in range(0, len(due), EXPIRY_CONCURRENCY):
        part = due[start : start + EXPIRY_CONCURRENCY]
        for reason in await asyncio.gather(*(_expire(ctx, a, now) for a in part)):
            if reason:
                removed[reason] += 1
    if removed:
        await space_freed(ctx)
    return dict(removed)


async def _expire(ctx: Context, asset: Asset, now: datetime) -> str:
    """Remove `asset` if it has expired by `now` and nothing holds it (the store's
    conditional delete decides), then its bytes; the deletion reason, or "" if not."""
    reason = deletion_reason(asset.expiry_rule)
    removal = Removal(reason=reason, expired=True, now=now)
    try:
        async with ctx.locks.hold(asset.id):
            gone = await ctx.store.delete(asset.id, RETENTION_PRINCIPAL, removal)
            if gone is None:
                return ""
            # Record first, bytes second (unless shared): a crash in between leaves an
            # orphan file that the collection removes, never a record without its bytes.
            if gone.storage_path:
                await remove_unreferenced(ctx.store, ctx.storage, gone.storage_path)
    except (Held, Conflict, NotFound) as exc:
        # Held or renewed since the query: its conditions said no, nothing went.
        log.debug("asset %s not expired: %s", asset.id, exc)
        return ""
    log.info("asset %s (%s, %d bytes) %s", gone.id, gone.label, gone.size_bytes, reason)
    return reason


async def collect_orphans(ctx: Context, hold_seconds: float = SWEEP_HOLD_SECONDS) -> int:
    """Remove stored files no record points at (a crash between bytes and record),
    past the storage's orphan grace: at most --retention-sweep-limit per call, while
    this manager holds the store's collection claim (one server collects at a time).
    Each call lists a bounded part of the storage, resuming where the last one
    stopped (a pass spans several calls). How many went."""
    now = _base.now()
    if not await ctx.store.claim_sweep(ctx.sweeper, hold_seconds, now, "collect"):
        return 0
    removed, ctx.orphan_cursor = await recovery.reconcile_from(
        ctx.store, ctx.storage, ctx.limits.retention_sweep_limit, ctx.orphan_cursor
    )
    if removed:
        log.info("collected %d orphan file(s) no record points at", removed)
        await space_freed(ctx)
    return removed


async def release_retention_sweep(ctx: Context) -> None:
    try:
        await ctx.store.claim_sweep(ctx.sweeper, 0, _base.now(), "retention")
        await ctx.store.claim_sweep(ctx.sweeper, 0, _base.now(), "collect")
    except AssetError as exc:
        log.info("could not give up the retention sweep: %s", exc)


async def usage(ctx: Context, group: str, keys: Sequence[str] = (), limit: int = 100) -> Usage:
    """Counts and bytes by status, and by `group` (status, type, tag, task): of
    `keys`, or of the `limit` largest. Read from the counters every write keeps."""
    try:
        by = UsageGroup(group or UsageGroup.STATUS.value)
    except ValueError:
        names = ", ".join(g.value for g in UsageGroup)
        raise InvalidArgument(f"group must be one of {names} (got {group!r})") from None
    if limit < 0 or limit > MAX_USAGE_ROWS or len(keys) > MAX_USAGE_ROWS:
        raise InvalidArgument(f"limit and keys: at most {MAX_USAGE_ROWS} rows (0: 100)")
    limit = limit or 100
    cells = await ctx.store.usage(by.value, list(keys), limit)
    (totals,) = rows_of(cells.cells, [""], ALL)
    rows = [] if by is UsageGroup.STATUS else rows_of(cells.cells, cells.keys, by.value)
    if by is UsageGroup.STATUS:
        rows = rows_of(
            {(by.value, status.value, ""): value for status, value in totals.by_status.items()},
            [s.value for s in Status if s in totals.by_status],
            by.value,
        )
    return Usage(
        totals.count,
        totals.bytes,
        totals.by_status,
        by,
        rows,
        cells.more,
        ctx.limits.storage_warn_bytes,
    )


async def warn_if_full(ctx: Context) -> Usage | None:
    """Log a warning when stored bytes pass --storage-warn-bytes; the usage if so."""
    if not ctx.limits.storage_warn_bytes:
        return None
    used = await usage(ctx, UsageGroup.STATUS.value)
    if not used.over_threshold:
        return None
    log.warning(
        "storage holds %d bytes in %d assets, over --storage-warn-bytes (%d): see "
        "GetUsage (asset usage --group tag|task|type) for what fills it",
        used.bytes,
        used.count,
        used.warn_bytes,
    )
    return used


def _owner(owner: str) -> str:
    owner = owner.strip()
    if not owner or len(owner) > MAX_OWNER_CHARS:
        raise InvalidArgument(f"owner is required (1-{MAX_OWNER_CHARS} characters): who holds it")
    if owner.startswith(TASK_OWNER):
        raise FailedPrecondition(
            f"owner {owner!r}: {TASK_OWNER}* holds belong to task tokens and go with the "
            "task's last PENDING promise; choose another owner"
        )
    return owner
