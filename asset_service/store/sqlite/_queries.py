"""SqliteStore's record reads on a reader connection: point reads, batches, pages, counts."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from asset_service.domain.models import Asset, AssetFilter, Page, Status
from asset_service.store import _paging
from asset_service.store.sqlite import _retention
from asset_service.store.sqlite._schema import (
    LISTED_COLUMNS,
    READ_COLUMNS,
    RECORDS,
    decode_token,
    encode_token,
    row_to_asset,
)


def counter(c: sqlite3.Connection) -> int:
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


def get(c: sqlite3.Connection, asset_id: str) -> Asset | None:
    row = c.execute(f"SELECT {READ_COLUMNS} FROM {RECORDS} WHERE id = ?", (asset_id,)).fetchone()
    return _retention.assets_with_holds(c, [row])[0] if row else None


def select_many(
    c: sqlite3.Connection, columns: str, ids: list[str], holds: bool = False
) -> dict[str, Asset]:
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


def page_statement(flt: AssetFilter, page_token: str) -> tuple[str, list[object]]:
    """The SELECT of a page of records matching `flt` past the token's, and its arguments
    but the LIMIT's (page() adds it)."""
    after = decode_token(page_token, flt) if page_token else 0
    where: list[str] = ["seq > ?"]
    args: list[object] = [after]
    equal = (
        ("status", flt.status.value if flt.status is not None else ""),
        ("type", flt.type.value if flt.type is not None else ""),
        ("created_by_task", flt.created_by_task),
        ("label", flt.label),
        ("asset_key", flt.key),
        ("sha256", flt.sha256),
    )
    for column, value in equal:
        if value:  # unset ("" or None): any
            where.append(f"{column} = ?")
            args.append(value)
    if flt.sha256:
        where.append("sha256 != ''")  # what lets the planner use assets_sha256 (partial)
    for tag in flt.tags:
        where.append("id IN (SELECT asset_id FROM asset_tags WHERE tag = ?)")
        args.append(tag)
    sql = (
        f"SELECT seq, {LISTED_COLUMNS} FROM {RECORDS} WHERE {' AND '.join(where)} "
        "ORDER BY seq LIMIT ?"
    )
    return sql, args


def page(
    c: sqlite3.Connection,
    flt: AssetFilter,
    sql: str,
    args: list[object],
    limit: int,
    max_bytes: int | None,
) -> Page:
    # One read transaction: the counter and the rows are one cut (WAL snapshot).
    c.execute("BEGIN")
    try:
        revision = counter(c)
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


def count_by_status(c: sqlite3.Connection) -> dict[Status, int]:
    counts = dict.fromkeys(Status, 0)
    # The (status, seq) index covers it: no record is read.
    for status, n in c.execute("SELECT status, COUNT(*) FROM assets GROUP BY status"):
        counts[Status(status)] = int(n)
    return counts


def key_holder(c: sqlite3.Connection, key: str) -> Asset | None:
    row = c.execute(f"SELECT {LISTED_COLUMNS} FROM {RECORDS} WHERE key_slot = ?", (key,)).fetchone()
    return row_to_asset(row) if row else None
