"""An asset's record and the values it holds: status, type, inline value, holds, block sums."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


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
