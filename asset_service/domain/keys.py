"""Storage keys, the same for every blob storage: derived from ids, never from raw input."""

from __future__ import annotations

from datetime import datetime

from asset_service.domain.models import parse_asset_id, safe_file_name, validate_task_id

# Every key lies in one of these areas (storage/keys.py checks a key before it is used).
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
