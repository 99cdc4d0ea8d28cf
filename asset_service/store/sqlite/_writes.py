"""SqliteStore's record writes, each one step of a group transaction on the writer thread.

Each function runs in its caller's savepoint (_writer.py): raising rolls its step back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime

from asset_service.domain.errors import Conflict, KeyTaken, NotFound
from asset_service.domain.models import (
    EXPLICIT_EXPIRIES,
    Asset,
    BlockSums,
    Change,
    ChangeKind,
    Fulfillment,
    Removal,
    Status,
    Transition,
)
from asset_service.store._fields import lease_condition, rule_expiry, transition_fields
from asset_service.store._retention import check_removal
from asset_service.store.sqlite import _leases, _references, _retention, _shared, _tombstones
from asset_service.store.sqlite._group import GroupState
from asset_service.store.sqlite._schema import (
    COLUMN_COUNT,
    COLUMNS,
    LISTED_COLUMNS,
    RECORDS,
    asset_row,
    from_ms,
    row_to_asset,
    to_ms,
    transaction,
)

_MARKS = ", ".join("?" * (COLUMN_COUNT + 1))
_INSERT = f"INSERT INTO assets ({COLUMNS}, key_slot) VALUES ({_MARKS})"


def next_revision(conn: sqlite3.Connection, batch: GroupState | None = None) -> int:
    """The next revision: from the group transaction's count (`batch`), or the counter's."""
    if batch is not None:
        return batch.next_revision(conn)
    row = conn.execute(
        "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value"
    ).fetchone()
    return int(row[0])


def insert(
    c: sqlite3.Connection,
    asset: Asset,
    shared: bool = False,
    batch: GroupState | None = None,
) -> tuple[Asset, Change]:
    if shared:
        _references.require_shared(c, asset.storage_path)
    try:
        rev = next_revision(c, batch)
        # key_slot holds the key (unique index assets_key_slot)
        c.execute(_INSERT, (*asset_row(asset, rev), asset.key or None))
        if asset.tags:
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
    _retention.account(c, None, stored, batch)
    return stored, Change(ChangeKind.PUT, stored)


def release_key(c: sqlite3.Connection, asset_id: str, key: str) -> tuple[bool, None]:
    # A write of the slot only: no revision, no change (clients see no difference).
    cur = c.execute(
        "UPDATE assets SET key_slot = NULL WHERE id = ? AND key_slot = ?", (asset_id, key)
    )
    return cur.rowcount == 1, None


def transition(
    asset_id: str,
    expected: Status,
    change: Transition,
    now: datetime,
    shared: bool = False,
    batch: GroupState | None = None,
) -> Callable[[sqlite3.Connection], tuple[Asset, Change]]:
    """The conditional change of one record, as a step for the writer thread."""
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

    # On the one writer thread, in its own savepoint: the reads and writes below are one
    # atomic step (raising rolls back its savepoint).
    def w(c: sqlite3.Connection) -> tuple[Asset, Change]:
        before = _retention.current(c, asset_id)
        if before is None:
            raise NotFound(f"asset {asset_id} not found")
        if before.status is not expected:
            raise Conflict(f"asset {asset_id} is {before.status.value}, expected {expected.value}")
        if by_rule and before.expiry_rule in EXPLICIT_EXPIRIES:
            raise Conflict(f"asset {asset_id}'s expiry was set by a client meanwhile")
        if shared and isinstance(change, Fulfillment):
            _references.require_shared(c, change.storage_path)
        fields = dict(sets)
        last_end = _leases.check_and_end(c, asset_id, test, to_ms(now), leaves_pending)
        if last_end is not None:
            fields["lease_expires_ms"] = last_end  # the record keeps the lease's last end
        rev = next_revision(c, batch)
        assignments = ", ".join(f"{k} = ?" for k in fields)
        row = c.execute(
            f"UPDATE assets SET {assignments}, revision = ? WHERE id = ? RETURNING {COLUMNS}",
            (*fields.values(), rev, asset_id),
        ).fetchone()
        updated = row_to_asset(row)
        _retention.account(c, before, updated, batch)
        if leaves_pending:
            _retention.settle_task(c, before, batch)
        return updated, Change(ChangeKind.PUT, updated)

    return w


def renew_lease(
    c: sqlite3.Connection, asset_id: str, seconds: int, at: int, by: str
) -> tuple[Asset, None]:
    # A write of the lease's record only: no revision, no change (_settle publishes none).
    _leases.renew(c, asset_id, seconds, at, by)
    row = c.execute(f"SELECT {LISTED_COLUMNS} FROM {RECORDS} WHERE id = ?", (asset_id,)).fetchone()
    return row_to_asset(row), None


def set_block_sums(
    c: sqlite3.Connection, asset_id: str, storage_path: str, sums: BlockSums
) -> tuple[bool, None]:
    # No revision and no change: clients never see block sums.
    cur = c.execute(
        "UPDATE assets SET block_sums = ? WHERE id = ? AND storage_path = ? AND storage_path != ''",
        (sums.encode(), asset_id, storage_path),
    )
    return cur.rowcount == 1, None


def delete_once(
    c: sqlite3.Connection, asset_id: str, by: str, removal: Removal | None, shared: bool
) -> Asset | None:
    """Delete one record in its own transaction, keeping its tombstone (and, when the
    database is shared by workers, its change in the shared log)."""
    with transaction(c):
        before = _retention.current(c, asset_id)
        if before is None:
            return None  # nothing changed: the empty commit writes nothing
        check_removal(before, removal)
        row = c.execute(
            f"DELETE FROM assets WHERE id = ? RETURNING {COLUMNS}", (asset_id,)
        ).fetchone()
        rev = next_revision(c)
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
        if shared:
            _shared.append(c, Change(ChangeKind.DELETE, gone))
    return gone
