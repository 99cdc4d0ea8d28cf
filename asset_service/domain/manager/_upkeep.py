"""Starting and stopping a manager, and the upkeep the server runs now and then."""

from __future__ import annotations

import logging

from asset_service.domain import recovery
from asset_service.domain.manager import (
    _resumable,
    _retention,
    _transitions,
)
from asset_service.domain.manager._context import Context, space_freed

log = logging.getLogger(__name__)


async def start(ctx: Context) -> None:
    await ctx.storage.open()
    if ctx.manifests is not None:
        await ctx.manifests.open()
    await ctx.store.open()
    await recover(ctx)
    if await reconcile(ctx):
        await space_freed(ctx)
    await _resumable.sweep_upload_sessions(ctx)
    ctx.hub.start(ctx.store.changes(), ctx.store.current_revision)


async def stop(ctx: Context) -> None:
    await _transitions.release_sweep(ctx)
    await _retention.release_retention_sweep(ctx)
    await _resumable.settle_sessions(ctx)
    await ctx.commits.stop()
    await ctx.hub.close()
    await ctx.store.close()
    await ctx.storage.close()


async def recover(ctx: Context) -> int:
    """Settle moves that crashed processes left half-done (see recovery.recover)."""
    return await recovery.recover(ctx.store, ctx.storage)


async def settle_unsettled(ctx: Context) -> int:
    """Settle record writes whose outcome was unknown (the server calls this often)."""
    return await ctx.commits.settle()


async def sweep_manifests(ctx: Context, limit: int = 0) -> int:
    """Remove manifest folders older than the TTL (tasks read them when they start),
    at most `limit` (0: all)."""
    if ctx.limits.manifest_ttl_seconds <= 0 or ctx.manifests is None:
        return 0
    removed = await ctx.manifests.sweep(ctx.limits.manifest_ttl_seconds, limit)
    if removed:
        log.info("removed %d manifest folder(s) past their TTL", removed)
        await space_freed(ctx)
    return removed


async def sweep_cache(ctx: Context, limit: int = 0) -> int:
    """Remove local copies of object-store inputs unused for the manifest TTL (the
    last manifest linked to one is gone by then), past the cache's budget, or cut by
    a crash: at most `limit` (0: all)."""
    if ctx.manifests is None:
        return 0
    removed = await ctx.manifests.sweep_cache(ctx.limits.manifest_ttl_seconds, limit)
    if removed:
        await space_freed(ctx)
    return removed


async def collect_staging(ctx: Context, limit: int = 0) -> int:
    """While serving: settle moves of processes that died since start-up (by their
    journals and records) and remove their staging, at most `limit` of each."""
    removed = await recovery.recover(ctx.store, ctx.storage, limit, serving=True)
    if removed:
        log.info("collected %d staging leftover(s) of dead processes", removed)
        await space_freed(ctx)
    return removed


async def reconcile(ctx: Context) -> int:
    """Remove stored bytes no record points at (see recovery.reconcile)."""
    return await recovery.reconcile(ctx.store, ctx.storage)
