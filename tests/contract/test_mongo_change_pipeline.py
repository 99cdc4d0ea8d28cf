"""The change stream's projection stages, evaluated by a real MongoDB (MONGODB_URI only).

FerretDB does not implement `$cond` (nor change streams), so this file runs only where
MONGODB_URI points at MongoDB (elsewhere deselected and counted: tests/left_out.py).
The stages after `$changeStream` are evaluated by `aggregate` over documents shaped like
change events, as the server would run them.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from asset_service.store.mongo._feed import CHANGE_STREAM_PIPELINE

VALUE = b"v" * 1024

pytestmark = pytest.mark.requires("mongo")


async def test_duplicate_value_bytes_are_projected_away() -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        os.environ["MONGODB_URI"], serverSelectionTimeoutMS=5000
    )
    name = f"asset_pipeline_{uuid.uuid4().hex[:12]}"
    events = client[name]["events"]
    try:
        await events.insert_many(
            [
                {"_id": 1, "operationType": "insert", "fullDocument": {"value_content": VALUE}},
                {
                    "_id": 2,
                    "operationType": "update",
                    "fullDocument": {"value_content": VALUE, "status": "AVAILABLE"},
                    "updateDescription": {
                        "updatedFields": {"value_content": VALUE, "status": "AVAILABLE"}
                    },
                    "fullDocumentBeforeChange": {
                        "label": "l",
                        "value_kind": "BYTES",
                        "value_content": VALUE,
                    },
                },
                {
                    "_id": 3,
                    "operationType": "update",
                    "fullDocument": None,  # deleted before the event was read
                    "updateDescription": {"updatedFields": {"value_content": VALUE}},
                },
            ]
        )
        got = {d["_id"]: d async for d in await events.aggregate(CHANGE_STREAM_PIPELINE)}
        assert got[1]["fullDocument"]["value_content"] == VALUE
        assert got[2]["fullDocument"]["value_content"] == VALUE
        assert got[2]["updateDescription"]["updatedFields"] == {"status": "AVAILABLE"}
        assert got[2]["fullDocumentBeforeChange"] == {"label": "l"}
        assert got[3]["updateDescription"]["updatedFields"]["value_content"] == VALUE
    finally:
        await client.drop_database(name)
        await client.close()
