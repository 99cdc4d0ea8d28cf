"""Promise leases in SQLite: a `leases` table that renewals write, never the asset record.

Every function runs on the writer thread inside its caller's transaction (reads on a
reader connection), so a lease's check and the asset's change are one atomic step. SQLite
is one process per database file (_files.claim), so that process's clock (`now`) judges.
"""

from __future__ import annotations

import sqlite3

from asset_service.domain.errors import Conflict, LeaseRanOut, NotFound
from asset_service.domain.models import Asset, Status
from asset_service.store._fields import LeaseTest, lease_conflict
from asset_service.store.sqlite._schema import SLIM_COLUMNS, from_ms, to_ms


def create(c: sqlite3.Connection, asset: Asset) -> None:
    """The lease of a new promise, if it has one."""
    if asset.status is Status.PENDING and asset.lease_seconds:
        assert asset.lease_expires_at is not None, "a leased promise needs its end"
        c.execute(
            "INSERT INTO leases (asset_id, expires_ms, seconds) VALUES (?, ?, ?)",
            (asset.id, to_ms(asset.lease_expires_at), asset.lease_seconds),
        )


def _allows(test: LeaseTest, end_ms: int | None, now_ms: int) -> bool:
    if test == "none or not run out":
        return end_ms is None or end_ms > now_ms
    return end_ms is not None and end_ms <= now_ms


def check_and_end(
    c: sqlite3.Connection, asset_id: str, test: LeaseTest | None, now_ms: int, ends: bool
) -> int | None:
    """Raise unless the asset's lease passes `test`; if the change `ends` the promise,
    remove the lease. Its last end (ms), if it is removed."""
    lease = c.execute("SELECT expires_ms FROM leases WHERE asset_id = ?", (asset_id,)).fetchone()
    end = lease["expires_ms"] if lease is not None else None
    if test is not None and not _allows(test, end, now_ms):
        raise lease_conflict(asset_id, test, from_ms(end))
    if not ends or lease is None:
        return None
    c.execute("DELETE FROM leases WHERE asset_id = ?", (asset_id,))
    return int(end) if end is not None else None


def renew(c: sqlite3.Connection, asset_id: str, seconds: int, now_ms: int, by: str) -> None:
    """Extend a running lease to `seconds` (0: its own) from `now_ms`, or raise why not."""
    renewed = c.execute(
        "UPDATE leases SET expires_ms = ? + 1000 * (CASE WHEN ? > 0 THEN ? ELSE seconds END), "
        "renewed_by = ?, renewed_ms = ? WHERE asset_id = ? AND expires_ms > ? "
        "RETURNING expires_ms",
        (now_ms, seconds, seconds, by, now_ms, asset_id, now_ms),
    ).fetchone()
    if renewed is not None:
        return
    lease = c.execute("SELECT expires_ms FROM leases WHERE asset_id = ?", (asset_id,)).fetchone()
    if lease is not None:
        raise LeaseRanOut(asset_id, from_ms(lease["expires_ms"]))
    if c.execute("SELECT 1 FROM assets WHERE id = ?", (asset_id,)).fetchone():
        raise Conflict(f"asset {asset_id} has no lease to renew")
    raise NotFound(f"asset {asset_id} not found")


def drop(c: sqlite3.Connection, asset_id: str) -> int | None:
    """Remove the lease of an asset being deleted; its last end (ms), if any."""
    row = c.execute(
        "DELETE FROM leases WHERE asset_id = ? RETURNING expires_ms", (asset_id,)
    ).fetchone()
    return int(row["expires_ms"]) if row is not None else None


def due(c: sqlite3.Connection, now_ms: int, limit: int) -> list[sqlite3.Row]:
    """Up to `limit` records whose lease ran out by `now_ms`, earliest first (the leases'
    expiry index: one range, already in order)."""
    return list(
        c.execute(
            f"SELECT {SLIM_COLUMNS} FROM leases JOIN assets ON assets.id = leases.asset_id "
            "WHERE leases.expires_ms <= ? ORDER BY leases.expires_ms LIMIT ?",
            (now_ms, limit),
        )
    )
