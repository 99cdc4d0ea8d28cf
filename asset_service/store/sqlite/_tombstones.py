"""SqliteStore's tombstones of deleted assets, and the changes since a revision they serve."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime

from asset_service.domain.errors import HistoryGone
from asset_service.domain.models import Asset, AssetType, Change, ChangeKind, Status
from asset_service.domain.replay import EVERYTHING, Narrowing, Replay, merged, tombstone
from asset_service.store.sqlite._schema import (
    RECORD_SLIM_COLUMNS,
    row_to_asset,
    to_ms,
    transaction,
)

# Tombstones removed per transaction of a sweep: the writer thread is not held for long.
SWEEP_BATCH = 5000
# A replay narrowed by a field with an index of its own (Narrowing) reads the records
# through that index when it holds at most this many of them (each page reads them all and
# sorts them by revision); else through the revision index, the narrowing tested in SQL on
# each row (the whole store's changes since, but none of them in Python).
INDEX_MAX = 20_000
# The column of each of a Narrowing's equalities, in records and tombstones alike.
COLUMN = {"task": "created_by_task", "key": "asset_key", "label": "label", "type": "type"}
# Those with an index of their own, the most selective first (a key is one asset's), then
# the tags (asset_tags).
INDEXED = (("key", "assets_key"), ("task", "assets_task"), ("label", "assets_label"))
# A tag, tested on a record (its asset_tags rows, by their primary key) or on a tombstone
# (the JSON list it keeps).
TAGGED = {
    "assets": "EXISTS (SELECT 1 FROM asset_tags WHERE tag = ? AND asset_id = assets.id)",
    "tombstones": "EXISTS (SELECT 1 FROM json_each(tombstones.tags) WHERE value = ?)",
}

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


def _narrowed(narrow: Narrowing, table: str) -> tuple[str, list[object]]:
    """`narrow` as conditions (" AND ...", or "") on the rows of `table` (assets or
    tombstones: the same columns, but for the tags), and their arguments."""
    where: list[str] = []
    args: list[object] = []
    for name, value in narrow.equalities().items():
        where.append(f"{table}.{COLUMN[name]} = ?")
        args.append(value)
    for tag in narrow.tags:
        where.append(TAGGED[table])
        args.append(tag)
    return "".join(f" AND {w}" for w in where), args


def _small(c: sqlite3.Connection, rows: str, value: str) -> bool:
    """Whether `rows` (a SELECT of one value's index entries) holds at most INDEX_MAX."""
    (small,) = c.execute(
        f"SELECT count(*) <= ? FROM ({rows} LIMIT ?)", (INDEX_MAX, value, INDEX_MAX + 1)
    ).fetchone()
    return bool(small)


def _source(c: sqlite3.Connection, narrow: Narrowing) -> tuple[str, list[object], Narrowing]:
    """Where the records `narrow` admits are read from: the index of the first of its
    fields with a small set (INDEXED, then each tag), all of that set sorted by revision;
    else the revision index, one range already in order. The FROM clause up to its WHERE,
    the arguments of its own conditions, and what is left of `narrow` to test."""
    given = narrow.equalities()
    for name, index in INDEXED:
        rows = f"SELECT 1 FROM assets INDEXED BY {index} WHERE {COLUMN[name]} = ?"
        if name in given and _small(c, rows, given[name]):
            return f"assets INDEXED BY {index} WHERE", [], narrow
    for tag in narrow.tags:
        if _small(c, "SELECT 1 FROM asset_tags WHERE tag = ?", tag):
            # The tag's asset_tags rows (their primary key), each joined to its record.
            others = replace(narrow, tags=tuple(t for t in narrow.tags if t != tag))
            join = "asset_tags CROSS JOIN assets ON assets.id = asset_tags.asset_id"
            return f"{join} WHERE asset_tags.tag = ? AND", [tag], others
    return "assets INDEXED BY assets_revision WHERE", [], narrow


def _records_since(
    c: sqlite3.Connection, after: int, limit: int, narrow: Narrowing
) -> tuple[str, list[object]]:
    """The statement reading the records above `after` that `narrow` admits, and its
    arguments: every field of `narrow` is tested in SQL, whichever index reads them."""
    source, lead, rest = _source(c, narrow)
    where, args = _narrowed(rest, "assets")
    return (
        f"SELECT {RECORD_SLIM_COLUMNS} FROM {source} revision > ?{where} ORDER BY revision LIMIT ?",
        [*lead, after, *args, limit],
    )


def changes_since(
    c: sqlite3.Connection, after: int, limit: int, narrow: Narrowing = EVERYTHING
) -> Replay:
    """Records and tombstones above `after` that `narrow` admits, in ONE read transaction
    (a WAL snapshot)."""
    c.execute("BEGIN")
    try:
        horizon = _counter(c, "tombstones")
        if after < horizon:
            raise HistoryGone(after, horizon)
        revision = _counter(c, "revision")
        statement, args = _records_since(c, after, limit, narrow)
        records = [Change(ChangeKind.PUT, row_to_asset(row)) for row in c.execute(statement, args)]
        # Tombstones live a --watch-tombstone-ttl: their revision range, narrowed in SQL
        # (a tombstone keeps every field a Narrowing has; no index but the revision).
        where, args = _narrowed(narrow, "tombstones")
        gone = [
            Change(ChangeKind.DELETE, _tombstone(row))
            for row in c.execute(
                f"SELECT {TOMBSTONE_COLUMNS} FROM tombstones WHERE revision > ?{where} "
                "ORDER BY revision LIMIT ?",
                (after, *args, limit),
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
