"""Leases on promises: a PENDING asset whose producer stops renewing it becomes FAILED.

A promise created with a lease holds until its lease runs out; the producing task extends
it with RenewLease. The lease lives in a record of its own: a renewal writes only that
record (no revision, no watch event: a heartbeat is not a change, as Kubernetes keeps node
heartbeats in Lease objects). Once the lease has run out, by the store's clock (the
database's on MongoDB, so that servers' clocks never decide), a renewal and a fulfilment
are refused, and the expiry sweep fails the asset with one conditional write (status
PENDING and the lease run out): a renewal and the expiry racing end with exactly one
winner. One server process sweeps at a time (a claim in the store), so servers sharing a
store do not all race the same writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from asset_service.domain.errors import Conflict, InvalidArgument, NotFound
from asset_service.domain.models import Asset, Failure, RuleExpiry, Status
from asset_service.domain.ports import MetadataStore

log = logging.getLogger(__name__)

# The principal named as updated_by when a lease expiry fails an asset.
LEASE_PRINCIPAL = "lease"
# Assets failed per store query of the sweep; it queries again while batches come back full.
EXPIRY_BATCH = 100
# Expiries of one sweep in flight at once: enough to share the store's group transactions,
# few enough that real writes always find room beside them (a fleet of dead workers must
# not stall the live ones).
EXPIRY_CONCURRENCY = 8
# After each round of expiries the sweep waits this many times as long as the round took.
SWEEP_PAUSE = 1.0


def deadline(now: datetime, seconds: int) -> datetime:
    """now + seconds, in whole milliseconds (what every store keeps)."""
    end = now.astimezone(UTC) + timedelta(seconds=seconds)
    return end.replace(microsecond=end.microsecond // 1000 * 1000)


def check_seconds(seconds: int, maximum: int, field: str = "lease_seconds") -> int:
    if seconds < 0:
        raise InvalidArgument(f"{field} is negative ({seconds})")
    if seconds > maximum:
        raise InvalidArgument(
            f"{field} {seconds} exceeds the server's limit of {maximum} seconds "
            "(--max-lease-seconds); renew a shorter lease more often"
        )
    return seconds


def not_renewable(asset: Asset) -> str | None:
    """Why `asset`'s lease cannot be renewed whatever the time, or None."""
    if asset.status is not Status.PENDING:
        return (
            f"asset {asset.id} is {asset.status.value}; only a PENDING asset's lease can be "
            "renewed" + (f" ({asset.failure_reason})" if asset.failure_reason else "")
        )
    if not asset.lease_seconds:
        return (
            f"asset {asset.id} was promised without a lease: there is nothing to renew "
            "(give lease_seconds to CreatePendingAsset for a promise that must be renewed)"
        )
    return None


def ran_out(asset_id: str, end: object, verb: str = "renewed") -> str:
    """Why a renewal (or a fulfilment) came too late."""
    when = _iso(end) if isinstance(end, datetime) else str(end)
    return (
        f"asset {asset_id}'s lease ran out at {when}: it is FAILED "
        f"(or about to be) and cannot be {verb}; promise the asset again"
    )


def expiry(asset: Asset) -> Failure:
    """The failure a lease expiry writes, applied only if the lease has run out."""
    assert asset.lease_expires_at is not None
    task = f" by task {asset.created_by_task}" if asset.created_by_task else ""
    reason = (
        f"lease expired at {_iso(asset.lease_expires_at)}: not renewed{task} within "
        f"{asset.lease_seconds}s (the producing task stopped, or lost its connection)"
    )
    return Failure(reason, by=LEASE_PRINCIPAL, lease_ran_out=True)


async def expire_due(
    store: MetadataStore,
    now: datetime,
    batch: int = EXPIRY_BATCH,
    concurrency: int = EXPIRY_CONCURRENCY,
    pause: float = SWEEP_PAUSE,
    rules: Callable[[Asset], RuleExpiry | None] | None = None,
) -> int:
    """Fail every PENDING asset whose lease ran out (by the store's clock); how many.
    `rules`: the expiry operator rules give an asset that fails (issue 23).

    An asset renewed, fulfilled, failed or deleted since the query (here or by another
    process) is left as it is: the transition's condition decides. The expiries go
    `concurrency` at a time (one group transaction, usually), and after each such round
    the sweep waits `pause` times as long as the round took: a fleet of dead workers
    leaves the store's writers (on MongoDB, the revision counter every process's
    transactions take) free for live writes most of the time.
    """
    loop = asyncio.get_running_loop()

    async def expire(asset: Asset) -> int:
        try:
            change = expiry(asset)
            if rules is not None and (given := rules(asset)) is not None:
                change = dataclasses.replace(change, expiry=given)
            await store.transition(asset.id, Status.PENDING, change, now)
        except (Conflict, NotFound):
            return 0
        log.info("asset %s failed: its lease ran out", asset.id)
        return 1

    failed = 0
    step = max(1, concurrency)
    while True:
        due = await store.leases_run_out(now, batch)
        progress = 0
        for start in range(0, len(due), step):
            began = loop.time()
            progress += sum(await asyncio.gather(*(expire(a) for a in due[start : start + step])))
            await asyncio.sleep((loop.time() - began) * pause)
        failed += progress
        # A full batch may have more behind it; one that changed nothing would only be
        # read again.
        if len(due) < batch or not progress:
            return failed


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
