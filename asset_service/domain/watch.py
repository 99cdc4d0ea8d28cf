"""Watch: one change source fanned out to every subscriber, and each watcher's ordered stream."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)

from asset_service.domain.models import (
    RECORD_OVERHEAD_BYTES,
    Asset,
    AssetType,
    Change,
    ChangeKind,
    Resync,
    Status,
    WatchEvent,
    approx_bytes,
)
from asset_service.domain.reads import GetMany, slim
from asset_service.domain.selectors import DEFAULT_HISTORY_BYTES, History

log = logging.getLogger(__name__)

DEFAULT_BUFFER_BYTES = 4 * 1024 * 1024
# What one buffered change costs besides its variable fields: the record's fixed fields
# (id, sha256, task id, datetimes) and the Python objects around them. tracemalloc puts a
# change with short strings at ~0.95 KiB.
EVENT_OVERHEAD_BYTES = RECORD_OVERHEAD_BYTES
# Records a catch-up reads per store call; each may carry a VALUE of up to 4 MiB.
DEFAULT_CATCH_UP_BATCH = 16
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
        self._wake = asyncio.Event()
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
        self._wake.set()

    def _lag(self) -> None:
        self.lagged = True
        self._queue.clear()
        self._bytes = 0
        self._wake.set()

    def _end(self) -> None:
        self.closed = True
        self._wake.set()

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
            self._wake.clear()
            await self._wake.wait()

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
        # The latest changes, for selector watches (domain/selectors.py).
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
        self.feed_wait_seconds = FEED_WAIT_SECONDS
        self.on_source_error: Callable[[BaseException], None] | None = None
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
        except BaseException as exc:  # the source is dead: nobody may wait forever
            log.exception("change source failed; watchers will re-read state")
            self.mark_all_lagged()
            if self.on_source_error is not None:
                self.on_source_error(exc)
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


def _revision(asset: Asset) -> int:
    return asset.revision


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
        self.catch_ups = 0

    def _finished(self) -> bool:
        return all(a is None or a.status.terminal for a in self._known.values())

    def _is_new(self, change: Change) -> bool:
        last = self._known.get(change.asset.id)
        return last is not None and change.revision > last.revision

    def _sent(self, change: Change) -> WatchEvent:
        if change.kind is ChangeKind.DELETE:
            self._known[change.asset.id] = None
            return WatchEvent("DELETED", change.asset)
        self._known[change.asset.id] = self._sub.hub.slim(change.asset)
        return WatchEvent("CHANGED", change.asset)

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
                        self._known[asset.id] = None
                        yield WatchEvent("DELETED", asset)
                        continue
                    asset = record
                yield WatchEvent("SNAPSHOT", asset)

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
