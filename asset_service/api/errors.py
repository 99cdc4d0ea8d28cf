"""The one table that maps domain errors to gRPC status codes."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from asset_service.domain import errors

STATUS_CODES: dict[type[errors.AssetError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Timeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.IntegrityError: grpc.StatusCode.DATA_LOSS,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_code(exc: errors.AssetError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.UNKNOWN


def rich_status(exc: errors.AssetError) -> status_pb2.Status | None:
    """google.rpc.Status with machine-readable details, where the error has any."""
    if not isinstance(exc, errors.ManifestBlocked):
        return None
    failure = error_details_pb2.PreconditionFailure(
        violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type=b.state,
                subject=f"assets/{b.asset_id}",
                description=f"input {b.key!r} is {b.state}" + (f": {b.reason}" if b.reason else ""),
            )
            for b in exc.blocking
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(failure)
    return status_pb2.Status(
        code=code_pb2.FAILED_PRECONDITION, message=exc.message, details=[detail]
    )
