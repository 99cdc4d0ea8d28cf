"""SqliteStore: group-committed writes on one thread, reads on their own connections."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from asset_service.domain.errors import StorageFull, Unavailable
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    BlockSums,
    Change,
    ChangeKind,
    Fulfillment,
    Hold,
    Page,
    Removal,
    Resync,
    Status,
    Transition,
)
from asset_service.domain.replay import EVERYTHING, Narrowing, Replay
from asset_service.domain.usage import UsageCells
from asset_service.store._claims import LocalSweepClaims
from asset_service.store.sqlite import (
    _leases,
    _queries,
    _references,
    _retention,
    _shared,
    _tombstones,
    _writes,
)
from asset_service.store.sqlite._files import claim
from asset_service.store.sqlite._group import GroupState
from asset_service.store.sqlite._open import JOURNAL_SIZE_LIMIT, connect
from asset_service.store.sqlite._readers import Later, Readers
from asset_service.store.sqlite._room import Room, is_full
from asset_service.store.sqlite._schema import LISTED_COLUMNS, SLIM_COLUMNS, row_to_asset, to_ms
from asset_service.store.sqlite._shared import SharedFile, SharedSweepClaims, Sharing
from asset_service.store.sqlite._writer import GroupWriter

__all__ = ["DEFAULT_RESERVE_BYTES", "JOURNAL_SIZE_LIMIT", "SqliteStore"]

log = logging.getLogger(__name__)

# Turns of the event loop the change feed lets pass before it hands a burst of changes to
# the hub. The writer answers a batch's callers first, but a caller's reply is sent a few
# task hops later (the writer's future, its shield, the RPC's task): without these turns
# every watcher's wake-up (a selector watch wakes on any change) was queued ahead of that
# last hop, and FulfillAsset with 1000 watchers took twice as long (bench/README.md).
REPLY_TURNS = 4

T = TypeVar("T")


# The "emergency ballast" (CockroachDB's term): a preallocated file beside the database,
# given back to the filesystem when a DELETE hits a full disk, so that deleting assets (the
# way to free space) still works (_room.py). Such a delete (freed pages not zeroed, whatever
# the record's size) appends about ten WAL frames, a page plus a 24-byte header each
# (~40 KiB; tests/unit/test_sqlite_full.py measures it), and the checkpoint that follows
# may grow the database file by the WAL's new pages, a quarter of the reserve at most.
DEFAULT_RESERVE_BYTES = 4 * 1024 * 1024


class SqliteStore:
    """Writes go through one writer thread in group transactions (_writer.py), so
    they are serialized and ordered; reads run on reader threads with their own connections.
    """

    def __init__(
        self,
        path: Path,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        *,
        on_group_commit: Callable[[int], None] | None = None,
        sharing: Sharing | None = None,
    ) -> None:
        self.path = path
        self.on_group_commit = on_group_commit  # each group transaction's size (metrics)
        # Shared by the worker processes of one server (--workers): _shared.py.
        self._shared = SharedFile(path, sharing) if sharing is not None else None
        self.room = Room(path, reserve_bytes, shared=sharing is not None)
        self.reserve = self.room.reserve
        self._readers = Readers(path)
        self._writer: GroupWriter | None = None
        # What the group transaction under way keeps until its COMMIT (writer thread only).
        self._group = GroupState()
        self._changes: asyncio.Queue[Change | Resync] = asyncio.Queue()
        self._lock_fd: int | None = None
        self._seen = 0  # shared: the revision the feed follows from
        # (st_dev, st_ino) of the database file opened: ping() finds it moved or replaced.
        self._identity: tuple[int, int] | None = None
        # One process owns the database file (claim()), so its sweeps' claims live here; or
        # the workers sharing it take turns through a lock per sweep.
        self._sweep: LocalSweepClaims | SharedSweepClaims = (
            self._shared.sweep if self._shared is not None else LocalSweepClaims()
        )

    @property
    def transactions(self) -> int:
        """Write transactions begun so far (group or single): for tests and benchmarks."""
        return self._writer.transactions if self._writer is not None else 0

    # --- plumbing -------------------------------------------------------------------

    def _open_writer(self) -> GroupWriter:
        if self._writer is None:
            raise Unavailable("the metadata store is not open")
        return self._writer

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._open_writer()
        try:
            return await self._readers.run(fn)
        except sqlite3.OperationalError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: sqlite3.Error) -> StorageFull | Unavailable:
        if is_full(exc):
            return self.room.full()
        return Unavailable(f"sqlite database {self.path}: {exc}")

    def _publish(self, changes: list[Change]) -> None:
        # On the loop, from the one writer thread's batches in order: commit order.
        if self._shared is not None and self._shared.feed is not None:
            self._shared.feed.own(changes)  # merged with the other workers' in order
            return
        for change in changes:
            self._changes.put_nowait(change)

    # --- lifecycle ------------------------------------------------------------------

    def _claim(self) -> None:
        if self._shared is None:  # else the server's supervisor holds the claim
            self._lock_fd = claim(self.path)

    async def open(self) -> None:
        self._claim()

        def connected() -> sqlite3.Connection:
            conn, self._seen, self._identity = connect(
                self.path, self.room, self._shared is not None
            )
            return conn

        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(self._readers.executor, connected)
        except BaseException as exc:
            self._unclaim()  # a store that did not open holds nothing
            if not isinstance(exc, sqlite3.Error):
                raise
            if is_full(exc):
                raise StorageFull(
                    f"cannot open sqlite database {self.path}: its disk is full; free space"
                ) from exc
            raise Unavailable(f"cannot open sqlite database {self.path}: {exc}") from exc
        await self._readers.open_loop_connection()
        self._writer = GroupWriter(
            conn,
            loop,
            translate=self._translate,
            publish=self._publish,
            admit=self.room.admit,
            shared=self._shared.writes() if self._shared is not None else None,
            state=self._group,
        )
        self._writer.on_batch = self.on_group_commit
        if self._shared is not None:
            self._shared.start(self._seen, self._read_log, self._prune_log)

    async def close(self) -> None:
        writer, self._writer = self._writer, None  # refuses new reads and writes
        if self._shared is not None:
            await self._shared.close()
        self._readers.close()
        if writer is not None:
            # Queued writes still commit; the writer's connection closes last, on its own
            # thread, so that it checkpoints and removes the WAL.
            await writer.close(then=writer.conn.close)
        if self._shared is not None:
            self._shared.close_lock()
        self._unclaim()

    def _unclaim(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def ping(self) -> None:
        def q(c: sqlite3.Connection) -> tuple[None, None]:
            self._check_in_place()
            c.execute("SELECT 1").fetchone()
            # Space freed by other means comes back to the reserve within a health interval.
            self.room.make(c, force=True)
            return None, None

        await self._open_writer().solo(q)

    def _check_in_place(self) -> None:
        """Unavailable unless the file at the database's path is the one this store opened.

        SQLite goes on writing to an open file that was removed, renamed or replaced (a
        restore over it, an unmounted disk): every write would then reach a file that no
        restart finds. Readiness turns NOT_SERVING instead, until it is put back.
        """
        try:
            now = os.stat(self.path)
        except OSError as exc:
            raise Unavailable(
                f"sqlite database {self.path} is gone ({exc.strerror}): it was moved or "
                "removed while the server runs; put it back, or restart the server"
            ) from exc
        if (now.st_dev, now.st_ino) != self._identity:
            raise Unavailable(
                f"sqlite database {self.path} is no longer the file this server opened (it was "
                "replaced while the server runs); put the original back, or restart the server"
            )

    async def check_room(self) -> None:
        if not self.reserve.missing:
            return  # the usual case, without a trip to the writer thread

        def q(c: sqlite3.Connection) -> tuple[None, None]:
            if not self.room.make(c):
                raise self.room.refusal()
            return None, None

        await self._open_writer().solo(q)

    # --- reads ----------------------------------------------------------------------

    async def get(self, asset_id: str) -> Asset | None:
        writer = self._open_writer()
        # The only writer: its own count says when the database changed (get_on_loop).
        alone = self._shared is None
        now = self._readers.get_on_loop(asset_id, writer.generation_now if alone else None)
        if not isinstance(now, Later):
            return now
        return await self._read(lambda c: _queries.get(c, asset_id))

    async def get_many(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        return await self._select_many(LISTED_COLUMNS, asset_ids, holds=True)

    async def referenced(self, storage_paths: Sequence[str]) -> set[str]:
        return await self._read(lambda c: _references.referenced(c, storage_paths))

    async def settled(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        # A write is durable when it returns (WAL, synchronous commit): nothing pending.
        return await self.get_many(asset_ids)

    async def snapshot(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        # One statement, or one read transaction past 500 ids: one cut either way.
        return await self._select_many(SLIM_COLUMNS, asset_ids)

    async def _select_many(
        self, columns: str, asset_ids: Sequence[str], holds: bool = False
    ) -> dict[str, Asset]:
        ids = list(asset_ids)
        if not ids:
            return {}
        return await self._read(lambda c: _queries.select_many(c, columns, ids, holds))

    async def query(
        self, flt: AssetFilter, limit: int, page_token: str, max_bytes: int | None = None
    ) -> Page:
        sql, args = _queries.page_statement(flt, page_token)
        return await self._read(lambda c: _queries.page(c, flt, sql, args, limit, max_bytes))

    async def current_revision(self) -> int:
        return await self._read(_queries.counter)

    async def count_by_status(self) -> dict[Status, int]:
        return await self._read(_queries.count_by_status)

    async def changes_since(self, after: int, limit: int, narrow: Narrowing = EVERYTHING) -> Replay:
        return await self._read(lambda c: _tombstones.changes_since(c, after, limit, narrow))

    async def sweep_tombstones(self, before: datetime) -> int:
        # Alone (a delete frees room; a batch of writes may be refused on a full disk),
        # a batch per transaction so that other writes interleave.
        removed = 0
        while True:
            done: int = await self._open_writer().solo(
                lambda c: (_tombstones.sweep(c, to_ms(before)), None)
            )
            removed += done
            if done < _tombstones.SWEEP_BATCH:
                return removed

    async def leases_run_out(self, now: datetime, limit: int) -> list[Asset]:
        def q(c: sqlite3.Connection) -> list[Asset]:
            return [row_to_asset(row) for row in _leases.due(c, to_ms(now), limit)]

        return await self._read(q)

    async def claim_sweep(
        self, holder: str, seconds: float, now: datetime, name: str = "lease"
    ) -> bool:
        self._open_writer()
        return self._sweep.claim(holder, seconds, now, name)

    # --- writes -----------------------------------------------------------------------

    async def insert(self, asset: Asset, *, shared: bool = False) -> Asset:
        # Runs in a group transaction, in its own savepoint (_writer.py).
        cost = len(asset.value.data) if asset.value else 0
        result: Asset = await self._open_writer().submit(
            lambda c: _writes.insert(c, asset, shared, self._group), cost
        )
        return result

    async def key_holder(self, key: str) -> Asset | None:
        return await self._read(lambda c: _queries.key_holder(c, key))

    async def release_key(self, asset_id: str, key: str) -> bool:
        result: bool = await self._open_writer().submit(
            lambda c: _writes.release_key(c, asset_id, key)
        )
        return result

    async def transition(
        self,
        asset_id: str,
        expected: Status,
        change: Transition,
        now: datetime,
        *,
        shared: bool = False,
    ) -> Asset:
        # Runs in a group transaction, in its own savepoint, on the one writer thread.
        w = _writes.transition(asset_id, expected, change, now, shared, self._group)
        value = change.value if isinstance(change, Fulfillment) else None
        result: Asset = await self._open_writer().submit(w, len(value.data) if value else 0)
        return result

    async def renew_lease(self, asset_id: str, seconds: int, now: datetime, by: str) -> Asset:
        at = to_ms(now)

        # In a group transaction like any write.
        result: Asset = await self._open_writer().submit(
            lambda c: _writes.renew_lease(c, asset_id, seconds, at, by)
        )
        return result

    async def set_block_sums(self, asset_id: str, storage_path: str, sums: BlockSums) -> bool:
        # In a group transaction like any write.
        result: bool = await self._open_writer().submit(
            lambda c: _writes.set_block_sums(c, asset_id, storage_path, sums), len(sums.crcs)
        )
        return result

    async def delete(
        self, asset_id: str, by: str = "", removal: Removal | None = None
    ) -> Asset | None:
        # Alone in its transaction: on a full disk it is retried with the reserve released.
        shared = self._shared is not None

        def w(c: sqlite3.Connection) -> tuple[Asset | None, Change | None]:
            gone = self.room.delete(
                c, lambda: _writes.delete_once(c, asset_id, by, removal, shared), asset_id
            )
            if gone is None:
                return None, None
            # The pages it freed may be what the reserve needs (a VALUE's, on a database
            # with its own disk); the domain calls check_room again once the bytes are gone.
            self.room.make(c, force=True)
            return gone, Change(ChangeKind.DELETE, gone)

        result: Asset | None = await self._open_writer().solo(w)
        return result

    # --- retention (_retention.py) ------------------------------------------------------

    async def place_hold(self, asset_id: str, hold: Hold, limit: int) -> Asset:
        # A write beside the record, no revision and no change: like a lease renewal.
        def w(c: sqlite3.Connection) -> tuple[Asset, None]:
            return _retention.place(c, asset_id, hold, limit), None

        result: Asset = await self._open_writer().submit(w)
        return result

    async def release_hold(self, asset_id: str, owner: str) -> tuple[Asset, bool]:
        def w(c: sqlite3.Connection) -> tuple[tuple[Asset, bool], None]:
            return _retention.release(c, asset_id, owner), None

        result: tuple[Asset, bool] = await self._open_writer().submit(w)
        return result

    async def hold_inputs(self, task_id: str, asset_ids: Sequence[str], hold: Hold) -> list[str]:
        def w(c: sqlite3.Connection) -> tuple[list[str], None]:
            return _retention.hold_inputs(c, task_id, asset_ids, hold, self._group), None

        result: list[str] = await self._open_writer().submit(w)
        return result

    async def retain(self, asset_ids: Sequence[str], until: datetime) -> None:
        def w(c: sqlite3.Connection) -> tuple[None, None]:
            _retention.retain(c, asset_ids, to_ms(until))
            return None, None

        await self._open_writer().submit(w)

    async def expired(self, now: datetime, limit: int) -> list[Asset]:
        return await self._read(lambda c: _retention.expired(c, to_ms(now), limit))

    async def usage(self, group: str, keys: Sequence[str], limit: int) -> UsageCells:
        return await self._read(lambda c: _retention.usage(c, group, keys, limit))

    async def changes(self) -> AsyncIterator[Change | Resync]:
        queue = self._shared.feed.out if self._shared and self._shared.feed else self._changes
        while True:
            if queue.empty():
                change = await queue.get()
                for _ in range(REPLY_TURNS):
                    await asyncio.sleep(0)
                yield change
            else:
                yield queue.get_nowait()

    async def _read_log(self, after: int, upto: int | None, limit: int) -> _shared.Logged:
        return await self._read(lambda c: _shared.read(c, after, upto, limit))

    async def _prune_log(self, before_ms: int) -> int:
        pruned: int = await self._open_writer().solo(lambda c: (_shared.prune(c, before_ms), None))
        return pruned
