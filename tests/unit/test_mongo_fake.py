"""The fake replica set follows MongoDB's documented rules, not the store's expectations.

Each case pins one rule the fake was written from (the manual's page is cited in
tests/unit/mongo_fake): if the fake drifted towards what the code under test does, these
would say so.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

from tests.unit.mongo_fake import FakeCollection, Server, aggregate, apply_update, install, matches
from tests.unit.test_mongo_writes import closed_port

NOW = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_null_matches_a_missing_field_and_comparisons_bracket_types() -> None:
    assert matches({"_id": 1}, {"lease": None}, NOW)
    assert matches({"_id": 1, "lease": None}, {"lease": None}, NOW)
    assert not matches({"_id": 1, "lease": NOW}, {"lease": None}, NOW)
    # $gt compares only values of the query value's type: a string is not "after" a date.
    assert not matches({"lease": "2030-01-01"}, {"lease": {"$gt": NOW}}, NOW)
    assert not matches({"_id": 1}, {"lease": {"$gt": NOW}}, NOW)
    assert matches({"lease": NOW + timedelta(seconds=1)}, {"lease": {"$gt": NOW}}, NOW)
    # An array field matches an element; $all needs every one.
    assert matches({"tags": ["a", "b"]}, {"tags": "a"}, NOW)
    assert not matches({"tags": ["a"]}, {"tags": {"$all": ["a", "b"]}}, NOW)


def test_expr_evaluates_now_and_date_arithmetic() -> None:
    seen = NOW - timedelta(seconds=6)
    expired = {"$expr": {"$lt": ["$seen", {"$subtract": ["$$NOW", 5000]}]}}
    assert matches({"seen": seen}, expired, NOW)
    assert not matches({"seen": NOW - timedelta(seconds=4)}, expired, NOW)
    # Aggregation comparisons use the BSON order across types: null < numbers < dates.
    assert matches({"seen": None}, expired, NOW)


def test_updates_and_pipelines() -> None:
    doc = {"_id": "revision", "value": 3}
    assert apply_update(doc, {"$inc": {"value": 2}}, NOW)["value"] == 5
    assert apply_update(doc, {"$max": {"value": 1}}, NOW)["value"] == 3
    assert apply_update({"_id": 1}, {"$max": {"value": 1}}, NOW)["value"] == 1
    assert apply_update(doc, [{"$set": {"seen": "$$NOW"}}], NOW)["seen"] == NOW
    event = {"fullDocument": {"v": b"x"}, "updateDescription": {"updatedFields": {"v": b"x"}}}
    stage = {
        "$set": {
            "updateDescription.updatedFields.v": {
                "$cond": [
                    {"$eq": [{"$type": "$fullDocument"}, "object"]},
                    "$$REMOVE",
                    "$updateDescription.updatedFields.v",
                ]
            }
        }
    }
    (out,) = aggregate([event], [stage], NOW)
    assert out["updateDescription"]["updatedFields"] == {}
    (kept,) = aggregate([{**event, "fullDocument": None}], [stage], NOW)
    assert kept["updateDescription"]["updatedFields"] == {"v": b"x"}


def test_an_unknown_operator_is_refused_not_guessed() -> None:
    with pytest.raises(NotImplementedError):
        matches({"a": 1}, {"a": {"$regex": "x"}}, NOW)


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> Any:
    one: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{closed_port()}/?serverSelectionTimeoutMS=100", connect=False
    )
    yield one
    await one.close()


async def test_a_statement_error_aborts_the_transaction(
    monkeypatch: pytest.MonkeyPatch, client: Any
) -> None:
    """abort.yml of the transactions spec: the duplicate key has no transient label,
    and the next statement of the transaction finds it aborted (251, transient)."""
    server = install(monkeypatch, Server())
    server.put("assets", {"_id": "a", "seq": 1})
    assets = FakeCollection(server, "assets")
    session = client.start_session()
    await session.start_transaction()
    await assets.insert_one({"_id": "b", "seq": 2}, session=session)
    with pytest.raises(DuplicateKeyError) as dup:
        await assets.insert_one({"_id": "a", "seq": 3}, session=session)
    assert not dup.value.has_error_label("TransientTransactionError")
    with pytest.raises(OperationFailure) as gone:
        await assets.insert_one({"_id": "c", "seq": 4}, session=session)
    assert gone.value.code == 251 and gone.value.has_error_label("TransientTransactionError")
    await session.abort_transaction()
    assert set(server.documents("assets")) == {"a"}, "nothing of the transaction applied"
    await session.end_session()


async def test_write_conflicts_are_immediate_and_plain_writes_wait(
    monkeypatch: pytest.MonkeyPatch, client: Any
) -> None:
    server = install(monkeypatch, Server())
    server.put("counters", {"_id": "revision", "value": 0})
    counters = FakeCollection(server, "counters")
    one, two = client.start_session(), client.start_session()
    await one.start_transaction()
    await two.start_transaction()
    inc = {"$inc": {"value": 1}}
    await counters.find_one_and_update({"_id": "revision"}, inc, session=one)
    with pytest.raises(OperationFailure) as conflict:
        await counters.find_one_and_update({"_id": "revision"}, inc, session=two)
    assert conflict.value.code == 112
    assert conflict.value.has_error_label("TransientTransactionError")
    # A write outside any transaction waits for the transaction holding the document.
    plain = asyncio.create_task(counters.update_one({"_id": "revision"}, {"$set": {"x": 1}}))
    await asyncio.sleep(0.05)
    assert not plain.done()
    await one.commit_transaction()
    await asyncio.wait_for(plain, 1)
    doc = await counters.find_one_and_update(
        {"_id": "revision"}, {"$inc": {"value": 0}}, return_document=ReturnDocument.AFTER
    )
    assert doc == {"_id": "revision", "value": 1, "x": 1}
    for session in (one, two):
        await session.end_session()
