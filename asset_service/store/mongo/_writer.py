"""One writer per process: queued record writes go to MongoDB in group transactions.

Why (docs/mongodb.md, "Revisions"): every write takes its revision from one counter
document in the same transaction, so that revision order is commit order. Writers that
each ran their own transaction all conflicted on that document, backed off blindly and
retried; a deployment did about one write per two round trips, with long tails. Here the
RPCs of a process queue their writes; one task drains the queue and runs them in ONE
transaction: one `$inc` of the counter by the batch's size, the writes in queue order
(each its own conditional statement, its own outcome), one commit. Only processes
compete for the counter, and under load a transaction carries many writes. A dead
process's transaction is ended by its peers within seconds (see _leases.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from asset_service.domain.errors import AssetError, Conflict, OutcomeUnknown, Unavailable

log = logging.getLogger(__name__)

# A batch holds at most this many writes, and stops growing past this many value bytes
# (a VALUE is up to 4 MiB; a transaction's oplog entries are 16 MB each).
MAX_BATCH_WRITES = 64
MAX_BATCH_BYTES = 8 * 1024 * 1024

# apply(session, revision): the write's statements, numbered `revision`. It raises an
# AssetError (NotFound, Conflict...) when its condition does not hold, having written
# nothing; the revision then goes to the next write of the batch.
Apply = Callable[[Any, int], Awaitable[Any]]
# transact(fn): fn(session) in one transaction, driver errors mapped (MongoStore._transact).
Transact = Callable[[Callable[[Any], Awaitable[list["Outcome"]]]], Awaitable[list["Outcome"]]]


@dataclass
class Outcome:
    result: Any = None
    error: AssetError | None = None


@dataclass
class _Write:
    apply: Apply
    cost: int
    future: asyncio.Future[Any] = field(default_factory=lambda: _loop().create_future())
    sent: bool = False


class DuplicateKey(Conflict):
    """An insert hit an existing key. In a transaction that aborts the whole batch, so
    the writer runs each of its writes alone, and only the duplicate one fails."""


class GroupWriter:
    """Queues writes and runs them in group transactions, one at a time, in queue order.

    `claim(session, n)` returns the first of n fresh revisions (one `$inc`); `transact`
    runs a function in one transaction and maps driver errors to domain errors
    (OutcomeUnknown when the commit may have applied). `max_writes=1` gives every write
    its own transaction (used without transactions, where a batch could half-apply).
    """

    def __init__(
        self,
        transact: Transact,
        claim: Callable[[Any, int], Awaitable[int]],
        *,
        max_writes: int = MAX_BATCH_WRITES,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self._transact = transact
        self._claim = claim
        self.max_writes = max_writes
        self.max_bytes = max_bytes
        self._queue: deque[_Write] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.transactions = 0  # committed or not: for tests and the benchmark
        # Told each group transaction's number of writes (metrics).
        self.on_batch: Callable[[int], None] | None = None

    async def submit(self, apply: Apply, cost: int = 0) -> Any:
        """Run `apply` in the next group transaction; its result, or its error.

        Cancelled while queued: removed, nothing sent (CancelledError). Cancelled once
        its transaction is under way: OutcomeUnknown, since it may still commit.
        """
        if self._closed:
            raise Unavailable("the MongoDB store is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mongo-group-writer")
        write = _Write(apply, cost)
        self._queue.append(write)
        self._wake.set()
        try:
            return await asyncio.shield(write.future)
        except asyncio.CancelledError as exc:
            if not write.sent:
                with contextlib.suppress(ValueError):
                    self._queue.remove(write)
                raise
            write.future.add_done_callback(_consume)
            raise OutcomeUnknown(
                "the request was cancelled while MongoDB was writing its record (in a "
                "group transaction that goes on); the write may or may not have applied"
            ) from exc

    def _take(self) -> list[_Write]:
        batch: list[_Write] = []
        used = 0
        while self._queue and len(batch) < self.max_writes:
            nxt = self._queue[0]
            if batch and used + nxt.cost > self.max_bytes:
                break
            batch.append(self._queue.popleft())
            used += nxt.cost
        for write in batch:
            write.sent = True
        return batch

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            try:
                outcomes = await self._outcomes(batch)
            except asyncio.CancelledError:
                closing = OutcomeUnknown(
                    "the MongoDB store closed while this write was being committed"
                )
                for write in batch:
                    _settle(write, Outcome(error=copy.copy(closing)))
                raise
            except Exception as exc:  # a bug: never leave a caller waiting
                log.exception("group write failed")
                failed = Unavailable(f"MongoDB write failed: {exc}")
                outcomes = [Outcome(error=copy.copy(failed)) for _ in batch]
            for write, outcome in zip(batch, outcomes, strict=True):
                _settle(write, outcome)

    async def _outcomes(self, batch: list[_Write]) -> list[Outcome]:
        """Each write's outcome: its own, or its transaction's failure (one copy each)."""
        try:
            return await self._batch(batch)
        except DuplicateKey as exc:
            if len(batch) == 1:
                return [Outcome(error=exc)]
            outcomes: list[Outcome] = []
            for write in batch:
                outcomes += await self._outcomes([write])
            return outcomes
        except AssetError as exc:
            return [Outcome(error=copy.copy(exc)) for _ in batch]

    async def _batch(self, batch: list[_Write]) -> list[Outcome]:
        self.transactions += 1
        if self.on_batch is not None:
            self.on_batch(len(batch))

        async def statements(session: Any) -> list[Outcome]:
            revision = await self._claim(session, len(batch))
            outcomes = []
            for write in batch:
                try:
                    outcomes.append(Outcome(await write.apply(session, revision)))
                    revision += 1
                except AssetError as exc:
                    outcomes.append(Outcome(error=exc))  # wrote nothing, used no revision
            return outcomes

        return await self._transact(statements)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            _settle(self._queue.popleft(), Outcome(error=Unavailable("the MongoDB store closed")))


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _settle(write: _Write, outcome: Outcome) -> None:
    if write.future.done():
        return
    if outcome.error is not None:
        write.future.set_exception(outcome.error)
    else:
        write.future.set_result(outcome.result)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome nobody awaits any more (no "exception never retrieved")."""
    if not future.cancelled():
        future.exception()
