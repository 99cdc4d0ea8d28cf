"""The change stream's projection stages, evaluated by a real MongoDB (MONGODB_URI only).

FerretDB does not implement these stages (nor change streams), so this file runs only where
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


async def test_only_changes_are_kept_and_duplicate_bytes_are_dropped() -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        os.environ["MONGODB_URI"], serverSelectionTimeoutMS=5000
    )
    name = f"asset_pipeline_{uuid.uuid4().hex[:12]}"
    events = client[name]["events"]
    sums = b"\x00\x10\x00\x00\x01\x02\x03\x04"
    try:
        await events.insert_many(
            [
                {"_id": 1, "operationType": "insert", "fullDocument": {"value_content": VALUE}},
                {
                    "_id": 2,
                    "operationType": "update",
                    "fullDocument": {"value_content": VALUE, "block_sums": sums},
                    "updateDescription": {
                        "updatedFields": {
                            "value_content": VALUE,
                            "block_sums": sums,
                            "status": "AVAILABLE",
                            "revision": 7,
                        }
                    },
                },
                {  # block sums kept later: no revision, no change of the asset
                    "_id": 3,
                    "operationType": "update",
                    "fullDocument": {"block_sums": sums},
                    "updateDescription": {"updatedFields": {"block_sums": sums}},
                },
                {"_id": 4, "operationType": "delete", "documentKey": {"_id": "a"}},
            ]
        )
        got = {d["_id"]: d async for d in await events.aggregate(CHANGE_STREAM_PIPELINE)}
        assert sorted(got) == [1, 2, 4]
        assert got[1]["fullDocument"]["value_content"] == VALUE
        assert got[2]["fullDocument"] == {"value_content": VALUE}
        assert got[2]["updateDescription"]["updatedFields"] == {
            "status": "AVAILABLE",
            "revision": 7,
        }
    finally:
        await client.drop_database(name)
        await client.close()
