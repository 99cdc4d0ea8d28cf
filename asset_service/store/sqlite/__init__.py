"""SqliteStore: the embedded metadata store (one process owns the database file)."""

from asset_service.store.sqlite._schema import LOOP_READ_MAX_VALUE, SCHEMA_VERSION
from asset_service.store.sqlite._store import (
    DEFAULT_RESERVE_BYTES,
    JOURNAL_SIZE_LIMIT,
    SqliteStore,
)

__all__ = [
    "DEFAULT_RESERVE_BYTES",
    "JOURNAL_SIZE_LIMIT",
    "LOOP_READ_MAX_VALUE",
    "SCHEMA_VERSION",
    "SqliteStore",
]
