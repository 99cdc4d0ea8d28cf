"""A database written by an older release opens, is upgraded once, and loses nothing."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service.domain.errors import HistoryGone, Unavailable
from asset_service.domain.models import ChangeKind, Failure, Status, new_asset_id
from asset_service.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.unit.sqlite_disk import pragma

# The schema as the first release wrote it (PRAGMA user_version 0): frozen history, so it
# is spelled out here rather than derived from today's SCHEMA.
RELEASE_1 = """
CREATE TABLE assets (
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
    revision        INTEGER NOT NULL
);
CREATE INDEX assets_status ON assets (status, seq);
CREATE INDEX assets_task ON assets (created_by_task, seq);
CREATE INDEX assets_label ON assets (label, seq);
CREATE TABLE asset_tags (
    tag      TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    PRIMARY KEY (tag, asset_id)
) WITHOUT ROWID;
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters (name, value) VALUES ('revision', 7);
"""

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).isoformat()


def release_1_database(path: Path) -> str:
    """A release-1 database holding one PENDING asset at revision 7; its id."""
    asset_id = new_asset_id()
    conn = sqlite3.connect(path)
    conn.executescript(RELEASE_1)
    conn.execute(
        "INSERT INTO assets (id, label, status, type, media_type, created_by_task, "
        "created_at, updated_at, revision) VALUES (?, 'out.csv', 'PENDING', 'FILE', "
        "'text/csv', 'task-1', ?, ?, 7)",
        (asset_id, T0, T0),
    )
    conn.commit()
    conn.close()
    return asset_id


async def test_a_release_1_database_is_upgraded_and_keeps_its_records(tmp_path: Path) -> None:
    db = tmp_path / "assets.db"
    asset_id = release_1_database(db)
    assert pragma(db, "user_version") == 0
    store = SqliteStore(db)
    await store.open()
    try:
        old = await store.get(asset_id)
        assert old is not None
        assert (old.label, old.status, old.revision) == ("out.csv", Status.PENDING, 7)
        assert (old.created_by, old.updated_by) == ("", "")
        failed = await store.transition(
            asset_id, Status.PENDING, Failure("disk", by="task:task-1"), datetime.now(UTC)
        )
        assert (failed.created_by, failed.updated_by, failed.revision) == ("", "task:task-1", 8)
    finally:
        await store.close()
    assert pragma(db, "user_version") == SCHEMA_VERSION

    # A second start finds the upgraded database and changes nothing.
    again = SqliteStore(db)
    await again.open()
    try:
        kept = await again.get(asset_id)
        assert kept is not None and kept.updated_by == "task:task-1"
    finally:
        await again.close()
    assert pragma(db, "user_version") == SCHEMA_VERSION


async def test_a_release_2_database_gets_leases_and_its_promises_keep_none(
    tmp_path: Path,
) -> None:
    """Schema version 1 (release 2: who created and changed a record) gains the lease
    columns and their index; its promises have no lease, and new ones can."""
    db = tmp_path / "assets.db"
    asset_id = release_1_database(db)
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE assets ADD COLUMN created_by TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE assets ADD COLUMN updated_by TEXT NOT NULL DEFAULT ''")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = SqliteStore(db)
    await store.open()
    try:
        old = await store.get(asset_id)
        assert old is not None and (old.lease_seconds, old.lease_expires_at) == (0, None)
        now = datetime.now(UTC)
        assert await store.leases_run_out(now, 10) == []
        end = now.replace(microsecond=now.microsecond // 1000 * 1000)
        leased = await store.insert(
            dataclasses.replace(old, id=new_asset_id(), lease_seconds=5, lease_expires_at=end)
        )
        assert [a.id for a in await store.leases_run_out(end, 10)] == [leased.id]
    finally:
        await store.close()
    assert pragma(db, "user_version") == SCHEMA_VERSION
    conn = sqlite3.connect(db)
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(leases)")}
    conn.close()
    assert "leases_expiry" in indexes


def leases_in_records_database(path: Path, ends_ms: dict[str, int | None]) -> None:
    """A schema-version-3 database (leases in the asset records) holding a promise per
    entry of `ends_ms` (its lease's end; None: no lease), and one FAILED leased asset."""
    release_1_database(path)
    conn = sqlite3.connect(path)
    for statement in (
        "ALTER TABLE assets ADD COLUMN created_by TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE assets ADD COLUMN updated_by TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE assets ADD COLUMN lease_seconds INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE assets ADD COLUMN lease_expires_ms INTEGER",
        "CREATE INDEX assets_lease ON assets (status, lease_expires_ms)",
        "ALTER TABLE assets ADD COLUMN block_sums BLOB",
        "ALTER TABLE assets ADD COLUMN corrupt_reason TEXT NOT NULL DEFAULT ''",
    ):
        conn.execute(statement)
    rows = [(i, "PENDING", end) for i, end in ends_ms.items()]
    rows.append((new_asset_id(), "FAILED", 1))
    for n, (asset_id, status, end) in enumerate(rows):
        conn.execute(
            "INSERT INTO assets (id, label, status, type, media_type, created_at, updated_at, "
            "revision, lease_seconds, lease_expires_ms) VALUES (?, 'x', ?, 'VALUE', '', ?, ?, ?, "
            "?, ?)",
            (asset_id, status, T0, T0, 10 + n, 30 if end else 0, end),
        )
    conn.execute("UPDATE counters SET value = 20")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()


async def test_a_database_from_before_lease_records_moves_its_leases_into_them(
    tmp_path: Path,
) -> None:
    """Schema version 3 kept a promise's lease in its record; version 5 moves each PENDING
    one's into `leases` (renewals then write only there) and drops the old index."""
    db = tmp_path / "assets.db"
    soon, later = new_asset_id(), new_asset_id()
    base = 1_800_000_000_000
    leases_in_records_database(db, {soon: base, later: base + 60_000, new_asset_id(): None})
    store = SqliteStore(db)
    await store.open()
    try:
        at = datetime.fromtimestamp(base / 1000, UTC)
        assert [a.id for a in await store.leases_run_out(at, 10)] == [soon]
        renewed = await store.renew_lease(later, 0, at, "worker")  # its own 30 s
        assert renewed.lease_expires_at == datetime.fromtimestamp(base / 1000 + 30, UTC)
        assert renewed.revision == (await store.get(later)).revision  # type: ignore[union-attr]
        assert await store.current_revision() == 20
    finally:
        await store.close()
    assert pragma(db, "user_version") == SCHEMA_VERSION
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 2
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(assets)")}
    conn.close()
    assert "assets_lease" not in indexes


async def test_a_new_database_starts_at_the_current_version(tmp_path: Path) -> None:
    db = tmp_path / "assets.db"
    store = SqliteStore(db)
    await store.open()
    await store.close()
    assert pragma(db, "user_version") == SCHEMA_VERSION


async def test_a_database_from_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "assets.db"
    release_1_database(db)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = SqliteStore(db)
    with pytest.raises(Unavailable, match=r"newer asset-service.*run the newer release"):
        await store.open()
    await store.close()
    columns = {row[1] for row in sqlite3.connect(db).execute("PRAGMA table_info(assets)")}
    assert "created_by" not in columns
    assert pragma(db, "user_version") == SCHEMA_VERSION + 1


async def test_a_database_from_before_tombstones_replays_from_its_upgrade_on(
    tmp_path: Path,
) -> None:
    """Schema version 3 gains the revision index and the tombstones; the deletions it
    made left none, so a selector replay reaches back to the upgrade (revision 7 here),
    no further; deletions from then on are replayed."""
    db = tmp_path / "assets.db"
    asset_id = release_1_database(db)
    store = SqliteStore(db)
    await store.open()
    try:
        with pytest.raises(HistoryGone, match="after revision 7"):
            await store.changes_since(6, 10)
        assert (await store.changes_since(7, 10)).changes == []
        gone = await store.delete(asset_id)
        assert gone is not None
        replay = await store.changes_since(7, 10)
        assert [(c.kind, c.revision) for c in replay.changes] == [
            (ChangeKind.DELETE, gone.revision)
        ]
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(assets)")}
    conn.close()
    assert "assets_revision" in indexes
