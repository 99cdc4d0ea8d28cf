"""SqliteStore's tombstones of deleted assets, and the changes since a revision they serve."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

from asset_service.domain.errors import HistoryGone
from asset_service.domain.models import Asset, AssetType, Change, ChangeKind, Status
from asset_service.domain.replay import Replay, merged, tombstone
from asset_service.store.sqlite._schema import (
    RECORD_SLIM_COLUMNS,
    row_to_asset,
    to_ms,
    transaction,
)

# Tombstones removed per transaction of a sweep: the writer thread is not held for long.
SWEEP_BATCH = 5000
# A task with at most this many records is replayed through the task's index (each page
# reads all of them and sorts them by revision); a bigger one through the revision index,
# the task tested on each row (the whole store's changes since, but none of them in Python).
TASK_INDEX_MAX = 20_000

TOMBSTONE_COLUMNS = (
    "id, revision, deleted_ms, label, status, type, media_type, created_by_task, tags, "
    "created_at, updated_at, created_by, updated_by, deletion_reason, asset_key"
)


def keep(c: sqlite3.Connection, gone: Asset) -> None:
    """Keep tombstone(gone), in the deleting transaction."""
    t = tombstone(gone)
    c.execute(
        f"INSERT INTO tombstones ({TOMBSTONE_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            t.id,
            t.revision,
            to_ms(datetime.now(UTC)),
            t.label,
            t.status.value,
            t.type.value,
            t.media_type,
            t.created_by_task,
            json.dumps(list(t.tags)),
            t.created_at.isoformat(),
            t.updated_at.isoformat(),
            t.created_by,
            t.updated_by,
            t.deletion_reason,
            t.key,
        ),
    )


def _tombstone(row: sqlite3.Row) -> Asset:
    return Asset(
        id=row["id"],
        label=row["label"],
        status=Status(row["status"]),
        type=AssetType(row["type"]),
        media_type=row["media_type"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        created_by_task=row["created_by_task"],
        tags=tuple(json.loads(row["tags"])),
        revision=row["revision"],
        created_by=row["created_by"],
        updated_by=row["updated_by"],
        deletion_reason=row["deletion_reason"],
        key=row["asset_key"],
    )


def _counter(c: sqlite3.Connection, name: str) -> int:
    row = c.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def _records_since(c: sqlite3.Connection, after: int, limit: int, task: str) -> str:
    """The statement reading the records above `after` (and of `task`, if given)."""
    if not task:
        # The revision index: one range, already in order.
        return (
            f"SELECT {RECORD_SLIM_COLUMNS} FROM assets WHERE revision > ? ORDER BY revision LIMIT ?"
        )
    # A task of up to TASK_INDEX_MAX records: all of them from the task's index, sorted
    # (a watch on one task of a million-record store reads its own). A bigger one: the
    # revision range, the task tested on each row in SQLite.
    (small,) = c.execute(
        "SELECT count(*) <= ? FROM (SELECT 1 FROM assets INDEXED BY assets_task "
        "WHERE created_by_task = ? LIMIT ?)",
        (TASK_INDEX_MAX, task, TASK_INDEX_MAX + 1),
    ).fetchone()
    index = "INDEXED BY assets_task" if small else "INDEXED BY assets_revision"
    return (
        f"SELECT {RECORD_SLIM_COLUMNS} FROM assets {index} WHERE created_by_task = ? "
        "AND revision > ? ORDER BY revision LIMIT ?"
    )


def changes_since(c: sqlite3.Connection, after: int, limit: int, task: str = "") -> Replay:
    """Records and tombstones above `after` (of `task`, if given) in ONE read transaction
    (a WAL snapshot)."""
    c.execute("BEGIN")
    try:
        horizon = _counter(c, "tombstones")
        if after < horizon:
            raise HistoryGone(after, horizon)
        revision = _counter(c, "revision")
        narrow = (task,) if task else ()
        records = [
            Change(ChangeKind.PUT, row_to_asset(row))
            for row in c.execute(_records_since(c, after, limit, task), (*narrow, after, limit))
        ]
        # Tombstones live a --watch-tombstone-ttl: their revision range, tested on each.
        gone = [
            Change(ChangeKind.DELETE, _tombstone(row))
            for row in c.execute(
                f"SELECT {TOMBSTONE_COLUMNS} FROM tombstones WHERE revision > ? "
                f"{'AND created_by_task = ? ' if task else ''}ORDER BY revision LIMIT ?",
                (after, *narrow, limit),
            )
        ]
    finally:
        c.execute("COMMIT")
    return merged(records, gone, revision, limit)


def sweep(c: sqlite3.Connection, before_ms: int) -> int:
    """Remove up to SWEEP_BATCH tombstones of deletions before `before_ms`, raising the
    horizon over them in the same transaction.

    Taken in revision order (the table's own order, no index to keep up), up to the first
    one deleted since: deletion times grow with revisions but for a clock stepped back,
    which only keeps some a little longer.
    """
    with transaction(c):
        top = None
        oldest = c.execute(
            "SELECT revision, deleted_ms FROM tombstones ORDER BY revision LIMIT ?",
            (SWEEP_BATCH,),
        ).fetchall()
        for revision, deleted_ms in oldest:
            if deleted_ms >= before_ms:
                break
            top = int(revision)
        if top is None:
            return 0
        c.execute("UPDATE counters SET value = max(value, ?) WHERE name = 'tombstones'", (top,))
        return int(c.execute("DELETE FROM tombstones WHERE revision <= ?", (top,)).rowcount)
