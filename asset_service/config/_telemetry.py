"""Telemetry settings: metrics, log format, the access log."""

from __future__ import annotations

from argparse import ArgumentTypeError
from dataclasses import dataclass

from asset_service.config._kinds import INTERVAL
from asset_service.options import ADDRESS, BOOL, Kind, choice, setting


def _metrics_address(text: str) -> str:
    if not text.strip():
        return ""
    if text.strip().startswith(("unix:", "unix-abstract:")):
        raise ArgumentTypeError(f"{text!r} is a unix socket; metrics are served over TCP")
    return ADDRESS.parse(text)


METRICS_ADDRESS = Kind(
    "address or empty",
    _metrics_address,
    "HOST:PORT (port 0 picks one), [::1]:PORT, or empty for no metrics",
    str,
    "HOST:PORT",
)


@dataclass(frozen=True)
class TelemetrySettings:
    """The "telemetry" group: metrics, log format, the access log."""

    metrics_listen: str = setting(
        METRICS_ADDRESS,
        "",
        "serve Prometheus metrics (text format) at http://HOST:PORT/metrics, e.g. "
        "0.0.0.0:9464; the port is logged at start-up. Empty: no metrics, no listener, no "
        "cost. Unauthenticated and plain HTTP: keep it on a private network. With --workers N, "
        "worker i (from 0) serves its own at PORT+i",
        group="telemetry",
    )
    # Counting is an index scan of every record (~0.1 s per million on SQLite, a COUNT_SCAN
    # per status on MongoDB): every 30 s costs well under 1% of a core and is as fresh as a
    # dashboard needs. Counting on each transition instead would need every change's
    # previous status, which the change feed does not carry.
    metrics_count_interval_seconds: float = setting(
        INTERVAL,
        "30s",
        "with --metrics-listen: time between counts of the records by status "
        "(asset_service_assets, an index scan of every record: all servers' writes)",
        group="telemetry",
        flag="--metrics-count-interval",
    )
    log_format: str = setting(
        choice("text", "json"),
        "text",
        "every log line as text, or as one JSON object (ts, level, logger, message and the "
        "line's fields) for log shippers",
        group="telemetry",
    )
    access_log: bool = setting(
        BOOL,
        "true",
        "one INFO line per call on logger asset_service.access: method, status code, "
        "duration, peer, principal, bytes in and out, and the ref of an INTERNAL error "
        "(health checks at DEBUG); --no-access-log turns them off",
        group="telemetry",
    )
