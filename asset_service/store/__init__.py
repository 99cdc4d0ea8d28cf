"""Metadata stores behind one interface, chosen by database URL."""

from __future__ import annotations

from pathlib import Path

from asset_service.domain.errors import InvalidArgument
from asset_service.domain.ports import MetadataStore


def open_store(database_url: str) -> MetadataStore:
    """sqlite:////abs/path.db (embedded default) or mongodb://... (production)."""
    if database_url.startswith("sqlite://"):
        from asset_service.store.sqlite import SqliteStore

        # sqlite:////abs/path.db (SQLAlchemy's absolute form) and sqlite:///abs/path.db both
        # name /abs/path.db; a relative path would depend on the working directory.
        rest = database_url.removeprefix("sqlite://")
        if not rest.startswith("/"):
            raise InvalidArgument(
                f"database URL {database_url!r}: use sqlite:////absolute/path.db "
                "(an absolute path after sqlite:///)"
            )
        return SqliteStore(Path("/" + rest.lstrip("/")))
    if database_url.startswith(("mongodb://", "mongodb+srv://")):
        from asset_service.store.mongo import MongoStore

        store: MetadataStore = MongoStore(database_url)
        return store
    raise InvalidArgument(
        f"database URL {database_url!r} is not supported: use sqlite:///path.db or mongodb://..."
    )
