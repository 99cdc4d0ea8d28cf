"""MongoStore without a server: fast UNAVAILABLE, URL options, tokens and documents."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from asset_service.domain.errors import InvalidArgument, Unavailable
from asset_service.domain.models import AssetFilter, AssetType, Status, Value, ValueKind
from asset_service.store import open_store
from asset_service.store.mongo import (
    MongoStore,
    asset_to_doc,
    decode_token,
    doc_to_asset,
    encode_token,
)
from tests.records import make_record
from tests.unit.test_mongo_writes import closed_port


def test_open_store_routes_mongodb_urls() -> None:
    store = open_store("mongodb://127.0.0.1:1/mydb?replicaSet=rs0")
    assert isinstance(store, MongoStore)
    assert store.database_name == "mydb"
    assert isinstance(open_store("mongodb://127.0.0.1:1"), MongoStore)
    assert open_store("mongodb://127.0.0.1:1").database_name == "asset_service"  # type: ignore[attr-defined]


def test_a_malformed_url_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        MongoStore("mongodb://127.0.0.1:notaport/db")
    with pytest.raises(InvalidArgument):
        MongoStore("mongodb://a,b/db?directConnection=true")


async def test_unreachable_server_fails_fast_with_unavailable() -> None:
    # The URL's own option wins over the 2.5 s default.
    url = f"mongodb://127.0.0.1:{closed_port()}/db?serverSelectionTimeoutMS=300"
    store = MongoStore(url)
    start = time.monotonic()
    with pytest.raises(Unavailable) as err:
        await store.open()
    assert "cannot reach MongoDB" in err.value.message
    for call in (store.ping(), store.get("x"), store.get_many(["x"])):
        with pytest.raises(Unavailable):
            await call
    with pytest.raises(Unavailable):
        await store.query(AssetFilter(status=Status.PENDING), 10, "")
    assert time.monotonic() - start < 5
    await store.close()


async def test_default_server_selection_timeout_is_short() -> None:
    store = MongoStore(f"mongodb://127.0.0.1:{closed_port()}/db")
    start = time.monotonic()
    with pytest.raises(Unavailable):
        await store.ping()
    assert time.monotonic() - start < 4
    await store.close()


def test_page_tokens_round_trip_and_reject_foreign_ones() -> None:
    flt = AssetFilter()
    assert decode_token(encode_token(1234, flt), flt) == 1234
    for bad in ("", "x", encode_token(5, flt).replace("b", "c"), "c3FsaXRlOjU"):  # sqlite:5
        with pytest.raises(InvalidArgument):
            decode_token(bad, flt)


def test_documents_round_trip() -> None:
    now = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    asset = make_record(
        Status.AVAILABLE,
        AssetType.VALUE,
        "application/json",
        label="v.json",
        asset_id="5b0c6b55-8d5e-4a39-9a55-0f5b8f6c9f10",
        at=now,
        value=Value(ValueKind.JSON, b"{}"),
        tags=("a", "b"),
        size_bytes=2,
    )
    doc = asset_to_doc(asset, 17)
    assert doc["_id"] == asset.id and doc["seq"] == 17 and doc["value_content"] == b"{}"
    back = doc_to_asset(doc)
    assert back.revision == 17 and back.value == asset.value and back.tags == ("a", "b")
    assert back.created_at == now.replace(microsecond=123000)  # BSON dates hold milliseconds
