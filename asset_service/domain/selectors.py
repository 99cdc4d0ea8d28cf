"""Selector watches: every change to the assets a selector matches, from one shared history.

A watch of explicit ids re-reads their current state when it falls behind; a selector
cannot (deleted assets leave no trace in the store), so the hub keeps the latest changes,
without values and bounded in bytes, in one History shared by every selector watch. A
watch replays it from its revision and then follows it. A revision older than the
history (evicted, or before this process started) is refused with HistoryGone: the
client lists again (ListAssets gives the revision of its page) and watches from there,
as Kubernetes informers do after "410 Gone".
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from asset_service.domain.errors import HistoryGone, Unavailable
from asset_service.domain.models import (
    Asset,
    AssetType,
    Change,
    ChangeKind,
    Status,
    WatchEvent,
    approx_bytes,
)

log = logging.getLogger(__name__)

DEFAULT_HISTORY_BYTES = 32 * 1024 * 1024
# Changes handed to a stream per read of the history (it yields between reads).
REPLAY_BATCH = 256
# How long a selector watch waits for the history to be ready (at start, after a Resync).
READY_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class Selector:
    """Which assets a watch follows; empty fields match everything."""

    task_id: str = ""
    tags: tuple[str, ...] = ()
    status: Status | None = None
    type: AssetType | None = None
    label: str = ""

    def concerns(self, change: Change) -> bool:
        """Whether a watcher of this selector gets `change`: the asset matches it after
        the change, or (a selector on PENDING) a promise has just left PENDING. Every
        other field it tests never changes once an asset exists."""
        asset = change.asset
        if (
            (self.task_id and asset.created_by_task != self.task_id)
            or (self.type is not None and asset.type is not self.type)
            or (self.label and asset.label != self.label)
            or any(tag not in asset.tags for tag in self.tags)
        ):
            return False
        if self.status is None or asset.status is self.status:
            return True
        # A promise (the only assets with a task) is terminal only after leaving PENDING;
        # a deletion is sent only where the last state matched.
        return (
            self.status is Status.PENDING
            and change.kind is ChangeKind.PUT
            and asset.status.terminal
            and bool(asset.created_by_task)
        )


class History:
    """The latest changes, slim and in revision order, bounded in bytes.

    `floor`: every change with a higher revision is here, or still on its way from the
    change source. None while unknown (before the source started, after it lost history):
    then no selector watch can start, and those running end.
    """

    def __init__(self, max_bytes: int = DEFAULT_HISTORY_BYTES) -> None:
        self.max_bytes = max_bytes
        self._changes: list[Change] = []
        self._revisions: list[int] = []
        self._costs: list[int] = []
        self._head = 0  # index of the oldest change kept
        self._bytes = 0
        self.floor: int | None = None
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
        self._ready.set()
        self._signal()

    def lost(self) -> None:
        """The source lost history: nothing kept can be trusted to be complete."""
        self._changes, self._revisions, self._costs = [], [], []
        self._head = self._bytes = 0
        self.floor = None
        self._ready.clear()
        self._signal()

    def close(self) -> None:
        self.closed = True
        self._signal()

    def append(self, change: Change, asset: Asset) -> None:
        """Keep `change`, with `asset` its slim record; evict the oldest past max_bytes."""
        if self.floor is None or change.revision <= self.floor:
            # Not begun (or lost), or committed before it began: never replayed.
            return
        kept = Change(change.kind, asset)
        cost = approx_bytes(asset)
        self._changes.append(kept)
        self._revisions.append(change.revision)
        self._costs.append(cost)
        self._bytes += cost
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


class SelectorStream:
    """One selector watch: the kept changes after its revision, then every new one."""

    def __init__(self, history: History, selector: Selector, after: int) -> None:
        self._history = history
        self._selector = selector
        self._after = after

    async def events(self) -> AsyncGenerator[WatchEvent, None]:
        """CHANGED and DELETED events with slim records, in revision order, forever."""
        history, cursor = self._history, self._after
        while True:
            if history.closed:
                raise asyncio.CancelledError("the server is shutting down")
            moved = history.next_move()
            batch = history.since(cursor)
            for change in batch:
                cursor = change.revision
                if self._selector.concerns(change):
                    kind = "DELETED" if change.kind is ChangeKind.DELETE else "CHANGED"
                    yield WatchEvent(kind, change.asset)
            if len(batch) < REPLAY_BATCH:
                await moved.wait()
