"""MongoStore, its change feed and its documents, re-exported from their private modules."""

from __future__ import annotations

from asset_service.store.mongo._documents import (
    EPOCH,
    Doc,
    asset_to_doc,
    decode_token,
    doc_to_asset,
    encode_token,
)
from asset_service.store.mongo._feed import (
    HISTORY_LOST_CODES,
    STREAM_ENDING_EVENTS,
    ChangeFeed,
    ChangeStreamLike,
    WatchFn,
)
from asset_service.store.mongo._startup import DEFAULT_CLIENT_OPTIONS
from asset_service.store.mongo._store import (
    DEFAULT_DATABASE,
    REPLICA_SET_HELP,
    MongoStore,
)

__all__ = [
    "DEFAULT_CLIENT_OPTIONS",
    "DEFAULT_DATABASE",
    "EPOCH",
    "HISTORY_LOST_CODES",
    "REPLICA_SET_HELP",
    "STREAM_ENDING_EVENTS",
    "ChangeFeed",
    "ChangeStreamLike",
    "Doc",
    "MongoStore",
    "WatchFn",
    "asset_to_doc",
    "decode_token",
    "doc_to_asset",
    "encode_token",
]
