"""The scrub: re-read stored bytes at a bounded rate and mark what no longer checks out."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from asset_service.domain.errors import AssetError, CorruptBytes, InvalidArgument
from asset_service.domain.integrity import Integrity
from asset_service.domain.models import Asset, AssetFilter, AssetType, Status, parse_asset_id
from asset_service.domain.ports import MetadataStore

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_IDS = 1000
# Records listed per store call while a pass walks every FILE asset.
PAGE = 200


class Outcome(enum.StrEnum):
    OK = "OK"
    CORRUPT = "CORRUPT"
    UNREADABLE = "UNREADABLE"
    SKIPPED = "SKIPPED"
    RESTORED = "RESTORED"


@dataclass(frozen=True)
class Checked:
    """What checking one asset found."""

    asset_id: str
    outcome: Outcome
    detail: str = ""
    size_bytes: int = 0


class Pacer:
    """Sleeps so that the bytes reported average at most `rate` bytes a second (0: never)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._start = time.monotonic()
        self._done = 0

    async def __call__(self, size: int) -> None:
        if self.rate <= 0:
            return
        self._done += size
        ahead = self._done / self.rate - (time.monotonic() - self._start)
        if ahead > 0:
            await asyncio.sleep(ahead)


@dataclass
class Totals:
    """A pass's counts, for its closing log line (and health detail)."""

    checked: int = 0
    corrupt: int = 0
    unreadable: int = 0
    bytes: int = 0

    def add(self, result: Checked) -> None:
        self.checked += 1
        self.bytes += result.size_bytes
        if result.outcome is Outcome.CORRUPT:
            self.corrupt += 1
        elif result.outcome is Outcome.UNREADABLE:
            self.unreadable += 1


class Scrubber:
    """Checks AVAILABLE FILE assets against their block sums (Integrity.verify)."""

    def __init__(self, store: MetadataStore, integrity: Integrity) -> None:
        self.store = store
        self.integrity = integrity
        self.last_pass: Totals | None = None
        # Wall-clock time the last pass ended (metrics: how stale its verdict is).
        self.last_pass_end: float | None = None
        # The pass under way, as far as it got; and everything checked since start-up
        # (passes and ScrubAssets of named assets alike).
        self.current: Totals | None = None
        self.total = Totals()

    async def check(self, asset: Asset, pace: Pacer) -> Checked:
        if asset.type is not AssetType.FILE or asset.status is not Status.AVAILABLE:
            why = f"a {asset.status.value} {asset.type.value} asset; only AVAILABLE FILEs are"
            return Checked(asset.id, Outcome.SKIPPED, why)
        try:
            await self.integrity.verify(asset, pace)
        except CorruptBytes as exc:
            return Checked(asset.id, Outcome.CORRUPT, exc.message, asset.size_bytes)
        except AssetError as exc:
            # Missing bytes may be a storage not mounted (or a store failing): reported,
            # never marked.
            log.warning("scrub could not read asset %s: %s", asset.id, exc.message)
            return Checked(asset.id, Outcome.UNREADABLE, exc.message, asset.size_bytes)
        if asset.corrupt_reason:
            await self.integrity.clear_mark(asset)
            return Checked(asset.id, Outcome.RESTORED, asset.corrupt_reason, asset.size_bytes)
        return Checked(asset.id, Outcome.OK, "", asset.size_bytes)

    async def run(
        self, asset_ids: Sequence[str], rate_bytes: float
    ) -> AsyncGenerator[Checked, None]:
        """Check the named assets (or every AVAILABLE FILE asset), one result each."""
        if len(asset_ids) > MAX_IDS:
            raise InvalidArgument(f"{len(asset_ids)} ids given; the limit is {MAX_IDS}")
        if rate_bytes < 0:
            raise InvalidArgument("rate_mib_per_second must not be negative")
        ids = [parse_asset_id(i, "asset_ids entry") for i in asset_ids]
        pace = Pacer(rate_bytes)
        totals = Totals()
        if not ids:
            self.current = totals
        try:
            async for asset_id, asset in self._assets(ids):
                result = (
                    Checked(asset_id, Outcome.SKIPPED, "not found")
                    if asset is None
                    else await self.check(asset, pace)
                )
                totals.add(result)
                self.total.add(result)
                yield result
        finally:
            if self.current is totals:
                self.current = None
        if not ids:
            self.last_pass = totals
            self.last_pass_end = time.time()
            log.info(
                "scrub pass done: %d asset(s), %.1f MiB checked, %d corrupt, %d unreadable",
                totals.checked,
                totals.bytes / MIB,
                totals.corrupt,
                totals.unreadable,
            )

    async def _assets(self, ids: list[str]) -> AsyncIterator[tuple[str, Asset | None]]:
        if ids:
            for asset_id in ids:
                yield asset_id, await self.store.get(asset_id)
            return
        flt = AssetFilter(status=Status.AVAILABLE, type=AssetType.FILE)
        token = ""
        while True:
            page = await self.store.query(flt, PAGE, token)
            for listed in page.assets:
                # Read again, with its block sums (a listing leaves them out).
                yield listed.id, await self.store.get(listed.id)
            token = page.next_token
            if not token:
                return


# The first background pass waits this long after start-up (or the interval, if shorter),
# so a server restarted often does not re-read everything each time it starts.
FIRST_PASS_DELAY = 300.0
# A pass that failed (the store unreachable) is tried again this soon, not an interval later.
RETRY_SECONDS = 60.0


async def scrub_forever(scrubber: Scrubber, rate_bytes: float, interval: float) -> None:
    """The background scrub: a pass at `rate_bytes` a second, then one every `interval`
    seconds from the start of the last (a pass longer than that is followed at once)."""
    await asyncio.sleep(min(interval, FIRST_PASS_DELAY))
    while True:
        started = time.monotonic()
        wait = interval
        try:
            async for _ in scrubber.run((), rate_bytes):
                pass
        except Exception:  # the store failing mid-pass, or a bug: never end the scrub
            wait = min(interval, RETRY_SECONDS)
            log.warning("scrub pass stopped; the next starts in %gs", wait, exc_info=True)
        await asyncio.sleep(max(0.0, wait - (time.monotonic() - started)))
