"""Typed exceptions, and the one table that maps gRPC status codes to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from asset_client.models import Asset


@dataclass(frozen=True, slots=True)
class Violation:
    """One machine-readable precondition failure (e.g. a manifest input not AVAILABLE)."""

    type: str
    subject: str
    description: str


class AssetServiceError(Exception):
    """Base of every error the client raises; `.code` is the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str,
        code: grpc.StatusCode | None = None,
        violations: tuple[Violation, ...] = (),
    ) -> None:
        super().__init__(details)
        if code is not None:
            self.code = code
        self.details = details
        self.violations = violations

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class InvalidArgumentError(AssetServiceError):
    """The request is malformed (bad id, empty label, unsafe path...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(AssetServiceError):
    """No asset (or file) with that name exists."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(AssetServiceError):
    """The thing to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(AssetServiceError):
    """The asset is not in the state the operation needs; `.violations` may say which."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ConflictError(AssetServiceError):
    """ABORTED: a concurrent writer changed the asset first; re-read and retry if relevant."""

    code = grpc.StatusCode.ABORTED


AbortedError = ConflictError


class PermissionDeniedError(AssetServiceError):
    """A server-side path lies outside the server's import roots."""

    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(AssetServiceError):
    """The call carried no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhaustedError(AssetServiceError):
    """A limit was hit (upload too large, message too big...)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DataLossError(AssetServiceError):
    """Content does not match its declared size or digest, or stored bytes are gone."""

    code = grpc.StatusCode.DATA_LOSS


class HistoryGoneError(AssetServiceError):
    """OUT_OF_RANGE: a selector watch asked for changes the server can no longer replay.

    The server replays selector watches from the latest changes it keeps in memory and,
    below them, from the store, which keeps deleted assets' tombstones for
    --watch-tombstone-ttl: a revision older than those, or one from before a rollback
    (the database went back in time), cannot be served. List again and watch from the
    page's revision (`list_page(...).revision`); `follow` does that by itself.
    """

    code = grpc.StatusCode.OUT_OF_RANGE


OutOfRangeError = HistoryGoneError


class UnavailableError(AssetServiceError):
    """The server (or its database) cannot be reached right now; retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(AssetServiceError, TimeoutError):
    """The call's deadline (`timeout`) passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class CancelledError(AssetServiceError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class UnimplementedError(AssetServiceError):
    """The server does not implement this method."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(AssetServiceError):
    """The server failed unexpectedly; its log has the reference in `.details`."""

    code = grpc.StatusCode.INTERNAL


class AssetStateError(FailedPreconditionError):
    """An awaited asset reached a state it cannot leave for AVAILABLE; `.asset` is it."""

    def __init__(self, details: str, asset: Asset) -> None:
        super().__init__(details)
        self.asset = asset


class AssetFailedError(AssetStateError):
    """An awaited asset FAILED; `.asset.failure_reason` says why."""


class AssetDeletedError(AssetStateError):
    """An awaited asset was deleted; `.asset` is its last state."""


class WaitTimeoutError(DeadlineExceededError):
    """wait_until_available timed out; `.pending` lists the assets not AVAILABLE yet."""

    def __init__(self, details: str, pending: tuple[str, ...]) -> None:
        super().__init__(details)
        self.pending = pending


# The typed error for each status code: the classes above that name one of their own.
ERRORS_BY_CODE: dict[grpc.StatusCode, type[AssetServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        ConflictError,
        PermissionDeniedError,
        UnauthenticatedError,
        ResourceExhaustedError,
        DataLossError,
        HistoryGoneError,
        UnavailableError,
        DeadlineExceededError,
        CancelledError,
        UnimplementedError,
        InternalError,
    )
}


def _violations(exc: grpc.RpcError) -> tuple[Violation, ...]:
    """The precondition violations in the call's rich status (grpc-status-details-bin)."""
    try:
        status = rpc_status.from_call(cast(grpc.Call, exc))  # grpc's errors are calls too
        found: list[Violation] = []
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                found.extend(
                    Violation(v.type, v.subject, v.description) for v in failure.violations
                )
        return tuple(found)
    except Exception:  # no trailers, or malformed details: they must not hide the real error
        return ()


# What gRPC's local credentials (a token without TLS) say of a server not on this host.
_NOT_LOOPBACK = "Endpoint is neither UDS or TCP loopback address"
_NOT_LOOPBACK_HINT = (
    "a token is sent without TLS only to a loopback address: turn TLS on, or give no token"
)


def from_rpc_error(exc: grpc.RpcError) -> AssetServiceError:
    """The typed error for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code_fn = getattr(exc, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(exc, "details", None)
    details = (details_fn() if callable(details_fn) else None) or str(exc)
    if _NOT_LOOPBACK in details:
        details += f" ({_NOT_LOOPBACK_HINT})"
    cls = ERRORS_BY_CODE.get(code, AssetServiceError)
    return cls(details, code, _violations(exc))
