"""Records for store-level tests: a PENDING FILE promise, as a task would create it."""

from __future__ import annotations

from datetime import UTC, datetime

from asset_service.domain.models import Asset, AssetType, Status, new_asset_id


def pending_record(
    asset_id: str | None = None,
    *,
    label: str = "out.txt",
    task: str = "task-1",
    tags: tuple[str, ...] = (),
    at: datetime | None = None,
) -> Asset:
    now = at or datetime.now(UTC)
    return Asset(
        id=asset_id or new_asset_id(),
        label=label,
        status=Status.PENDING,
        type=AssetType.FILE,
        media_type="text/plain",
        created_at=now,
        updated_at=now,
        created_by_task=task,
        tags=tags,
    )
