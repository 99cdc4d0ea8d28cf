"""Conversion between protobuf messages and domain objects, in one place."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.domain.errors import InvalidArgument
from asset_service.domain.manager import KeyOutcome
from asset_service.domain.models import (
    MAX_JSON_DEPTH,
    Asset,
    AssetFilter,
    AssetType,
    Status,
    UploadHeader,
    Value,
    ValueKind,
    WatchEvent,
    WatchEventKind,
    check_json_data,
    validate_key,
    validate_sha256,
)
from asset_service.domain.scrub import Checked, Outcome
from asset_service.domain.usage import Usage
from asset_service.domain.watch import Selector

_STATUS_TO_PB = {
    Status.PENDING: pb.ASSET_STATUS_PENDING,
    Status.AVAILABLE: pb.ASSET_STATUS_AVAILABLE,
    Status.FAILED: pb.ASSET_STATUS_FAILED,
}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}
_TYPE_TO_PB = {AssetType.FILE: pb.ASSET_TYPE_FILE, AssetType.VALUE: pb.ASSET_TYPE_VALUE}
_TYPE_FROM_PB = {v: k for k, v in _TYPE_TO_PB.items()}
_EVENT_TO_PB = {
    WatchEventKind.SNAPSHOT: pb.WATCH_EVENT_TYPE_SNAPSHOT,
    WatchEventKind.CHANGED: pb.WATCH_EVENT_TYPE_CHANGED,
    WatchEventKind.DELETED: pb.WATCH_EVENT_TYPE_DELETED,
}


def value_to_pb(value: Value) -> pb.Value:
    if value.kind is ValueKind.TEXT:
        return pb.Value(text=value.data.decode("utf-8"))
    if value.kind is ValueKind.JSON:
        return pb.Value(json=value.data.decode("utf-8"))
    return pb.Value(data=value.data)


def value_from_pb(msg: pb.Value) -> Value:
    kind = msg.WhichOneof("kind")
    if kind == "text":
        return Value(ValueKind.TEXT, msg.text.encode("utf-8"))
    if kind == "json":
        return Value(ValueKind.JSON, msg.json.encode("utf-8"))
    if kind == "data":
        return Value(ValueKind.BYTES, msg.data)
    raise InvalidArgument(
        "value is required: set exactly one of value.text, value.json, value.data"
    )


OUTCOME_TO_PB = {
    KeyOutcome.HIT: pb.GET_OR_CREATE_OUTCOME_HIT,
    KeyOutcome.JOIN: pb.GET_OR_CREATE_OUTCOME_JOIN,
    KeyOutcome.PRODUCE: pb.GET_OR_CREATE_OUTCOME_PRODUCE,
}


def asset_to_pb(asset: Asset) -> pb.Asset:
    msg = pb.Asset(
        id=asset.id,
        label=asset.label,
        status=_STATUS_TO_PB[asset.status],
        type=_TYPE_TO_PB[asset.type],
        media_type=asset.media_type,
        storage_path=asset.storage_path,
        created_by_task=asset.created_by_task,
        tags=list(asset.tags),
        size_bytes=asset.size_bytes,
        sha256=asset.sha256,
        failure_reason=asset.failure_reason,
        revision=asset.revision,
        created_by=asset.created_by,
        updated_by=asset.updated_by,
        lease_seconds=asset.lease_seconds,
        corrupt_reason=asset.corrupt_reason,
        key=asset.key,
    )
    if asset.value is not None:
        msg.value.CopyFrom(value_to_pb(asset.value))
    _set_time(msg.create_time, asset.created_at)
    _set_time(msg.update_time, asset.updated_at)
    if asset.lease_expires_at is not None:
        _set_time(msg.lease_expire_time, asset.lease_expires_at)
    if asset.expires_at is not None:
        _set_time(msg.expire_time, asset.expires_at)
    if asset.expiry_rule:
        msg.expiry_rule = asset.expiry_rule
    if asset.retained_until is not None:
        _set_time(msg.retain_until_time, asset.retained_until)
    if asset.deletion_reason:
        msg.deletion_reason = asset.deletion_reason
    for hold in asset.holds:
        held = msg.holds.add(
            owner=hold.owner, kind=hold.kind.value, reason=hold.reason, placed_by=hold.placed_by
        )
        if hold.placed_at is not None:
            _set_time(held.place_time, hold.placed_at)
    return msg


class Answers:
    """GetAsset's answer made last for each record, reused while the store hands back the
    very same record object (SqliteStore's point read does while nothing commits): a
    record is immutable, so its answer is too, and it is neither converted nor copied
    again. At most `max_entries` answers, holding `max_bytes` of values in all."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._answers: dict[str, tuple[Asset, pb.GetAssetResponse]] = {}
        self._bytes = 0

    def get_asset(self, asset: Asset) -> pb.GetAssetResponse:
        known = self._answers.get(asset.id)
        if known is not None and known[0] is asset:
            return known[1]
        answer = pb.GetAssetResponse(asset=asset_to_pb(asset))
        if known is not None:  # an older record of the asset: replaced
            del self._answers[asset.id]
            self._bytes -= _value_bytes(known[0])
        size = _value_bytes(asset)
        if len(self._answers) >= self.max_entries or self._bytes + size > self.max_bytes:
            self._answers.clear()
            self._bytes = 0
        self._answers[asset.id] = (asset, answer)
        self._bytes += size
        return answer


def _value_bytes(asset: Asset) -> int:
    return len(asset.value.data) if asset.value else 0


def usage_to_pb(usage: Usage) -> pb.GetUsageResponse:
    def by_status(parts: Mapping[Status, tuple[int, int]]) -> list[pb.StatusUsage]:
        return [
            pb.StatusUsage(status=_STATUS_TO_PB[status], count=count, bytes=size)
            for status, (count, size) in sorted(parts.items(), key=lambda p: p[0].value)
        ]

    return pb.GetUsageResponse(
        count=usage.count,
        bytes=usage.bytes,
        by_status=by_status(usage.by_status),
        group=usage.group.value,
        rows=[
            pb.UsageRow(key=r.key, count=r.count, bytes=r.bytes, by_status=by_status(r.by_status))
            for r in usage.rows
        ],
        more=usage.more,
        warn_bytes=usage.warn_bytes,
        over_threshold=usage.over_threshold,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)


def _set_time(field: timestamp_pb2.Timestamp, when: datetime) -> None:
    """Timestamp.FromDatetime (a naive datetime taken as UTC) at a quarter of its cost:
    every answer carries two, and ListAssets returns up to 1000 records."""
    since = when - (_NAIVE_EPOCH if when.tzinfo is None else _EPOCH)
    field.seconds = since.days * 86400 + since.seconds
    field.nanos = since.microseconds * 1000


def status_from_pb(value: int) -> Status | None:
    if value == pb.ASSET_STATUS_UNSPECIFIED:
        return None
    if value not in _STATUS_FROM_PB:
        raise InvalidArgument(f"status {value} is not a known AssetStatus")
    return _STATUS_FROM_PB[value]  # type: ignore[index]


def type_from_pb(value: int, default: AssetType | None = None) -> AssetType | None:
    if value == pb.ASSET_TYPE_UNSPECIFIED:
        return default
    if value not in _TYPE_FROM_PB:
        raise InvalidArgument(f"type {value} is not a known AssetType")
    return _TYPE_FROM_PB[value]  # type: ignore[index]


def filter_from_pb(req: pb.ListAssetsRequest) -> AssetFilter:
    return AssetFilter(
        status=status_from_pb(req.status),
        type=type_from_pb(req.type),
        tags=tuple(req.tags),
        created_by_task=req.created_by_task,
        label=req.label,
        key=validate_key(req.key) if req.key else "",
        sha256=validate_sha256(req.sha256),
    )


def selector_from_pb(msg: pb.AssetSelector) -> Selector:
    return Selector(
        task_id=msg.task_id,
        tags=tuple(msg.tags),
        status=status_from_pb(msg.status),
        type=type_from_pb(msg.type),
        label=msg.label,
        key=validate_key(msg.key) if msg.key else "",
    )


def upload_header_from_pb(msg: pb.UploadHeader) -> UploadHeader:
    return UploadHeader(
        label=msg.label,
        media_type=msg.media_type,
        tags=tuple(msg.tags),
        expected_size_bytes=msg.expected_size_bytes
        if msg.HasField("expected_size_bytes")
        else None,
        expected_sha256=msg.expected_sha256,
        pending_asset_id=msg.pending_asset_id,
        upload_id=msg.upload_id,
        write_offset=msg.write_offset,
        ttl_seconds=msg.ttl_seconds,
        reuse_stored_bytes=msg.reuse_stored_bytes,
    )


def struct_to_dict(msg: struct_pb2.Struct, what: str = "config_params") -> dict[str, Any]:
    """A Struct as plain JSON data; whole numbers come back as ints.

    Struct stores every number as a double, so {"n": 3} would reach input_data.json as
    3.0, which breaks modules doing range(n) or list indexing. NaN and Infinity (a Struct
    can carry them, JSON cannot) and nesting past MAX_JSON_DEPTH are the caller's error,
    named by key, so that input_data.json is always valid JSON.
    """
    data = {key: _plain(value) for key, value in msg.fields.items()}
    check_json_data(data, what)
    return data


def _plain(msg: struct_pb2.Value, depth: int = 1) -> Any:
    # protobuf's own parser caps message nesting (~100), so this recursion is bounded;
    # the depth guard keeps it so should that cap ever be raised.
    if depth > MAX_JSON_DEPTH + 1:
        return [[]]  # deeper than the limit: check_json_data reports where
    kind = msg.WhichOneof("kind")
    if kind == "number_value":
        number = msg.number_value
        if number.is_integer() and abs(number) < 2**53:
            return int(number)
        return number
    if kind == "string_value":
        return msg.string_value
    if kind == "bool_value":
        return msg.bool_value
    if kind == "struct_value":
        return {k: _plain(v, depth + 1) for k, v in msg.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(v, depth + 1) for v in msg.list_value.values]
    return None  # null_value, or a Value with no kind set (json_format reads it as null)


def event_to_pb(event: WatchEvent) -> pb.WatchAssetResponse:
    return pb.WatchAssetResponse(
        type=_EVENT_TO_PB[event.kind], asset=asset_to_pb(event.asset), revision=event.revision
    )


def event_bytes(event: WatchEvent) -> bytes:
    """One event as the serialized WatchAssetResponse that goes on the wire."""
    return event_to_pb(event).SerializeToString()


# One fulfilment fanned out to 1000 watchers is one serialization, not 1000: a cache of
# recent events' wire bytes. Bounded so that a burst of big VALUE changes cannot hold
# memory: its bytes count twice (the wire bytes and the record kept to compare with).
EVENT_CACHE_ENTRIES = 1024
EVENT_CACHE_BYTES = 32 * 1024 * 1024


class SharedEvents:
    """Serialized watch events, shared by every stream that sends the same event.

    Keyed by (kind, asset id, revision), but an entry is reused only for the same record
    (the hub hands every subscriber the same object) or one equal to it field by field, so
    two streams whose events merely share a key (a DELETED event carries whichever state
    its watcher saw last, with or without the value) never send each other's bytes.
    """

    def __init__(
        self, max_entries: int = EVENT_CACHE_ENTRIES, max_bytes: int = EVENT_CACHE_BYTES
    ) -> None:
        self.max_entries = max(1, max_entries)
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[tuple[str, str, int], tuple[Asset, bytes]] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        self.serialized = 0  # how many events were actually serialized (a test hook)

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def encode(self, event: WatchEvent) -> bytes:
        asset = event.asset
        key = (event.kind, asset.id, asset.revision)
        entry = self._entries.get(key)
        if entry is not None and (entry[0] is asset or entry[0] == asset):
            self._entries.move_to_end(key)
            return entry[1]
        data = event_bytes(event)
        self.serialized += 1
        if entry is not None:
            self._drop(key)
        cost = 2 * len(data)
        if cost <= self.max_bytes:
            self._entries[key] = (asset, data)
            self._bytes += cost
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
        return data

    def _drop(self, key: tuple[str, str, int]) -> None:
        _, data = self._entries.pop(key)
        self._bytes -= 2 * len(data)


_OUTCOME_TO_PB = {
    Outcome.OK: pb.SCRUB_OUTCOME_OK,
    Outcome.CORRUPT: pb.SCRUB_OUTCOME_CORRUPT,
    Outcome.UNREADABLE: pb.SCRUB_OUTCOME_UNREADABLE,
    Outcome.SKIPPED: pb.SCRUB_OUTCOME_SKIPPED,
    Outcome.RESTORED: pb.SCRUB_OUTCOME_RESTORED,
}


def scrubbed_to_pb(result: Checked) -> pb.ScrubAssetsResponse:
    return pb.ScrubAssetsResponse(
        asset_id=result.asset_id,
        outcome=_OUTCOME_TO_PB[result.outcome],
        detail=result.detail,
        size_bytes=result.size_bytes,
    )
