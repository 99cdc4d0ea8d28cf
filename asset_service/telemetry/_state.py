"""Metrics read when Prometheus scrapes: what the server already keeps (calls in progress,
readiness, the scrub's counts) and the assets by status, counted every 30 s."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from asset_service import logs
from asset_service.domain.errors import AssetError
from asset_service.domain.models import Status
from asset_service.domain.ports import MetadataStore
from asset_service.domain.scrub import Scrubber

log = logging.getLogger(__name__)


class Calls(Protocol):
    """The servicer's counts of streams in progress, and their limits."""

    uploads_in_progress: int
    resumable_uploads_in_progress: int
    reads_in_progress: int
    max_concurrent_uploads: int
    max_concurrent_reads: int


class Readiness(Protocol):
    @property
    def ready(self) -> bool: ...


@dataclass
class AssetCounts:
    """The last count by status, and when it was taken (time.time())."""

    by_status: dict[Status, int] = field(default_factory=dict)
    at: float = 0.0


async def count_assets_forever(store: MetadataStore, counts: AssetCounts, interval: float) -> None:
    """Count the records by status every `interval` seconds (--metrics-count-interval,
    config.py says why not on every transition)."""
    while True:
        try:
            counts.by_status = await store.count_by_status()
            counts.at = time.time()
        except (AssetError, OSError) as exc:
            log.warning("counting assets by status failed (the metric keeps its last): %s", exc)
        except Exception:  # a bug: said, and counted again next time (uncaught, never again)
            log.error(
                "counting assets by status failed unexpectedly (the metric keeps its last)",
                exc_info=True,
                extra={logs.RATE_KEY: "loop:count"},
            )
        await asyncio.sleep(interval)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class StateCollector:
    """Reads the server's own state at scrape time (on the HTTP server's thread: only
    plain attributes are read, each of them one reference)."""

    def __init__(
        self, calls: Calls, probes: Readiness, scrubber: Scrubber, counts: AssetCounts
    ) -> None:
        self.calls = calls
        self.probes = probes
        self.scrubber = scrubber
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        calls = self.calls
        yield _gauge(
            "asset_service_ready",
            "1 while readiness (health of asset.v1.AssetService) answers SERVING.",
            1.0 if self.probes.ready else 0.0,
        )
        yield _gauge(
            "asset_service_uploads_in_progress",
            "UploadAsset streams in progress.",
            calls.uploads_in_progress,
        )
        yield _gauge(
            "asset_service_resumable_uploads_in_progress",
            "UploadAsset streams in progress that resume or start a resumable upload.",
            calls.resumable_uploads_in_progress,
        )
        yield _gauge(
            "asset_service_uploads_limit",
            "--max-concurrent-uploads: one more upload is refused.",
            calls.max_concurrent_uploads,
        )
        yield _gauge(
            "asset_service_reads_in_progress",
            "ReadAsset streams in progress.",
            calls.reads_in_progress,
        )
        yield _gauge(
            "asset_service_reads_limit",
            "--max-concurrent-reads: one more read is refused.",
            calls.max_concurrent_reads,
        )
        yield from self._assets()
        yield from self._scrub()

    def _assets(self) -> Iterator[Metric]:
        counts = self.counts
        if not counts.at:
            return  # not counted yet: no series rather than zeros that are not true
        assets = GaugeMetricFamily(
            "asset_service_assets",
            "Records by status (counted every --metrics-count-interval, all servers' writes).",
            labels=("status",),
        )
        for status, n in counts.by_status.items():
            assets.add_metric((status.value,), n)
        yield assets
        yield _gauge(
            "asset_service_assets_counted_timestamp_seconds",
            "When asset_service_assets was counted (Unix time).",
            counts.at,
        )

    def _scrub(self) -> Iterator[Metric]:
        scrubber = self.scrubber
        total = scrubber.total
        yield CounterMetricFamily(
            "asset_service_scrub_checked_assets",
            "Assets the scrub checked (passes and ScrubAssets calls).",
            value=total.checked,
        )
        yield CounterMetricFamily(
            "asset_service_scrub_checked_bytes",
            "Stored bytes the scrub re-read and checked.",
            value=total.bytes,
        )
        yield CounterMetricFamily(
            "asset_service_scrub_corrupt_found",
            "Times the scrub found an asset's bytes corrupt (and marked it).",
            value=total.corrupt,
        )
        yield CounterMetricFamily(
            "asset_service_scrub_unreadable_found",
            "Times the scrub could not read an asset's bytes (missing, storage unreachable).",
            value=total.unreadable,
        )
        current = scrubber.current
        yield _gauge(
            "asset_service_scrub_running",
            "1 while a scrub pass over every FILE asset is under way.",
            0.0 if current is None else 1.0,
        )
        yield _gauge(
            "asset_service_scrub_pass_checked_assets",
            "Assets checked so far by the pass under way (0 between passes).",
            0 if current is None else current.checked,
        )
        yield _gauge(
            "asset_service_scrub_pass_checked_bytes",
            "Bytes checked so far by the pass under way (0 between passes).",
            0 if current is None else current.bytes,
        )
        last = scrubber.last_pass
        if last is not None and scrubber.last_pass_end is not None:
            yield _gauge(
                "asset_service_scrub_last_pass_end_timestamp_seconds",
                "When the last complete scrub pass ended (Unix time).",
                scrubber.last_pass_end,
            )
            yield _gauge(
                "asset_service_scrub_corrupt_assets",
                "Assets the last complete scrub pass found corrupt.",
                last.corrupt,
            )
            yield _gauge(
                "asset_service_scrub_unreadable_assets",
                "Assets the last complete scrub pass could not read.",
                last.unreadable,
            )
