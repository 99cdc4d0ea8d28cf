"""I/O-free logic shared by the sync and asyncio clients: requests, deadlines, watch, waiting."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from asset_client import _convert
from asset_client._convert import pb
from asset_client.errors import (
    AssetDeletedError,
    AssetFailedError,
    AssetServiceError,
    UnavailableError,
    WaitTimeoutError,
)
from asset_client.models import (
    Asset,
    AssetStatus,
    AssetType,
    Value,
    WatchEvent,
    WatchEventType,
)


class Deadline:
    """An absolute deadline from a relative timeout (None: no deadline)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        return None if self.at is None else max(self.at - time.monotonic(), 0.0)

    def capped(self, timeout: float | None) -> float | None:
        """`timeout`, or what is left of this deadline if that is sooner."""
        left = self.remaining()
        return timeout if left is None or (timeout is not None and timeout < left) else left


class Cursor:
    """Where a watch resumes, and whether it does; shared by id and selector watches.

    The cursor is the greatest revision delivered so far. gRPC itself retries a watch
    after UNAVAILABLE until its first event (the channel's retry policy); a stream cut by
    UNAVAILABLE after delivering events is re-opened here with `after_revision` set to
    the cursor, so nothing is lost and nothing repeated. A re-opened stream that fails
    again before any event (gRPC having retried it already) ends the watch.
    """

    def __init__(self, after_revision: int, timeout: float | None) -> None:
        self.revision = after_revision
        self.deadline = Deadline(timeout)
        self.delivered = 0  # events delivered by the stream open now

    def pin_request(self) -> pb.ListAssetsRequest | None:
        """A listing whose revision the watch must start after, or None (already known)."""
        return None

    def pin(self, revision: int) -> None:
        self.revision = revision

    def request(self) -> pb.WatchAssetRequest:
        self.delivered = 0
        return self._request()

    def _request(self) -> pb.WatchAssetRequest:
        raise NotImplementedError

    def observe(self, msg: pb.WatchAssetResponse) -> WatchEvent:
        event = _convert.event_from_pb(msg)
        self.revision = max(self.revision, event.revision)
        self.delivered += 1
        return event

    def resumes(self, err: AssetServiceError) -> bool:
        """Whether to re-open the watch after `err` rather than raise it."""
        if not isinstance(err, UnavailableError) or not self.delivered:
            return False
        remaining = self.deadline.remaining()
        return remaining is None or remaining > 0


class WatchCursor(Cursor):
    """A watch of explicit asset ids: a snapshot, then their changes."""

    def __init__(
        self,
        asset_ids: Iterable[str],
        after_revision: int,
        follow: bool,
        timeout: float | None,
    ) -> None:
        self.asset_ids = _convert.tags_list(asset_ids)
        if not self.asset_ids:
            raise ValueError("watch needs at least one asset id")
        super().__init__(after_revision, timeout)
        self.follow = follow

    def _request(self) -> pb.WatchAssetRequest:
        return pb.WatchAssetRequest(
            asset_ids=self.asset_ids, after_revision=self.revision, follow=self.follow
        )


class Waiter:
    """Follows watch events until every asset is AVAILABLE; raises if one cannot become so."""

    def __init__(self, asset_ids: Iterable[str], timeout: float | None) -> None:
        self.asset_ids = tuple(dict.fromkeys(_convert.tags_list(asset_ids)))
        self.timeout = timeout
        self.assets: dict[str, Asset] = {}

    def observe(self, event: WatchEvent) -> tuple[Asset, ...] | None:
        """All assets, in the order asked for, once every one is AVAILABLE; else None."""
        asset = event.asset
        if event.type is WatchEventType.DELETED:
            raise AssetDeletedError(f"asset {asset.id} ({asset.label!r}) was deleted", asset)
        if asset.status is AssetStatus.FAILED:
            reason = asset.failure_reason or "no reason given"
            raise AssetFailedError(f"asset {asset.id} ({asset.label!r}) FAILED: {reason}", asset)
        self.assets[asset.id] = asset
        if all(
            a in self.assets and self.assets[a].status is AssetStatus.AVAILABLE
            for a in self.asset_ids
        ):
            return tuple(self.assets[a] for a in self.asset_ids)
        return None

    def pending(self) -> tuple[str, ...]:
        return tuple(
            a
            for a in self.asset_ids
            if a not in self.assets or self.assets[a].status is not AssetStatus.AVAILABLE
        )

    def timed_out(self) -> WaitTimeoutError:
        pending = self.pending()
        return WaitTimeoutError(
            f"timed out after {self.timeout}s waiting for {len(pending)} asset(s) to become "
            f"AVAILABLE: {', '.join(pending)}",
            pending,
        )

    def ended(self) -> AssetServiceError:
        return AssetServiceError(
            "the watch ended before every asset was AVAILABLE; still waiting for "
            + ", ".join(self.pending())
        )


def list_request(
    status: AssetStatus | None,
    type_: AssetType | None,
    tags: Iterable[str],
    created_by_task: str | None,
    label: str | None,
    page_size: int,
    key: str | None = None,
    sha256: str | None = None,
) -> pb.ListAssetsRequest:
    return pb.ListAssetsRequest(
        status=_convert.status_to_pb(status),
        type=_convert.type_to_pb(type_),
        tags=_convert.tags_list(tags),
        created_by_task=created_by_task or "",
        label=label or "",
        page_size=page_size,
        key=key or "",
        sha256=sha256 or "",
    )


def create_pending_request(
    task_id: str,
    label: str,
    media_type: str,
    type_: AssetType,
    tags: Iterable[str],
    lease_seconds: int,
    ttl_seconds: int = 0,
) -> pb.CreatePendingAssetRequest:
    return pb.CreatePendingAssetRequest(
        task_id=task_id,
        label=label,
        media_type=media_type,
        type=_convert.type_to_pb(type_),
        tags=_convert.tags_list(tags),
        lease_seconds=lease_seconds,
        ttl_seconds=ttl_seconds,
    )


def fulfill_request(
    asset_id: str,
    source_path: str | os.PathLike[str] | None,
    value: Value | str | bytes | None,
    expected_sha256: str,
) -> pb.FulfillAssetRequest:
    if (source_path is None) == (value is None):
        raise ValueError("pass exactly one of source_path= (a file on the server) or value=")
    request = pb.FulfillAssetRequest(asset_id=asset_id, expected_sha256=expected_sha256)
    if source_path is not None:
        request.source_path = _convert.server_path(source_path)
    else:
        assert value is not None
        request.value.CopyFrom(_convert.value_to_pb(value))
    return request


def create_value_request(
    label: str, value: Value, media_type: str | None, tags: Iterable[str], ttl_seconds: int = 0
) -> pb.CreateValueAssetRequest:
    return pb.CreateValueAssetRequest(
        label=label,
        media_type=media_type or "",
        value=_convert.value_to_pb(value),
        tags=_convert.tags_list(tags),
        ttl_seconds=ttl_seconds,
    )


def register_request(
    path: str | os.PathLike[str],
    label: str | None,
    media_type: str | None,
    tags: Iterable[str],
    move: bool,
) -> pb.RegisterFileRequest:
    return pb.RegisterFileRequest(
        path=_convert.server_path(path),
        label=label or "",
        media_type=media_type or "",
        tags=_convert.tags_list(tags),
        move=move,
    )


def manifest_request(
    mappings: Mapping[str, str], config_params: Mapping[str, Any] | None, wait: bool = False
) -> pb.GetManifestRequest:
    request = pb.GetManifestRequest(asset_mappings=dict(mappings), wait=wait)
    struct = _convert.struct_from_dict(config_params)
    if struct is not None:
        request.config_params.CopyFrom(struct)
    return request
