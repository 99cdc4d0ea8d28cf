"""The change hub: one change source fanned out to the subscribers of each asset id."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from asset_service.domain.models import (
    RECORD_OVERHEAD_BYTES,
    Asset,
    Change,
    Resync,
    WatchEvent,
    WatchEventKind,
    approx_bytes,
)
from asset_service.domain.reads import slim
from asset_service.domain.watch._history import DEFAULT_HISTORY_BYTES, History

log = logging.getLogger(__name__)

DEFAULT_BUFFER_BYTES = 4 * 1024 * 1024
# What one buffered change costs besides its variable fields: the record's fixed fields
# (id, sha256, task id, datetimes) and the Python objects around them. tracemalloc puts a
# change with short strings at ~0.95 KiB.
EVENT_OVERHEAD_BYTES = RECORD_OVERHEAD_BYTES
# How long a catch-up waits for the change feed to deliver what the store already shows.
# Normally milliseconds; past it the catch-up goes on rather than hold the watcher.
FEED_WAIT_SECONDS = 5.0


def change_cost(change: Change) -> int:
    """An estimate of the memory a buffered change holds: its variable fields + overhead."""
    return approx_bytes(change.asset)


class Subscription:
    """Changes for a set of asset ids, buffered up to a byte budget.

    Past the budget the buffer is dropped and `lagged` is set: the watcher re-reads current
    state from the store instead (it only needs the latest state of each asset). Invariant:
    a lagged subscription buffers nothing.
    """

    def __init__(self, hub: ChangeHub, ids: frozenset[str], budget_bytes: int) -> None:
        self._hub = hub
        self.ids = ids
        self.budget_bytes = budget_bytes
        self._queue: collections.deque[tuple[Change, int]] = collections.deque()
        self._bytes = 0
        # The reader waiting in next(), if any: a bare future rather than an asyncio.Event
        # (its waiter list, loop lookup and clean-up cost as much again per wake-up, paid
        # by every watcher of a change fanned out to thousands).
        self._waiter: asyncio.Future[None] | None = None
        self.lagged = False
        self.closed = False

    @property
    def hub(self) -> ChangeHub:
        return self._hub

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    @property
    def buffered_events(self) -> int:
        return len(self._queue)

    def _offer(self, change: Change, cost: int) -> None:
        if self.lagged or self.closed:
            return
        if self._bytes + cost > self.budget_bytes:
            # A slow reader must not hold everyone back, nor grow the server without bound.
            self._lag()
            return
        self._queue.append((change, cost))
        self._bytes += cost
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _lag(self) -> None:
        self.lagged = True
        self._queue.clear()
        self._bytes = 0
        self._wake()

    def _end(self) -> None:
        self.closed = True
        self._wake()

    def _pop(self) -> Change:
        change, cost = self._queue.popleft()
        self._bytes -= cost
        return change

    async def next(self) -> Change | None:
        """The next change, or None when lagged (re-read state) or closed."""
        while True:
            if self._queue:
                return self._pop()
            if self.lagged or self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def take_before(self, revision: int) -> Change | None:
        """The oldest buffered change if its revision is below `revision`, else None."""
        if self._queue and self._queue[0][0].revision < revision:
            return self._pop()
        return None

    def reset_lag(self) -> None:
        self.lagged = False

    def close(self) -> None:
        self._hub._remove(self)


class ChangeHub:
    """Reads ONE change source and hands each change to the subscribers of its asset.

    It also remembers how far the source has delivered: the unbroken run of revisions
    published since the start (or since history was lost). A catch-up that read revision R
    from the store waits until the run reaches R, so every earlier change of its assets is
    in its buffer and can be sent first, keeping the stream in revision order.
    """

    def __init__(
        self, buffer_bytes: int = DEFAULT_BUFFER_BYTES, history_bytes: int = DEFAULT_HISTORY_BYTES
    ) -> None:
        self._by_id: dict[str, set[Subscription]] = {}
        # The latest changes, for selector watches (_selectors.py).
        self.history = History(history_bytes)
        self._current_revision: Callable[[], Awaitable[int]] | None = None
        self._floor_pending = False
        self._buffer_bytes = buffer_bytes
        self._task: asyncio.Task[None] | None = None
        self._run: tuple[int, int] | None = None  # (first, last) revision delivered in a row
        # The last change published since the history began (again): a later one with a
        # revision not above it means the database went back in time.
        self._last: Change | None = None
        self._advanced = asyncio.Event()
        self._closed = False
        self._slim: tuple[Asset, Asset] | None = None  # the last record slimmed, and its slim
        self._changed: WatchEvent | None = None  # the last CHANGED event handed out
        self.feed_wait_seconds = FEED_WAIT_SECONDS
        # Told of every change as it is published (metrics: feed lag, watch lag).
        self.on_publish: Callable[[Change], None] | None = None

    def subscribe(self, ids: Iterable[str]) -> Subscription:
        sub = Subscription(self, frozenset(ids), self._buffer_bytes)
        for asset_id in sub.ids:
            self._by_id.setdefault(asset_id, set()).add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        for asset_id in sub.ids:
            subs = self._by_id.get(asset_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_id[asset_id]

    @property
    def subscriber_count(self) -> int:
        return len({s for subs in self._by_id.values() for s in subs})

    def publish(self, change: Change) -> None:
        if self.on_publish is not None:
            self.on_publish(change)
        rev = change.revision
        self._run = (rev, rev) if self._run is None else (self._run[0], max(self._run[1], rev))
        subs = self._by_id.get(change.asset.id)
        if subs:
            cost = change_cost(change)  # the same for every subscriber: estimated once
            for sub in tuple(subs):
                sub._offer(change, cost)
        self.history.append(change, self.slim(change.asset))
        self._signal()

    def slim(self, asset: Asset) -> Asset:
        """slim(asset), once for every subscriber of a change: they all hold the same record.

        Only the last one is kept, so this holds at most one value beyond the buffers.
        """
        last = self._slim
        if last is not None and last[0] is asset:
            return last[1]
        slimmed = slim(asset)
        self._slim = (asset, slimmed) if slimmed is not asset else None
        return slimmed

    def changed(self, asset: Asset) -> WatchEvent:
        """The CHANGED event of `asset`, one object for every subscriber of a change (the
        servicer then finds its wire bytes by identity). Only the last one is kept."""
        event = self._changed
        if event is None or event.asset is not asset:
            event = self._changed = WatchEvent(WatchEventKind.CHANGED, asset)
        return event

    def _signal(self) -> None:
        self._advanced.set()
        self._advanced = asyncio.Event()

    def delivered(self, revision: int) -> bool:
        """Whether every change up to `revision` has been published (or never will be).

        Unknown before the first change and after lost history: then nothing is waited for.
        Revisions below the run's first were committed before the source started.
        """
        if self._run is None or self._closed:
            return True
        first, last = self._run
        return revision < first or revision <= last

    async def wait_delivered(self, revision: int) -> None:
        try:
            async with asyncio.timeout(self.feed_wait_seconds):
                while not self.delivered(revision):
                    await self._advanced.wait()
        except TimeoutError:
            log.warning(
                "the change feed has not delivered revision %d after %.1fs; a watcher "
                "catching up goes on without it (its events may arrive out of order)",
                revision,
                self.feed_wait_seconds,
            )

    def mark_all_lagged(self) -> None:
        """The source lost history: every subscriber must re-read current state, and the
        selector watches' history starts anew once its floor is read again."""
        self._run = None
        self._last = None
        self.history.lost()
        self._floor_pending = self._current_revision is not None
        for subs in tuple(self._by_id.values()):
            for sub in tuple(subs):
                sub._lag()
        self._signal()

    def start(
        self,
        source: AsyncIterator[Change | Resync],
        current_revision: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        """Pump `source` (already complete from now on). With `current_revision` (the
        store's), the history for selector watches begins at the revision it reads."""
        self._current_revision = current_revision
        self._floor_pending = current_revision is not None
        self._task = asyncio.create_task(self._pump(source), name="change-hub")

    async def _read_floor(self) -> None:
        """Begin the history at the store's current revision: the source was complete
        from before it was read. Tried again before each change until it succeeds."""
        assert self._current_revision is not None
        try:
            floor = await self._current_revision()
        except Exception as exc:  # the store is unreachable: selector watches wait
            log.warning("cannot begin the change history (selector watches wait): %s", exc)
            return
        self._floor_pending = False
        if floor < self.history.last:
            log.warning(
                "the store's revision is %d, below revision %d already handed out: the "
                "database went back in time (a rollback or a restore)",
                floor,
                self.history.last,
            )
        self.history.start(floor)

    def _order(self, change: Change) -> str:
        """How `change` follows the last one published: "new"; "again" if it is that
        change (a resumed source sends it twice: not published again); "back" if the
        database went back in time: a revision below it, or its revision with other
        content (a failover that rolled back writes hands their revisions out again)."""
        last = self._last
        if last is not None and change.revision <= last.revision:
            if change == last:
                return "again"
            log.warning(
                "change source went back in time: revision %d (asset %s) after %d (asset "
                "%s); watchers re-read state and selector watchers list again",
                change.revision,
                change.asset.id,
                last.revision,
                last.asset.id,
            )
            return "back"
        return "new"

    async def _pump(self, source: AsyncIterator[Change | Resync]) -> None:
        try:
            if self._floor_pending:
                await self._read_floor()
            async for change in source:
                if isinstance(change, Resync):
                    log.warning("change history lost (%s); watchers re-read state", change.reason)
                    self.mark_all_lagged()
                    await self._read_floor()
                else:
                    order = self._order(change)
                    if order == "back":
                        self.mark_all_lagged()
                    if order != "again":
                        if self._floor_pending:
                            await self._read_floor()
                        self._last = change
                        self.publish(change)
        except asyncio.CancelledError:
            raise
        except BaseException:  # the source is dead: nobody may wait forever
            log.exception("change source failed; watchers will re-read state")
            self.mark_all_lagged()
            raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._closed = True
        self.history.close()
        for subs in tuple(self._by_id.values()):
            for sub in tuple(subs):
                sub._end()
        self._signal()
