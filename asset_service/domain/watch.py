"""Fan-out of one change source to every WatchAsset subscriber in this process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from asset_service.domain.models import Change, Resync

log = logging.getLogger(__name__)

DEFAULT_QUEUE_LIMIT = 1024


class Subscription:
    """Changes for a set of asset ids, buffered; `lagged` is set if the buffer overflowed."""

    def __init__(self, hub: ChangeHub, ids: frozenset[str], limit: int) -> None:
        self._hub = hub
        self.ids = ids
        self._queue: asyncio.Queue[Change] = asyncio.Queue(maxsize=limit)
        self._wake = asyncio.Event()
        self.lagged = False
        self.closed = False

    def _offer(self, change: Change) -> None:
        if self.lagged:
            return
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            # A slow reader must not hold everyone back: drop its buffer and let it
            # re-read current state (it only needs the latest state of each asset).
            self.lagged = True
            while not self._queue.empty():
                self._queue.get_nowait()
        self._wake.set()

    def _end(self) -> None:
        self.closed = True
        self._wake.set()

    async def next(self) -> Change | None:
        """The next change, or None when lagged (re-read state) or closed."""
        while True:
            if not self._queue.empty():
                return self._queue.get_nowait()
            if self.lagged or self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()

    def reset_lag(self) -> None:
        self.lagged = False

    def close(self) -> None:
        self._hub._remove(self)


class ChangeHub:
    """Reads ONE change source and hands each change to the subscribers of its asset."""

    def __init__(self, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self._by_id: dict[str, set[Subscription]] = {}
        self._queue_limit = queue_limit
        self._task: asyncio.Task[None] | None = None
        self.on_source_error: Callable[[BaseException], None] | None = None

    def subscribe(self, ids: Iterable[str]) -> Subscription:
        sub = Subscription(self, frozenset(ids), self._queue_limit)
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
        for sub in tuple(self._by_id.get(change.asset.id, ())):
            sub._offer(change)

    def mark_all_lagged(self) -> None:
        """The source lost history: every subscriber must re-read current state."""
        for subs in tuple(self._by_id.values()):
            for sub in tuple(subs):
                sub.lagged = True
                sub._wake.set()

    def start(self, source: AsyncIterator[Change | Resync]) -> None:
        self._task = asyncio.create_task(self._pump(source), name="change-hub")

    async def _pump(self, source: AsyncIterator[Change | Resync]) -> None:
        try:
            async for change in source:
                if isinstance(change, Resync):
                    log.warning("change history lost (%s); watchers re-read state", change.reason)
                    self.mark_all_lagged()
                else:
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
        for subs in tuple(self._by_id.values()):
            for sub in tuple(subs):
                sub._end()
