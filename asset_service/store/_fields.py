"""The fields a Fulfillment or Failure writes, computed once for every metadata store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from asset_service.domain.models import Failure, Fulfillment, Status


def transition_fields(
    change: Fulfillment | Failure,
    now: datetime,
    *,
    value_column: str,
    timestamp: Callable[[datetime], Any],
) -> dict[str, Any]:
    """Field name -> new value for the record a transition changes (revision excepted).

    The stores differ only in where a VALUE's bytes live (`value_column`) and how a time is
    stored (`timestamp`), so a new field or rule reaches both stores from here.
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
        }
        # An empty media type keeps the one the promise was created with.
        if change.media_type:
            sets["media_type"] = change.media_type
    else:
        sets = {"status": Status.FAILED.value, "failure_reason": change.reason}
    sets["updated_at"] = timestamp(now)
    sets["updated_by"] = change.by
    return sets
