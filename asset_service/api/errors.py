"""The one table that maps domain errors to gRPC status codes, and keeps errors small."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from asset_service.domain import errors
from asset_service.domain.errors import brief, shown
from asset_service.security.errors import Unauthenticated

STATUS_CODES: dict[type[errors.AssetError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Timeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.HistoryGone: grpc.StatusCode.OUT_OF_RANGE,
    errors.IntegrityError: grpc.StatusCode.DATA_LOSS,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}

# An error travels in HTTP/2 trailers: grpc-message (percent-encoded) and, with details,
# grpc-status-details-bin (base64). Default clients start refusing metadata past 8 KiB
# (hard limit 16 KiB) and report "RESOURCE_EXHAUSTED: Stream removed" instead of the real
# status, so the two together are kept under 7 KiB whatever the input was.
MAX_MESSAGE_WIRE_BYTES = 2048
MAX_DETAILS_BYTES = 3584


def status_code(exc: errors.AssetError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.UNKNOWN


def _wire_cost(char: str) -> int:
    """Bytes `char` takes in grpc-message: printable ASCII but '%' as is, the rest %XX."""
    if " " <= char <= "~" and char != "%":
        return 1
    return 3 * len(char.encode("utf-8"))


def capped(message: str, limit: int = MAX_MESSAGE_WIRE_BYTES) -> str:
    """`message`, cut (never inside a character) so that it fits `limit` bytes on the wire."""
    # Lone surrogates cannot be encoded as UTF-8 at all; show them as U+FFFD.
    message = message.encode("utf-8", "replace").decode("utf-8")
    if sum(_wire_cost(c) for c in message) <= limit:
        return message
    suffix = f" … [message cut; it had {len(message)} characters]"
    budget = limit - sum(_wire_cost(c) for c in suffix)
    kept = 0
    for char in message:
        budget -= _wire_cost(char)
        if budget < 0:
            break
        kept += 1
    return message[:kept] + suffix


def status_message(exc: errors.AssetError) -> str:
    return capped(exc.message)


def rich_status(exc: errors.AssetError) -> status_pb2.Status | None:
    """google.rpc.Status with machine-readable details, where the error has any."""
    if not isinstance(exc, errors.ManifestBlocked):
        return None
    message = status_message(exc)
    failure = error_details_pb2.PreconditionFailure()
    # Room for the message, the Any wrapper and a closing "…and M more" violation.
    budget = MAX_DETAILS_BYTES - len(message.encode("utf-8")) - 256
    for b in exc.shown_blocking:
        reason = f": {brief(b.reason, 100)}" if b.reason else ""
        violation = error_details_pb2.PreconditionFailure.Violation(
            type=b.state,
            subject=f"assets/{b.asset_id}",
            description=f"input {shown(b.key, 40)} is {b.state}{reason}",
        )
        budget -= violation.ByteSize() + 3
        if budget < 0 and failure.violations:
            break
        failure.violations.append(violation)
    rest = len(exc.blocking) - len(failure.violations)
    if rest > 0:
        failure.violations.append(
            error_details_pb2.PreconditionFailure.Violation(
                type="MORE",
                description=f"…and {rest} more input(s) not AVAILABLE, left out to keep this "
                "error small; BatchGetAssets tells the state of each",
            )
        )
    detail = any_pb2.Any()
    detail.Pack(failure)
    return status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=message, details=[detail])
