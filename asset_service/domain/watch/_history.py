"""The latest changes, slim and bounded in bytes, shared by every selector watch."""

from __future__ import annotations

import asyncio
import bisect

from asset_service.domain.errors import HistoryGone, Unavailable
from asset_service.domain.models import Asset, Change, approx_bytes

DEFAULT_HISTORY_BYTES = 32 * 1024 * 1024
# Changes handed to a stream per read of the history (it yields between reads).
REPLAY_BATCH = 256
# How long a selector watch waits for the history to be ready (at start, after a Resync).
READY_WAIT_SECONDS = 10.0


class History:
    """The latest changes, slim and in revision order, bounded in bytes.

    `floor`: every change with a higher revision is here, or still on its way from the
    change source. None while unknown (before the source started, after it lost history):
    then no selector watch can start. `epoch` counts the losses: a watch that began in an
    earlier one ends (its client lists again). `last`: the highest revision kept (or the
    floor).
    """

    def __init__(self, max_bytes: int = DEFAULT_HISTORY_BYTES) -> None:
        self.max_bytes = max_bytes
        self._changes: list[Change] = []
        self._revisions: list[int] = []
        self._costs: list[int] = []
        self._head = 0  # index of the oldest change kept
        self._bytes = 0
        self.floor: int | None = None
        self.last = 0
        self.epoch = 0
        self._ready = asyncio.Event()
        self._moved = asyncio.Event()
        self.closed = False

    def __len__(self) -> int:
        return len(self._changes) - self._head

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def start(self, floor: int) -> None:
        """The source is complete from just after revision `floor` on."""
        self.floor = floor
        self.last = floor
        self._ready.set()
        self._signal()

    def lost(self) -> None:
        """The source lost history: nothing kept can be trusted to be complete."""
        self._changes, self._revisions, self._costs = [], [], []
        self._head = self._bytes = 0
        self.floor = None
        self.epoch += 1
        self._ready.clear()
        self._signal()

    def close(self) -> None:
        self.closed = True
        self._signal()

    def append(self, change: Change, asset: Asset) -> None:
        """Keep `change`, with `asset` its slim record; evict the oldest past max_bytes."""
        if self.floor is None or change.revision <= self.last:
            # Not begun (or lost), committed before it began, or out of order (the hub
            # resyncs on that): never replayed, so the history stays sorted.
            return
        kept = Change(change.kind, asset)
        cost = approx_bytes(asset)
        self._changes.append(kept)
        self._revisions.append(change.revision)
        self._costs.append(cost)
        self._bytes += cost
        self.last = max(self.last, change.revision)
        while self._bytes > self.max_bytes and len(self) > 1:
            self._bytes -= self._costs[self._head]
            self.floor = self._revisions[self._head]
            self._head += 1
        # Evicted entries are dropped 1024 at a time: memory stays within max_bytes plus
        # that many records, and a list prefix is cheap to delete.
        if self._head >= 1024:
            del self._changes[: self._head], self._revisions[: self._head]
            del self._costs[: self._head]
            self._head = 0
        self._signal()

    def _signal(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()

    async def ready(self, wait_seconds: float = READY_WAIT_SECONDS) -> int:
        """The floor, once known; Unavailable if it stays unknown for `wait_seconds`."""
        try:
            async with asyncio.timeout(wait_seconds):
                await self._ready.wait()
        except TimeoutError:
            raise Unavailable(
                "this server's change history is not available (its change source is "
                "starting or failing); retry shortly"
            ) from None
        assert self.floor is not None
        return self.floor

    def check(self, after: int) -> None:
        """HistoryGone unless every change after revision `after` can be replayed."""
        if self.floor is None or after < self.floor:
            raise HistoryGone(after, self.floor)

    def since(self, after: int, limit: int = REPLAY_BATCH) -> list[Change]:
        """Up to `limit` kept changes with revisions above `after`, oldest first."""
        self.check(after)
        start = bisect.bisect_right(self._revisions, after, lo=self._head)
        return self._changes[start : start + limit]

    def next_move(self) -> asyncio.Event:
        """Set at the next append, loss or close (taken before reading: none is missed)."""
        return self._moved
