"""Selector watches: every change to the assets a selector matches, from one shared history.

A watch of explicit ids re-reads their current state when it falls behind; a selector
cannot re-read what it has never listed, so the hub keeps the latest changes, without
values and bounded in bytes, in one History shared by every selector watch. A watch
replays it from its revision and then follows it. A revision older than the history
(evicted, or before this process started) is replayed from the STORE instead
(MetadataStore.changes_since: the records changed since, with their current state, and
the tombstones of those deleted), state-based like a relisting: each asset's latest state,
not every step. Only a revision older than the store's tombstones (--watch-tombstone-ttl),
or a sign that the database went back in time, is refused with HistoryGone: the client
lists again (ListAssets gives the revision of its page) and watches from there, as
Kubernetes informers do after "410 Gone".
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
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
from asset_service.domain.replay import REPLAY_READ_BATCH, Replay

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
    key: str = ""

    def concerns(self, change: Change, compacted: bool = False) -> bool:
        """Whether a watcher of this selector gets `change`: the asset matches it after
        the change, or (a selector on PENDING) a promise has just left PENDING. Every
        other field it tests never changes once an asset exists.

        `compacted`: a change replayed from the store, where an asset's intermediate
        states are gone. A promise that left PENDING and was then deleted leaves only a
        tombstone that is not PENDING: a PENDING watcher still gets its DELETE, since it
        may never have heard that the promise left.
        """
        asset = change.asset
        if (
            (self.task_id and asset.created_by_task != self.task_id)
            or (self.type is not None and asset.type is not self.type)
            or (self.label and asset.label != self.label)
            or (self.key and asset.key != self.key)
            or any(tag not in asset.tags for tag in self.tags)
        ):
            return False
        if self.status is None or asset.status is self.status:
            return True
        # A promise (the only assets with a task) is terminal only after leaving PENDING;
        # a deletion is sent only where the last state matched.
        return (
            self.status is Status.PENDING
            and (change.kind is ChangeKind.PUT or compacted)
            and asset.status.terminal
            and bool(asset.created_by_task)
        )


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


# The store's changes after a revision (MetadataStore.changes_since).
ReplayFn = Callable[[int, int], Awaitable[Replay]]


class SelectorStream:
    """One selector watch: the changes after its revision, then every new one.

    Replayed from the history while its revision is there, else from the store (a page of
    changes at a time, each asset's state at the page's cut) until it reaches the
    history. The history stays live meanwhile, so the stream never waits on it: a watcher
    that falls behind the history goes back to the store, wherever the write rate is.
    """

    def __init__(self, history: History, selector: Selector, after: int, replay: ReplayFn) -> None:
        self._history = history
        self._selector = selector
        self._after = after
        self._replay = replay
        self.store_reads = 0

    async def events(self) -> AsyncGenerator[WatchEvent, None]:
        """CHANGED and DELETED events with slim records, in revision order, forever."""
        history, cursor = self._history, self._after
        epoch = history.epoch
        while True:
            if history.closed:
                raise asyncio.CancelledError("the server is shutting down")
            if history.epoch != epoch or history.floor is None:
                # The change source lost its place (or the database went back in time):
                # what this stream sent may not be what the store now holds.
                raise HistoryGone(cursor, None)
            moved = history.next_move()
            if cursor < history.floor:
                replay = await self._read_store(cursor)
                for change in replay.changes:
                    if self._selector.concerns(change, compacted=True):
                        yield _event(change)
                cursor = max(cursor, replay.reaches)
                continue
            batch = history.since(cursor)
            for change in batch:
                cursor = change.revision
                if self._selector.concerns(change):
                    yield _event(change)
            if len(batch) < REPLAY_BATCH:
                await moved.wait()

    async def _read_store(self, cursor: int) -> Replay:
        """The store's next page of changes after `cursor` (HistoryGone if it cannot)."""
        self.store_reads += 1
        # Delivered by the change source before the read began: the cut holds it, unless
        # the database went back in time (the counter below what was handed out).
        seen = max(cursor, self._history.last)
        replay = await self._replay(cursor, REPLAY_READ_BATCH)
        if replay.revision < seen:
            raise HistoryGone(cursor, None, went_back(replay.revision, seen))
        return replay


def went_back(revision: int, seen: int) -> str:
    """Why the store's revision below one already handed out means: list again."""
    return (
        f"the store is at revision {revision}, below revision {seen} already handed out: "
        "the database went back in time (a failover rolled back writes, or a restore)"
    )


def _event(change: Change) -> WatchEvent:
    kind = "DELETED" if change.kind is ChangeKind.DELETE else "CHANGED"
    return WatchEvent(kind, change.asset)
