"""Asset records <-> MongoDB documents, page tokens, and driver errors as domain errors."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import (
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from asset_service.domain.errors import (
    AssetError,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    OutcomeUnknown,
    Unavailable,
)
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    BlockSums,
    Hold,
    HoldKind,
    Status,
    Value,
    ValueKind,
)
from asset_service.store import _paging
from asset_service.store._fields import encoded_sums

Doc = dict[str, Any]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms(ts: datetime) -> datetime:
    """BSON dates hold milliseconds: truncate so a returned Asset equals what a read gives."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


def _value_fields(value: Value | None) -> Doc:
    if value is None:
        return {"value_kind": None, "value_content": None}
    return {"value_kind": value.kind.value, "value_content": value.data}


def asset_to_doc(asset: Asset, revision: int) -> Doc:
    return {
        "_id": asset.id,
        "seq": revision,  # insertion order, never changes: the keyset of ListAssets
        "label": asset.label,
        "status": asset.status.value,
        "type": asset.type.value,
        "media_type": asset.media_type,
        "storage_path": asset.storage_path,
        **_value_fields(asset.value),
        "created_by_task": asset.created_by_task,
        "tags": list(asset.tags),
        "size_bytes": asset.size_bytes,
        "sha256": asset.sha256,
        "created_at": ms(asset.created_at),
        "updated_at": ms(asset.updated_at),
        "failure_reason": asset.failure_reason,
        "fulfilled_from": asset.fulfilled_from,
        "revision": revision,
        "created_by": asset.created_by,
        "updated_by": asset.updated_by,
        "lease_seconds": asset.lease_seconds,
        "lease_expires_at": ms(asset.lease_expires_at) if asset.lease_expires_at else None,
        "block_sums": encoded_sums(asset.block_sums),
        "corrupt_reason": asset.corrupt_reason,
        "expires_at": ms(asset.expires_at) if asset.expires_at else None,
        "expiry_rule": asset.expiry_rule,
        "retained_until": ms(asset.retained_until) if asset.retained_until else None,
        "holds": [hold_to_doc(hold) for hold in asset.holds],
        "deletion_reason": asset.deletion_reason,
        "key": asset.key,
        # Present only while the record holds its key (the sparse unique index key_slot).
        **({"key_slot": asset.key} if asset.key else {}),
    }


def hold_to_doc(hold: Hold) -> Doc:
    return {
        "owner": hold.owner,
        "kind": hold.kind.value,
        "reason": hold.reason,
        "placed_at": ms(hold.placed_at) if hold.placed_at is not None else None,
        "placed_by": hold.placed_by,
    }


def _hold(doc: Mapping[str, Any]) -> Hold:
    return Hold(
        owner=str(doc.get("owner", "")),
        kind=HoldKind(doc.get("kind", HoldKind.EXPLICIT.value)),
        reason=doc.get("reason") or "",
        placed_at=_aware(doc["placed_at"]) if doc.get("placed_at") else None,
        placed_by=doc.get("placed_by") or "",
    )


def _aware(ts: Any) -> datetime:
    if not isinstance(ts, datetime):
        return EPOCH
    return ts.astimezone(UTC) if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def doc_to_asset(doc: Mapping[str, Any]) -> Asset:
    value = None
    if doc.get("value_kind"):
        value = Value(ValueKind(doc["value_kind"]), bytes(doc.get("value_content") or b""))
    return Asset(
        id=str(doc["_id"]),
        label=doc.get("label", ""),
        status=Status(doc.get("status", Status.PENDING.value)),
        type=AssetType(doc.get("type", AssetType.FILE.value)),
        media_type=doc.get("media_type", ""),
        storage_path=doc.get("storage_path", ""),
        value=value,
        created_by_task=doc.get("created_by_task", ""),
        tags=tuple(doc.get("tags") or ()),
        size_bytes=int(doc.get("size_bytes", 0)),
        sha256=doc.get("sha256", ""),
        created_at=_aware(doc.get("created_at")),
        updated_at=_aware(doc.get("updated_at")),
        failure_reason=doc.get("failure_reason", ""),
        fulfilled_from=doc.get("fulfilled_from", ""),
        revision=int(doc.get("revision", 0)),
        created_by=doc.get("created_by", ""),
        updated_by=doc.get("updated_by", ""),
        lease_seconds=int(doc.get("lease_seconds") or 0),
        lease_expires_at=(_aware(doc["lease_expires_at"]) if doc.get("lease_expires_at") else None),
        block_sums=BlockSums.decode(doc.get("block_sums")),
        corrupt_reason=doc.get("corrupt_reason") or "",
        expires_at=_aware(doc["expires_at"]) if doc.get("expires_at") else None,
        expiry_rule=doc.get("expiry_rule") or "",
        retained_until=_aware(doc["retained_until"]) if doc.get("retained_until") else None,
        holds=tuple(_hold(h) for h in doc.get("holds") or ()),
        deletion_reason=doc.get("deletion_reason") or "",
        key=doc.get("key") or "",
    )


def encode_token(seq: int, flt: AssetFilter) -> str:
    return _paging.encode_token("mongo", seq, flt)


def decode_token(token: str, flt: AssetFilter) -> int:
    return _paging.decode_token("mongo", token, flt)


def _doc_bytes(doc: Mapping[str, Any]) -> int:
    value = doc.get("value_content")
    return len(value) if isinstance(value, bytes | str) else 0


# Server error codes that no retry fixes (error_codes.yml of the MongoDB server).
UNAUTHORIZED = 13
AUTHENTICATION_FAILED = 18
BAD_VALUE = 2
DOCUMENT_VALIDATION_FAILURE = 121
WRITE_CONFLICT = 112


def _unavailable(exc: PyMongoError) -> AssetError:
    """A driver error as the domain error that tells the truth about it.

    Only transient failures are Unavailable (retry later). The store's own credentials
    being refused, or a document the database's validator rejects, will fail the same
    way on every retry until an operator acts: FailedPrecondition (the service is not in
    a state to do this), not PermissionDenied, which would blame the caller. A write
    conflict still standing once the driver's retries ran out is Conflict (ABORTED:
    re-read and retry).
    """
    code = exc.code if isinstance(exc, OperationFailure) else None
    if code in (UNAUTHORIZED, AUTHENTICATION_FAILED):
        return FailedPrecondition(
            f"MongoDB refused the asset service's own database user (code {code}): "
            f"{exc}; an operator must fix the credentials or roles in the database URL"
        )
    if code == DOCUMENT_VALIDATION_FAILURE:
        return FailedPrecondition(
            f"MongoDB's validation rules for the assets collection rejected the record: {exc}"
        )
    if code == BAD_VALUE:
        return InvalidArgument(f"MongoDB rejected a value of the request: {exc}")
    # with_transaction ends its retries with a timeout error raised from the last one.
    cause = exc.__cause__
    if code == WRITE_CONFLICT or (
        isinstance(cause, OperationFailure) and cause.code == WRITE_CONFLICT
    ):
        return Conflict(
            f"concurrent writes kept conflicting until the retries ran out: {exc}; "
            "re-read the asset and retry"
        )
    if isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError):
        return Unavailable(f"MongoDB is unreachable: {exc}")
    return Unavailable(f"MongoDB error: {exc}")


DUPLICATE_KEY = 11000


class DuplicateKey(Conflict):
    """An insert hit an existing key: nothing was written."""


def statement_error(asset_id: str, code: int, message: str) -> AssetError:
    """One write statement's own error (a write error of a bulk write): what only that
    write's caller is told (the rest of its batch runs again without it)."""
    if code == DUPLICATE_KEY:
        return DuplicateKey(f"asset {asset_id} already exists: {message}")
    if code == DOCUMENT_VALIDATION_FAILURE:
        return FailedPrecondition(
            f"MongoDB's validation rules for the assets collection rejected the record of "
            f"asset {asset_id} (code {code}): {message}; an operator must fix the rules or "
            "the record's shape"
        )
    return _unavailable(OperationFailure(message, code, {"code": code, "errmsg": message}))


def _write_error(exc: PyMongoError, *, transaction: bool) -> AssetError:
    """A failed write as a domain error: OutcomeUnknown where it may have applied.

    In a transaction, pymongo labels exactly the ambiguous commits
    UnknownTransactionCommitResult (network error, timeout or write-concern timeout
    during commitTransaction; it keeps the labels on the timeout error that ends
    with_transaction's retries); every other failure aborted the transaction. A write
    outside a transaction (allow_standalone) is ambiguous on any error after it may
    have been sent, i.e. all but a failed server selection.
    """
    if transaction:
        ambiguous = exc.has_error_label("UnknownTransactionCommitResult")
    else:
        ambiguous = isinstance(
            exc, ConnectionFailure | ExecutionTimeout | WTimeoutError
        ) and not isinstance(exc, ServerSelectionTimeoutError)
    if ambiguous:
        return OutcomeUnknown(
            f"MongoDB did not confirm the write, which may or may not have applied: {exc}"
        )
    return _unavailable(exc)
