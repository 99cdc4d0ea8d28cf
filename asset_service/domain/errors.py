"""Domain errors: one small tree, mapped to gRPC codes by one table (api/errors.py)."""

from __future__ import annotations

from dataclasses import dataclass


class AssetError(Exception):
    """Base of every error the domain reports to a caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AssetError):
    """The request itself is malformed (bad id, empty label, unsafe path...)."""


class NotFound(AssetError):
    """No asset (or file) with that name exists."""


class FailedPrecondition(AssetError):
    """The asset is not in the state the operation needs."""


class Conflict(AssetError):
    """A concurrent writer changed the asset first; re-read and retry if still relevant."""


class PermissionDenied(AssetError):
    """A server-side path lies outside the configured import roots (or crosses a symlink)."""


class ResourceExhausted(AssetError):
    """A limit of the server was reached: size, space, concurrency, buffers."""


class TooLarge(ResourceExhausted):
    """An upload exceeds the configured maximum size."""


class StorageFull(ResourceExhausted):
    """The disk (or object store) holding bytes or metadata has no space left."""


class LimitExceeded(ResourceExhausted):
    """A configured concurrency limit was reached; the message names the setting."""


class Timeout(AssetError):
    """The client stayed silent (or did not read) for longer than a configured limit."""


class IntegrityError(AssetError):
    """Content does not match the size or digest the caller declared, or stored bytes are gone."""


class Unavailable(AssetError):
    """The metadata store (or storage) cannot be reached right now; retry later."""


class OutcomeUnknown(Unavailable):
    """A write was sent but its outcome could not be learnt; re-read before retrying."""


@dataclass(frozen=True)
class BlockingAsset:
    """One asset that keeps a manifest from being built."""

    key: str
    asset_id: str
    state: str
    reason: str = ""


class ManifestBlocked(FailedPrecondition):
    """Some assets of a manifest are not AVAILABLE; `blocking` names every one."""

    def __init__(self, blocking: list[BlockingAsset]) -> None:
        parts = []
        for b in blocking:
            detail = f" ({b.reason})" if b.reason else ""
            parts.append(f"{b.key}={b.asset_id} is {b.state}{detail}")
        super().__init__(f"{len(blocking)} input(s) not AVAILABLE: " + "; ".join(parts))
        self.blocking = blocking
