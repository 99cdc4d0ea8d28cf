"""Leases on promises: a PENDING asset whose producer stops renewing it becomes FAILED.

A promise created with a lease holds until `lease_expires_at`; the producing task extends
it with RenewLease. Once the time has passed, a renewal is refused and the expiry sweep
fails the asset with one conditional write (status PENDING and the lease run out by now),
so a renewal and the expiry racing end with exactly one winner, and several server
processes sweeping the same store fail each asset once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from asset_service.domain.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from asset_service.domain.models import Asset, Failure, Status
from asset_service.domain.ports import MetadataStore

log = logging.getLogger(__name__)

# The principal named as updated_by when a lease expiry fails an asset.
LEASE_PRINCIPAL = "lease"
# Assets failed per store query of the sweep; it queries again while batches come back full.
EXPIRY_BATCH = 100


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


def renewal_seconds(asset: Asset, requested: int, maximum: int, now: datetime) -> int:
    """How long to renew `asset`'s lease for; FailedPrecondition if it cannot be renewed."""
    if asset.status is not Status.PENDING:
        raise FailedPrecondition(
            f"asset {asset.id} is {asset.status.value}; only a PENDING asset's lease can be "
            "renewed" + (f" ({asset.failure_reason})" if asset.failure_reason else "")
        )
    if asset.lease_expires_at is None:
        raise FailedPrecondition(
            f"asset {asset.id} was promised without a lease: there is nothing to renew "
            "(give lease_seconds to CreatePendingAsset for a promise that must be renewed)"
        )
    if asset.lease_expires_at <= now:
        raise FailedPrecondition(ran_out(asset))
    return check_seconds(requested or asset.lease_seconds, maximum)


def ran_out(asset: Asset, verb: str = "renewed") -> str:
    """Why a renewal (or a fulfilment) came too late."""
    assert asset.lease_expires_at is not None
    return (
        f"asset {asset.id}'s lease ran out at {_iso(asset.lease_expires_at)}: it is FAILED "
        f"(or about to be) and cannot be {verb}; promise the asset again"
    )


def has_run_out(asset: Asset, now: datetime) -> bool:
    """A PENDING asset whose lease ended by `now` (the sweep may not have failed it yet)."""
    end = asset.lease_expires_at
    return asset.status is Status.PENDING and end is not None and end <= now


def expiry(asset: Asset) -> Failure:
    """The failure a lease expiry writes, applied only if the lease has run out."""
    assert asset.lease_expires_at is not None
    task = f" by task {asset.created_by_task}" if asset.created_by_task else ""
    reason = (
        f"lease expired at {_iso(asset.lease_expires_at)}: not renewed{task} within "
        f"{asset.lease_seconds}s (the producing task stopped, or lost its connection)"
    )
    return Failure(reason, by=LEASE_PRINCIPAL, lease_ran_out=True)


async def expire_due(store: MetadataStore, now: datetime, batch: int = EXPIRY_BATCH) -> int:
    """Fail every PENDING asset whose lease ran out by `now`; how many this call failed.

    An asset renewed, fulfilled, failed or deleted since the query (here or by another
    process) is left as it is: the transition's condition decides.
    """
    failed = 0
    while True:
        due = await store.leases_run_out(now, batch)
        progress = 0
        for asset in due:
            try:
                await store.transition(asset.id, Status.PENDING, expiry(asset), now)
            except (Conflict, NotFound):
                continue
            progress += 1
            log.info("asset %s failed: its lease ran out", asset.id)
        failed += progress
        # A full batch may have more behind it; one that changed nothing would only be
        # read again.
        if len(due) < batch or not progress:
            return failed


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
