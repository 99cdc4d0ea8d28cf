"""Prometheus metrics (prometheus_client): what each call, watch, store write and sweep did.

Imported only with --metrics-listen: a server without it loads none of this.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime

import grpc
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import Metric

from asset_service.domain.models import Change, ChangeKind, WatchEvent, WatchEventKind
from asset_service.telemetry._calls import Call
from asset_service.telemetry._recorder import Recorder

# Sub-millisecond calls (GetAsset on SQLite) up to long streams.
RPC_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
)  # fmt: skip
LAG_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)  # fmt: skip
STORE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
    5, 10,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# How many recent revisions keep the time this server saw them (watch lag): a watcher
# further behind than that is catching up from the store, which its lag would not describe.
SEEN_REVISIONS = 8192

# go-grpc-prometheus spells codes as Go's codes.Code.String() does; dashboards match those.
GO_CODE_NAMES = {
    code: "Canceled"
    if code is grpc.StatusCode.CANCELLED
    else "".join(p.capitalize() for p in code.name.split("_"))
    for code in grpc.StatusCode
}
GO_CODE_NAMES[grpc.StatusCode.OK] = "OK"

RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
METHOD_LABELS = ("grpc_service", "grpc_method")


class Metrics:
    """Every metric of the server, in a registry of its own (never prometheus_client's
    global one: two servers in one process, as tests run them, keep apart)."""

    def __init__(self) -> None:
        # The text format's *_created series double the series count for what the
        # process start time (process_start_time_seconds) already tells.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        # Every metric registers in this server's registry.
        counter = functools.partial(Counter, registry=r)
        gauge = functools.partial(Gauge, registry=r)
        histogram = functools.partial(Histogram, registry=r)
        self.started = counter("grpc_server_started", "RPCs started on the server.", RPC_LABELS)
        self.handled = counter(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            (*RPC_LABELS, "grpc_code"),
        )
        self.handling = histogram(
            "grpc_server_handling_seconds",
            "Response latency (seconds) of RPCs handled by the server: from the call's "
            "arrival to its status sent (a stream: its whole life).",
            RPC_LABELS,
            buckets=RPC_BUCKETS,
        )
        self.msg_received = counter(
            "grpc_server_msg_received", "Messages received by the server.", RPC_LABELS
        )
        self.msg_sent = counter("grpc_server_msg_sent", "Messages sent by the server.", RPC_LABELS)
        self.in_flight = gauge(
            "asset_service_rpcs_in_flight",
            "Calls started and not yet ended.",
            METHOD_LABELS,
        )
        self.bytes_received = counter(
            "asset_service_rpc_received_bytes",
            "Bytes of request messages received (as on the wire, before decoding).",
            METHOD_LABELS,
        )
        self.bytes_sent = counter(
            "asset_service_rpc_sent_bytes",
            "Bytes of response messages sent (serialized).",
            METHOD_LABELS,
        )
        self.upload_bytes = counter(
            "asset_service_upload_bytes",
            "Content bytes received by UploadAsset (chunks, whatever the upload's outcome).",
        )
        self.read_bytes = counter("asset_service_read_bytes", "Content bytes sent by ReadAsset.")
        self.watch_streams = gauge(
            "asset_service_watch_streams",
            "WatchAsset streams open, by what they follow (ids or a selector).",
            ("watch",),
        )
        self.watch_events = counter(
            "asset_service_watch_events_sent",
            "Events written to WatchAsset streams, by type (SNAPSHOT, CHANGED, DELETED).",
            ("type",),
        )
        self.watch_lag = histogram(
            "asset_service_watch_event_lag_seconds",
            "Time from this server seeing a change (its change feed delivering it) to the "
            "event being written to a watcher's stream (CHANGED/DELETED events).",
            buckets=LAG_BUCKETS,
        )
        self.feed_lag = histogram(
            "asset_service_change_feed_lag_seconds",
            "Time from a record's write (its updated_at, the writer's clock) to this "
            "server's change feed delivering the change.",
            buckets=LAG_BUCKETS,
        )
        self.feed_revision = gauge(
            "asset_service_change_feed_revision",
            "The revision of the last change the change feed delivered.",
        )
        self.store_seconds = histogram(
            "asset_service_store_operation_seconds",
            "Latency of metadata store operations, by operation and outcome (ok, error).",
            ("operation", "outcome"),
            buckets=STORE_BUCKETS,
        )
        self.storage_seconds = histogram(
            "asset_service_storage_operation_seconds",
            "Latency of blob storage operations, by operation and outcome (ok, error).",
            ("operation", "outcome"),
            buckets=STORE_BUCKETS,
        )
        self.group_commit = histogram(
            "asset_service_group_commit_writes",
            "Writes per group-commit transaction of the store's writer (sqlite, mongodb).",
            ("store",),
            buckets=BATCH_BUCKETS,
        )
        self.leases_expired = counter(
            "asset_service_leases_expired",
            "Promises failed by this server's sweep because their lease ran out.",
        )
        self.sessions_expired = counter(
            "asset_service_upload_sessions_expired",
            "Unfinished resumable uploads removed by this server's sweep past their TTL.",
        )
        self.assets_expired = counter(
            "asset_service_assets_expired",
            "Expired assets removed by this server's retention sweep, by deletion reason.",
            ("reason",),
        )
        self.reclaimed = counter(
            "asset_service_reclaimed",
            "Items this server's collections removed, by kind (orphan_files).",
            ("kind",),
        )
        self.build = Info("asset_service_build", "The running build.", registry=r)

    def method(self, service: str, name: str, grpc_type: str) -> MethodMetrics:
        return MethodMetrics(self, service, name, grpc_type)

    def add_collector(self, collect: Callable[[], Iterator[Metric]]) -> None:
        """Metrics read when Prometheus scrapes (state the server already keeps)."""
        self.registry.register(_Collector(collect))


class _Collector:
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self.collect = collect

    def describe(self) -> list[Metric]:
        return []  # read at scrape time; nothing to check at registration


class MethodMetrics:
    """One method's series, looked up once: a call costs a few increments."""

    __slots__ = (
        "_bytes_in",
        "_bytes_out",
        "_handled",
        "_in_flight",
        "_labels",
        "_metrics",
        "_msg_in",
        "_msg_out",
        "_seconds",
        "_started",
    )

    def __init__(self, metrics: Metrics, service: str, name: str, grpc_type: str) -> None:
        labels = (grpc_type, service, name)
        self._metrics = metrics
        self._labels = labels
        self._started = metrics.started.labels(*labels)
        self._seconds = metrics.handling.labels(*labels)
        self._msg_in = metrics.msg_received.labels(*labels)
        self._msg_out = metrics.msg_sent.labels(*labels)
        self._in_flight = metrics.in_flight.labels(service, name)
        self._bytes_in = metrics.bytes_received.labels(service, name)
        self._bytes_out = metrics.bytes_sent.labels(service, name)
        # Every method shows an OK series from the start, so that rate() sees its first call.
        self._handled = {grpc.StatusCode.OK: metrics.handled.labels(*labels, "OK")}

    def started(self) -> None:
        self._started.inc()
        self._in_flight.inc()

    def finished(self, call: Call, code: grpc.StatusCode, seconds: float) -> None:
        self._in_flight.dec()
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = self._metrics.handled.labels(
                *self._labels, GO_CODE_NAMES[code]
            )
        handled.inc()
        self._seconds.observe(seconds)
        if call.messages_in:
            self._msg_in.inc(call.messages_in)
            self._bytes_in.inc(call.bytes_in)
        if call.messages_out:
            self._msg_out.inc(call.messages_out)
            self._bytes_out.inc(call.bytes_out)


class MetricsRecorder(Recorder):
    """The service's events (telemetry/_recorder.py) counted in `metrics`."""

    enabled = True

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._watches = {
            False: metrics.watch_streams.labels("ids"),
            True: metrics.watch_streams.labels("selector"),
        }
        self._events = {kind: metrics.watch_events.labels(kind.value) for kind in WatchEventKind}
        # revision -> time.monotonic() when this server's feed delivered it (oldest first).
        self._seen: collections.OrderedDict[int, float] = collections.OrderedDict()

    def change_published(self, change: Change) -> None:
        now = time.monotonic()
        seen = self._seen
        seen[change.revision] = now
        if len(seen) > SEEN_REVISIONS:
            seen.popitem(last=False)
        self.metrics.feed_revision.set(change.revision)
        written = change.asset.updated_at
        if change.kind is ChangeKind.PUT and written.tzinfo is not None:
            # Another server's clock may run ahead of this one's: no negative lag.
            lag = (datetime.now(UTC) - written).total_seconds()
            self.metrics.feed_lag.observe(max(0.0, lag))

    def watch_opened(self, selector: bool) -> None:
        self._watches[selector].inc()

    def watch_closed(self, selector: bool) -> None:
        self._watches[selector].dec()

    def watch_sent(self, event: WatchEvent) -> None:
        counter = self._events.get(event.kind)
        if counter is not None:
            counter.inc()
        if event.kind is not WatchEventKind.SNAPSHOT:
            seen = self._seen.get(event.revision)
            if seen is not None:
                self.metrics.watch_lag.observe(time.monotonic() - seen)

    def upload_received(self, size: int) -> None:
        self.metrics.upload_bytes.inc(size)

    def read_sent(self, size: int) -> None:
        self.metrics.read_bytes.inc(size)

    def leases_expired(self, count: int) -> None:
        self.metrics.leases_expired.inc(count)

    def upload_sessions_expired(self, count: int) -> None:
        self.metrics.sessions_expired.inc(count)

    def reclaimed(self, kind: str, count: int) -> None:
        self.metrics.reclaimed.labels(kind).inc(count)

    def assets_expired(self, by_reason: Mapping[str, int]) -> None:
        for reason, count in by_reason.items():
            self.metrics.assets_expired.labels(reason).inc(count)

    def group_commit(self, store: str, writes: int) -> None:
        self.metrics.group_commit.labels(store).observe(writes)
