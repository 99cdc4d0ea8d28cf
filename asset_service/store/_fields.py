"""What a transition writes and on what lease condition, computed once for every store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from asset_service.domain.errors import Conflict, LeaseRanOut
from asset_service.domain.models import (
    BlockSums,
    ExpiryChange,
    Failure,
    Fulfillment,
    RuleExpiry,
    Status,
    Transition,
)


def encoded_sums(sums: BlockSums | None) -> bytes | None:
    """Block sums as the SQLite and MongoDB stores keep them (one bytes value)."""
    return sums.encode() if sums is not None else None


def transition_fields(
    change: Transition,
    now: datetime,
    *,
    value_column: str,
    timestamp: Callable[[datetime], Any],
    sums: Callable[[BlockSums | None], Any] = encoded_sums,
    expiry_column: str = "expires_at",
    expiry: Callable[[datetime], Any] | None = None,
) -> dict[str, Any]:
    """Field name -> new value for the record a transition changes (revision excepted).

    The stores differ only in where a VALUE's bytes live (`value_column`) and how a time
    is stored (`timestamp`), so a new field or rule reaches every store from here. (The
    lease's last end, kept on the record when it leaves PENDING, is each store's to copy
    from the lease's record.)
    """
    sets: dict[str, Any]
    if isinstance(change, Fulfillment):
        value = change.value
        sets = {
            "status": Status.AVAILABLE.value,
            "storage_path": change.storage_path,
            "value_kind": value.kind.value if value is not None else None,
            value_column: value.data if value is not None else None,
            "size_bytes": change.size_bytes,
            "sha256": change.sha256,
            "fulfilled_from": change.fulfilled_from,
            "block_sums": sums(change.block_sums),
        }
        # An empty media type keeps the one the promise was created with.
        if change.media_type:
            sets["media_type"] = change.media_type
    elif isinstance(change, Failure):
        sets = {"status": Status.FAILED.value, "failure_reason": change.reason}
    elif isinstance(change, ExpiryChange):
        sets = {}
    else:
        sets = {"corrupt_reason": change.reason}
    chosen = change if isinstance(change, ExpiryChange) else rule_expiry(change)
    if chosen is not None:
        convert = expiry or timestamp
        sets[expiry_column] = convert(chosen.at) if chosen.at is not None else None
        sets["expiry_rule"] = chosen.rule
    sets["updated_at"] = timestamp(now)
    sets["updated_by"] = change.by
    return sets


def rule_expiry(change: Transition) -> RuleExpiry | None:
    """The expiry operator rules give with this change, if any: it applies only while the
    asset's expiry is not one a client chose (the store checks EXPLICIT_EXPIRIES)."""
    if isinstance(change, Fulfillment | Failure):
        return change.expiry
    return None


# How the lease's end must compare with the store's clock for a transition to apply.
LeaseTest = Literal["run out", "none or not run out"]


def lease_condition(change: Transition) -> LeaseTest | None:
    """'run out' (lease ends <= now) for a lease expiry, 'none or not run out' (no
    lease, or it ends > now) for a fulfilment, None when the lease does not matter (a
    failure by the producer: a lease that ran out may be failed by anyone; a corruption
    mark, on an asset that is no longer PENDING)."""
    if isinstance(change, Failure) and change.lease_ran_out:
        return "run out"
    if isinstance(change, Fulfillment):
        # Out is out for every caller, before the sweep has failed the promise too.
        return "none or not run out"
    return None


def lease_conflict(asset_id: str, test: LeaseTest, lease_end: datetime | None) -> Conflict:
    """The error when the status matched but the lease condition did not."""
    if test == "run out":
        if lease_end is None:
            return Conflict(f"asset {asset_id} has no lease to run out")
        return Conflict(f"asset {asset_id}'s lease has not run out (it ends at {lease_end})")
    return LeaseRanOut(asset_id, lease_end)
