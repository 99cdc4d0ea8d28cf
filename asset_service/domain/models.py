"""Asset records and the value objects around them (plain dataclasses)."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath

from asset_service.domain.errors import InvalidArgument


class Status(enum.StrEnum):
    PENDING = "PENDING"
    AVAILABLE = "AVAILABLE"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self is not Status.PENDING


class AssetType(enum.StrEnum):
    FILE = "FILE"
    VALUE = "VALUE"


class ValueKind(enum.StrEnum):
    TEXT = "TEXT"
    JSON = "JSON"
    BYTES = "BYTES"

    @property
    def suffix(self) -> str:
        return {"TEXT": ".txt", "JSON": ".json", "BYTES": ".bin"}[self.value]

    @property
    def default_media_type(self) -> str:
        return {
            "TEXT": "text/plain",
            "JSON": "application/json",
            "BYTES": "application/octet-stream",
        }[self.value]


@dataclass(frozen=True)
class Value:
    """Inline content of a VALUE asset; `data` is UTF-8 for TEXT and JSON."""

    kind: ValueKind
    data: bytes


@dataclass(frozen=True)
class Asset:
    id: str
    label: str
    status: Status
    type: AssetType
    media_type: str
    created_at: datetime
    updated_at: datetime
    storage_path: str = ""
    value: Value | None = None
    created_by_task: str = ""
    tags: tuple[str, ...] = ()
    size_bytes: int = 0
    sha256: str = ""
    failure_reason: str = ""
    # The server-side path a FILE fulfilment came from; makes a retried fulfil idempotent.
    fulfilled_from: str = ""
    revision: int = 0


@dataclass(frozen=True)
class Fulfilment:
    """What a PENDING -> AVAILABLE transition writes."""

    size_bytes: int
    sha256: str
    storage_path: str = ""
    value: Value | None = None
    fulfilled_from: str = ""
    media_type: str = ""


@dataclass(frozen=True)
class Failure:
    """What a PENDING -> FAILED transition writes."""

    reason: str


@dataclass(frozen=True)
class AssetFilter:
    status: Status | None = None
    type: AssetType | None = None
    tags: tuple[str, ...] = ()
    created_by_task: str = ""
    label: str = ""


class ChangeKind(enum.StrEnum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True)
class Change:
    """One committed change, as the store's change source reports it."""

    kind: ChangeKind
    asset: Asset

    @property
    def revision(self) -> int:
        return self.asset.revision


@dataclass(frozen=True)
class Resync:
    """The change source lost history (e.g. its resume point fell off the oplog).

    Every subscriber must re-read the current state of what it watches.
    """

    reason: str


@dataclass(frozen=True)
class Page:
    assets: list[Asset] = field(default_factory=list)
    next_token: str = ""


# --- validation shared by every entry point -------------------------------------------

MAX_LABEL_CHARS = 255
MAX_TAGS = 64
MAX_TAG_CHARS = 128
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;.*)?")


def parse_asset_id(raw: str, what: str = "asset_id") -> str:
    if not raw:
        raise InvalidArgument(f"{what} is required")
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise InvalidArgument(f"{what} {raw!r} is not a UUID") from None
    return str(parsed)


def new_asset_id() -> str:
    return str(uuid.uuid4())


def validate_label(label: str) -> str:
    if not label or not label.strip():
        raise InvalidArgument("label is required (a human name such as 'Input_Video.mp4')")
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidArgument(f"label is {len(label)} characters; the limit is {MAX_LABEL_CHARS}")
    if any(ord(c) < 32 or ord(c) == 127 for c in label):
        raise InvalidArgument(f"label {label!r} contains control characters")
    if "/" in label or "\\" in label or label in {".", ".."}:
        raise InvalidArgument(
            f"label {label!r} looks like a path; a label is a file name without '/' or '\\'"
        )
    return label


def validate_task_id(task_id: str) -> str:
    if not _TASK_ID.fullmatch(task_id or ""):
        raise InvalidArgument(
            f"task_id {task_id!r} is invalid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return task_id


def validate_tags(tags: Sequence[str]) -> tuple[str, ...]:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"{len(tags)} tags given; the limit is {MAX_TAGS}")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_CHARS or any(ord(c) < 32 for c in tag):
            raise InvalidArgument(f"tag {tag!r} is invalid: 1-{MAX_TAG_CHARS} printable characters")
    return tuple(dict.fromkeys(tags))


def validate_media_type(media_type: str, default: str) -> str:
    if not media_type:
        return default
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise InvalidArgument(f"media_type {media_type!r} is not a MIME type like 'video/mp4'")
    return media_type


def validate_sha256(digest: str) -> str:
    digest = digest.lower()
    if digest and not _SHA256.fullmatch(digest):
        raise InvalidArgument(f"sha256 {digest!r} is not 64 hexadecimal characters")
    return digest


def safe_file_name(label: str, fallback: str = "content") -> str:
    """A file name derived from a label that is safe on any filesystem."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")
    cleaned = cleaned[:120]
    name = PurePosixPath(cleaned).name if cleaned else ""
    return name or fallback
