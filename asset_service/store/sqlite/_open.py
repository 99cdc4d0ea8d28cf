"""The SQLite writer's connection: its settings, the schema and its migrations."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from asset_service.store.sqlite import _shared
from asset_service.store.sqlite._files import own_files
from asset_service.store.sqlite._room import INCREMENTAL, Room
from asset_service.store.sqlite._schema import SCHEMA, migrate

# When a checkpoint lets the WAL restart, truncate it to this size: about what the WAL
# grows to between automatic checkpoints (1000 pages), so the steady state keeps its file
# but the space a burst of big transactions (4 MiB VALUEs) took is given back, not pinned.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024


def connect(
    path: Path, room: Room, shared: bool
) -> tuple[sqlite3.Connection, int, tuple[int, int]]:
    """The writer's connection to a migrated database; the revision the shared feed follows
    from (0 unless `shared`); the (st_dev, st_ino) of the file opened."""
    own_files(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
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
            migrate(conn, path, fresh)
        conn.executescript(SCHEMA)
        if fresh:
            migrate(conn, path, fresh)
        seen = _shared.create(conn) if shared else 0
        # Before the writer thread starts, which makes every later use of the reserve.
        room.open(conn)
        opened = os.stat(path)
    except BaseException:
        conn.close()
        raise
    return conn, seen, (opened.st_dev, opened.st_ino)
