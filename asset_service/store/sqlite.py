"""SqliteStore: the embedded metadata store (one process owns the database file)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from asset_service.domain.errors import (
    Conflict,
    NotFound,
    StorageFull,
    Unavailable,
)
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    Change,
    ChangeKind,
    Failure,
    Fulfillment,
    Page,
    Resync,
    Status,
    Value,
    ValueKind,
)
from asset_service.store import _paging
from asset_service.store._fields import transition_fields
from asset_service.store._reserve import DiskReserve
from asset_service.store._sqlite_writer import GroupWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

# The "emergency ballast" (CockroachDB's term): a preallocated file beside the database,
# given back to the filesystem when a DELETE hits a full disk, so that deleting assets (the
# way to free space) still works. Such a delete (freed pages not zeroed, whatever the
# record's size) appends about ten WAL frames, a page plus a 24-byte header each (~40 KiB;
# tests/unit/test_sqlite_full.py measures it), and the checkpoint that follows may grow the
# database file by the WAL's new pages (~1000 at most between automatic checkpoints): a
# few MiB covers both with margin.
DEFAULT_RESERVE_BYTES = 4 * 1024 * 1024
# When a checkpoint lets the WAL restart, truncate it to this size: about what the WAL
# grows to between automatic checkpoints (1000 pages), so the steady state keeps its file
# but the space a burst of big transactions (4 MiB VALUEs) took is given back, not pinned.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
# Reads run on this many threads, each with its own read-only connection: WAL lets them
# read the last committed state while the writer thread is in a transaction.
READ_THREADS = 4
# GetAsset's point read runs on the event loop itself when the record's value is at most
# this big: one indexed lookup of a few cached pages costs less than the hop to a reader
# thread and back (GetAsset at 16 and 64 in flight: 0.6 of a bare echo with the hop, ~0.8
# without; bench/README.md). A page not in the cache blocks the loop for one disk read.
# WAL readers never wait for the writer; the loop's connection has no busy timeout, so the
# rare SQLITE_BUSY (WAL recovery, a checkpoint restarting the log) and bigger values go to
# a reader thread as before.
LOOP_READ_MAX_VALUE = 64 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    label           TEXT NOT NULL,
    status          TEXT NOT NULL,
    type            TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    storage_path    TEXT NOT NULL DEFAULT '',
    value_kind      TEXT,
    value_data      BLOB,
    created_by_task TEXT NOT NULL DEFAULT '',
    tags            TEXT NOT NULL DEFAULT '[]',
    size_bytes      INTEGER NOT NULL DEFAULT 0,
    sha256          TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    failure_reason  TEXT NOT NULL DEFAULT '',
    fulfilled_from  TEXT NOT NULL DEFAULT '',
    revision        INTEGER NOT NULL,
    created_by      TEXT NOT NULL DEFAULT '',
    updated_by      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS assets_status ON assets (status, seq);
CREATE INDEX IF NOT EXISTS assets_task ON assets (created_by_task, seq);
CREATE INDEX IF NOT EXISTS assets_label ON assets (label, seq);
CREATE TABLE IF NOT EXISTS asset_tags (
    tag      TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    PRIMARY KEY (tag, asset_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('revision', 0);
"""

# PRAGMA user_version of a database SCHEMA creates. A database from an older release is
# brought up to it by MIGRATIONS[v] for each later version v, one transaction each.
SCHEMA_VERSION = 1
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE assets ADD COLUMN created_by TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE assets ADD COLUMN updated_by TEXT NOT NULL DEFAULT ''",
    ),
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))

COLUMNS = (
    "id, label, status, type, media_type, storage_path, value_kind, value_data, "
    "created_by_task, tags, size_bytes, sha256, created_at, updated_at, failure_reason, "
    "fulfilled_from, revision, created_by, updated_by"
)
# The same record without its inline value (value_kind NULL reads as "no value").
SLIM_COLUMNS = COLUMNS.replace("value_kind, value_data", "NULL AS value_kind, NULL AS value_data")
assert SLIM_COLUMNS != COLUMNS
# The point read on the loop: the value only when small (length() of a BLOB reads its size
# from the record header, not its pages), with its size to tell "too big" from "none".
LOOP_GET = (
    "SELECT "
    + COLUMNS.replace(
        "value_data",
        f"CASE WHEN length(value_data) <= {LOOP_READ_MAX_VALUE} THEN value_data END AS value_data",
    )
    + ", length(value_data) AS value_length FROM assets WHERE id = ?"
)
assert LOOP_GET.count("CASE") == 1


def _row_to_asset(row: sqlite3.Row) -> Asset:
    value = None
    if row["value_kind"] is not None:
        value = Value(ValueKind(row["value_kind"]), bytes(row["value_data"]))
    return Asset(
        id=row["id"],
        label=row["label"],
        status=Status(row["status"]),
        type=AssetType(row["type"]),
        media_type=row["media_type"],
        storage_path=row["storage_path"],
        value=value,
        created_by_task=row["created_by_task"],
        tags=tuple(json.loads(row["tags"])),
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        failure_reason=row["failure_reason"],
        fulfilled_from=row["fulfilled_from"],
        revision=row["revision"],
        created_by=row["created_by"],
        updated_by=row["updated_by"],
    )


class _Later:
    """The loop's point read declined: read on a reader thread."""


LATER = _Later()


def _is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL (extended codes keep the primary one in the low byte)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_FULL)
    return "database or disk is full" in str(exc)


def encode_token(seq: int) -> str:
    return _paging.encode_token("sqlite", seq)


def decode_token(token: str) -> int:
    return _paging.decode_token("sqlite", token)


class SqliteStore:
    """Writes go through one writer thread in group transactions (_sqlite_writer.py), so
    they are serialized and ordered; reads run on reader threads with their own connections.
    """

    def __init__(self, path: Path, reserve_bytes: int = DEFAULT_RESERVE_BYTES) -> None:
        self.path = path
        self.reserve = DiskReserve(path.with_name(path.name + ".reserve"), reserve_bytes)
        self._readers = ThreadPoolExecutor(
            max_workers=READ_THREADS, thread_name_prefix="sqlite-read"
        )
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        # The event loop's own read-only connection (see LOOP_READ_MAX_VALUE).
        self._loop_conn: sqlite3.Connection | None = None
        self._writer: GroupWriter | None = None
        self._changes: asyncio.Queue[Change] = asyncio.Queue()
        self._lock_fd: int | None = None

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

        def run() -> T:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._connect_reader()
            return fn(conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, run)
        except sqlite3.OperationalError as exc:
            raise self._translate(exc) from exc

    def _connect_reader(self, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only=1")
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        with self._read_conns_lock:
            self._read_conns.append(conn)
        return conn

    def _get_on_loop(self, asset_id: str) -> Asset | _Later | None:
        """The record, None if there is none, or LATER: read it on a reader thread."""
        conn = self._loop_conn
        if conn is None:
            return LATER
        try:
            # fetchall, not fetchone: the statement runs to its end and leaves no read
            # transaction open on the loop's connection.
            rows = conn.execute(LOOP_GET, (asset_id,)).fetchall()
        except sqlite3.Error:
            # SQLITE_BUSY at once (no busy timeout here), or a real fault, which the
            # reader thread meets again and reports.
            return LATER
        if not rows:
            return None
        row = rows[0]
        if row["value_kind"] is not None and row["value_data"] is None:
            return LATER  # a value over LOOP_READ_MAX_VALUE: not on the loop
        return _row_to_asset(row)

    def _translate(self, exc: sqlite3.Error) -> StorageFull | Unavailable:
        if _is_full(exc):
            return StorageFull(
                f"the metadata database's disk is full ({self.path}): free space, e.g. "
                "delete assets with DeleteAsset"
            )
        return Unavailable(f"sqlite database {self.path}: {exc}")

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; roll back on any error, if there is anything to undo."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back by itself after SQLITE_FULL, IOERR, NOMEM...:
            # a second ROLLBACK would fail ("no transaction is active") and hide the cause.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    log.warning("rollback failed after an error: %s", exc)
            raise

    def _publish(self, changes: list[Change]) -> None:
        # On the loop, from the one writer thread's batches in order: commit order.
        for change in changes:
            self._changes.put_nowait(change)

    @staticmethod
    def _next_revision(conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value"
        ).fetchone()
        return int(row[0])

    # --- lifecycle ------------------------------------------------------------------

    def _migrate(self, conn: sqlite3.Connection, fresh: bool) -> None:
        """Bring a database written by an older release up to SCHEMA_VERSION."""
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if fresh:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        if version > SCHEMA_VERSION:
            raise Unavailable(
                f"sqlite database {self.path} has schema version {version}, written by a newer "
                f"asset-service; this one knows versions up to {SCHEMA_VERSION}: run the newer "
                "release (or restore a backup taken before the upgrade)"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction(conn):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
            log.info("sqlite database %s migrated to schema version %d", self.path, target)

    def _claim(self) -> None:
        """One server process per database file: its change feed is in-process only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Unavailable(
                f"another asset-service process is using {self.path}; the embedded SQLite "
                "store serves one process (watchers would miss the other's changes). Stop "
                "it, give this one its own --storage-root, or use MongoDB to run several."
            ) from None
        self._lock_fd = fd

    async def open(self) -> None:
        self._claim()

        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed transition survives power loss, matching the fsynced bytes.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            try:
                fresh = not conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'assets'"
                ).fetchone()
                conn.executescript(SCHEMA)
                self._migrate(conn, fresh)
            except BaseException:
                conn.close()
                raise
            # Before the writer thread starts, which makes every later use of the reserve.
            self.reserve.open(str(self.path))
            return conn

        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(self._readers, connect)
        except sqlite3.Error as exc:
            if _is_full(exc):
                raise StorageFull(
                    f"cannot open sqlite database {self.path}: its disk is full; free space"
                ) from exc
            raise Unavailable(f"cannot open sqlite database {self.path}: {exc}") from exc
        # Used only on the loop's thread (opened on a reader thread, like the others).
        self._loop_conn = await loop.run_in_executor(self._readers, self._connect_reader, 0)
        self._writer = GroupWriter(
            conn,
            loop,
            translate=self._translate,
            publish=self._publish,
            after_commit=self.reserve.restore,
        )

    async def close(self) -> None:
        writer, self._writer = self._writer, None  # refuses new reads and writes
        self._readers.shutdown(wait=True)
        self._loop_conn = None
        with self._read_conns_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()
        if writer is not None:
            # Queued writes still commit; the writer's connection closes last, on its own
            # thread, so that it checkpoints and removes the WAL.
            await writer.close(then=writer.conn.close)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def ping(self) -> None:
        def q(c: sqlite3.Connection) -> tuple[None, None]:
            c.execute("SELECT 1").fetchone()
            self.reserve.restore()
            return None, None

        await self._open_writer().solo(q)

    # --- reads ----------------------------------------------------------------------

    async def get(self, asset_id: str) -> Asset | None:
        self._open_writer()
        now = self._get_on_loop(asset_id)
        if not isinstance(now, _Later):
            return now

        def q(c: sqlite3.Connection) -> Asset | None:
            row = c.execute(f"SELECT {COLUMNS} FROM assets WHERE id = ?", (asset_id,)).fetchone()
            return _row_to_asset(row) if row else None

        return await self._read(q)

    async def get_many(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        return await self._select_many(COLUMNS, asset_ids)

    async def snapshot(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        # One statement, or one read transaction past 500 ids: one cut either way.
        return await self._select_many(SLIM_COLUMNS, asset_ids)

    async def _select_many(self, columns: str, asset_ids: Sequence[str]) -> dict[str, Asset]:
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
                    sql = f"SELECT {columns} FROM assets WHERE id IN ({marks})"
                    for row in c.execute(sql, part):
                        found[row["id"]] = _row_to_asset(row)
            finally:
                if several:
                    c.execute("COMMIT")
            return found

        return await self._read(q) if ids else {}

    async def query(
        self, flt: AssetFilter, limit: int, page_token: str, max_bytes: int | None = None
    ) -> Page:
        after = decode_token(page_token) if page_token else 0
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
        for tag in flt.tags:
            where.append("id IN (SELECT asset_id FROM asset_tags WHERE tag = ?)")
            args.append(tag)
        sql = f"SELECT seq, {COLUMNS} FROM assets WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"

        def q(c: sqlite3.Connection) -> Page:
            # Rows are read one at a time, so a page that stops at max_bytes reads no more.
            rows = c.execute(sql, (*args, limit + 1))
            try:
                assets, last = _paging.fill_page(
                    rows, limit, max_bytes, _row_to_asset, lambda r: int(r["seq"])
                )
            finally:
                rows.close()
            return Page(assets, encode_token(last) if last is not None else "")

        return await self._read(q)

    # --- writes -----------------------------------------------------------------------

    async def insert(self, asset: Asset) -> Asset:
        # Runs in a group transaction, in its own savepoint (_sqlite_writer.py).
        def w(c: sqlite3.Connection) -> tuple[Asset, Change]:
            try:
                rev = self._next_revision(c)
                v = asset.value
                c.execute(
                    f"INSERT INTO assets ({COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        asset.id,
                        asset.label,
                        asset.status.value,
                        asset.type.value,
                        asset.media_type,
                        asset.storage_path,
                        v.kind.value if v else None,
                        v.data if v else None,
                        asset.created_by_task,
                        json.dumps(list(asset.tags)),
                        asset.size_bytes,
                        asset.sha256,
                        asset.created_at.isoformat(),
                        asset.updated_at.isoformat(),
                        asset.failure_reason,
                        asset.fulfilled_from,
                        rev,
                        asset.created_by,
                        asset.updated_by,
                    ),
                )
                c.executemany(
                    "INSERT INTO asset_tags (tag, asset_id) VALUES (?, ?)",
                    [(t, asset.id) for t in asset.tags],
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"asset {asset.id} already exists") from None
            stored = Asset(**{**asset.__dict__, "revision": rev})
            return stored, Change(ChangeKind.PUT, stored)

        cost = len(asset.value.data) if asset.value else 0
        result: Asset = await self._open_writer().submit(w, cost)
        return result

    async def transition(
        self, asset_id: str, expected: Status, change: Fulfillment | Failure, now: datetime
    ) -> Asset:
        sets = transition_fields(
            change, now, value_column="value_data", timestamp=datetime.isoformat
        )

        # Runs in a group transaction, in its own savepoint: raising rolls it back alone,
        # revision bump included.
        def w(c: sqlite3.Connection) -> tuple[Asset, Change]:
            rev = self._next_revision(c)
            assignments = ", ".join(f"{k} = ?" for k in sets)
            row = c.execute(
                f"UPDATE assets SET {assignments}, revision = ? "
                f"WHERE id = ? AND status = ? RETURNING {COLUMNS}",
                (*sets.values(), rev, asset_id, expected.value),
            ).fetchone()
            if row is None:
                cur = c.execute("SELECT status FROM assets WHERE id = ?", (asset_id,))
                current = cur.fetchone()
                if current is None:
                    raise NotFound(f"asset {asset_id} not found")
                raise Conflict(
                    f"asset {asset_id} is {current['status']}, expected {expected.value}"
                )
            updated = _row_to_asset(row)
            return updated, Change(ChangeKind.PUT, updated)

        value = change.value if isinstance(change, Fulfillment) else None
        result: Asset = await self._open_writer().submit(w, len(value.data) if value else 0)
        return result

    def _delete_once(self, c: sqlite3.Connection, asset_id: str, by: str) -> Asset | None:
        with self._transaction(c):
            row = c.execute(
                f"DELETE FROM assets WHERE id = ? RETURNING {COLUMNS}", (asset_id,)
            ).fetchone()
            if row is None:
                return None  # nothing changed: the empty commit writes nothing
            rev = self._next_revision(c)
            c.execute("DELETE FROM asset_tags WHERE asset_id = ?", (asset_id,))
        return Asset(**{**_row_to_asset(row).__dict__, "revision": rev, "updated_by": by})

    def _delete_frugally(self, c: sqlite3.Connection, asset_id: str, by: str) -> Asset | None:
        """The delete without zeroing the pages it frees, to fit in the reserve.

        Builds with SQLITE_SECURE_DELETE (Debian's, Ubuntu's) overwrite every freed page, so
        deleting a 4 MiB VALUE writes 4 MiB of WAL; FAST writes only the pages it must.
        """
        mode = int(c.execute("PRAGMA secure_delete").fetchone()[0])
        c.execute("PRAGMA secure_delete = FAST")
        try:
            return self._delete_once(c, asset_id, by)
        finally:
            c.execute(f"PRAGMA secure_delete = {mode}")

    async def delete(self, asset_id: str, by: str = "") -> Asset | None:
        # Alone in its transaction: on a full disk it is retried with the reserve released.
        def w(c: sqlite3.Connection) -> tuple[Asset | None, Change | None]:
            try:
                gone = self._delete_once(c, asset_id, by)
            except sqlite3.OperationalError as exc:
                # Deleting is how space gets freed, so it must work on a full disk too.
                if not _is_full(exc):
                    raise
                if not self.reserve.release(f"the disk holding {self.path} is full"):
                    raise StorageFull(
                        f"the metadata database's disk is full ({self.path}) and its reserve "
                        f"({self.reserve.path}) is used up, so even deleting asset {asset_id} "
                        "cannot be written: free space on that disk by other means, then retry"
                    ) from exc
                gone = self._delete_frugally(c, asset_id, by)
                # Copy the WAL into the database now, so the next writes restart the WAL
                # from its beginning (reusing its space) instead of appending to it.
                try:
                    c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as cexc:
                    log.warning("checkpoint after a disk-full delete failed: %s", cexc)
            if gone is None:
                return None, None
            self.reserve.restore()
            return gone, Change(ChangeKind.DELETE, gone)

        result: Asset | None = await self._open_writer().solo(w)
        return result

    async def changes(self) -> AsyncIterator[Change | Resync]:
        while True:
            yield await self._changes.get()
