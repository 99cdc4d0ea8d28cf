"""Conversion between protobuf messages and the client's dataclasses, in one place."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import UTC
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

# The client's own copy of the stubs (scripts/gen_protos.py says why it is a copy).
from asset_client._proto.asset.v1 import asset_service_pb2 as pb
from asset_client._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_client.models import (
    Asset,
    AssetPage,
    AssetStatus,
    AssetType,
    GetOrCreateOutcome,
    Hold,
    KeyedAsset,
    Manifest,
    ScrubOutcome,
    ScrubResult,
    UploadState,
    Usage,
    UsageRow,
    Value,
    ValueKind,
    WatchEvent,
    WatchEventType,
)

__all__ = ["pb", "pb_grpc"]

_STATUS_FROM_PB = {
    pb.ASSET_STATUS_PENDING: AssetStatus.PENDING,
    pb.ASSET_STATUS_AVAILABLE: AssetStatus.AVAILABLE,
    pb.ASSET_STATUS_FAILED: AssetStatus.FAILED,
}
_STATUS_TO_PB = {v: k for k, v in _STATUS_FROM_PB.items()}
_TYPE_FROM_PB = {pb.ASSET_TYPE_FILE: AssetType.FILE, pb.ASSET_TYPE_VALUE: AssetType.VALUE}
_TYPE_TO_PB = {v: k for k, v in _TYPE_FROM_PB.items()}
_EVENT_FROM_PB = {
    pb.WATCH_EVENT_TYPE_SNAPSHOT: WatchEventType.SNAPSHOT,
    pb.WATCH_EVENT_TYPE_CHANGED: WatchEventType.CHANGED,
    pb.WATCH_EVENT_TYPE_DELETED: WatchEventType.DELETED,
}


def value_from_pb(msg: pb.Value) -> Value | None:
    kind = msg.WhichOneof("kind")
    if kind == "text":
        return Value(ValueKind.TEXT, msg.text)
    if kind == "json":
        return Value(ValueKind.JSON, msg.json)
    if kind == "data":
        return Value(ValueKind.DATA, msg.data)
    return None


def value_to_pb(value: Value | str | bytes) -> pb.Value:
    """A Value as is; a str as text; bytes as data (use Value.of_json for JSON)."""
    if isinstance(value, str):
        return pb.Value(text=value)
    if isinstance(value, bytes | bytearray | memoryview):
        return pb.Value(data=bytes(value))
    if value.kind is ValueKind.TEXT:
        return pb.Value(text=str(value.content))
    if value.kind is ValueKind.JSON:
        return pb.Value(json=str(value.content))
    return pb.Value(data=value.as_bytes())


def value_from_kwargs(text: str | None, json: Any, data: bytes | None, json_given: bool) -> Value:
    """Exactly one of text=, json=, data= (json= is any JSON-serialisable object)."""
    given = [text is not None, json_given, data is not None]
    if sum(given) != 1:
        raise ValueError("pass exactly one of text=, json=, data=")
    if text is not None:
        return Value.of_text(text)
    if data is not None:
        return Value.of_bytes(data)
    return Value.of_json(json)


def asset_from_pb(msg: pb.Asset) -> Asset:
    return Asset(
        id=msg.id,
        label=msg.label,
        status=_STATUS_FROM_PB[msg.status],
        type=_TYPE_FROM_PB[msg.type],
        media_type=msg.media_type,
        storage_path=msg.storage_path,
        value=value_from_pb(msg.value) if msg.HasField("value") else None,
        created_by_task=msg.created_by_task,
        tags=tuple(msg.tags),
        size_bytes=msg.size_bytes,
        sha256=msg.sha256,
        create_time=msg.create_time.ToDatetime(tzinfo=UTC),
        update_time=msg.update_time.ToDatetime(tzinfo=UTC),
        failure_reason=msg.failure_reason,
        revision=msg.revision,
        created_by=msg.created_by,
        updated_by=msg.updated_by,
        lease_seconds=msg.lease_seconds,
        corrupt_reason=msg.corrupt_reason,
        key=msg.key,
        lease_expires_at=(
            msg.lease_expire_time.ToDatetime(tzinfo=UTC)
            if msg.HasField("lease_expire_time")
            else None
        ),
        expires_at=msg.expire_time.ToDatetime(tzinfo=UTC) if msg.HasField("expire_time") else None,
        expiry_rule=msg.expiry_rule,
        holds=tuple(Hold(h.owner, h.kind, h.reason, h.placed_by) for h in msg.holds),
        deletion_reason=msg.deletion_reason,
    )


def usage_from_pb(msg: pb.GetUsageResponse) -> Usage:
    def by_status(parts: Iterable[pb.StatusUsage]) -> dict[AssetStatus, tuple[int, int]]:
        return {_STATUS_FROM_PB[p.status]: (p.count, p.bytes) for p in parts}

    return Usage(
        count=msg.count,
        bytes=msg.bytes,
        by_status=by_status(msg.by_status),
        group=msg.group,
        rows=tuple(UsageRow(r.key, r.count, r.bytes, by_status(r.by_status)) for r in msg.rows),
        more=msg.more,
        warn_bytes=msg.warn_bytes,
        over_threshold=msg.over_threshold,
    )


_OUTCOME_FROM_PB = {
    pb.GET_OR_CREATE_OUTCOME_HIT: GetOrCreateOutcome.HIT,
    pb.GET_OR_CREATE_OUTCOME_JOIN: GetOrCreateOutcome.JOIN,
    pb.GET_OR_CREATE_OUTCOME_PRODUCE: GetOrCreateOutcome.PRODUCE,
}


def keyed_from_pb(msg: pb.GetOrCreatePendingAssetResponse) -> KeyedAsset:
    return KeyedAsset(_OUTCOME_FROM_PB[msg.outcome], asset_from_pb(msg.asset))


def upload_state_from_pb(msg: pb.QueryUploadResponse) -> UploadState:
    return UploadState(
        committed_bytes=msg.committed_bytes,
        expire_time=msg.expire_time.ToDatetime(tzinfo=UTC) if msg.HasField("expire_time") else None,
        asset=asset_from_pb(msg.asset) if msg.HasField("asset") else None,
    )


def event_from_pb(msg: pb.WatchAssetResponse) -> WatchEvent:
    return WatchEvent(_EVENT_FROM_PB[msg.type], asset_from_pb(msg.asset), msg.revision)


def page_from_pb(msg: pb.ListAssetsResponse) -> AssetPage:
    return AssetPage(tuple(asset_from_pb(a) for a in msg.assets), msg.next_page_token, msg.revision)


def manifest_from_pb(msg: pb.GetManifestResponse) -> Manifest:
    return Manifest(Path(msg.manifest_path), {k: Path(v) for k, v in msg.entries.items()})


def status_to_pb(status: AssetStatus | None) -> pb.AssetStatus.ValueType:
    return pb.ASSET_STATUS_UNSPECIFIED if status is None else _STATUS_TO_PB[status]


def type_to_pb(type_: AssetType | None) -> pb.AssetType.ValueType:
    return pb.ASSET_TYPE_UNSPECIFIED if type_ is None else _TYPE_TO_PB[type_]


def struct_from_dict(params: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if params is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(dict(params))
    return struct


def server_path(path: str | os.PathLike[str]) -> str:
    """An absolute path for the server to open (it checks it against its import roots)."""
    return os.path.abspath(os.fspath(path))


def tags_list(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        raise TypeError("tags must be an iterable of strings, not one string")
    return list(tags)


def scrubbed_from_pb(msg: pb.ScrubAssetsResponse) -> ScrubResult:
    outcome = pb.ScrubOutcome.Name(msg.outcome).removeprefix("SCRUB_OUTCOME_")
    return ScrubResult(msg.asset_id, ScrubOutcome(outcome), msg.detail, msg.size_bytes)
