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

from asset_service.domain.errors import (
    Conflict,
    KeyTaken,
    NotFound,
    StorageFull,
    Unavailable,
)
from asset_service.domain.models import (
    EXPLICIT_EXPIRIES,
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
from asset_service.domain.replay import Replay
from asset_service.domain.usage import UsageCells
from asset_service.store import _paging
from asset_service.store._claims import LocalSweepClaims
from asset_service.store._fields import (
    lease_condition,
    rule_expiry,
    transition_fields,
)
from asset_service.store.sqlite import _leases, _references, _retention, _shared, _tombstones
from asset_service.store.sqlite._files import claim, own_files
from asset_service.store.sqlite._readers import Later, Readers
from asset_service.store.sqlite._room import INCREMENTAL, Room, is_full
from asset_service.store.sqlite._schema import (
    COLUMN_COUNT,
    COLUMNS,
    LISTED_COLUMNS,
    READ_COLUMNS,
    RECORDS,
    SCHEMA,
    SLIM_COLUMNS,
    asset_row,
    decode_token,
    encode_token,
    from_ms,
    migrate,
    row_to_asset,
    to_ms,
    transaction,
)
from asset_service.store.sqlite._shared import SharedFile, SharedSweepClaims, Sharing
from asset_service.store.sqlite._writer import GroupWriter

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
# When a checkpoint lets the WAL restart, truncate it to this size: about what the WAL
# grows to between automatic checkpoints (1000 pages), so the steady state keeps its file
# but the space a burst of big transactions (4 MiB VALUEs) took is given back, not pinned.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024


def _counter(c: sqlite3.Connection) -> int:
    row = c.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()
    return int(row[0]) if row else 0


def _held_ids(c: sqlite3.Connection, assets: Sequence[Asset]) -> set[str]:
    """Which of these records have holds (one indexed lookup per page)."""
    ids = [a.id for a in assets]
    if not ids:
        return set()
    marks = ",".join("?" * len(ids))
    return {
        row[0]
        for row in c.execute(f"SELECT id FROM assets WHERE id IN ({marks}) AND hold_count > 0", ids)
    }


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

    @staticmethod
    def _next_revision(conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value"
        ).fetchone()
        return int(row[0])

    # --- lifecycle ------------------------------------------------------------------

    def _claim(self) -> None:
        if self._shared is None:  # else the server's supervisor holds the claim
            self._lock_fd = claim(self.path)

    async def open(self) -> None:
        self._claim()

        def connect() -> sqlite3.Connection:
            own_files(self.path)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            # Before anything writes the header: it takes effect on a new database only (an
            # older one is converted by Room.open).
            conn.execute(f"PRAGMA auto_vacuum = {INCREMENTAL}")
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed transition survives power loss, matching the fsynced bytes.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            try:
                fresh = not conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'assets'"
                ).fetchone()
                # An older database is migrated first: SCHEMA's indexes name new columns.
                if not fresh:
                    migrate(conn, self.path, fresh)
                conn.executescript(SCHEMA)
                if fresh:
                    migrate(conn, self.path, fresh)
                if self._shared is not None:
                    self._seen = _shared.create(conn)
                # Before the writer thread starts, which makes every later use of the reserve.
                self.room.open(conn)
                opened = os.stat(self.path)
                self._identity = (opened.st_dev, opened.st_ino)
            except BaseException:
                conn.close()
                raise
            return conn

        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(self._readers.executor, connect)
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
        self._open_writer()
        now = self._readers.get_on_loop(asset_id)
        if not isinstance(now, Later):
            return now

        def q(c: sqlite3.Connection) -> Asset | None:
            row = c.execute(
                f"SELECT {READ_COLUMNS} FROM {RECORDS} WHERE id = ?", (asset_id,)
            ).fetchone()
            return _retention.assets_with_holds(c, [row])[0] if row else None

        return await self._read(q)

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

        def q(c: sqlite3.Connection) -> dict[str, Asset]:
            found: dict[str, Asset] = {}
            # Several statements read one snapshot only inside one read transaction.
            several = len(ids) > 500
            if several:
                c.execute("BEGIN")
            try:
                for start in range(0, len(ids), 500):
                    part = ids[start : start + 500]
                    marks = ",".join("?" * len(part))
                    sql = f"SELECT {columns} FROM {RECORDS} WHERE id IN ({marks})"
                    rows = c.execute(sql, part).fetchall()
                    assets = (
                        _retention.assets_with_holds(c, rows)
                        if holds
                        else [row_to_asset(row) for row in rows]
                    )
                    for asset in assets:
                        found[asset.id] = asset
            finally:
                if several:
                    c.execute("COMMIT")
            return found

        return await self._read(q) if ids else {}

    async def query(
        self, flt: AssetFilter, limit: int, page_token: str, max_bytes: int | None = None
    ) -> Page:
        after = decode_token(page_token, flt) if page_token else 0
        where: list[str] = ["seq > ?"]
        args: list[object] = [after]
        if flt.status is not None:
            where.append("status = ?")
            args.append(flt.status.value)
        if flt.type is not None:
            where.append("type = ?")
            args.append(flt.type.value)
        if flt.created_by_task:
            where.append("created_by_task = ?")
            args.append(flt.created_by_task)
        if flt.label:
            where.append("label = ?")
            args.append(flt.label)
        if flt.key:
            where.append("asset_key = ?")
            args.append(flt.key)
        if flt.sha256:
            where.append("sha256 = ?")
            args.append(flt.sha256)
        for tag in flt.tags:
            where.append("id IN (SELECT asset_id FROM asset_tags WHERE tag = ?)")
            args.append(tag)
        sql = (
            f"SELECT seq, {LISTED_COLUMNS} FROM {RECORDS} WHERE {' AND '.join(where)} "
            "ORDER BY seq LIMIT ?"
        )

        def q(c: sqlite3.Connection) -> Page:
            # One read transaction: the counter and the rows are one cut (WAL snapshot).
            c.execute("BEGIN")
            try:
                revision = _counter(c)
                # Rows are read one at a time: a page that stops at max_bytes reads no more.
                rows = c.execute(sql, (*args, limit + 1))
                try:
                    assets, last = _paging.fill_page(
                        rows, limit, max_bytes, row_to_asset, lambda r: int(r["seq"])
                    )
                finally:
                    rows.close()
                held = sorted(_held_ids(c, assets))
                if held:
                    holds = _retention.holds_of(c, held)
                    assets = [
                        Asset(**{**a.__dict__, "holds": holds[a.id]}) if a.id in holds else a
                        for a in assets
                    ]
            finally:
                c.execute("COMMIT")
            return Page(assets, encode_token(last, flt) if last is not None else "", revision)

        return await self._read(q)

    async def current_revision(self) -> int:
        return await self._read(_counter)

    async def count_by_status(self) -> dict[Status, int]:
        def q(c: sqlite3.Connection) -> dict[Status, int]:
            counts = dict.fromkeys(Status, 0)
            # The (status, seq) index covers it: no record is read.
            for status, n in c.execute("SELECT status, COUNT(*) FROM assets GROUP BY status"):
                counts[Status(status)] = int(n)
            return counts

        return await self._read(q)

    async def changes_since(self, after: int, limit: int, task: str = "") -> Replay:
        return await self._read(lambda c: _tombstones.changes_since(c, after, limit, task))

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
        def w(c: sqlite3.Connection) -> tuple[Asset, Change]:
            if shared:
                _references.require_shared(c, asset.storage_path)
            try:
                rev = self._next_revision(c)
                c.execute(
                    f"INSERT INTO assets ({COLUMNS}, key_slot) "
                    f"VALUES ({', '.join('?' * (COLUMN_COUNT + 1))})",
                    # key_slot holds the key (unique index assets_key_slot)
                    (*asset_row(asset, rev), asset.key or None),
                )
                c.executemany(
                    "INSERT INTO asset_tags (tag, asset_id) VALUES (?, ?)",
                    [(t, asset.id) for t in asset.tags],
                )
                _leases.create(c, asset)
            except sqlite3.IntegrityError as exc:
                if "key_slot" in str(exc):
                    raise KeyTaken(asset.key) from None
                raise Conflict(f"asset {asset.id} already exists") from None
            stored = Asset(**{**asset.__dict__, "revision": rev, "holds": ()})
            _retention.account(c, None, stored)
            return stored, Change(ChangeKind.PUT, stored)

        cost = len(asset.value.data) if asset.value else 0
        result: Asset = await self._open_writer().submit(w, cost)
        return result

    async def key_holder(self, key: str) -> Asset | None:
        def q(c: sqlite3.Connection) -> Asset | None:
            row = c.execute(
                f"SELECT {LISTED_COLUMNS} FROM {RECORDS} WHERE key_slot = ?", (key,)
            ).fetchone()
            return row_to_asset(row) if row else None

        return await self._read(q)

    async def release_key(self, asset_id: str, key: str) -> bool:
        # A write of the slot only: no revision, no change (clients see no difference).
        def w(c: sqlite3.Connection) -> tuple[bool, None]:
            cur = c.execute(
                "UPDATE assets SET key_slot = NULL WHERE id = ? AND key_slot = ?", (asset_id, key)
            )
            return cur.rowcount == 1, None

        result: bool = await self._open_writer().submit(w)
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
        sets = transition_fields(
            change,
            now,
            value_column="value_data",
            timestamp=datetime.isoformat,
            expiry_column="expires_ms",
            expiry=to_ms,
        )
        test = lease_condition(change)
        leaves_pending = expected is Status.PENDING and sets.get("status", expected) != expected
        by_rule = rule_expiry(change) is not None

        # Runs in a group transaction, in its own savepoint, on the one writer thread: the
        # reads and writes below are one atomic step (raising rolls back its savepoint).
        def w(c: sqlite3.Connection) -> tuple[Asset, Change]:
            before = _retention.current(c, asset_id)
            if before is None:
                raise NotFound(f"asset {asset_id} not found")
            if before.status is not expected:
                raise Conflict(
                    f"asset {asset_id} is {before.status.value}, expected {expected.value}"
                )
            if by_rule and before.expiry_rule in EXPLICIT_EXPIRIES:
                raise Conflict(f"asset {asset_id}'s expiry was set by a client meanwhile")
            if shared and isinstance(change, Fulfillment):
                _references.require_shared(c, change.storage_path)
            fields = dict(sets)
            last_end = _leases.check_and_end(c, asset_id, test, to_ms(now), leaves_pending)
            if last_end is not None:
                fields["lease_expires_ms"] = last_end  # the record keeps the lease's last end
            rev = self._next_revision(c)
            assignments = ", ".join(f"{k} = ?" for k in fields)
            row = c.execute(
                f"UPDATE assets SET {assignments}, revision = ? WHERE id = ? RETURNING {COLUMNS}",
                (*fields.values(), rev, asset_id),
            ).fetchone()
            updated = row_to_asset(row)
            _retention.account(c, before, updated)
            if leaves_pending:
                _retention.settle_task(c, before)
            return updated, Change(ChangeKind.PUT, updated)

        value = change.value if isinstance(change, Fulfillment) else None
        result: Asset = await self._open_writer().submit(w, len(value.data) if value else 0)
        return result

    async def renew_lease(self, asset_id: str, seconds: int, now: datetime, by: str) -> Asset:
        at = to_ms(now)

        # A write of the lease's record only: no revision, no change (_settle publishes
        # none), in a group transaction like any write.
        def w(c: sqlite3.Connection) -> tuple[Asset, None]:
            _leases.renew(c, asset_id, seconds, at, by)
            row = c.execute(
                f"SELECT {LISTED_COLUMNS} FROM {RECORDS} WHERE id = ?", (asset_id,)
            ).fetchone()
            return row_to_asset(row), None

        result: Asset = await self._open_writer().submit(w)
        return result

    async def set_block_sums(self, asset_id: str, storage_path: str, sums: BlockSums) -> bool:
        # In a group transaction like any write, but no revision and no change: clients
        # never see block sums.
        def w(c: sqlite3.Connection) -> tuple[bool, None]:
            cur = c.execute(
                "UPDATE assets SET block_sums = ? WHERE id = ? AND storage_path = ? "
                "AND storage_path != ''",
                (sums.encode(), asset_id, storage_path),
            )
            return cur.rowcount == 1, None

        result: bool = await self._open_writer().submit(w, len(sums.crcs))
        return result

    def _delete_once(
        self, c: sqlite3.Connection, asset_id: str, by: str, removal: Removal | None
    ) -> Asset | None:
        with transaction(c):
            before = _retention.current(c, asset_id)
            if before is None:
                return None  # nothing changed: the empty commit writes nothing
            _retention.check_removal(before, removal)
            row = c.execute(
                f"DELETE FROM assets WHERE id = ? RETURNING {COLUMNS}", (asset_id,)
            ).fetchone()
            rev = self._next_revision(c)
            c.execute("DELETE FROM asset_tags WHERE asset_id = ?", (asset_id,))
            last_end = _leases.drop(c, asset_id)
            _retention.drop_holds(c, asset_id)
            fields = {
                **row_to_asset(row).__dict__,
                "revision": rev,
                "updated_by": by,
                "deletion_reason": removal.reason if removal is not None else "",
            }
            if last_end is not None:
                fields["lease_expires_at"] = from_ms(last_end)
            gone = Asset(**fields)
            _retention.account(c, before, None)
            _retention.settle_task(c, before)
            _tombstones.keep(c, gone)
            if self._shared is not None:
                _shared.append(c, Change(ChangeKind.DELETE, gone))
        return gone

    async def delete(
        self, asset_id: str, by: str = "", removal: Removal | None = None
    ) -> Asset | None:
        # Alone in its transaction: on a full disk it is retried with the reserve released.
        def w(c: sqlite3.Connection) -> tuple[Asset | None, Change | None]:
            gone = self.room.delete(
                c, lambda: self._delete_once(c, asset_id, by, removal), asset_id
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
            return _retention.hold_inputs(c, task_id, asset_ids, hold), None

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
