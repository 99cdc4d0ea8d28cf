"""SqliteStore's retention: holds beside records, the expiry index, the accounting cells.

Writes run on the writer thread inside their caller's transaction (a record write's
accounting and task-hold release are in the same one), reads on a reader connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from asset_service.domain.errors import NotFound, ResourceExhausted
from asset_service.domain.models import Asset, Hold, HoldKind, Status
from asset_service.domain.retention._ports import TASK_OWNER
from asset_service.domain.usage import ALL, TOTAL, UsageCells, UsageGroup, deltas
from asset_service.store._retention import first_keys, usage_keys
from asset_service.store.sqlite._group import GroupState, write_cells
from asset_service.store.sqlite._schema import (
    RECORD_SLIM_COLUMNS,
    from_ms,
    row_to_asset,
    to_ms,
)

_HOLD_COLUMNS = "asset_id, owner, kind, reason, placed_ms, placed_by"


def _hold(row: sqlite3.Row) -> Hold:
    return Hold(
        owner=row["owner"],
        kind=HoldKind(row["kind"]),
        reason=row["reason"],
        placed_at=from_ms(row["placed_ms"]),
        placed_by=row["placed_by"],
    )


def holds_of(c: sqlite3.Connection, asset_ids: Sequence[str]) -> dict[str, tuple[Hold, ...]]:
    found: dict[str, list[Hold]] = {}
    for start in range(0, len(asset_ids), 500):
        part = list(asset_ids[start : start + 500])
        marks = ",".join("?" * len(part))
        for row in c.execute(
            f"SELECT {_HOLD_COLUMNS} FROM holds WHERE asset_id IN ({marks}) "
            "ORDER BY asset_id, placed_ms, owner",
            part,
        ):
            found.setdefault(row["asset_id"], []).append(_hold(row))
    return {asset_id: tuple(held) for asset_id, held in found.items()}


def assets_with_holds(c: sqlite3.Connection, rows: Iterable[sqlite3.Row]) -> list[Asset]:
    """Records as reads show them: with their holds (looked up only for held ones)."""
    rows = list(rows)
    held = [row["id"] for row in rows if row["hold_count"]]
    holds = holds_of(c, held) if held else {}
    return [_held(row_to_asset(row), holds.get(row["id"], ())) for row in rows]


def _held(asset: Asset, holds: tuple[Hold, ...]) -> Asset:
    if not holds:
        return asset
    return Asset(**{**asset.__dict__, "holds": holds})


# --- kept by record writes (writer thread, the caller's transaction) -------------------


def account(
    c: sqlite3.Connection,
    before: Asset | None,
    after: Asset | None,
    batch: GroupState | None = None,
) -> None:
    """Move the cells for a record going from `before` to `after`: at once (a write in a
    transaction of its own), or at `batch`'s flush (a write of a group transaction)."""
    if batch is not None:
        batch.account(before, after)
    else:
        write_cells(c, deltas(before, after))


def settle_task(c: sqlite3.Connection, before: Asset, batch: GroupState | None = None) -> None:
    """After `before` (a PENDING promise) left PENDING or went: its task's holds go once
    the task has no PENDING promise left (its accounting cell says, in this transaction)."""
    task = before.created_by_task
    if before.status is not Status.PENDING or not task:
        return
    if _pending_count(c, task, batch) > 0:
        return
    owner = TASK_OWNER + task
    c.execute(
        "UPDATE assets SET hold_count = hold_count - 1 "
        "WHERE id IN (SELECT asset_id FROM holds WHERE owner = ?)",
        (owner,),
    )
    c.execute("DELETE FROM holds WHERE owner = ?", (owner,))


def _pending_count(c: sqlite3.Connection, task: str, batch: GroupState | None) -> int:
    """How many PENDING promises `task` has, as this transaction has it."""
    cell = (UsageGroup.TASK.value, task, Status.PENDING.value)
    if batch is not None:
        return batch.count(c, cell)
    row = c.execute(
        "SELECT count FROM usage WHERE grp = ? AND key = ? AND status = ?", cell
    ).fetchone()
    return int(row["count"]) if row is not None else 0


def current(c: sqlite3.Connection, asset_id: str) -> Asset | None:
    """The record without value or sums, with its holds (what a write decides on)."""
    row = c.execute(
        f"SELECT {RECORD_SLIM_COLUMNS} FROM assets WHERE id = ?", (asset_id,)
    ).fetchone()
    return assets_with_holds(c, [row])[0] if row is not None else None


def drop_holds(c: sqlite3.Connection, asset_id: str) -> None:
    c.execute("DELETE FROM holds WHERE asset_id = ?", (asset_id,))


# --- RetentionStore's own writes ----------------------------------------------------


def _insert_hold(c: sqlite3.Connection, asset_id: str, hold: Hold) -> bool:
    """Add or replace `hold`; whether it is a new owner's."""
    existed = c.execute(
        "SELECT 1 FROM holds WHERE asset_id = ? AND owner = ?", (asset_id, hold.owner)
    ).fetchone()
    c.execute(
        f"INSERT OR REPLACE INTO holds ({_HOLD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (
            asset_id,
            hold.owner,
            hold.kind.value,
            hold.reason,
            to_ms(hold.placed_at) if hold.placed_at is not None else 0,
            hold.placed_by,
        ),
    )
    if existed is None:
        c.execute("UPDATE assets SET hold_count = hold_count + 1 WHERE id = ?", (asset_id,))
    return existed is None


def place(c: sqlite3.Connection, asset_id: str, hold: Hold, limit: int) -> Asset:
    asset = current(c, asset_id)
    if asset is None:
        raise NotFound(f"asset {asset_id} not found")
    others = [h for h in asset.holds if h.owner != hold.owner]
    if len(others) >= limit:
        raise ResourceExhausted(
            f"asset {asset_id} has {len(others)} holds, the most it may have; release one"
        )
    _insert_hold(c, asset_id, hold)
    placed = current(c, asset_id)
    assert placed is not None
    return placed


def release(c: sqlite3.Connection, asset_id: str, owner: str) -> tuple[Asset, bool]:
    if c.execute("SELECT 1 FROM assets WHERE id = ?", (asset_id,)).fetchone() is None:
        raise NotFound(f"asset {asset_id} not found")
    gone = c.execute(
        "DELETE FROM holds WHERE asset_id = ? AND owner = ?", (asset_id, owner)
    ).rowcount
    if gone:
        c.execute("UPDATE assets SET hold_count = hold_count - 1 WHERE id = ?", (asset_id,))
    after = current(c, asset_id)
    assert after is not None
    return after, bool(gone)


def hold_inputs(
    c: sqlite3.Connection,
    task_id: str,
    asset_ids: Sequence[str],
    hold: Hold,
    batch: GroupState | None = None,
) -> list[str]:
    if _pending_count(c, task_id, batch) <= 0:
        return []
    held = []
    for asset_id in dict.fromkeys(asset_ids):
        if c.execute("SELECT 1 FROM assets WHERE id = ?", (asset_id,)).fetchone() is None:
            continue
        _insert_hold(c, asset_id, hold)
        held.append(asset_id)
    return held


def retain(c: sqlite3.Connection, asset_ids: Sequence[str], until_ms: int) -> None:
    for start in range(0, len(asset_ids), 500):
        part = list(asset_ids[start : start + 500])
        marks = ",".join("?" * len(part))
        c.execute(
            "UPDATE assets SET retained_ms = ? WHERE id IN "
            f"({marks}) AND (retained_ms IS NULL OR retained_ms < ?)",
            (until_ms, *part, until_ms),
        )


# --- reads (a reader connection) ---------------------------------------------------


def expired(c: sqlite3.Connection, now_ms: int, limit: int) -> list[Asset]:
    """The expiry index from its start (assets_expiry: one range, already in order); a
    held asset, or one still PENDING, is passed over."""
    return [
        row_to_asset(row)
        for row in c.execute(
            f"SELECT {RECORD_SLIM_COLUMNS} FROM assets INDEXED BY assets_expiry "
            "WHERE expires_ms IS NOT NULL AND expires_ms <= ? AND status != 'PENDING' "
            "AND hold_count = 0 AND (retained_ms IS NULL OR retained_ms <= ?) "
            "ORDER BY expires_ms, id LIMIT ?",
            (now_ms, now_ms, limit),
        )
    ]


def _cells(rows: Iterable[sqlite3.Row]) -> dict[tuple[str, str, str], tuple[int, int]]:
    return {(r["grp"], r["key"], r["status"]): (int(r["count"]), int(r["bytes"])) for r in rows}


def usage(c: sqlite3.Connection, group: str, keys: Sequence[str], limit: int) -> UsageCells:
    """One read transaction: the totals and the group's cells are one cut."""
    c.execute("BEGIN")
    try:
        found = _cells(c.execute("SELECT * FROM usage WHERE grp = ?", (ALL,)))
        chosen, more = usage_keys(group, keys), False
        if chosen is None:
            # usage_largest: the group's totals, largest first, read only as far as needed.
            ranked = [
                row["key"]
                for row in c.execute(
                    "SELECT key FROM usage WHERE grp = ? AND status = ? "
                    "ORDER BY bytes DESC, count DESC, key LIMIT ?",
                    (group, TOTAL, limit + 1),
                )
            ]
            chosen, more = first_keys(ranked, limit)
        for start in range(0, len(chosen), 500):
            part = chosen[start : start + 500]
            marks = ",".join("?" * len(part))
            found.update(
                _cells(
                    c.execute(
                        f"SELECT * FROM usage WHERE grp = ? AND key IN ({marks})", (group, *part)
                    )
                )
            )
        return UsageCells(found, chosen, more)
    finally:
        c.execute("COMMIT")
