"""One writer per process: queued record writes go to MongoDB in group transactions.

Why (docs/mongodb.md, "Revisions"): every write takes its revision from one counter
document in the same transaction, so that revision order is commit order. That document
is held from its `$inc` to the commit, so the time it is held caps the deployment. Here a
batch's transaction holds it for a CONSTANT number of round trips whatever its size: one
`$inc` by the batch's size, one insert command for its new records, one update command
for its conditional changes (and delete stamps), one read of the changed records to tell
which conditions applied (a record carries the revision its write claimed only if that
write applied: revisions are unique), one delete command if the batch deletes, the
statements that follow from what applied (`Statements.after`: the accounting cells' one
command, issue 23), one commit. A write error of one statement (a duplicate key, a
document the validator refuses) aborts the whole transaction, as MongoDB does; the batch
then runs again without that write, which alone gets its error.

Backpressure: the queue holds at most `max_queued` writes and MAX_QUEUED_BYTES of values
(a full queue refuses at once, UNAVAILABLE naming the limit); every write has a deadline
from the moment it is submitted, which its transaction inherits, and a write still queued
at its deadline leaves the queue unsent. So nothing this process sends can commit later
than its submission plus the operation timeout (docs/mongodb.md, "Backpressure").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import BulkWriteError

from asset_service.domain.errors import (
    AssetError,
    OutcomeUnknown,
    Overloaded,
    Unavailable,
)
from asset_service.store._tasks import cancel_all
from asset_service.store.mongo._documents import Doc, statement_error
from asset_service.store.mongo._write import Kind, Outcome, Statements, Transact, Write, applied

log = logging.getLogger(__name__)

# A batch holds at most this many writes, and stops growing past this many value bytes
# (a VALUE is up to 4 MiB; a transaction's oplog entries are 16 MB each).
MAX_BATCH_WRITES = 64
MAX_BATCH_BYTES = 8 * 1024 * 1024
# The queue of one process: at most this many writes (the --mongo-write-queue default)
# and this many value bytes waiting. Past either, a write is refused at once.
DEFAULT_MAX_QUEUED = 2048
MAX_QUEUED_BYTES = 64 * 1024 * 1024
# A write whose transaction is under way when its caller's deadline passes still ends
# within its own deadline; this is the margin for its answer to arrive.
ANSWER_MARGIN_SECONDS = 2.0


@dataclass(eq=False)
class _Queued:
    write: Write
    deadline: float  # loop time
    future: asyncio.Future[Any] = field(default_factory=lambda: _loop().create_future())
    sent: bool = False


class _OneFailed(Exception):
    """One statement's write error: the transaction aborted; only `queued` fails."""

    def __init__(self, queued: _Queued, error: AssetError) -> None:
        super().__init__(error.message)
        self.queued = queued
        self.error = error


class GroupWriter:
    """Queues writes and runs them in group transactions, one at a time, in queue order.

    `max_writes=1` gives every write its own transaction (used without transactions,
    where a batch could half-apply). `timeout` is each write's time from submission to
    its answer, queue included.
    """

    def __init__(
        self,
        transact: Transact,
        statements: Statements,
        *,
        timeout: float,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_writes: int = MAX_BATCH_WRITES,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self._transact = transact
        self._statements = statements
        self.timeout = timeout
        self.max_queued = max_queued
        self.max_writes = max_writes
        self.max_bytes = max_bytes
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Future[None] | None = None  # the batch under way
        self._took = 0.0  # how long the last transaction that committed took
        self._closed = False
        # For tests, the benchmark and metrics: transactions run (committed or not),
        # batches re-run after one write's error, writes refused or expired unsent.
        self.transactions = 0
        self.reruns = 0
        self.refused = 0
        self.expired = 0
        # Told each group transaction's number of writes (metrics); len(self): queued.
        self.on_batch: Callable[[int], None] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    async def submit(self, write: Write) -> Any:
        """Run `write` in the next group transaction; its result, or its error.

        Refused at once (Overloaded) when the queue is full. Its deadline starts now: if
        it is still queued then, it leaves the queue unsent (Overloaded). Cancelled while
        queued: removed, nothing sent (CancelledError). Cancelled once its transaction is
        under way: OutcomeUnknown, since it may still commit.
        """
        if self._closed:
            raise Unavailable("the MongoDB store is closed")
        self._admit(write)
        loop = _loop()
        queued = _Queued(write, loop.time() + self.timeout)
        self._queue.append(queued)
        self._queued_bytes += write.cost
        if self._task is None:
            # A context of its own: the first caller's (a pymongo.timeout, say) is not
            # every batch's.
            self._task = asyncio.create_task(
                self._run(), name="mongo-group-writer", context=contextvars.Context()
            )
        self._wake.set()
        try:
            async with asyncio.timeout_at(queued.deadline):
                return await asyncio.shield(queued.future)
        except TimeoutError:
            if queued.future.done():  # answered just as its deadline passed
                return queued.future.result()
            if self._unqueue(queued):
                self.expired += 1
                raise self._late(write) from None
        except asyncio.CancelledError as exc:
            if self._unqueue(queued):
                raise
            queued.future.add_done_callback(_consume)
            raise OutcomeUnknown(
                f"the request was cancelled while MongoDB was writing the record of asset "
                f"{write.asset_id} (in a group transaction that goes on); the write may or "
                "may not have applied"
            ) from exc
        # Sent: its transaction runs within this write's deadline; its answer follows.
        try:
            async with asyncio.timeout(ANSWER_MARGIN_SECONDS):
                return await asyncio.shield(queued.future)
        except TimeoutError:
            queued.future.add_done_callback(_consume)
            raise OutcomeUnknown(
                f"no answer for the record write of asset {write.asset_id} by its deadline; "
                "the write may or may not have applied"
            ) from None

    def _late(self, write: Write) -> Overloaded:
        return Overloaded(
            f"the record write of asset {write.asset_id} could not have its turn in this "
            f"server's MongoDB write queue within the {self.timeout:g}s each write gets; "
            "nothing was sent: MongoDB is not keeping up (retry with backoff)"
        )

    def _admit(self, write: Write) -> None:
        if len(self._queue) >= self.max_queued:
            self.refused += 1
            raise Overloaded(
                f"this server's MongoDB write queue is full ({self.max_queued} writes "
                "waiting, --mongo-write-queue): MongoDB is not keeping up; nothing was "
                "sent (retry with backoff)"
            )
        if self._queue and self._queued_bytes + write.cost > MAX_QUEUED_BYTES:
            self.refused += 1
            raise Overloaded(
                f"this server's MongoDB write queue holds {self._queued_bytes >> 20} MiB of "
                f"values (at most {MAX_QUEUED_BYTES >> 20} MiB wait): MongoDB is not keeping "
                "up; nothing was sent (retry with backoff)"
            )

    def _unqueue(self, queued: _Queued) -> bool:
        """Take a write out of the queue if it is still there (never sent)."""
        if queued.sent:
            return False
        with contextlib.suppress(ValueError):
            self._queue.remove(queued)
            self._queued_bytes -= queued.write.cost
        return True

    def _take(self) -> list[_Queued]:
        """The next batch: writes in queue order, each record at most once, within the
        size limits; writes past their deadline leave the queue unsent."""
        # A write with less time left than a transaction takes (the last one's time, at
        # least a tenth of the operation time) would only hold the counter to fail: it
        # leaves unsent, refused at once.
        now = _loop().time() + max(self._took, self.timeout / 10)
        batch: list[_Queued] = []
        ids: set[str] = set()
        used = 0
        while self._queue and len(batch) < self.max_writes:
            nxt = self._queue[0]
            if nxt.deadline <= now:
                self._queue.popleft()
                self._queued_bytes -= nxt.write.cost
                self.expired += 1
                _settle(nxt, Outcome(error=self._late(nxt.write)))
                continue
            if batch and (used + nxt.write.cost > self.max_bytes or nxt.write.asset_id in ids):
                break  # a record twice in one batch: the second waits for the next one
            batch.append(self._queue.popleft())
            self._queued_bytes -= nxt.write.cost
            ids.add(nxt.write.asset_id)
            used += nxt.write.cost
        for queued in batch:
            queued.sent = True
        return batch

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            if not batch:
                continue
            self._running = _loop().create_future()
            try:
                outcomes = await self._outcomes(batch)
            except asyncio.CancelledError:
                closing = OutcomeUnknown(
                    "the MongoDB store closed while this write was being committed"
                )
                for queued in batch:
                    _settle(queued, Outcome(error=copy.copy(closing)))
                raise
            except Exception as exc:  # a bug: never leave a caller waiting
                log.exception("group write failed")
                failed = Unavailable(f"MongoDB write failed: {exc}")
                outcomes = [Outcome(error=copy.copy(failed)) for _ in batch]
            finally:
                self._running.set_result(None)
                self._running = None
            for queued, outcome in zip(batch, outcomes, strict=True):
                _settle(queued, outcome)

    async def drain(self) -> None:
        """Return once the batch under way (if any) has its outcome: after this, every
        write this process sent before is committed, or failed, or recorded as doubtful
        by the store (MongoStore.settled then ends its session)."""
        running = self._running
        if running is not None:
            await asyncio.shield(running)

    async def _outcomes(self, batch: list[_Queued]) -> list[Outcome]:
        """Each write's outcome: its own, or its transaction's failure (one copy each)."""
        results: dict[int, Outcome] = {}
        pending = list(batch)
        while pending:
            left = min(q.deadline for q in pending) - _loop().time()
            if left <= 0:
                late = Unavailable("the write's deadline passed before its transaction ran")
                results.update({id(q): Outcome(error=copy.copy(late)) for q in pending})
                break
            self.transactions += 1
            if self.on_batch is not None:
                self.on_batch(len(pending))
            began = _loop().time()
            try:
                done = await self._transact(functools.partial(self._batch, pending), left)
            except _OneFailed as exc:
                # The transaction aborted: nothing of it applied. Only this write fails.
                results[id(exc.queued)] = Outcome(error=exc.error)
                pending = [q for q in pending if q is not exc.queued]
                self.reruns += 1
                continue
            except AssetError as exc:
                results.update({id(q): Outcome(error=copy.copy(exc)) for q in pending})
                break
            results.update(zip((id(q) for q in pending), done, strict=True))
            self._took = _loop().time() - began
            break
        return [results[id(q)] for q in batch]

    async def _batch(self, pending: list[_Queued], session: Any) -> list[Outcome]:
        """The statements of one attempt: O(1) round trips whatever the batch's size."""
        order = sorted(pending, key=lambda q: q.write.kind)  # stable: queue order within
        first = await self._statements.claim(session, len(order))
        revision = {id(q): first + i for i, q in enumerate(order)}
        await self._statements.before(
            session, [q.write for q in order], [revision[id(q)] for q in order]
        )
        inserts = [q for q in order if q.write.kind is Kind.INSERT]
        changes = [q for q in order if q.write.kind is not Kind.INSERT]
        await self._bulk(session, inserts, revision)
        await self._bulk(session, changes, revision)
        docs: dict[str, Doc] = {}
        if changes:
            docs = await self._statements.read_back(session, [q.write.asset_id for q in changes])
        gone = [
            docs[q.write.asset_id]
            for q in changes
            if q.write.kind is Kind.DELETE and applied(docs.get(q.write.asset_id), revision[id(q)])
        ]
        if gone:
            await self._statements.remove_stamped(session, gone)
        await self._statements.after(
            session,
            [
                (
                    q.write,
                    None if q.write.kind is Kind.INSERT else docs.get(q.write.asset_id),
                    revision[id(q)],
                )
                for q in order
            ],
        )
        outcomes = []
        for q in pending:
            doc = None if q.write.kind is Kind.INSERT else docs.get(q.write.asset_id)
            try:
                outcomes.append(Outcome(q.write.outcome(doc, revision[id(q)])))
            except AssetError as exc:
                outcomes.append(Outcome(error=exc))  # wrote nothing; its revision is unused
        return outcomes

    async def _bulk(self, session: Any, queued: list[_Queued], revision: dict[int, int]) -> None:
        # A write may have nothing to send (its condition is known not to hold).
        sent = [(q, q.write.statement(revision[id(q)])) for q in queued]
        sent = [(q, request) for q, request in sent if request is not None]
        if not sent:
            return
        try:
            await self._statements.bulk(session, [request for _, request in sent])
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if not errors:
                raise
            first = errors[0]
            failed = sent[int(first["index"])][0]
            code, message = int(first.get("code", 0)), str(first.get("errmsg", ""))
            raise _OneFailed(failed, statement_error(failed.write.asset_id, code, message)) from exc

    async def close(self) -> None:
        self._closed = True
        await cancel_all([self._task])
        while self._queue:
            _settle(self._queue.popleft(), Outcome(error=Unavailable("the MongoDB store closed")))


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _settle(queued: _Queued, outcome: Outcome) -> None:
    if queued.future.done():
        return
    if outcome.error is not None:
        queued.future.set_exception(outcome.error)
    else:
        queued.future.set_result(outcome.result)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome nobody awaits any more (no "exception never retrieved")."""
    if not future.cancelled():
        future.exception()
