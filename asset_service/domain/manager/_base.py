"""What every part of the AssetManager shares: limits, the clock, new records, checks."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asset_service.domain.errors import (
    IntegrityError,
    brief,
)
from asset_service.domain.models import (
    Asset,
    AssetType,
    Status,
    new_asset_id,
)
from asset_service.domain.ports import StagedBlob
from asset_service.domain.replay import DEFAULT_TOMBSTONE_TTL_SECONDS
from asset_service.domain.retention import ExpiryRule
from asset_service.domain.uploads import DEFAULT_SESSION_TTL_SECONDS
from asset_service.domain.watch import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_CATCH_UP_BATCH,
    DEFAULT_HISTORY_BYTES,
)

MAX_BATCH = 1000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_REASON_CHARS = 4096
READ_CHUNK_BYTES = 1024 * 1024
# What one response may carry in records: under a default grpc client's 4 MiB receive
# limit, with room for the envelope (a page always holds at least one record).
MAX_RESPONSE_BYTES = 3 * 1024 * 1024 + 512 * 1024
# How long one lease sweep's claim holds when the caller names no other (the server names
# a few of its sweep intervals): a dead sweeper's successor takes over after at most this.
SWEEP_HOLD_SECONDS = 10.0


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * 1024**3
    # Manifest folders (input_data.json) live this long, and shared VALUE files this long
    # after their last use; 0 keeps them.
    manifest_ttl_seconds: float = 7 * 24 * 3600.0
    # Changes buffered per WatchAsset stream (estimated bytes); past it, it re-reads state.
    watch_buffer_bytes: int = DEFAULT_BUFFER_BYTES
    # Records a lagging watcher reads from the store per call while it catches up.
    watch_catch_up_batch: int = DEFAULT_CATCH_UP_BATCH
    # The longest lease a promise may be created or renewed with.
    max_lease_seconds: int = 86400
    # The latest changes kept for selector watches (slim records, estimated bytes).
    watch_history_bytes: int = DEFAULT_HISTORY_BYTES
    # Deleted assets' tombstones are kept this long: selector watches resume from the
    # store as far back as that.
    watch_tombstone_ttl_seconds: float = DEFAULT_TOMBSTONE_TTL_SECONDS
    # An unfinished resumable upload is removed this long after its last stream ended.
    upload_session_ttl_seconds: float = DEFAULT_SESSION_TTL_SECONDS
    # Operators' expiry rules (--expiry-rule), first match wins.
    expiry_rules: tuple[ExpiryRule, ...] = ()
    # Expired assets one retention sweep removes at most (--retention-sweep-limit).
    retention_sweep_limit: int = 1000
    # GetUsage and the sweep warn past this many stored bytes (0: never).
    storage_warn_bytes: int = 0


def now() -> datetime:
    """The clock of every use case (tests move it by replacing this function)."""
    return datetime.now(UTC)


def new_record(
    status: Status,
    type_: AssetType,
    label: str,
    media_type: str,
    by: str,
    *,
    asset_id: str = "",
    at: datetime | None = None,
    **fields: Any,
) -> Asset:
    """A record that did not exist before: a new id (unless given), created and updated
    now (or `at`) by `by`; `fields` are the rest of it (content, task, tags, lease)."""
    when = at or now()
    return Asset(
        id=asset_id or new_asset_id(),
        label=label,
        status=status,
        type=type_,
        media_type=media_type,
        created_at=when,
        updated_at=when,
        created_by=by,
        updated_by=by,
        **fields,
    )


def verify(blob: StagedBlob, expected_size: int | None, expected_sha: str) -> None:
    if expected_size is not None and blob.size_bytes != expected_size:
        raise IntegrityError(
            f"received {blob.size_bytes} bytes, but the header declared {expected_size}"
        )
    if expected_sha and blob.sha256 != expected_sha:
        raise IntegrityError(
            f"content has sha256 {blob.sha256}, but the header declared {expected_sha}"
        )


def not_pending(asset: Asset, verb: str) -> str:
    detail = f" ({brief(asset.failure_reason, 200)})" if asset.failure_reason else ""
    return f"asset {asset.id} is {asset.status.value}{detail}; only a PENDING asset can be {verb}"


async def chunks_of(data: bytes) -> AsyncGenerator[bytes, None]:
    for start in range(0, len(data), READ_CHUNK_BYTES):
        yield data[start : start + READ_CHUNK_BYTES]
