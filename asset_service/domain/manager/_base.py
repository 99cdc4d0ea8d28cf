"""What every part of the AssetManager shares: limits, the clock, its ports and get()."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import (
    AsyncGenerator,
)
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asset_service.domain.commits import Committer
from asset_service.domain.errors import (
    AssetError,
    IntegrityError,
    NotFound,
    brief,
)
from asset_service.domain.integrity import Integrity
from asset_service.domain.locks import KeyedLocks
from asset_service.domain.models import (
    EXPIRY_TTL,
    EXPLICIT_EXPIRIES,
    Asset,
    AssetType,
    RuleExpiry,
    Status,
    new_asset_id,
    parse_asset_id,
)
from asset_service.domain.ports import (
    BlobStorage,
    ManifestStore,
    MetadataStore,
    StagedBlob,
)
from asset_service.domain.replay import DEFAULT_TOMBSTONE_TTL_SECONDS
from asset_service.domain.retention import ExpiryRule, by_rules, check_ttl
from asset_service.domain.uploads import DEFAULT_SESSION_TTL_SECONDS
from asset_service.domain.watch import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_CATCH_UP_BATCH,
    DEFAULT_HISTORY_BYTES,
    ChangeHub,
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


class Core:
    """The AssetManager's state; each part of it (transitions, creation, the manager) adds
    its use cases."""

    store: MetadataStore
    storage: BlobStorage
    limits: Limits
    manifests: ManifestStore | None
    hub: ChangeHub
    commits: Committer
    integrity: Integrity
    _locks: KeyedLocks
    # This manager's name as a lease sweeper (one sweeps at a time per store).
    sweeper: str
    # Where the next orphan collection resumes its pass over the storage ("": the start).
    orphan_cursor: str = ""

    async def get(self, asset_id: str) -> Asset:
        asset_id = parse_asset_id(asset_id)
        asset = await self.store.get(asset_id)
        if asset is None:
            raise NotFound(f"asset {asset_id} not found")
        return asset

    def with_expiry(self, asset: Asset, ttl_seconds: int = 0) -> Asset:
        """A new record with its expiry: the client's TTL (counted from its creation), or
        the first matching operator rule's (none for a PENDING promise: its state's rule
        applies when it is fulfilled or failed)."""
        if check_ttl(ttl_seconds):
            at = asset.created_at + timedelta(seconds=ttl_seconds)
            return dataclasses.replace(asset, expires_at=at, expiry_rule=EXPIRY_TTL)
        by_rule = self.rule_expiry(asset, asset.status, asset.created_at)
        if by_rule is None:
            return asset
        return dataclasses.replace(asset, expires_at=by_rule.at, expiry_rule=by_rule.rule)

    def rule_expiry(self, current: Asset, status: Status, when: datetime) -> RuleExpiry | None:
        """The operator rules' expiry for `current` reaching `status` at `when`: None if a
        client chose its expiry, or no rule matches."""
        if current.expiry_rule in EXPLICIT_EXPIRIES:
            return None
        return by_rules(
            self.limits.expiry_rules,
            status,
            current.type,
            current.tags,
            current.created_by_task,
            when,
        )

    async def space_freed(self) -> None:
        """Bytes were removed: let the store take back its disk-full reserve at once,
        before new bytes take the room (what it answers is for the next write to hear)."""
        with contextlib.suppress(AssetError):
            await self.store.check_room()


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
