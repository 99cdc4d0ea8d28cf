"""Asset records and the value objects around them (plain dataclasses)."""

from __future__ import annotations

import enum
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asset_service.domain.errors import InvalidArgument, shown


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


class HoldKind(enum.StrEnum):
    """Why something holds an asset back from expiring."""

    # PlaceHold: an owner and a reason, until ReleaseHold.
    EXPLICIT = "EXPLICIT"
    # MintTaskToken named it as an input of a task with PENDING promises: until the last
    # of them is fulfilled, failed or deleted.
    TASK = "TASK"


@dataclass(frozen=True)
class Hold:
    """One thing that still needs an asset: no expiry (and no DeleteAsset without force)
    while it holds. Kept with the asset; placing or releasing one is not a change of the
    asset (no revision, no watch event), like a lease renewal."""

    owner: str
    kind: HoldKind = HoldKind.EXPLICIT
    reason: str = ""
    placed_at: datetime | None = None
    placed_by: str = ""

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.owner}{why}"


# Expiries a client chose (CreateX ttl_seconds, SetExpiry): operator rules never replace
# them. Any other non-empty expiry_rule names the operator's rule that set the expiry.
EXPIRY_TTL = "ttl"
EXPIRY_NEVER = "never"
EXPLICIT_EXPIRIES = frozenset({EXPIRY_TTL, EXPIRY_NEVER})


# Stored bytes are checked in blocks of this many bytes (the last one may be shorter):
# ReadAsset's chunk size, so a whole read checks each block as it sends it, and a ranged
# read reads at most one block more on each side than it sends.
BLOCK_BYTES = 1024 * 1024
_CRC_BYTES = 4


@dataclass(frozen=True)
class BlockSums:
    """The crc32c of each `block_bytes` block of a FILE asset's bytes, computed as they
    came in (4 bytes big-endian each, in order), to check each block before it is sent.

    Kept in the record beside the sha256 (one 4-byte sum per MiB: 40 KiB for 10 GiB), so
    it needs no second object that could be lost or left behind, on disk or in a bucket;
    never sent to clients nor kept in watch history (slim records leave it out).
    """

    block_bytes: int
    crcs: bytes

    def __post_init__(self) -> None:
        if self.block_bytes <= 0 or len(self.crcs) % _CRC_BYTES:
            raise ValueError(f"malformed block sums ({self.block_bytes}, {len(self.crcs)})")

    @property
    def count(self) -> int:
        return len(self.crcs) // _CRC_BYTES

    def crc(self, index: int) -> int:
        return int.from_bytes(self.crcs[index * _CRC_BYTES : (index + 1) * _CRC_BYTES], "big")

    def covers(self, size_bytes: int) -> bool:
        """Whether there is exactly one sum per block of `size_bytes` bytes."""
        return self.count == -(-size_bytes // self.block_bytes)

    def encode(self) -> bytes:
        """One bytes value for a store: the block size (4 bytes big-endian), then the sums."""
        return self.block_bytes.to_bytes(_CRC_BYTES, "big") + self.crcs

    @classmethod
    def decode(cls, raw: bytes | None) -> BlockSums | None:
        if not raw:
            return None
        return cls(int.from_bytes(raw[:_CRC_BYTES], "big"), bytes(raw[_CRC_BYTES:]))


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
    # The server-side path a FILE fulfillment came from; makes a retried fulfill idempotent.
    fulfilled_from: str = ""
    revision: int = 0
    # Who created the record, and who made its latest change (fulfilled, failed or
    # deleted it): authenticated principal names, "anonymous" without security, "" for
    # records written before these were kept.
    created_by: str = ""
    updated_by: str = ""
    # A PENDING asset's lease (0: none) and when it runs out (UTC, whole milliseconds, as
    # every store keeps it); past it the asset is failed (domain/leases.py). The lease
    # lives in a record of its own that renewals write (never the asset's: a heartbeat is
    # not a change); reads show its end. A change event carries the end as of its
    # revision: at creation, then the last one once the asset left PENDING.
    lease_seconds: int = 0
    lease_expires_at: datetime | None = None
    # A FILE asset's block checksums (None: stored before they were kept; computed on its
    # first read or by the scrub). Internal: not sent, not in slim records.
    block_sums: BlockSums | None = None
    # Why its stored bytes are known to be corrupt ("" while they are not): reads and
    # manifests then answer DATA_LOSS.
    corrupt_reason: str = ""
    # When it expires (None: never) and what set that: EXPIRY_TTL (a client's TTL), the
    # name of an operator's rule, EXPIRY_NEVER (a client cleared it), "" (nothing did).
    # A PENDING asset never expires, nor a held one (domain/retention.py).
    expires_at: datetime | None = None
    expiry_rule: str = ""
    # What still needs it (explicit holds, tasks): shown by reads, never in watch events
    # (a hold is not a change of the asset).
    holds: tuple[Hold, ...] = ()
    # A manifest that lists it is kept until then (--manifest-ttl): no expiry before.
    retained_until: datetime | None = None
    # On a deleted asset's last state (DELETED events, tombstones): why it went.
    deletion_reason: str = ""
    # The get-or-create key the orchestrator chose for it ("" for none): kept for good,
    # for listing and watching by key. Which record a key leads to is the store's to keep
    # (MetadataStore.key_holder): one at a time, whatever this field says.
    key: str = ""


@dataclass(frozen=True)
class Fulfillment:
    """What a PENDING -> AVAILABLE transition writes."""

    size_bytes: int
    sha256: str
    storage_path: str = ""
    value: Value | None = None
    fulfilled_from: str = ""
    media_type: str = ""
    # The principal fulfilling it (kept as the record's updated_by).
    by: str = ""
    block_sums: BlockSums | None = None
    expiry: RuleExpiry | None = None


@dataclass(frozen=True)
class RuleExpiry:
    """The expiry operator rules give an asset in its new state (at None: none). A
    transition carrying one applies only while no client chose the expiry (the store
    checks: EXPLICIT_EXPIRIES), so a rule never replaces a TTL set meanwhile."""

    at: datetime | None
    rule: str = ""


@dataclass(frozen=True)
class Failure:
    """What a PENDING -> FAILED transition writes."""

    reason: str
    # The principal failing it (kept as the record's updated_by).
    by: str = ""
    # Only if the asset's lease has run out by the transition's `now` (a renewal that
    # landed first wins): how a lease expiry fails an asset.
    lease_ran_out: bool = False
    expiry: RuleExpiry | None = None


@dataclass(frozen=True)
class Corruption:
    """What an integrity check writes on an AVAILABLE asset: its bytes are corrupt
    (`reason`), or ("") are whole again (restored, then checked by the scrub)."""

    reason: str
    by: str = ""


@dataclass(frozen=True)
class ExpiryChange:
    """What SetExpiry writes, on an asset of any status (`expected`: the one it was read
    in): an expiry a client chose (EXPIRY_TTL, or EXPIRY_NEVER with `at` None), which
    operator rules never replace."""

    at: datetime | None
    rule: str
    by: str = ""


# A conditional change of an asset: PENDING ones, (Corruption) AVAILABLE ones, or
# (ExpiryChange) one in the status it was read in. A lease renewal is none: it writes the
# lease's own record, not the asset (MetadataStore.renew_lease); nor is a hold.
Transition = Fulfillment | Failure | Corruption | ExpiryChange


@dataclass(frozen=True)
class Removal:
    """What a delete requires and records (MetadataStore.delete).

    `reason` becomes the last state's deletion_reason (DELETED events, tombstones).
    `unheld`: refuse (Held, naming the holders) while a hold keeps the asset (an explicit
    one, or a task's with a PENDING promise naming it as input): DeleteAsset without force.
    `expired`: only if it has expired by `now` (expires_at <= now), is not PENDING
    (Conflict otherwise) and nothing holds it, a manifest within its TTL included
    (retained_until > now): the expiry's one conditional write.
    """

    reason: str = ""
    unheld: bool = False
    expired: bool = False
    now: datetime | None = None


@dataclass(frozen=True)
class AssetFilter:
    status: Status | None = None
    type: AssetType | None = None
    tags: tuple[str, ...] = ()
    created_by_task: str = ""
    label: str = ""
    key: str = ""
    sha256: str = ""


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


class WatchEventKind(enum.StrEnum):
    SNAPSHOT = "SNAPSHOT"  # the state when the watch began
    CHANGED = "CHANGED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class WatchEvent:
    """What a watcher is sent: the asset's state with its kind of event."""

    kind: WatchEventKind
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
class UploadHeader:
    """What an upload declares before its bytes."""

    label: str = ""
    media_type: str = ""
    tags: tuple[str, ...] = ()
    expected_size_bytes: int | None = None
    expected_sha256: str = ""
    pending_asset_id: str = ""
    # A resumable upload's id (domain/uploads.py) and where this stream starts in the file.
    upload_id: str = ""
    write_offset: int = 0
    # The new asset expires this long after its creation (0: by the operator's rules).
    ttl_seconds: int = 0
    # Make the asset from stored bytes of the declared size and sha256, sending none.
    reuse_stored_bytes: bool = False


@dataclass(frozen=True)
class Page:
    assets: list[Asset] = field(default_factory=list)
    next_token: str = ""
    # The store's revision the page was read at (one consistent cut with it): every change
    # the page does not show has a higher revision. 0 where a store cannot tell.
    revision: int = 0


# What a record costs beyond its variable fields, in memory or on the wire (measured with
# tracemalloc at about 0.95 KiB; rounded up).
RECORD_OVERHEAD_BYTES = 1024


def approx_bytes(asset: Asset) -> int:
    """An estimate of what a record weighs in memory or in a response: fields + overhead."""
    size = RECORD_OVERHEAD_BYTES + len(asset.label) + len(asset.failure_reason)
    size += len(asset.created_by) + len(asset.updated_by)
    size += len(asset.media_type) + len(asset.storage_path) + len(asset.fulfilled_from)
    size += len(asset.corrupt_reason) + len(asset.expiry_rule) + len(asset.deletion_reason)
    size += sum(len(h.owner) + len(h.reason) + len(h.placed_by) + 64 for h in asset.holds)
    size += len(asset.key)
    size += sum(len(tag) for tag in asset.tags)
    if asset.value is not None:
        size += len(asset.value.data)
    return size


# --- validation shared by every entry point -------------------------------------------

MAX_LABEL_CHARS = 255
MAX_TAGS = 64
MAX_TAG_CHARS = 128
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;.*)?")
MAX_MEDIA_TYPE_CHARS = 255
# Linux limits (PATH_MAX counts the final NUL): checked before any file system call.
MAX_PATH_BYTES = 4095
MAX_PATH_COMPONENT_BYTES = 255
# Bidi embeddings, overrides and isolates can make a label read as another name
# ("invoice\u202egpj.exe" shows as "invoiceexe.jpg"), so names refuse them.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unprintable(text: str) -> bool:
    """Control characters (C0, DEL, C1), line/paragraph separators and bidi controls.

    They break log lines and terminals or disguise a name; other unicode (letters, marks,
    emoji joiners, the RTL mark) is a legitimate part of a name and is kept.
    """
    return any(
        ord(c) < 32
        or 127 <= ord(c) < 160
        or c in _BIDI_CONTROLS
        or unicodedata.category(c) in ("Zl", "Zp", "Cs")
        for c in text
    )


# The form every id is stored and sent in: taken as it is, without building a UUID.
_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_asset_id(raw: str, what: str = "asset_id") -> str:
    if _CANONICAL_ID.fullmatch(raw):
        return raw
    if not raw:
        raise InvalidArgument(f"{what} is required")
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise InvalidArgument(f"{what} {shown(raw)} is not a UUID") from None
    return str(parsed)


def new_asset_id() -> str:
    return str(uuid.uuid4())


def validate_label(label: str) -> str:
    if not label or not label.strip():
        raise InvalidArgument("label is required (a human name such as 'Input_Video.mp4')")
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidArgument(f"label is {len(label)} characters; the limit is {MAX_LABEL_CHARS}")
    if _unprintable(label):
        raise InvalidArgument(
            f"label {shown(label)} contains control, line-separator or bidi-override characters"
        )
    if "/" in label or "\\" in label or label in {".", ".."}:
        raise InvalidArgument(
            f"label {shown(label)} looks like a path; a label is a file name without '/' or '\\'"
        )
    return label


def validate_task_id(task_id: str) -> str:
    if not _TASK_ID.fullmatch(task_id or ""):
        raise InvalidArgument(
            f"task_id {shown(task_id)} is invalid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return task_id


def validate_tags(tags: Sequence[str]) -> tuple[str, ...]:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"{len(tags)} tags given; the limit is {MAX_TAGS}")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_CHARS or _unprintable(tag):
            raise InvalidArgument(
                f"tag {shown(tag)} is invalid: use 1-{MAX_TAG_CHARS} printable characters"
            )
    return tuple(dict.fromkeys(tags))


# Get-or-create keys: long enough for a namespaced hash ("build:v2:" + 128 hex digits or a
# base64url SHA-512), short enough to index cheaply in every store.
MAX_KEY_CHARS = 256
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]*")


def validate_key(key: str) -> str:
    if not key:
        raise InvalidArgument(
            "key is required: the orchestrator's name for what is produced (e.g. a hash of "
            "the task's code and inputs)"
        )
    if len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(f"key is {len(key)} characters; the limit is {MAX_KEY_CHARS}")
    if not _KEY.fullmatch(key):
        raise InvalidArgument(
            f"key {shown(key)} is invalid: use letters, digits and '.', '_', ':', '/', '+', "
            "'=', '@' or '-', starting with a letter or digit"
        )
    return key


def validate_media_type(media_type: str, default: str) -> str:
    if not media_type:
        return default
    if len(media_type) > MAX_MEDIA_TYPE_CHARS or not _MEDIA_TYPE.fullmatch(media_type):
        raise InvalidArgument(
            f"media_type {shown(media_type)} is not a MIME type like 'video/mp4' "
            f"(at most {MAX_MEDIA_TYPE_CHARS} characters)"
        )
    return media_type


def validate_sha256(digest: str) -> str:
    digest = digest.lower()
    if digest and not _SHA256.fullmatch(digest):
        raise InvalidArgument(f"sha256 {shown(digest)} is not 64 hexadecimal characters")
    return digest


def validate_server_path(raw: str, what: str = "path") -> str:
    """A server-side path as a client gave it, checked lexically before any file system call.

    Absolute, no NUL, no '.' or '..' components, within Linux's PATH_MAX and NAME_MAX;
    whether it lies under an import root is the caller's check.
    """
    if not raw:
        raise InvalidArgument(f"{what} is required: an absolute path on the server")
    if "\x00" in raw:
        raise InvalidArgument(f"{what} {shown(raw)} contains a NUL character")
    if not raw.startswith("/"):
        raise InvalidArgument(f"{what} {shown(raw)} must be absolute (start with '/')")
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} {shown(raw)} is not valid unicode") from None
    if size > MAX_PATH_BYTES:
        raise InvalidArgument(
            f"{what} {shown(raw)} is {size} bytes; the limit is {MAX_PATH_BYTES} (PATH_MAX)"
        )
    for part in raw.split("/"):
        if part in (".", ".."):
            raise InvalidArgument(
                f"{what} {shown(raw)} has a {part!r} component; give the path without it"
            )
        if len(part.encode("utf-8")) > MAX_PATH_COMPONENT_BYTES:
            raise InvalidArgument(
                f"{what} {shown(raw)} has a component {shown(part, 40)} of "
                f"{len(part.encode('utf-8'))} bytes; the limit is {MAX_PATH_COMPONENT_BYTES} "
                "(NAME_MAX)"
            )
    return raw


# JSON VALUEs and manifest config_params: deep enough for any real configuration, shallow
# enough that every reader (and Python's recursion limit) copes; protobuf's own parser
# stops at 100 nested messages (about 33 Struct levels), so a client can reach this one.
MAX_JSON_DEPTH = 32


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJson(name)


def check_json(text: str, what: str) -> None:
    """Refuse text that is not strict JSON (RFC 8259) or nests deeper than MAX_JSON_DEPTH.

    Python's json accepts NaN and Infinity, which other languages' parsers reject, and
    recurses once per nesting level (RecursionError): both must be a client's error.
    """
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except _NotJson as exc:
        raise InvalidArgument(
            f"{what} contains {exc.args[0]}, which is not JSON (RFC 8259 has no NaN or "
            "Infinity); use null or a string instead"
        ) from None
    except RecursionError:
        raise InvalidArgument(
            f"{what} nests deeper than {MAX_JSON_DEPTH} levels of arrays/objects"
        ) from None
    except ValueError as exc:
        raise InvalidArgument(f"{what} does not parse: {exc}") from None
    check_json_data(data, what)


def check_json_data(data: Any, what: str) -> None:
    """Refuse NaN/Infinity numbers and nesting deeper than MAX_JSON_DEPTH, naming where."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(
                f"{what}{_json_path(path)} is {value}: NaN, Infinity and numbers beyond a "
                "double's range are not portable JSON; use null or a string instead"
            )
        if isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidArgument(
                    f"{what}{_json_path(path)} nests deeper than {MAX_JSON_DEPTH} levels of "
                    "arrays/objects; flatten it"
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                step = f"[{shown(key, 40)}]" if isinstance(key, str) else f"[{key}]"
                stack.append((item, path + step, depth + 1))


def _json_path(path: str) -> str:
    if not path:
        return ""
    if len(path) > 200:
        path = "…" + path[-200:]
    return f" at {path}"


def safe_file_name(label: str, fallback: str = "content") -> str:
    """A file name derived from a label that is safe on any filesystem."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")
    cleaned = cleaned[:120]
    return cleaned or fallback  # no '/' survives the substitution: a name, never a path
