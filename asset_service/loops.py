"""The loops each server process runs beside its calls: lease and retention sweeps,
collection, tombstones, unknown outcomes settled, and the scrub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

from asset_service import logs
from asset_service.config import Settings
from asset_service.domain.errors import AssetError
from asset_service.domain.manager import AssetManager
from asset_service.domain.scrub import scrub_forever
from asset_service.telemetry import Recorder

log = logging.getLogger(__name__)


def start(
    manager: AssetManager, settings: Settings, recorder: Recorder, *, scrubs: bool
) -> list[asyncio.Task[None]]:
    """Every loop as a task (`scrubs`: this process scrubs; one of --workers does)."""
    tasks = [
        asyncio.create_task(_settle_unknown_outcomes(manager)),
        asyncio.create_task(
            _expire_leases(manager, settings.lease_check_interval_seconds, recorder)
        ),
        asyncio.create_task(
            _expire_assets(manager, settings.retention_check_interval_seconds, recorder)
        ),
        asyncio.create_task(
            _collect(
                manager,
                settings.collect_interval_seconds,
                settings.retention_sweep_limit,
                recorder,
            )
        ),
        asyncio.create_task(
            _sweep_tombstones(manager, _tenth(settings.watch_tombstone_ttl_seconds))
        ),
    ]
    if settings.scrub_rate_mib > 0 and scrubs:
        rate = settings.scrub_rate_mib * 1024 * 1024
        tasks.append(
            asyncio.create_task(
                scrub_forever(manager.scrubber, rate, settings.scrub_interval_seconds)
            )
        )
    return tasks


SETTLE_INTERVAL = 5.0


@contextlib.contextmanager
def _upkeep(what: str) -> Iterator[None]:
    """One round of `what`, which never ends its loop: the store's or the disk's weather
    (AssetError, OSError) is a warning; anything else is a bug, logged with its traceback
    (rate-limited). Uncaught, it ended the loop's task in silence, and with it that upkeep
    (expiry, leases, collection) until a restart."""
    try:
        yield
    except (AssetError, OSError) as exc:
        log.warning("%s failed: %s", what, exc)
    except Exception:
        log.error(
            "%s failed unexpectedly; it runs again next interval",
            what,
            exc_info=True,
            extra={logs.RATE_KEY: f"loop:{what}"},
        )


async def _expire_leases(manager: AssetManager, interval: float, recorder: Recorder) -> None:
    """Fail PENDING assets whose lease ran out: the server process holding the store's
    sweep claim does (it keeps it for a few intervals); each asset's conditional
    transition has one winner in any case."""
    hold = max(3 * interval, 3.0)
    while True:
        with _upkeep("lease sweep"):
            if expired := await manager.expire_leases(hold):
                recorder.leases_expired(expired)
        await asyncio.sleep(interval)


async def _expire_assets(manager: AssetManager, interval: float, recorder: Recorder) -> None:
    """Remove expired assets nothing holds: the server process holding the store's
    retention claim does; each removal is one conditional delete (one winner anyway)."""
    hold = max(3 * interval, 3.0)
    while True:
        # After an interval, not at once: a server started to look (or restarted after a
        # crash) does not remove anything in its first moments.
        await asyncio.sleep(interval)
        with _upkeep("retention sweep"):
            if removed := await manager.expire_assets(hold):
                recorder.assets_expired(removed)
            await manager.warn_if_full()


async def _collect(manager: AssetManager, interval: float, limit: int, recorder: Recorder) -> None:
    """What nothing needs any more, at most `limit` of each kind per run, counted in
    asset_service_reclaimed_total{kind}. Every server, for what may live on its own disk
    (and start-up did all of it, so not at once): manifest folders past --manifest-ttl
    (at start-up too), cached object-store copies, resumable uploads past their expiry
    and staging of processes that died (journaled moves settled by their records first).
    One server at a time, by the store's collection claim: stored files no record points
    at, past --orphan-grace."""
    hold = max(3 * interval, 3.0)
    first = True
    while True:
        if not first:
            await asyncio.sleep(interval)
        sweeps: list[tuple[str, Callable[[], Awaitable[int]]]] = [
            ("manifest_folders", lambda: manager.sweep_manifests(limit)),
            ("cache_copies", lambda: manager.sweep_cache(limit)),
        ]
        if not first:
            sweeps += [
                ("upload_sessions", lambda: manager.sweep_upload_sessions(limit)),
                ("staging", lambda: manager.collect_staging(limit)),
                ("orphan_files", lambda: manager.collect_orphans(hold)),
            ]
        for kind, sweep in sweeps:
            with _upkeep(f"collection of {kind.replace('_', ' ')}"):
                if removed := await sweep():
                    recorder.reclaimed(kind, removed)
                    if kind == "upload_sessions":
                        recorder.upload_sessions_expired(removed)  # (the older metric)
        first = False


def _tenth(ttl: float) -> float:
    """A tenth of a TTL, between 1 s and 10 min."""
    return min(600.0, max(1.0, ttl / 10))


async def _sweep_tombstones(manager: AssetManager, interval: float) -> None:
    """Remove deleted assets' tombstones past --watch-tombstone-ttl (every server process
    sweeps; each removal is idempotent)."""
    while True:
        with _upkeep("tombstone sweep"):
            await manager.sweep_tombstones()
        await asyncio.sleep(interval)


async def _settle_unknown_outcomes(manager: AssetManager) -> None:
    """Record writes whose outcome was unknown: keep or drop their bytes once it is known."""
    while True:
        await asyncio.sleep(SETTLE_INTERVAL)
        with _upkeep("settling unknown outcomes"):
            if await manager.settle_unsettled():
                log.info("settled record writes whose outcome had been unknown")
