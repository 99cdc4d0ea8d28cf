"""The fields a transition writes, shared by SqliteStore and MongoStore."""

from __future__ import annotations

from datetime import UTC, datetime

from asset_service.domain.models import (
    BlockSums,
    Corruption,
    Failure,
    Fulfillment,
    Value,
    ValueKind,
)
from asset_service.store._fields import transition_fields

NOW = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def test_a_fulfillment_with_a_value_writes_it_to_the_store_s_column() -> None:
    change = Fulfillment(
        size_bytes=3,
        sha256="ab" * 32,
        value=Value(ValueKind.TEXT, b"abc"),
        media_type="text/x",
        by="worker-1",
    )
    sets = transition_fields(change, NOW, value_column="value_data", timestamp=datetime.isoformat)
    assert sets == {
        "status": "AVAILABLE",
        "storage_path": "",
        "value_kind": "TEXT",
        "value_data": b"abc",
        "size_bytes": 3,
        "sha256": "ab" * 32,
        "fulfilled_from": "",
        "block_sums": None,
        "media_type": "text/x",
        "updated_at": NOW.isoformat(),
        "updated_by": "worker-1",
    }


def test_a_file_fulfillment_clears_the_value_and_keeps_the_promised_media_type() -> None:
    change = Fulfillment(size_bytes=5, sha256="cd" * 32, storage_path="k/x", fulfilled_from="/w/x")
    sets = transition_fields(change, NOW, value_column="value_content", timestamp=lambda t: "T")
    # No media_type key: an empty one must not overwrite what the promise was created with.
    assert "media_type" not in sets
    assert (sets["value_kind"], sets["value_content"]) == (None, None)
    assert (sets["storage_path"], sets["fulfilled_from"]) == ("k/x", "/w/x")
    assert sets["updated_at"] == "T"


def test_a_file_fulfillment_keeps_its_block_sums_as_the_store_encodes_them() -> None:
    sums = BlockSums(4, b"\x00\x00\x00\x01")
    change = Fulfillment(size_bytes=3, sha256="cd" * 32, storage_path="k/x", block_sums=sums)
    sets = transition_fields(change, NOW, value_column="v", timestamp=lambda t: "T")
    assert sets["block_sums"] == sums.encode()
    assert BlockSums.decode(sets["block_sums"]) == sums


def test_a_corruption_writes_its_reason_and_nothing_else_of_the_record() -> None:
    sets = transition_fields(Corruption("bad", by="x"), NOW, value_column="v", timestamp=str)
    assert sets == {"corrupt_reason": "bad", "updated_at": str(NOW), "updated_by": "x"}


def test_a_failure_writes_status_reason_time_and_who_only() -> None:
    sets = transition_fields(
        Failure("worker crashed", by="task:t-1"), NOW, value_column="v", timestamp=str
    )
    assert sets == {
        "status": "FAILED",
        "failure_reason": "worker crashed",
        "updated_at": str(NOW),
        "updated_by": "task:t-1",
    }
