"""SQLite reads: a connection per reader thread, and one on the event loop for point reads."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from asset_service.domain.models import Asset
from asset_service.store.sqlite._schema import LOOP_GET, row_to_asset

T = TypeVar("T")

# Reads run on this many threads, each with its own read-only connection: WAL lets them
# read the last committed state while the writer thread is in a transaction.
READ_THREADS = 4


# Records kept for the loop's point reads between two commits: so many, and values of
# so many bytes in all (each value is at most LOOP_READ_MAX_VALUE).
KNOWN_MAX = 1024
KNOWN_MAX_BYTES = 4 * 1024 * 1024


class Later:
    """The loop's point read declined: read on a reader thread."""


LATER = Later()


class Readers:
    """Read-only connections to one database: one per reader thread, opened on first use,
    and one used only on the event loop's thread (see LOOP_READ_MAX_VALUE)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.executor = ThreadPoolExecutor(
            max_workers=READ_THREADS, thread_name_prefix="sqlite-read"
        )
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.loop_conn: sqlite3.Connection | None = None
        # Records the loop read, while the database is as it was then (_known).
        self._known: dict[str, Asset] = {}
        self._known_version: int | None = None
        self._known_bytes = 0

    async def open_loop_connection(self) -> None:
        """The event loop's connection, with no busy timeout (opened on a reader thread)."""
        loop = asyncio.get_running_loop()
        self.loop_conn = await loop.run_in_executor(self.executor, self.connect, 0)

    def connect(self, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only=1")
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        with self._lock:
            self._conns.append(conn)
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """fn(connection) on a reader thread; sqlite3 errors are the caller's to translate."""

        def run() -> T:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self.connect()
            return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self.executor, run)

    def get_on_loop(
        self, asset_id: str, generation: Callable[[], int] | None = None
    ) -> Asset | Later | None:
        """The record, None if there is none, or LATER: read it on a reader thread.

        `generation` moves whenever the database may have changed: the writer's count of
        the job sets it ran, when it is the database's only writer (one process holds the
        claim); without it, SQLite's data_version, which changes whenever any other
        connection, in any process, commits (several workers). While it has not moved, a
        record read before is still the record: a tenth of the cost of reading and
        converting it again. The writer's count also spares the PRAGMA, a read
        transaction of its own (file locks, the GIL let go and taken back): ~5% of a
        GetAsset's server CPU under load (py-spy).
        """
        conn = self.loop_conn
        if conn is None:
            return LATER
        try:
            if generation is not None:
                version = generation()
            else:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._known_version:
                known = self._known.get(asset_id)
                if known is not None:
                    return known
            else:
                self._forget()
                self._known_version = version
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
        if row["hold_count"]:
            return LATER  # its holds are read beside it, off the loop
        asset = row_to_asset(row)
        size = len(asset.value.data) if asset.value else 0
        if len(self._known) >= KNOWN_MAX or self._known_bytes + size > KNOWN_MAX_BYTES:
            self._forget()
        self._known[asset_id] = asset
        self._known_bytes += size
        return asset

    def _forget(self) -> None:
        self._known.clear()
        self._known_bytes = 0

    def close(self) -> None:
        """Wait for the reads in progress, then close every connection."""
        self.executor.shutdown(wait=True)
        self.loop_conn = None
        self._forget()
        self._known_version = None
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
