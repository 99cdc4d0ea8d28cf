"""Small frozen dataclasses that the clients return instead of protobuf messages."""

from __future__ import annotations

import enum
import json as _json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


class AssetStatus(enum.Enum):
    """State of an asset: PENDING, then AVAILABLE or FAILED (both terminal)."""

    PENDING = "PENDING"
    AVAILABLE = "AVAILABLE"
    FAILED = "FAILED"


class AssetType(enum.Enum):
    """Where an asset's content lives: a FILE on the server, or an inline VALUE."""

    FILE = "FILE"
    VALUE = "VALUE"


class ValueKind(enum.Enum):
    """The kind of a VALUE asset's content."""

    TEXT = "text"
    JSON = "json"
    DATA = "data"


@dataclass(frozen=True, slots=True)
class Value:
    """Inline content of a VALUE asset: text, a JSON document (as text) or raw bytes."""

    kind: ValueKind
    content: str | bytes

    @classmethod
    def of_text(cls, text: str) -> Value:
        return cls(ValueKind.TEXT, text)

    @classmethod
    def of_json(cls, obj: Any) -> Value:
        """Encode any JSON-serialisable Python object as a JSON value."""
        return cls(ValueKind.JSON, _json.dumps(obj))

    @classmethod
    def of_bytes(cls, data: bytes) -> Value:
        return cls(ValueKind.DATA, bytes(data))

    def as_bytes(self) -> bytes:
        return self.content if isinstance(self.content, bytes) else self.content.encode("utf-8")

    def as_json(self) -> Any:
        """Decode a JSON value (or parse text/bytes as JSON)."""
        return _json.loads(self.content)


@dataclass(frozen=True, slots=True)
class Asset:
    """The record of one asset."""

    id: str
    label: str
    status: AssetStatus
    type: AssetType
    media_type: str
    storage_path: str
    value: Value | None
    created_by_task: str
    tags: tuple[str, ...]
    size_bytes: int
    sha256: str
    create_time: datetime
    update_time: datetime
    failure_reason: str
    revision: int
    # Who created it, and who made its latest change (see the proto's Asset).
    created_by: str = ""
    updated_by: str = ""
    # A promise's lease (create_pending's lease_seconds; 0: none) and when it runs out
    # (aware UTC; None without a lease). Kept once the asset is AVAILABLE or FAILED.
    lease_seconds: int = 0
    lease_expires_at: datetime | None = None
    # Set once the server found this asset's stored bytes changed since they were stored
    # (what, where, when): reading it, or a manifest naming it, is then DataLossError.
    corrupt_reason: str = ""
    # When it expires (aware UTC; None: never) and what set that: "ttl", "never" or the
    # server's --expiry-rule name. A PENDING or held asset is kept past it.
    expires_at: datetime | None = None
    expiry_rule: str = ""
    # What still needs it: each hold's owner ("task:<id>" for a task token's input), why.
    holds: tuple[Hold, ...] = ()
    # In a DELETED watch event: why it went ("expired (rule failed)", "expired (ttl)").
    deletion_reason: str = ""
    # The get_or_create_pending key it was made for ("" otherwise).
    key: str = ""

    @property
    def is_terminal(self) -> bool:
        return self.status is not AssetStatus.PENDING


class GetOrCreateOutcome(enum.Enum):
    """What get_or_create_pending found for its key."""

    HIT = "HIT"  # the key's AVAILABLE asset, its bytes checked: use it
    JOIN = "JOIN"  # the key's live PENDING promise, produced by another caller: watch it
    PRODUCE = "PRODUCE"  # a new promise: this caller must produce it (or fail it)


@dataclass(frozen=True, slots=True)
class KeyedAsset:
    """get_or_create_pending's answer: the key's asset and what it is to the caller."""

    outcome: GetOrCreateOutcome
    asset: Asset

    @property
    def must_produce(self) -> bool:
        return self.outcome is GetOrCreateOutcome.PRODUCE


@dataclass(frozen=True)
class Hold:
    """One thing that keeps an asset from expiring (and from delete without force)."""

    owner: str
    kind: str  # "EXPLICIT" (place_hold) or "TASK"
    reason: str = ""
    placed_by: str = ""


@dataclass(frozen=True)
class UsageRow:
    """One key's assets and bytes, and their part in each status."""

    key: str
    count: int
    bytes: int
    by_status: Mapping[AssetStatus, tuple[int, int]]


@dataclass(frozen=True)
class Usage:
    """What the store holds (get_usage): totals, by status, and rows of one group."""

    count: int
    bytes: int
    by_status: Mapping[AssetStatus, tuple[int, int]]
    group: str
    rows: tuple[UsageRow, ...]
    more: bool = False
    warn_bytes: int = 0
    over_threshold: bool = False


class ScrubOutcome(enum.Enum):
    OK = "OK"
    CORRUPT = "CORRUPT"  # changed since stored: now marked corrupt
    UNREADABLE = "UNREADABLE"  # missing, or storage failing: not marked
    SKIPPED = "SKIPPED"  # not an AVAILABLE FILE asset, or not found
    RESTORED = "RESTORED"  # was marked corrupt, checks out again: unmarked


@dataclass(frozen=True, slots=True)
class ScrubResult:
    """What checking one asset's stored bytes found (scrub())."""

    asset_id: str
    outcome: ScrubOutcome
    detail: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class AssetPage:
    """One page of a listing, and the revision it was read at (in one consistent cut).

    Watching a selector from `revision` (watch_selector's after_revision) misses no change
    made after this page was read, and repeats none it shows.
    """

    assets: tuple[Asset, ...]
    next_page_token: str
    revision: int


class WatchEventType(enum.Enum):
    """What a watch event reports."""

    SNAPSHOT = "SNAPSHOT"
    CHANGED = "CHANGED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of a watch; `revision` resumes a watch right after it."""

    type: WatchEventType
    asset: Asset
    revision: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """Where the server wrote input_data.json, and each input key's file path."""

    path: Path
    entries: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TaskToken:
    """A task-scoped bearer token (MintTaskToken): give it to the task's worker."""

    token: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class UploadState:
    """Where a resumable upload stands (QueryUpload): the bytes the server holds durably
    (the next stream sends from there), when an unfinished one expires, and the asset once
    it completed."""

    committed_bytes: int
    expire_time: datetime | None
    asset: Asset | None = None
