"""Storage keys, the same for every blob storage: derived from ids, never from raw input."""

from __future__ import annotations

from datetime import datetime

from asset_service.domain.errors import InvalidArgument
from asset_service.domain.models import parse_asset_id, safe_file_name, validate_task_id
from asset_service.storage import fs

AREAS = ("uploads", "generated")


def upload_key(asset_id: str, label: str, now: datetime) -> str:
    """uploads/YYYY-MM-DD/<asset-id>/<name derived from the label>."""
    asset_id = parse_asset_id(asset_id)
    return f"uploads/{now.strftime('%Y-%m-%d')}/{asset_id}/{safe_file_name(label)}"


def generated_key(task_id: str, asset_id: str, label: str) -> str:
    """generated/<task-id>/<asset-id>/<name derived from the label>."""
    task_id = validate_task_id(task_id)
    asset_id = parse_asset_id(asset_id)
    return f"generated/{task_id}/{asset_id}/{safe_file_name(label)}"


def key_parts(key: str) -> tuple[str, ...]:
    """The components of a key under uploads/ or generated/; InvalidArgument otherwise."""
    parts = fs.relative_parts(key, f"storage key {key!r}")
    if parts[0] not in AREAS or len(parts) < 2:
        raise InvalidArgument(f"storage key {key!r} is outside uploads/ and generated/")
    return parts
