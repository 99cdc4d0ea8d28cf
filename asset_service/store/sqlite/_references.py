"""SqliteStore's shared bytes: the records pointing at a storage path are its references."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from asset_service.domain.errors import SharedBytesGone

# Paths per statement of referenced(): under SQLite's default limit of bound variables.
PATHS_PER_QUERY = 500


def require_shared(c: sqlite3.Connection, storage_path: str) -> None:
    """SharedBytesGone unless an AVAILABLE record points at `storage_path`: run inside the
    shared write's transaction (one writer at a time), so no delete comes in between."""
    found = c.execute(
        "SELECT 1 FROM assets WHERE storage_path = ? AND status = 'AVAILABLE' LIMIT 1",
        (storage_path,),
    ).fetchone()
    if found is None:
        raise SharedBytesGone(storage_path)


def referenced(c: sqlite3.Connection, storage_paths: Sequence[str]) -> set[str]:
    """Those of `storage_paths` some record points at (index assets_storage_path)."""
    wanted = sorted({p for p in storage_paths if p})
    found: set[str] = set()
    for start in range(0, len(wanted), PATHS_PER_QUERY):
        part = wanted[start : start + PATHS_PER_QUERY]
        rows = c.execute(
            "SELECT DISTINCT storage_path FROM assets "
            f"WHERE storage_path IN ({', '.join('?' * len(part))})",
            part,
        )
        found.update(row[0] for row in rows)
    return found
