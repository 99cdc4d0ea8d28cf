"""Id watches: a snapshot of the watched ids, then their changes in revision order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from asset_service.domain.models import (
    Asset,
    AssetType,
    Change,
    ChangeKind,
    Status,
    WatchEvent,
    WatchEventKind,
)
from asset_service.domain.reads import GetMany, slim
from asset_service.domain.watch._hub import Subscription

# Records a catch-up reads per store call; each may carry a VALUE of up to 4 MiB.
DEFAULT_CATCH_UP_BATCH = 16


def _revision(asset: Asset) -> int:
    return asset.revision


def _may_change(state: Asset | None) -> bool:
    """Whether a watched asset's state is not its last: it exists and is not terminal."""
    return state is not None and not state.status.terminal


def _slimmed(asset: Asset) -> bool:
    """A state whose inline value was dropped: only AVAILABLE VALUE assets carry one."""
    return (
        asset.value is None and asset.type is AssetType.VALUE and asset.status is Status.AVAILABLE
    )


class WatchStream:
    """One watcher's events: the snapshot, then every change in revision order.

    Changes come from the subscription's buffer. When the buffer overflowed (or history
    was lost) the stream catches up from the store in two bounded passes: first, from
    one consistent cut without values, note only (revision, id) of what moved; then, in
    revision order, fetch those
    records a batch at a time and send them, each preceded by any buffered change with a
    lower revision. A record that moved on again since the first pass is skipped: its
    newer change is in the buffer, which stays live throughout.
    """

    def __init__(
        self,
        sub: Subscription,
        get_many: GetMany,
        states: GetMany,
        snapshot: dict[str, Asset],
        after_revision: int,
        follow: bool,
        batch: int = DEFAULT_CATCH_UP_BATCH,
    ) -> None:
        self._sub = sub
        self._get_many = get_many
        self._states = states  # the store's snapshot(): one consistent cut, no values
        self._ids = sorted(snapshot)
        self._snapshot: dict[str, Asset] | None = snapshot
        self._after = after_revision
        self._follow = follow
        self._batch = max(1, batch)
        # The last state of each asset the client has (or is entitled to skip); None once
        # deleted. A change is new iff its revision is above that state's: the snapshot was
        # read after subscribing, so anything buffered but older is already in it.
        self._known: dict[str, Asset | None] = {i: slim(a) for i, a in snapshot.items()}
        # How many of them may still change: kept as they change, so that telling whether
        # the stream is finished (after every event) does not read every id again.
        self._open = sum(_may_change(a) for a in self._known.values())
        self.catch_ups = 0

    def _finished(self) -> bool:
        return self._open == 0

    def _know(self, asset_id: str, state: Asset | None) -> None:
        self._open += _may_change(state) - _may_change(self._known.get(asset_id))
        self._known[asset_id] = state

    def _is_new(self, change: Change) -> bool:
        last = self._known.get(change.asset.id)
        return last is not None and change.revision > last.revision

    def _sent(self, change: Change) -> WatchEvent:
        if change.kind is ChangeKind.DELETE:
            self._know(change.asset.id, None)
            return WatchEvent(WatchEventKind.DELETED, change.asset)
        hub = self._sub.hub
        self._know(change.asset.id, hub.slim(change.asset))
        return hub.changed(change.asset)

    async def events(self) -> AsyncGenerator[WatchEvent, None]:
        sub = self._sub
        try:
            async for event in self._snapshot_events():
                yield event
            while self._follow or not self._finished():
                change = await sub.next()
                if change is not None:
                    if self._is_new(change):
                        yield self._sent(change)
                elif sub.closed:
                    raise asyncio.CancelledError("the server is shutting down")
                else:
                    async for change in self._catch_up():
                        yield self._sent(change)
        finally:
            sub.close()

    async def _snapshot_events(self) -> AsyncIterator[WatchEvent]:
        """The snapshot in revision order, values fetched back a batch at a time.

        An AVAILABLE VALUE asset is terminal: the only way its state can differ on the
        second read is that it was deleted since.
        """
        snapshot, self._snapshot = self._snapshot or {}, None
        due = sorted((a for a in snapshot.values() if a.revision > self._after), key=_revision)
        for start in range(0, len(due), self._batch):
            part = due[start : start + self._batch]
            wanted = [a.id for a in part if _slimmed(a)]
            full = await self._get_many(wanted) if wanted else {}
            for asset in part:
                if _slimmed(asset):
                    record = full.pop(asset.id, None)
                    if record is None:
                        # Deleted since the first read. Like a catch-up, the deletion goes
                        # out with the last revision read, so it never moves the cursor.
                        self._know(asset.id, None)
                        yield WatchEvent(WatchEventKind.DELETED, asset)
                        continue
                    asset = record
                yield WatchEvent(WatchEventKind.SNAPSHOT, asset)

    async def _catch_up(self) -> AsyncIterator[Change]:
        """Changes missed while lagged, merged with the buffer, in revision order.

        Returns early if the subscription lags again: what is left is found by the next
        catch-up, and sending it after a newer dropped change would break the order.
        """
        sub = self._sub
        self.catch_ups += 1
        sub.reset_lag()
        plan = await self._moved()
        for start in range(0, len(plan), self._batch):
            part = plan[start : start + self._batch]
            await sub.hub.wait_delivered(part[-1][0])
            wanted = [asset_id for _, asset_id, deleted in part if not deleted]
            records = await self._get_many(wanted) if wanted else {}
            for revision, asset_id, deleted in part:
                while (buffered := sub.take_before(revision)) is not None:
                    if self._is_new(buffered):
                        yield buffered
                if sub.lagged or sub.closed:
                    return
                last = self._known.get(asset_id)
                if deleted:
                    if last is not None:
                        yield Change(ChangeKind.DELETE, last)
                    continue
                record = records.pop(asset_id, None)
                # Skipped if it moved on (or went) since the first pass: the buffer has that.
                if (
                    record is not None
                    and record.revision == revision
                    and last is not None
                    and revision > last.revision
                ):
                    yield Change(ChangeKind.PUT, record)
            record = None  # hold nothing of this batch while the next one is read

    async def _moved(self) -> list[tuple[int, str, bool]]:
        """(revision, id, deleted) of every asset that moved past its known state, sorted.

        One consistent cut of the store, without values: every change it misses has a
        higher revision than all it shows, and is in the (live) buffer. Reading in
        separate batches instead could show asset B's revision 7 without asset A's
        earlier 6, and send 7 before 6.
        """
        plan: list[tuple[int, str, bool]] = []
        wanted = [i for i in self._ids if self._known.get(i) is not None]
        current = await self._states(wanted) if wanted else {}
        for asset_id in wanted:
            before, now = self._known[asset_id], current.get(asset_id)
            assert before is not None
            if now is None:
                # The store keeps no tombstone: the deletion goes out with the last
                # revision the client saw, so it never moves the client's cursor.
                plan.append((before.revision, asset_id, True))
            elif now.revision > before.revision:
                plan.append((now.revision, asset_id, False))
        return sorted(plan)
