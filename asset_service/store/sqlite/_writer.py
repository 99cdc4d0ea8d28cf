"""SqliteStore's writer thread: queued record writes committed in group transactions.

Why: with `synchronous=FULL` every COMMIT is an fsync of the WAL (milliseconds on a real
disk), and a transaction per write capped the store at one fsync per write whatever the
concurrency. Here callers queue their writes; one thread takes up to MAX_BATCH_WRITES of
them (or MAX_BATCH_BYTES of values) and runs them in ONE transaction, each in its own
SAVEPOINT (so a write whose condition fails is rolled back alone, revision included; a
write alone in its batch needs none), then commits once. Every caller is answered after
that COMMIT: durable on acknowledgement. While one batch commits, the next one queues, so
the batch grows with the load.

Solo jobs (deletes, which may need the disk-full reserve; pings) run alone, in queue order.
Before each batch, `admit` may refuse it (then its writes are admitted one by one): while
the disk-full reserve is missing and cannot be re-created, only deletes (solo jobs) get
written, and a write is refused if it would leave no room to checkpoint (_room.py).
A batch that fails as a whole (SQLITE_FULL, an I/O error, a failed COMMIT) is rolled back
and its writes are run again one per transaction, so each gets its own outcome, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from asset_service.domain.errors import AssetError, Unavailable
from asset_service.domain.models import Change
from asset_service.store.sqlite._group import GroupState

log = logging.getLogger(__name__)

# A batch holds at most this many writes, and stops growing past this many value bytes (a
# VALUE is up to 4 MiB: a few of them already make an fsync worth its while).
MAX_BATCH_WRITES = 64
MAX_BATCH_BYTES = 8 * 1024 * 1024

# A grouped write: its statements on the writer connection, inside the batch's
# transaction and its own savepoint. It raises an AssetError (Conflict, NotFound) when its
# condition does not hold; its savepoint is then rolled back, revision included.
Apply = Callable[[sqlite3.Connection], tuple[Any, Change | None]]
# A solo job: runs alone (it opens its own transaction, if any).
Solo = Callable[[sqlite3.Connection], tuple[Any, Change | None]]


@dataclass(frozen=True)
class SharedWrites:
    """Writes shared with other processes (_shared.py): `held()` wraps each transaction
    (one process's writer at a time), `log` keeps a change in the transaction that made it
    (a solo job that changes an asset calls it itself), `committed` runs after a commit
    that made changes (it wakes the other processes)."""

    held: Callable[[], AbstractContextManager[None]]
    log: Callable[[sqlite3.Connection, Change], None]
    committed: Callable[[], None]


@dataclass
class _Job:
    fn: Apply | Solo
    solo: bool
    cost: int
    future: asyncio.Future[Any]
    sent: bool = False


@dataclass
class _Outcome:
    result: Any = None
    error: BaseException | None = None
    change: Change | None = None


@dataclass
class _Batch:
    jobs: list[_Job]
    outcomes: list[_Outcome] = field(default_factory=list)


class GroupWriter:
    """One thread owning the writer connection; see the module docstring.

    `translate(exc)` maps an sqlite3.OperationalError to the domain error callers get;
    `publish(changes)` runs on the event loop, in commit order, right after the callers of
    those changes are answered: their tasks are then scheduled ahead of the fan-out to
    watchers, so a reply never waits for it (a watcher that asks after the reply still
    gets the change: a catch-up waits until the hub has it, ChangeHub.wait_delivered);
    `admit(conn, value_bytes, writes)` runs on the writer thread
    before each batch of grouped writes and returns why it may not run now, if it may not.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        *,
        translate: Callable[[sqlite3.OperationalError], AssetError],
        publish: Callable[[list[Change]], None],
        admit: Callable[[sqlite3.Connection, int, int], AssetError | None],
        max_writes: int = MAX_BATCH_WRITES,
        max_bytes: int = MAX_BATCH_BYTES,
        shared: SharedWrites | None = None,
        state: GroupState,
    ) -> None:
        self.conn = conn
        # What the writes of the transaction under way keep until its COMMIT (_group.py).
        self._state = state
        self._shared = shared
        self._loop = loop
        self._translate = translate
        self._publish = publish
        self._admit = admit
        self.max_writes = max_writes
        self.max_bytes = max_bytes
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._then: Callable[[], None] | None = None
        self._stopped: asyncio.Future[None] = loop.create_future()
        # Group transactions begun (committed or not): for tests and the benchmark.
        self.transactions = 0
        # Job sets run (committed or not), counted on the writer thread once each has
        # ended and before its callers are answered: while it has not moved, nothing
        # this writer does has changed the database (_readers.Readers.get_on_loop).
        self.generation = 0
        # Told each group transaction's number of writes (metrics), on the writer thread.
        self.on_batch: Callable[[int], None] | None = None
        self._thread = threading.Thread(target=self._main, name="sqlite-writer", daemon=True)
        self._thread.start()

    async def submit(self, fn: Apply, cost: int = 0) -> Any:
        """Run `fn` in the next group transaction; its result once committed, or its error."""
        return await self._submit(fn, solo=False, cost=cost)

    async def solo(self, fn: Solo) -> Any:
        """Run `fn` alone on the writer connection, in queue order."""
        return await self._submit(fn, solo=True, cost=0)

    async def _submit(self, fn: Apply | Solo, *, solo: bool, cost: int) -> Any:
        job = _Job(fn, solo, cost, self._loop.create_future())
        with self._cond:
            if self._closing:
                raise Unavailable("the metadata store is not open")
            self._queue.append(job)
            self._cond.notify()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            with self._cond:
                if not job.sent:
                    # Never started: it never will.
                    self._queue.remove(job)
                    raise
            # Under way: it runs to its end (like a thread-pool job whose caller gave up);
            # its change is still published if it commits.
            job.future.add_done_callback(_consume)
            raise

    def _take(self) -> list[_Job]:
        """The next batch: a solo job alone, or grouped writes up to the limits."""
        first = self._queue.popleft()
        batch = [first]
        used = first.cost
        if not first.solo:
            while self._queue and len(batch) < self.max_writes:
                nxt = self._queue[0]
                if nxt.solo or used + nxt.cost > self.max_bytes:
                    break
                batch.append(self._queue.popleft())
                used += nxt.cost
        for job in batch:
            job.sent = True
        return batch

    def _main(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        break
                    jobs = self._take()
                try:
                    with self._shared.held() if self._shared else nullcontext():
                        solo = jobs[0].solo
                        outcomes = [self._run_solo(jobs[0])] if solo else self._run_admitted(jobs)
                    if self._shared and any(o.change and o.error is None for o in outcomes):
                        self._shared.committed()
                except BaseException as exc:  # a bug: never leave a caller waiting
                    log.exception("sqlite writer failed")
                    self._state.discard()
                    if self.conn.in_transaction:  # or every later BEGIN would fail too
                        with contextlib.suppress(sqlite3.Error):
                            self.conn.execute("ROLLBACK")
                    outcomes = [
                        _Outcome(error=Unavailable(f"sqlite write failed: {exc}")) for _ in jobs
                    ]
                self.generation += 1
                self._loop.call_soon_threadsafe(self._settle, _Batch(jobs, outcomes))
        finally:
            try:
                if self._then is not None:
                    self._then()
            except Exception:
                log.exception("closing the sqlite writer connection failed")
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(self._stop)

    def _run_solo(self, job: _Job) -> _Outcome:
        try:
            result, change = job.fn(self.conn)
        except sqlite3.OperationalError as exc:
            return _Outcome(error=self._translated(exc))
        except Exception as exc:
            return _Outcome(error=exc)
        return _Outcome(result, change=change)

    def _run_admitted(self, jobs: list[_Job]) -> list[_Outcome]:
        refusal = self._admit(self.conn, sum(job.cost for job in jobs), len(jobs))
        if refusal is None:
            return self._run_group(jobs)
        if len(jobs) == 1:
            return [_Outcome(error=refusal)]
        # Smaller writes may still fit where the whole batch does not.
        return [self._run_admitted([job])[0] for job in jobs]

    def _run_group(self, jobs: list[_Job]) -> list[_Outcome]:
        c = self.conn
        self.transactions += 1
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        outcomes: list[_Outcome] = []
        try:
            c.execute("BEGIN IMMEDIATE")
            # A write alone needs no savepoint: its transaction is rolled back instead (two
            # statements fewer, each a round trip through SQLite and the GIL).
            alone = len(jobs) == 1
            for job in jobs:
                if not alone:
                    c.execute("SAVEPOINT w")
                try:
                    result, change = job.fn(c)
                except sqlite3.Error:
                    raise  # the transaction itself may be gone: the whole batch retries
                except Exception as exc:
                    self._state.job_done(False)
                    if alone:
                        c.execute("ROLLBACK")
                        self._state.discard()
                        return [_Outcome(error=exc)]
                    c.execute("ROLLBACK TO w")
                    c.execute("RELEASE w")
                    outcomes.append(_Outcome(error=exc))
                    continue
                if change is not None and self._shared is not None:
                    self._shared.log(c, change)
                if not alone:
                    c.execute("RELEASE w")
                self._state.job_done(True)
                outcomes.append(_Outcome(result, change=change))
            self._state.flush(c)
            self.commit(c)
        except sqlite3.Error as exc:
            self._state.discard()
            # SQLite has already rolled back by itself after SQLITE_FULL, IOERR, NOMEM...:
            # a second ROLLBACK would fail ("no transaction is active") and hide the cause.
            if c.in_transaction:
                try:
                    c.execute("ROLLBACK")
                except sqlite3.Error as rexc:
                    log.warning("rollback failed after an error: %s", rexc)
            if len(jobs) > 1:
                log.info("group transaction of %d writes failed (%s); one by one", len(jobs), exc)
                return [self._run_group([job])[0] for job in jobs]
            if isinstance(exc, sqlite3.OperationalError):
                return [_Outcome(error=self._translated(exc))]
            return [_Outcome(error=exc)]
        return outcomes

    def generation_now(self) -> int:
        return self.generation

    def _translated(self, exc: sqlite3.OperationalError) -> AssetError:
        error = self._translate(exc)
        error.__cause__ = exc
        return error

    @staticmethod
    def commit(c: sqlite3.Connection) -> None:
        """COMMIT (a seam for tests that make it fail)."""
        c.execute("COMMIT")

    def _settle(self, batch: _Batch) -> None:
        """On the loop: answer each caller, then publish the batch's changes in commit order."""
        for job, outcome in zip(batch.jobs, batch.outcomes, strict=True):
            if job.future.done():
                continue
            if outcome.error is not None:
                job.future.set_exception(outcome.error)
            else:
                job.future.set_result(outcome.result)
        self._publish([o.change for o in batch.outcomes if o.error is None and o.change])

    def _stop(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)

    async def close(self, then: Callable[[], None]) -> None:
        """Finish the writes already queued, run `then` on the writer thread, stop it."""
        with self._cond:
            self._then = then
            self._closing = True
            self._cond.notify()
        await asyncio.shield(self._stopped)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome nobody awaits any more (no "exception never retrieved")."""
    if not future.cancelled():
        future.exception()
