"""The SQLite schema, its migrations, the column lists and the row -> Asset mapping."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asset_service.domain.errors import Unavailable
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    BlockSums,
    Status,
    Value,
    ValueKind,
)
from asset_service.store import _paging
from asset_service.store._fields import encoded_sums

log = logging.getLogger(__name__)

# GetAsset's point read runs on the event loop itself when the record's value is at most
# this big: one indexed lookup of a few cached pages costs less than the hop to a reader
# thread and back (GetAsset at 16 and 64 in flight: 0.6 of a bare echo with the hop, ~0.8
# without; bench/README.md). A page not in the cache blocks the loop for one disk read.
# WAL readers never wait for the writer; the loop's connection has no busy timeout, so the
# rare SQLITE_BUSY (WAL recovery, a checkpoint restarting the log) and bigger values go to
# a reader thread as before.
LOOP_READ_MAX_VALUE = 64 * 1024

# What changes_since reads: the records by revision, and a tombstone per deletion
# (_tombstones.py), keyed by its revision: one B-tree, so a delete on a full disk writes one
# page more for it (the disk-full reserve is sized by what a delete writes). The
# `tombstones` counter is the newest revision swept (or, in a database migrated from
# before tombstones, the revision they began at): no replay reaches below it.
TOMBSTONES = """
CREATE INDEX IF NOT EXISTS assets_revision ON assets (revision);
CREATE TABLE IF NOT EXISTS tombstones (
    revision        INTEGER PRIMARY KEY,
    id              TEXT NOT NULL,
    deleted_ms      INTEGER NOT NULL,
    label           TEXT NOT NULL,
    status          TEXT NOT NULL,
    type            TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    created_by_task TEXT NOT NULL,
    tags            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    updated_by      TEXT NOT NULL,
    deletion_reason TEXT NOT NULL DEFAULT '',
    asset_key       TEXT NOT NULL DEFAULT ''
);
"""

# What migration 4 created, before deletions said why (migration 6 adds the column) and
# which get-or-create key the asset had (migration 7).
TOMBSTONES_V4 = TOMBSTONES.replace(
    "    updated_by      TEXT NOT NULL,\n    deletion_reason TEXT NOT NULL DEFAULT '',\n"
    "    asset_key       TEXT NOT NULL DEFAULT ''\n",
    "    updated_by      TEXT NOT NULL\n",
)
assert TOMBSTONES_V4 != TOMBSTONES

# Retention (issue 23): each record's expiry (an index on it, of the records that have one:
# the expiry sweep reads its start), the holds kept beside records (hold_count on the
# record says whether to look), the manifest retention, and the accounting cells that
# every write keeps (domain/usage.py). A deleted asset's tombstone says why it went.
RETENTION = """
CREATE INDEX IF NOT EXISTS assets_expiry ON assets (expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS holds (
    asset_id  TEXT NOT NULL,
    owner     TEXT NOT NULL,
    kind      TEXT NOT NULL,
    reason    TEXT NOT NULL DEFAULT '',
    placed_ms INTEGER NOT NULL,
    placed_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (asset_id, owner)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holds_owner ON holds (owner);
CREATE TABLE IF NOT EXISTS usage (
    grp    TEXT NOT NULL,
    key    TEXT NOT NULL,
    status TEXT NOT NULL,
    count  INTEGER NOT NULL,
    bytes  INTEGER NOT NULL,
    PRIMARY KEY (grp, key, status)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_largest ON usage (grp, status, bytes DESC, count DESC, key);
"""

# Indexes of the records that have the field: most have no content hash (a promise) and
# no get-or-create key, and an insert that adds no entry to an index is cheaper (bench/README.md).
# A query uses them when its WHERE implies theirs (`sha256 != ''` spelled out with
# `sha256 = ?`; `key_slot = ?` implies NOT NULL).
PARTIAL = """
CREATE INDEX IF NOT EXISTS assets_sha256 ON assets (sha256, seq) WHERE sha256 != '';
CREATE UNIQUE INDEX IF NOT EXISTS assets_key_slot ON assets (key_slot) WHERE key_slot IS NOT NULL;
"""

SCHEMA = (
    """
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
    updated_by      TEXT NOT NULL DEFAULT '',
    lease_seconds   INTEGER NOT NULL DEFAULT 0,
    lease_expires_ms INTEGER,
    block_sums      BLOB,
    corrupt_reason  TEXT NOT NULL DEFAULT '',
    expires_ms      INTEGER,
    expiry_rule     TEXT NOT NULL DEFAULT '',
    retained_ms     INTEGER,
    hold_count      INTEGER NOT NULL DEFAULT 0,
    asset_key       TEXT NOT NULL DEFAULT '',
    key_slot        TEXT
);
CREATE INDEX IF NOT EXISTS assets_status ON assets (status, seq);
CREATE INDEX IF NOT EXISTS assets_task ON assets (created_by_task, seq);
CREATE INDEX IF NOT EXISTS assets_label ON assets (label, seq);
CREATE INDEX IF NOT EXISTS assets_key ON assets (asset_key, seq);
"""
    + PARTIAL
    + """CREATE INDEX IF NOT EXISTS assets_storage_path ON assets (storage_path)
    WHERE storage_path != '';
CREATE TABLE IF NOT EXISTS leases (
    asset_id   TEXT PRIMARY KEY,
    expires_ms INTEGER NOT NULL,
    seconds    INTEGER NOT NULL,
    renewed_by TEXT NOT NULL DEFAULT '',
    renewed_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_ms);
CREATE TABLE IF NOT EXISTS asset_tags (
    tag      TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    PRIMARY KEY (tag, asset_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('revision', 0);
"""
    + TOMBSTONES
    + RETENTION
    + """
INSERT OR IGNORE INTO counters (name, value) VALUES ('tombstones', 0);
"""
)

# PRAGMA user_version of a database SCHEMA creates. A database from an older release is
# brought up to it by MIGRATIONS[v] for each later version v, one transaction each.
SCHEMA_VERSION = 9
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE assets ADD COLUMN created_by TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE assets ADD COLUMN updated_by TEXT NOT NULL DEFAULT ''",
    ),
    2: (
        "ALTER TABLE assets ADD COLUMN lease_seconds INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE assets ADD COLUMN lease_expires_ms INTEGER",
        "CREATE INDEX IF NOT EXISTS assets_lease ON assets (status, lease_expires_ms)",
    ),
    # Records stored before get their block sums on first read or from the scrub.
    3: (
        "ALTER TABLE assets ADD COLUMN block_sums BLOB",
        "ALTER TABLE assets ADD COLUMN corrupt_reason TEXT NOT NULL DEFAULT ''",
    ),
    # Deletions before this left no tombstone: resumes from before it are refused.
    4: (
        *(statement for statement in TOMBSTONES_V4.split(";") if statement.strip()),
        "INSERT OR IGNORE INTO counters (name, value) "
        "SELECT 'tombstones', value FROM counters WHERE name = 'revision'",
    ),
    # Leases move to records of their own (a renewal is not a change of the asset): each
    # PENDING promise's current end goes there; the sweep reads their index instead.
    5: (
        "CREATE TABLE IF NOT EXISTS leases (asset_id TEXT PRIMARY KEY, "
        "expires_ms INTEGER NOT NULL, seconds INTEGER NOT NULL, "
        "renewed_by TEXT NOT NULL DEFAULT '', renewed_ms INTEGER) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_ms)",
        "INSERT OR IGNORE INTO leases (asset_id, expires_ms, seconds) "
        "SELECT id, lease_expires_ms, lease_seconds FROM assets "
        "WHERE status = 'PENDING' AND lease_expires_ms IS NOT NULL AND lease_seconds > 0",
        "DROP INDEX IF EXISTS assets_lease",
    ),
    # Retention: expiries, holds, accounting (counted once from the records here; every
    # write keeps it from then on), and why an asset was deleted.
    6: (
        "ALTER TABLE assets ADD COLUMN expires_ms INTEGER",
        "ALTER TABLE assets ADD COLUMN expiry_rule TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE assets ADD COLUMN retained_ms INTEGER",
        "ALTER TABLE assets ADD COLUMN hold_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tombstones ADD COLUMN deletion_reason TEXT NOT NULL DEFAULT ''",
        *(statement for statement in RETENTION.split(";") if statement.strip()),
        *(
            "INSERT INTO usage (grp, key, status, count, bytes) "
            f"SELECT '{group}', {key}, status, count(*), sum(size_bytes) FROM {source} "
            f"GROUP BY {key}, status"
            for group, key, source in (
                ("all", "''", "assets"),
                ("type", "type", "assets"),
                ("task", "created_by_task", "assets"),
                ("tag", "tag", "assets JOIN asset_tags ON asset_tags.asset_id = assets.id"),
            )
        ),
        "INSERT INTO usage (grp, key, status, count, bytes) "
        "SELECT grp, key, '', sum(count), sum(bytes) FROM usage GROUP BY grp, key",
    ),
    # Get-or-create keys (issue 24): the key a record was made for, and key_slot, set
    # (to the key) while the record holds it: NULLs are distinct, so the unique index
    # allows one holder per key and any number of records holding none.
    7: (
        "ALTER TABLE assets ADD COLUMN asset_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE assets ADD COLUMN key_slot TEXT",
        "ALTER TABLE tombstones ADD COLUMN asset_key TEXT NOT NULL DEFAULT ''",
    ),
    # Bytes stored once (issue 24): the records pointing at a storage path are its
    # references (_references.py), found through this index.
    8: (
        "CREATE INDEX IF NOT EXISTS assets_storage_path ON assets (storage_path) "
        "WHERE storage_path != ''",
    ),
    # The content hash's and the key slot's indexes hold only the records with one (PARTIAL).
    9: (
        "DROP INDEX IF EXISTS assets_sha256",
        "DROP INDEX IF EXISTS assets_key_slot",
        *(statement for statement in PARTIAL.split(";") if statement.strip()),
    ),
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))

COLUMNS = (
    "id, label, status, type, media_type, storage_path, value_kind, value_data, "
    "created_by_task, tags, size_bytes, sha256, created_at, updated_at, failure_reason, "
    "fulfilled_from, revision, created_by, updated_by, lease_seconds, lease_expires_ms, "
    "block_sums, corrupt_reason, expires_ms, expiry_rule, retained_ms, asset_key"
)
COLUMN_COUNT = len(COLUMNS.split(","))
# Reads join each record with its lease: a PENDING promise's lease ends when its lease's
# record says (renewals write only that); the record's own column holds the end as of its
# last revision (what its change carried). COLUMNS stays the record's own, for INSERT and
# RETURNING.
RECORDS = "assets LEFT JOIN leases ON leases.asset_id = assets.id"
READ_COLUMNS = COLUMNS.replace(
    "lease_expires_ms,", "COALESCE(leases.expires_ms, assets.lease_expires_ms) AS lease_expires_ms,"
).replace(", expires_ms, expiry_rule", ", assets.expires_ms AS expires_ms, expiry_rule") + (
    ", assets.hold_count AS hold_count"
)
assert READ_COLUMNS != COLUMNS
# The record without its block sums (only get() reads them: ReadAsset checks with them).
LISTED_COLUMNS = READ_COLUMNS.replace("block_sums,", "NULL AS block_sums,")
assert LISTED_COLUMNS != READ_COLUMNS
# The same record without its inline value (value_kind NULL reads as "no value") and
# block sums.
SLIM_COLUMNS = READ_COLUMNS.replace(
    "value_kind, value_data", "NULL AS value_kind, NULL AS value_data"
).replace("block_sums,", "NULL AS block_sums,")
assert SLIM_COLUMNS.count("NULL AS") == 3
# The same, with the lease's end as the record holds it (at its last revision): what a
# change (a replay's too) carries, from `assets` alone.
RECORD_SLIM_COLUMNS = SLIM_COLUMNS.replace(
    "COALESCE(leases.expires_ms, assets.lease_expires_ms) AS lease_expires_ms",
    "lease_expires_ms",
)
assert "leases." not in RECORD_SLIM_COLUMNS
# The point read on the loop: the value only when small (length() of a BLOB reads its size
# from the record header, not its pages), with its size to tell "too big" from "none".
LOOP_GET = (
    "SELECT "
    + READ_COLUMNS.replace(
        "value_data",
        f"CASE WHEN length(value_data) <= {LOOP_READ_MAX_VALUE} THEN value_data END AS value_data",
    )
    + f", length(value_data) AS value_length FROM {RECORDS} WHERE id = ?"
)
assert LOOP_GET.count("CASE") == 1


def row_to_asset(row: sqlite3.Row) -> Asset:
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
        lease_seconds=row["lease_seconds"],
        lease_expires_at=from_ms(row["lease_expires_ms"]),
        block_sums=BlockSums.decode(row["block_sums"]),
        corrupt_reason=row["corrupt_reason"],
        expires_at=from_ms(row["expires_ms"]),
        expiry_rule=row["expiry_rule"],
        retained_until=from_ms(row["retained_ms"]),
        key=row["asset_key"],
    )


def asset_row(asset: Asset, revision: int) -> tuple[object, ...]:
    """The values of COLUMNS for `asset` at `revision`."""
    v = asset.value
    return (
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
        revision,
        asset.created_by,
        asset.updated_by,
        asset.lease_seconds,
        to_ms(asset.lease_expires_at) if asset.lease_expires_at else None,
        encoded_sums(asset.block_sums),
        asset.corrupt_reason,
        to_ms(asset.expires_at) if asset.expires_at else None,
        asset.expiry_rule,
        to_ms(asset.retained_until) if asset.retained_until else None,
        asset.key,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(moment: datetime) -> int:
    """A time as whole milliseconds since the epoch, floored (as MongoDB keeps times)."""
    return (moment - _EPOCH) // _MS


def from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else _EPOCH + ms * _MS


def encode_token(seq: int, flt: AssetFilter) -> str:
    return _paging.encode_token("sqlite", seq, flt)


def decode_token(token: str, flt: AssetFilter) -> int:
    return _paging.decode_token("sqlite", token, flt)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
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


def migrate(conn: sqlite3.Connection, path: Path, fresh: bool) -> None:
    """Bring a database written by an older release up to SCHEMA_VERSION."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if fresh:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return
    if version > SCHEMA_VERSION:
        raise Unavailable(
            f"sqlite database {path} has schema version {version}, written by a newer "
            f"asset-service; this one knows versions up to {SCHEMA_VERSION}: run the newer "
            "release (or restore a backup taken before the upgrade)"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        with transaction(conn):
            for statement in MIGRATIONS[target]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
        log.info("sqlite database %s migrated to schema version %d", path, target)
