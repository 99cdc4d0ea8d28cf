"""SQLite shared by the worker processes of one server (--workers): one writer at a time,
a log of changes, and a wake-up for the others after each commit.

Each process keeps its own SqliteStore, group commit included (_writer.py). Across them:
- writes take turns through an flock on <db>.writer, held around each transaction (SQLite's
  own busy handler would sleep 1, 2, 5, 10... ms between tries; the kernel wakes a waiter
  on the lock as soon as it is free);
- each change is also written to `change_log` in its transaction: a copy of the record at
  that revision (values up to LOGGED_VALUE_MAX; a bigger one is read back from the record,
  which an AVAILABLE VALUE keeps until deleted). The record itself only shows an asset's
  latest state, and a watcher on another process must see every revision;
- after a commit, the writer adds 1 to every other worker's eventfd; each process reads the
  log past the last revision it published (an index range) when its eventfd wakes it, and
  merges what it finds with its own batches in revision order (Feed). A slow poll
  (BACKSTOP_SECONDS) covers a worker killed between its commit and its wake-up calls;
- the log keeps LOG_KEEP_SECONDS of changes; a worker that falls further behind gets a
  Resync (its watchers re-read state), as a MongoDB change stream past its oplog would.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from asset_service.domain.models import (
    Asset,
    AssetType,
    Change,
    ChangeKind,
    Resync,
    Status,
    Value,
    ValueKind,
)
from asset_service.modes import PRIVATE_FILE
from asset_service.store._tasks import cancel_all
from asset_service.store.sqlite._schema import COLUMNS, asset_row, row_to_asset
from asset_service.store.sqlite._writer import SharedWrites

log = logging.getLogger(__name__)

# Values up to this size are copied into the log; bigger ones are read back from the record.
LOGGED_VALUE_MAX = 64 * 1024
LOG_KEEP_SECONDS = 60.0
PRUNE_INTERVAL_SECONDS = 10.0
BACKSTOP_SECONDS = 1.0
# Logged changes read per statement while catching up.
READ_BATCH = 512
# Changes pruned per transaction: the writer lock is not held for long.
PRUNE_BATCH = 5000
# How long a feed whose reads fail waits before it tries again.
RETRY_SECONDS = 1.0

# The record's columns but its block sums (clients never see them), untyped as a copy.
_NAMES = [name.strip() for name in COLUMNS.split(",")]
_BLOCK_SUMS_AT = _NAMES.index("block_sums")
_VALUE_AT = _NAMES.index("value_kind")
assert _NAMES[_VALUE_AT + 1] == "value_data"
_LOGGED = [name for name in _NAMES if name != "block_sums"]
CHANGE_LOG = f"""
CREATE TABLE IF NOT EXISTS change_log (
    revision INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    logged_ms INTEGER NOT NULL,
    {", ".join(name for name in _LOGGED if name != "revision")}
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('change_log', 0);
"""
_INSERT = (
    f"INSERT INTO change_log (kind, logged_ms, {', '.join(_LOGGED)}) "
    f"VALUES (?, ?, {', '.join('?' * len(_LOGGED))})"
)
_SELECT = f"SELECT kind, {', '.join(_LOGGED)}, NULL AS block_sums FROM change_log"


@dataclass(frozen=True)
class Sharing:
    """This process's place among the workers sharing the database: its index, and one
    eventfd per worker (its own it reads; the others' it adds to after a commit)."""

    index: int
    wakeups: tuple[int, ...]

    @property
    def own(self) -> int:
        return self.wakeups[self.index]

    def wake_others(self) -> None:
        for at, fd in enumerate(self.wakeups):
            if at != self.index:
                with contextlib.suppress(OSError):  # cannot fail but for a closed fd
                    os.eventfd_write(fd, 1)


class WriterLock:
    """An flock on <db>.writer: one process's writer thread in a transaction at a time."""

    def __init__(self, db: Path) -> None:
        self.path = db.with_name(db.name + ".writer")
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, PRIVATE_FILE)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # releases the GIL while it waits
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


class SharedSweepClaim:
    """A sweep's claim among processes: an flock on <db>.sweep (the lease sweep's) or
    <db>.sweep-NAME, held until given up (seconds 0) or the process ends (then another
    worker takes it on its next try)."""

    def __init__(self, db: Path, name: str = "lease") -> None:
        suffix = ".sweep" if name == "lease" else f".sweep-{name}"
        self.path = db.with_name(db.name + suffix)
        self._fd: int | None = None
        self._holder: str | None = None

    def claim(self, holder: str, seconds: float, now: datetime) -> bool:
        if seconds <= 0:
            if self._holder == holder:
                self.close()
            return True
        if self._fd is not None:
            return self._holder == holder
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd, self._holder = fd, holder
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # and with it the lock
        self._fd = self._holder = None


class SharedSweepClaims:
    """One SharedSweepClaim per sweep name ("lease", "retention"), as LocalSweepClaims."""

    def __init__(self, db: Path) -> None:
        self._db = db
        self._claims: dict[str, SharedSweepClaim] = {}

    def claim(self, holder: str, seconds: float, now: datetime, name: str = "lease") -> bool:
        found = self._claims.get(name)
        if found is None:
            found = self._claims[name] = SharedSweepClaim(self._db, name)
        return found.claim(holder, seconds, now)

    def close(self) -> None:
        for found in self._claims.values():
            found.close()


def create(c: sqlite3.Connection) -> int:
    """The log's table (once per database) and the revision to follow from: the newest."""
    c.executescript(CHANGE_LOG)
    row = c.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()
    return int(row[0]) if row else 0


def append(c: sqlite3.Connection, change: Change) -> None:
    """Log `change` in the transaction that made it (the writer thread's connection)."""
    asset = change.asset
    row = list(asset_row(asset, asset.revision))
    del row[_BLOCK_SUMS_AT]  # clients never see block sums
    if asset.value is not None and len(asset.value.data) > LOGGED_VALUE_MAX:
        row[_VALUE_AT] = row[_VALUE_AT + 1] = None  # kind and data: read back from the record
    c.execute(_INSERT, (change.kind.value, int(time.time() * 1000), *row))


@dataclass(frozen=True)
class Logged:
    """What a read of the log found: the changes, and the oldest revision still logged
    (changes at or below `floor` were pruned)."""

    changes: list[Change]
    floor: int
    newest: int


def _slimmed(asset: Asset) -> bool:
    return (
        asset.value is None and asset.type is AssetType.VALUE and asset.status is Status.AVAILABLE
    )


def read(c: sqlite3.Connection, after: int, upto: int | None, limit: int) -> Logged:
    """Logged changes above `after` (and at most `upto`), oldest first, from one snapshot."""
    c.execute("BEGIN")
    try:
        floor = int(c.execute("SELECT value FROM counters WHERE name = 'change_log'").fetchone()[0])
        newest = int(c.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()[0])
        bound = newest if upto is None else upto
        rows = c.execute(
            f"{_SELECT} WHERE revision > ? AND revision <= ? ORDER BY revision LIMIT ?",
            (after, bound, limit),
        ).fetchall()
        changes = []
        for row in rows:
            asset = row_to_asset(row)
            if _slimmed(asset):
                # A big value, not logged: the record keeps it (AVAILABLE is terminal)
                # unless the asset was deleted since; then the change goes without it.
                kept = c.execute(
                    "SELECT value_kind, value_data FROM assets WHERE id = ?", (asset.id,)
                ).fetchone()
                if kept is not None and kept[0] is not None:
                    value = Value(ValueKind(kept[0]), bytes(kept[1]))
                    asset = dataclasses.replace(asset, value=value)
            changes.append(Change(ChangeKind(row["kind"]), asset))
    finally:
        c.execute("COMMIT")
    return Logged(changes, floor, newest)


def prune(c: sqlite3.Connection, before_ms: int) -> int:
    """Remove up to PRUNE_BATCH changes logged before `before_ms`, in revision order up to
    the first one logged since, raising the log's floor over them; how many."""
    c.execute("BEGIN IMMEDIATE")
    try:
        top = None
        for revision, logged_ms in c.execute(
            "SELECT revision, logged_ms FROM change_log ORDER BY revision LIMIT ?", (PRUNE_BATCH,)
        ).fetchall():
            if logged_ms >= before_ms:
                break
            top = int(revision)
        removed = 0
        if top is not None:
            c.execute("UPDATE counters SET value = max(value, ?) WHERE name = 'change_log'", (top,))
            removed = c.execute("DELETE FROM change_log WHERE revision <= ?", (top,)).rowcount
        c.execute("COMMIT")
    except BaseException:
        if c.in_transaction:
            c.execute("ROLLBACK")
        raise
    return int(removed)


ReadLog = Callable[[int, int | None, int], Awaitable[Logged]]
Prune = Callable[[int], Awaitable[int]]


class Feed:
    """This process's changes, in revision order: its own batches as they commit and the
    other workers' from the log, merged (what SqliteStore.changes() yields when shared).

    Own batches go out at once when they follow the last revision published; otherwise the
    log is read up to them first. A wake-up (or the backstop) reads the log to its end.
    """

    def __init__(self, read_log: ReadLog, seen: int) -> None:
        self._read = read_log
        self.seen = seen
        self._own: collections.deque[list[Change]] = collections.deque()
        self._others = False
        self._poked = asyncio.Event()
        self.out: asyncio.Queue[Change | Resync] = asyncio.Queue()

    def own(self, changes: list[Change]) -> None:
        if changes:
            self._own.append(changes)
            self._poked.set()

    def poke(self) -> None:
        """Other workers committed: read the log."""
        self._others = True
        self._poked.set()

    async def run(self) -> None:
        while True:
            await self._poked.wait()
            self._poked.clear()
            try:
                while self._own:
                    batch = self._own[0]
                    first = batch[0].revision
                    if first > self.seen + 1:
                        await self._tail(first - 1)
                    self._own.popleft()
                    for change in batch:
                        self._emit(change)
                if self._others:
                    self._others = False
                    await self._tail(None)
            except (sqlite3.Error, OSError) as exc:
                log.warning("reading the shared change log failed (retrying): %s", exc)
                self._others = True
                await asyncio.sleep(RETRY_SECONDS)
                self._poked.set()

    def _emit(self, change: Change) -> None:
        if change.revision > self.seen:
            self.seen = change.revision
            self.out.put_nowait(change)

    async def _tail(self, upto: int | None) -> None:
        while True:
            logged = await self._read(self.seen, upto, READ_BATCH)
            if logged.floor > self.seen:
                # Pruned before this process read it: its watchers re-read state.
                self.out.put_nowait(
                    Resync(f"the shared change log no longer holds revision {self.seen + 1}")
                )
                self.seen = logged.newest if upto is None else max(self.seen, upto)
                return
            for change in logged.changes:
                self._emit(change)
            if len(logged.changes) < READ_BATCH:
                if upto is not None:
                    self.seen = max(self.seen, upto)  # a revision that made no change
                return


class SharedFile:
    """What a SqliteStore does besides its own work when worker processes share its file:
    the writer lock, the change log and the feed merging it, the sweep claim."""

    def __init__(self, db: Path, sharing: Sharing) -> None:
        self.sharing = sharing
        self.sweep = SharedSweepClaims(db)
        self._db = db
        self._lock: WriterLock | None = None
        self.feed: Feed | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def writes(self) -> SharedWrites:
        """The writer thread's hooks (created before it starts)."""
        self._lock = WriterLock(self._db)
        return SharedWrites(self._lock.held, append, self.sharing.wake_others)

    def start(self, seen: int, read_log: ReadLog, prune: Prune) -> None:
        """Follow the other workers' changes from revision `seen` on (on the loop)."""
        loop = asyncio.get_running_loop()
        self.feed = Feed(read_log, seen)
        os.set_blocking(self.sharing.own, False)
        loop.add_reader(self.sharing.own, self._woken)
        self._tasks = [
            asyncio.create_task(self.feed.run(), name="sqlite-shared-feed"),
            asyncio.create_task(self._backstop(), name="sqlite-shared-backstop"),
            asyncio.create_task(self._prune(prune), name="sqlite-shared-prune"),
        ]

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.sharing.own)  # back to 0: one wake-up for every commit since
        if self.feed is not None:
            self.feed.poke()

    async def _backstop(self) -> None:
        while True:
            await asyncio.sleep(BACKSTOP_SECONDS)
            if self.feed is not None:
                self.feed.poke()

    async def _prune(self, prune: Prune) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_SECONDS)
            try:
                while await prune(int((time.time() - LOG_KEEP_SECONDS) * 1000)) >= PRUNE_BATCH:
                    pass
            except Exception as exc:  # the store says why; the next round tries again
                log.warning("pruning the shared change log failed: %s", exc)

    async def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # the loop is closed, or the fd
            asyncio.get_running_loop().remove_reader(self.sharing.own)
        await cancel_all(self._tasks)
        self._tasks = []
        self.sweep.close()

    def close_lock(self) -> None:
        """After the writer thread has stopped."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
