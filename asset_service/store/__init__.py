"""Metadata stores behind one interface, chosen by database URL."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asset_service.domain.errors import InvalidArgument
from asset_service.domain.ports import MetadataStore

if TYPE_CHECKING:
    from asset_service.store.sqlite._shared import Sharing

log = logging.getLogger(__name__)


def sqlite_path(database_url: str) -> Path | None:
    """The database file a sqlite:/// URL names (None for other URLs)."""
    if not database_url.startswith("sqlite://"):
        return None
    # sqlite:////abs/path.db (SQLAlchemy's absolute form) and sqlite:///abs/path.db both
    # name /abs/path.db; a relative path would depend on the working directory.
    rest = database_url.removeprefix("sqlite://")
    if not rest.startswith("/"):
        raise InvalidArgument(
            f"database URL {database_url!r}: use sqlite:////absolute/path.db "
            "(an absolute path after sqlite:///)"
        )
    return Path("/" + rest.lstrip("/"))


def open_store(
    database_url: str,
    disk_reserve_bytes: int | None = None,
    on_group_commit: Callable[[str, int], None] | None = None,
    *,
    mongo_write_queue: int | None = None,
    orphan_grace_seconds: float | None = None,
    sharing: Sharing | None = None,
) -> MetadataStore:
    """sqlite:////abs/path.db (embedded default), mongodb://... (production) or memory://.

    memory:// keeps records in the server process only (lost when it stops): for demos
    and tests, never for data anyone needs. `disk_reserve_bytes` sizes SQLite's disk-full
    reserve (None: its default). `on_group_commit(store, writes)` hears of each group
    transaction of the store's writer (metrics). With MongoDB, `mongo_write_queue` bounds
    the group writer's queue and `orphan_grace_seconds` (the storage's) is checked against
    how late a write can commit. `sharing` says which of the workers of one server
    sharing the SQLite file this process is (store/sqlite/_shared.py).
    """

    def batches(name: str) -> Callable[[int], None] | None:
        return None if on_group_commit is None else functools.partial(on_group_commit, name)

    if database_url == "memory://":
        from asset_service.store.memory import MemoryStore

        log.warning("metadata kept in memory only (memory://): every record is lost on exit")
        return MemoryStore()
    path = sqlite_path(database_url)
    if path is not None:
        from asset_service.store.sqlite import SqliteStore

        if disk_reserve_bytes is None:
            return SqliteStore(path, on_group_commit=batches("sqlite"), sharing=sharing)
        return SqliteStore(
            path,
            reserve_bytes=disk_reserve_bytes,
            on_group_commit=batches("sqlite"),
            sharing=sharing,
        )
    if database_url.startswith(("mongodb://", "mongodb+srv://")):
        from asset_service.store.mongo import MongoStore

        options: dict[str, Any] = {"orphan_grace": orphan_grace_seconds}
        if mongo_write_queue is not None:
            options["write_queue"] = mongo_write_queue
        store: MetadataStore = MongoStore(
            database_url, on_group_commit=batches("mongodb"), **options
        )
        return store
    raise InvalidArgument(
        f"database URL {database_url!r} is not supported: use sqlite:///path.db, "
        "mongodb://... or memory:// (records kept in memory only, for tests and demos)"
    )
