"""Records for store-level tests: any record with a fresh id, and a task's PENDING promise."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from asset_service.domain.models import Asset, AssetType, Status, new_asset_id


def make_record(
    status: Status,
    type_: AssetType,
    media_type: str,
    *,
    label: str,
    asset_id: str | None = None,
    at: datetime | None = None,
    **fields: Any,
) -> Asset:
    """A record with a fresh id (or `asset_id`), created and last changed `at` (now by
    default); `fields` are the Asset's other fields."""
    now = at or datetime.now(UTC)
    return Asset(
        id=asset_id or new_asset_id(),
        label=label,
        status=status,
        type=type_,
        media_type=media_type,
        created_at=now,
        updated_at=now,
        **fields,
    )


def pending_record(
    asset_id: str | None = None,
    *,
    label: str = "out.txt",
    task: str = "task-1",
    tags: tuple[str, ...] = (),
    at: datetime | None = None,
) -> Asset:
    return make_record(
        Status.PENDING,
        AssetType.FILE,
        "text/plain",
        label=label,
        asset_id=asset_id,
        at=at,
        created_by_task=task,
        tags=tags,
    )
