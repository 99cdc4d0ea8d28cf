"""GetAsset's answer is reused only for the very same record object, within its bounds."""

from __future__ import annotations

import dataclasses

from asset_service.api.convert import Answers, asset_to_pb
from asset_service.domain.models import Asset, AssetType, Status, Value, ValueKind
from tests.records import pending_record


def value_record(size: int) -> Asset:
    return dataclasses.replace(
        pending_record(),
        status=Status.AVAILABLE,
        type=AssetType.VALUE,
        value=Value(ValueKind.BYTES, b"x" * size),
        size_bytes=size,
    )


def test_the_same_record_object_gets_the_same_answer() -> None:
    answers = Answers()
    record = pending_record()
    first = answers.get_asset(record)
    assert first.asset == asset_to_pb(record)
    assert answers.get_asset(record) is first


def test_another_record_object_is_converted_again() -> None:
    answers = Answers()
    record = pending_record()
    first = answers.get_asset(record)
    changed = dataclasses.replace(record, label="renamed", revision=record.revision + 1)
    assert answers.get_asset(changed).asset.label == "renamed"
    equal = dataclasses.replace(record)  # equal, but not the object the store handed back
    assert answers.get_asset(equal) is not first


def test_entries_and_value_bytes_are_bounded() -> None:
    answers = Answers(max_entries=2, max_bytes=3000)
    one, two, three = pending_record(), pending_record(), pending_record()
    kept = answers.get_asset(one)
    answers.get_asset(two)
    answers.get_asset(three)  # a third entry: the others are forgotten
    assert answers.get_asset(one) is not kept
    answers = Answers(max_bytes=3000)
    big = value_record(2000)
    kept = answers.get_asset(big)
    answers.get_asset(value_record(2000))  # 4000 bytes: forgotten first
    assert answers.get_asset(big) is not kept
    again = answers.get_asset(big)
    assert answers.get_asset(big) is again
    assert answers._bytes == 2000
