"""Watches: of assets by id, and of every asset a selector matches; old tombstones."""

from __future__ import annotations

import functools
import logging
from collections.abc import (
    AsyncGenerator,
    Sequence,
)
from datetime import timedelta

from asset_service.domain.errors import (
    HistoryGone,
    InvalidArgument,
    NotFound,
    shown_list,
)
from asset_service.domain.manager import _base
from asset_service.domain.manager._base import MAX_BATCH
from asset_service.domain.manager._context import Context
from asset_service.domain.models import (
    WatchEvent,
    parse_asset_id,
    validate_tags,
    validate_task_id,
)
from asset_service.domain.watch import (
    Selector,
    SelectorStream,
    WatchStream,
    went_back,
)

log = logging.getLogger(__name__)


async def watch(
    ctx: Context, asset_ids: Sequence[str], after_revision: int, follow: bool
) -> AsyncGenerator[WatchEvent, None]:
    """Validate, subscribe, read the snapshot; return the event stream.

    Subscribing before reading means no change can fall between the snapshot and
    the stream; changes already covered by the snapshot are skipped by revision.
    """
    if not asset_ids:
        raise InvalidArgument("asset_ids is empty; name at least one asset to watch")
    if len(asset_ids) > MAX_BATCH:
        raise InvalidArgument(f"{len(asset_ids)} ids given; the limit is {MAX_BATCH}")
    if after_revision < 0:
        raise InvalidArgument(f"after_revision must not be negative ({after_revision})")
    ids = list(dict.fromkeys(parse_asset_id(i, "asset_ids entry") for i in asset_ids))
    if after_revision > ctx.hub.history.last:
        # Not seen here yet: the store must have handed it out, or it went back in time
        # (a restore, a rollback) and the client holds states it no longer has. Like a
        # watcher that sees the feed go back, re-read: every asset's state again.
        current = await ctx.store.current_revision()
        if after_revision > current:
            log.warning(
                "id watch from revision %d: %s", after_revision, went_back(current, after_revision)
            )
            after_revision = 0
    sub = ctx.hub.subscribe(ids)
    try:
        # One consistent cut (read after subscribing): every change it does not hold
        # has a higher revision than all it holds, and reaches the subscription.
        snapshot = await ctx.store.snapshot(ids)
        missing = [i for i in ids if i not in snapshot]
        if missing:
            raise NotFound(f"{len(missing)} asset(s) not found: {shown_list(missing)}")
    except BaseException:
        sub.close()
        raise
    stream = WatchStream(
        sub,
        ctx.store.get_many,
        ctx.store.snapshot,
        snapshot,
        after_revision,
        follow,
        ctx.limits.watch_catch_up_batch,
    )
    return stream.events()


async def watch_selector(
    ctx: Context, selector: Selector, after_revision: int
) -> AsyncGenerator[WatchEvent, None]:
    """Every change to the assets `selector` matches after `after_revision`, CHANGED or
    DELETED with slim records, in revision order, until cancelled: from the shared
    history, or from the store where the history no longer reaches back.

    HistoryGone if neither can replay from that revision: list again.
    """
    if after_revision < 0:
        raise InvalidArgument(f"after_revision must not be negative ({after_revision})")
    if selector.task_id:
        validate_task_id(selector.task_id)
    validate_tags(selector.tags)
    history = ctx.hub.history
    await history.ready()
    # 0 is revision 0 like any other (everything), not "now": a client that resumes
    # with the revision it last saw must get what followed, even on an empty store.
    floor = history.floor
    if floor is not None and after_revision < floor:
        # Replayed from the store: refused here, before the stream, if it cannot be.
        replay = await ctx.store.changes_since(after_revision, 1)
        if replay.revision < after_revision:
            raise HistoryGone(after_revision, None, went_back(replay.revision, after_revision))
    elif after_revision > history.last:
        # Not seen here yet: the store must have handed it out, or it went back in time.
        current = await ctx.store.current_revision()
        if after_revision > current:
            raise HistoryGone(after_revision, None, went_back(current, after_revision))
    # The store narrows the replay to the assets the selector can take (its task, key,
    # label, tags and type), through their index: not every change since the revision.
    read = functools.partial(ctx.store.changes_since, narrow=selector.narrowing)
    return SelectorStream(history, selector, after_revision, read).events()


async def sweep_tombstones(ctx: Context) -> int:
    """Remove deleted assets' tombstones older than --watch-tombstone-ttl."""
    ttl = timedelta(seconds=ctx.limits.watch_tombstone_ttl_seconds)
    removed = await ctx.store.sweep_tombstones(_base.now() - ttl)
    if removed:
        log.info("removed %d tombstone(s) of deleted assets past their TTL", removed)
    return removed
