"""Get-or-create by key: one producer per key, the others join its promise or hit its asset."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace

from asset_service.domain import leases
from asset_service.domain.errors import Conflict, IntegrityError, KeyTaken, NotFound
from asset_service.domain.manager import _base, _creation
from asset_service.domain.manager._context import Context, with_expiry
from asset_service.domain.models import (
    Asset,
    AssetType,
    PromiseRequest,
    Status,
    new_asset_id,
    validate_key,
)
from asset_service.domain.retention import check_ttl

log = logging.getLogger(__name__)

# Rounds of read-judge-write one get-or-create makes before giving up (ABORTED): each
# round that does not answer saw the key change hands, which takes a racing producer
# failing or being judged stale in between; 8 in a row means something is thrashing.
MAX_KEY_ROUNDS = 8


class KeyOutcome(enum.StrEnum):
    """What a get-or-create found for its key."""

    HIT = "HIT"  # an AVAILABLE asset whose content checks out: use it
    JOIN = "JOIN"  # a live PENDING promise: watch it, do not produce
    PRODUCE = "PRODUCE"  # a new promise: the caller is its one producer


@dataclass(frozen=True)
class KeyAnswer:
    outcome: KeyOutcome
    asset: Asset


async def get_or_create_pending(
    ctx: Context, key: str, promise: PromiseRequest, *, by: str = ""
) -> KeyAnswer:
    """GetOrCreatePendingAsset (issue 24 item 1): a HIT, a JOIN, or a new promise.

    The store keeps one holder per key (a unique index, or the memory store's dict): an
    insert of a keyed promise either takes the key or writes nothing (KeyTaken), so of any
    number of callers on any number of servers exactly one produces. A holder that can no
    longer serve (FAILED, corrupt or its bytes gone, its lease run out) is let go with one
    conditional write (release_key) and the next round inserts a new promise.
    """
    key = validate_key(key)
    check_ttl(promise.ttl_seconds)
    # Checked (and built) before anything is read: a bad request fails whatever the key
    # holds. A new id each round: a round's insert that lost wrote nothing.
    template = _creation.pending_record(ctx, promise, by=by)
    for _ in range(MAX_KEY_ROUNDS):
        answer = await _served(ctx, key)
        if answer is not None:
            return answer
        # Nothing serves the key: produce. Callers of this process take turns here, so
        # that a crowd asking at once sends one insert, not one each (on MongoDB each
        # duplicate would cost its batch a rerun); across processes the store decides.
        async with ctx.locks.hold(f"key:{key}"):
            answer = await _served(ctx, key)
            if answer is not None:
                return answer
            now = _base.now()
            record = replace(
                template,
                id=new_asset_id(),
                key=key,
                created_at=now,
                updated_at=now,
                lease_expires_at=leases.deadline(now, template.lease_seconds)
                if template.lease_seconds
                else None,
            )
            try:
                stored = await ctx.store.insert(with_expiry(ctx, record, promise.ttl_seconds))
                return KeyAnswer(KeyOutcome.PRODUCE, stored)
            except KeyTaken:
                continue  # another process took it first: the next round joins or hits
    raise Conflict(
        f"key {key!r} changed hands {MAX_KEY_ROUNDS} times while this request ran "
        "(producers failing as fast as they start?); retry"
    )


async def _served(ctx: Context, key: str) -> KeyAnswer | None:
    """The key's holder as HIT or JOIN; None if there is none, or it can no longer
    serve (then it is let go, one conditional write: whoever comes next produces)."""
    holder = await ctx.store.key_holder(key)
    if holder is None:
        return None
    outcome = await _judge(ctx, holder)
    if outcome is not None:
        return KeyAnswer(outcome, holder)
    if await ctx.store.release_key(holder.id, key):
        log.info("key %r: asset %s no longer serves it; producing anew", key, holder.id)
    return None


async def _judge(ctx: Context, holder: Asset) -> KeyOutcome | None:
    """HIT or JOIN if `holder` serves its key, None if it no longer can (a miss).

    The one place that says what blocks a key: an entry that has expired (retention)
    belongs here too, as a miss.
    """
    if holder.status is Status.FAILED:
        return None
    if holder.status is Status.PENDING:
        end = holder.lease_expires_at
        if end is None or end > _base.now():
            return KeyOutcome.JOIN
        # Its producer stopped renewing: fail it now (what the sweep would do soon), so
        # its waiters hear at once, and take over. The store's clock decides: a lease
        # renewed meanwhile (or not run out by the database's clock) keeps it.
        try:
            await ctx.store.transition(
                holder.id, Status.PENDING, leases.expiry(holder), _base.now()
            )
        except NotFound:
            return None
        except Conflict:
            # Renewed, fulfilled or failed meanwhile: judge what it is now.
            latest = await ctx.store.get(holder.id)
            if latest is None:
                return None
            if latest.status is Status.PENDING:
                return KeyOutcome.JOIN
            return await _judge(ctx, latest)
        log.info("asset %s failed: its lease ran out (found by a get-or-create)", holder.id)
        return None
    if holder.status is not Status.AVAILABLE:
        return None  # any state to come that cannot serve (an expired asset, say)
    if holder.type is AssetType.VALUE:
        return KeyOutcome.HIT
    try:
        # A hit whose bytes are gone or corrupt is a miss, never a broken asset: the
        # mark, presence and size (and a full check if they changed since stored).
        await ctx.integrity.check_inputs([holder])
    except IntegrityError as exc:
        log.warning("key %r: asset %s is not served (%s)", holder.key, holder.id, exc.message)
        return None
    return KeyOutcome.HIT
