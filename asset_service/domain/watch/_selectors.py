"""Selector watches: every change to the assets a selector matches, from one shared history."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from asset_service.domain.errors import HistoryGone
from asset_service.domain.models import (
    AssetType,
    Change,
    ChangeKind,
    Status,
    WatchEvent,
    WatchEventKind,
)
from asset_service.domain.replay import REPLAY_READ_BATCH, Narrowing, Replay
from asset_service.domain.watch._history import REPLAY_BATCH, History


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
        if not self.narrowing.admits(asset):
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

    @functools.cached_property
    def narrowing(self) -> Narrowing:
        """What concerns() requires of every asset but its status: how far the store can
        narrow a replay for this selector."""
        return Narrowing(self.task_id, self.key, self.label, self.tags, self.type)


# The store's changes after a revision (MetadataStore.changes_since).
ReplayFn = Callable[[int, int], Awaitable[Replay]]


class SelectorStream:
    """One selector watch: the changes after its revision, then every new one.

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
    deleted = change.kind is ChangeKind.DELETE
    return WatchEvent(WatchEventKind.DELETED if deleted else WatchEventKind.CHANGED, change.asset)
