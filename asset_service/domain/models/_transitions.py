"""What a write carries: an upload's or a promise's declaration, a transition of a record,
a removal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from asset_service.domain.models._records import AssetType, BlockSums, Value


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
class PromiseRequest:
    """What a new promise (a PENDING asset) declares: CreatePendingAsset's fields."""

    task_id: str
    label: str
    media_type: str
    type: AssetType
    tags: Sequence[str]
    lease_seconds: int = 0
    # The asset expires this long after its creation (0: by the operator's rules).
    ttl_seconds: int = 0


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
