"""Records for store-level tests: any record with a fresh id, and a task's PENDING promise."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from asset_service.domain.manager._base import new_record
from asset_service.domain.models import Asset, AssetType, Status


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
    default, the real clock even where a test moves the manager's); `fields` are the
    Asset's other fields. The manager's new_record, by nobody."""
    at = at or datetime.now(UTC)
    return new_record(
        status, type_, label, media_type, "", asset_id=asset_id or "", at=at, **fields
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
