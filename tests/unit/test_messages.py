"""Error messages stay small and useful; JSON, paths and names are checked; logs stay quiet."""

from __future__ import annotations

import base64
import json
import logging
import math
import sys
import unicodedata
from typing import Any
from urllib.parse import quote

import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2

from asset_service import logs
from asset_service.api import convert
from asset_service.api.errors import (
    MAX_DETAILS_BYTES,
    MAX_MESSAGE_WIRE_BYTES,
    capped,
    rich_status,
    status_message,
)
from asset_service.api.reflection import ReflectionServicer
from asset_service.domain.errors import (
    BlockingAsset,
    InvalidArgument,
    ManifestBlocked,
    shown,
    shown_list,
)
from asset_service.domain.models import (
    MAX_JSON_DEPTH,
    ValueKind,
    check_json,
    parse_asset_id,
    validate_label,
    validate_media_type,
    validate_server_path,
    validate_sha256,
    validate_tags,
    validate_task_id,
)
from asset_service.domain.models._validation import _unprintable
from asset_service.domain.values import parse_value

UUID = "5b0e4f0e-0000-4000-8000-000000000000"
HUGE = "x" * 100_000


def wire_bytes(message: str) -> int:
    """Bytes of `message` as grpc-message: percent-encoded except printable ASCII."""
    safe = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
    return len(quote(message.encode("utf-8"), safe=safe))


# --- shown / shown_list ---------------------------------------------------------------


def test_shown_quotes_short_input_and_cuts_long_input_with_its_length() -> None:
    assert shown("abc") == "'abc'"
    assert shown("x" * 100, 5) == "'xxxxx…' (100 characters)"
    # Invisible characters become visible escapes instead of disappearing in a terminal.
    assert shown("a\u2028b\u202e") == "'a\\u2028b\\u202e'"


def test_shown_list_names_the_first_ten_and_counts_the_rest() -> None:
    items = [f"id{i}" for i in range(25)]
    assert shown_list(items) == ", ".join(items[:10]) + ", …and 15 more"
    assert shown_list(items[:3]) == "id0, id1, id2"


@pytest.mark.parametrize(
    ("check", "fragment"),
    [
        (lambda: parse_asset_id(HUGE), "is not a UUID"),
        (lambda: validate_task_id(HUGE), "task_id"),
        (lambda: validate_tags(["ok", HUGE]), "tag"),
        (lambda: validate_media_type(HUGE, ""), "media_type"),
        (lambda: validate_sha256(HUGE), "sha256"),
        (lambda: validate_label("\x01" * 200), "label"),
        (lambda: validate_server_path("/" + "a/" * 5000), "path"),
        (lambda: validate_server_path("relative" * 1000), "absolute"),
    ],
)
def test_validators_echo_input_shortened(check: Any, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check()
    message = info.value.message
    assert fragment in message
    assert len(message) < 600, message
    assert "characters)" in message or "bytes" in message  # says how long the input was


# --- capping ----------------------------------------------------------------------------


@pytest.mark.parametrize("filler", ["a", "%", "é", "中", "😀", "\u2028"])
def test_capped_fits_the_wire_budget_and_never_splits_a_character(filler: str) -> None:
    message = "asset " + filler * 20_000 + " not found"
    out = capped(message)
    assert wire_bytes(out) <= MAX_MESSAGE_WIRE_BYTES
    assert out.startswith("asset " + filler)
    assert out.endswith(f"[message cut; it had {len(message)} characters]")
    out.encode("utf-8")  # a split surrogate pair or byte would raise here
    assert capped("short") == "short"


def test_capped_replaces_lone_surrogates() -> None:
    assert capped("a\udc80b") == "a?b"


def test_status_message_is_capped_for_every_error() -> None:
    assert wire_bytes(status_message(InvalidArgument("label " + "é" * 50_000))) <= 2048


# --- ManifestBlocked ------------------------------------------------------------------


def blockers(count: int, key_chars: int = 10, reason_chars: int = 20) -> list[BlockingAsset]:
    return [
        BlockingAsset(f"{i:04d}" + "k" * key_chars, UUID, "FAILED", "r" * reason_chars)
        for i in range(count)
    ]


def test_manifest_blocked_names_twenty_and_counts_the_rest() -> None:
    exc = ManifestBlocked(blockers(1000))
    # Short printable keys and reasons read as they are; long or odd ones are shown quoted.
    assert exc.message.startswith("1000 input(s) not AVAILABLE: 0000kkkkkkkkkk=")
    assert f"0000kkkkkkkkkk={UUID} is FAILED ({'r' * 20}); 0001" in exc.message
    assert exc.message.endswith("; …and 980 more")
    assert len(exc.shown_blocking) == 20 and len(exc.blocking) == 1000
    assert "0019" in exc.message and "0020" not in exc.message


def test_manifest_blocked_with_long_keys_and_reasons_stays_small() -> None:
    exc = ManifestBlocked(blockers(1000, key_chars=100_000, reason_chars=4096))
    assert len(exc.message) < 2000
    assert exc.message.endswith(f"…and {1000 - len(exc.shown_blocking)} more")
    assert "(100004 characters)" in exc.message and "(4096 characters)" in exc.message


@pytest.mark.parametrize(("key_chars", "reason_chars"), [(5, 15), (100_000, 4096)])
def test_rich_status_is_bounded_and_ends_with_the_count_of_the_rest(
    key_chars: int, reason_chars: int
) -> None:
    exc = ManifestBlocked(blockers(1000, key_chars, reason_chars))
    status = rich_status(exc)
    assert status is not None
    assert status.ByteSize() <= MAX_DETAILS_BYTES
    assert len(base64.b64encode(status.SerializeToString())) + wire_bytes(status.message) < 7 * 1024
    failure = error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(failure)
    named, more = failure.violations[:-1], failure.violations[-1]
    assert 1 <= len(named) <= 20
    assert all(v.subject == f"assets/{UUID}" and v.type == "FAILED" for v in named)
    assert more.type == "MORE"
    assert more.description.startswith(f"…and {1000 - len(named)} more")


def test_rich_status_of_a_few_blockers_names_every_one() -> None:
    exc = ManifestBlocked([BlockingAsset("video", UUID, "PENDING")])
    status = rich_status(exc)
    assert status is not None
    failure = error_details_pb2.PreconditionFailure()
    status.details[0].Unpack(failure)
    assert [v.description for v in failure.violations] == ["input 'video' is PENDING"]


# --- JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["NaN", "[1, Infinity]", '{"a": -Infinity}'])
def test_json_values_refuse_nan_and_infinity(text: str) -> None:
    with pytest.raises(InvalidArgument, match="not JSON"):
        parse_value(ValueKind.JSON, text.encode())


def test_json_values_refuse_numbers_beyond_a_double() -> None:
    with pytest.raises(InvalidArgument, match="beyond a double's range"):
        parse_value(ValueKind.JSON, b'{"big": 1e999}')


def test_json_nesting_limit_is_explicit() -> None:
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    parse_value(ValueKind.JSON, ok.encode())
    too_deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(InvalidArgument, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        parse_value(ValueKind.JSON, too_deep.encode())


def test_json_nesting_past_pythons_recursion_limit_is_invalid_argument() -> None:
    depth = sys.getrecursionlimit() * 4
    with pytest.raises(InvalidArgument, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        check_json("[" * depth + "]" * depth, "json value")


def test_json_syntax_errors_keep_their_message() -> None:
    with pytest.raises(InvalidArgument, match="json value does not parse: Expecting"):
        parse_value(ValueKind.JSON, b"{nope")


def struct_of(**fields: Any) -> struct_pb2.Struct:
    msg = struct_pb2.Struct()
    msg.update(fields)
    return msg


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_config_params_refuse_non_finite_numbers_naming_the_key(number: float) -> None:
    msg = struct_of(ok=1, outer={"list": [1, 2]})
    msg["outer"]["list"].append(number)
    with pytest.raises(InvalidArgument) as info:
        convert.struct_to_dict(msg)
    assert "config_params at ['outer']['list'][2] is" in info.value.message


def test_config_params_nesting_limit_names_the_key() -> None:
    nested: Any = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        nested = [nested]
    with pytest.raises(InvalidArgument, match=r"config_params at \['deep'\]\[0\]"):
        convert.struct_to_dict(struct_of(deep=nested))


def test_config_params_convert_to_plain_json_with_whole_numbers_as_ints() -> None:
    data = convert.struct_to_dict(
        struct_of(n=3, x=0.5, big=1e300, s="é", b=True, z=None, l=[1, {"k": 2.0}])
    )
    assert data == {"n": 3, "x": 0.5, "big": 1e300, "s": "é", "b": True, "z": None,
                    "l": [1, {"k": 2}]}  # fmt: skip
    assert isinstance(data["n"], int)
    text = json.dumps(data)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}")) == data


# --- server-side paths ------------------------------------------------------------------


def test_validate_server_path_accepts_a_plain_absolute_path() -> None:
    assert validate_server_path("/srv/in/a b/é.csv") == "/srv/in/a b/é.csv"


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("", "required"),
        ("/a/\x00b", "NUL"),
        ("a/b", "absolute"),
        ("/a/../etc/passwd", "'..' component"),
        ("/a/./b", "'.' component"),
        ("/" + "a" * 4095, "limit is 4095"),
        ("/" + "é" * 2048, "limit is 4095"),  # 4097 bytes, though 2049 characters
        ("/in/" + "b" * 256, "limit is 255"),
        ("/in/" + "é" * 128 + "/x", "limit is 255"),
    ],
)
def test_validate_server_path_refuses(path: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        validate_server_path(path)


# --- names with unusual unicode -------------------------------------------------------


@pytest.mark.parametrize("label", ["rtl\u200fmark.txt", "emoji👩\u200d💻.png", "中文.txt"])
def test_labels_with_legitimate_unicode_are_kept(label: str) -> None:
    assert validate_label(label) == label


@pytest.mark.parametrize(
    "label", ["line\u2028sep", "para\u2029sep", "invoice\u202egpj.exe", "iso\u2066x", "c1\x85"]
)
def test_labels_and_tags_with_separators_or_bidi_overrides_are_refused(label: str) -> None:
    with pytest.raises(InvalidArgument, match="label"):
        validate_label(label)
    with pytest.raises(InvalidArgument, match="tag"):
        validate_tags([label])


def test_the_refused_characters_are_those_of_their_definition_at_every_code_point() -> None:
    """The character class names its characters; this is what it stands for."""
    bidi = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

    def refused(c: str) -> bool:
        return (
            ord(c) < 32
            or 127 <= ord(c) < 160
            or c in bidi
            or unicodedata.category(c) in ("Zl", "Zp", "Cs")
        )

    differ = [hex(cp) for cp in range(0x110000) if _unprintable(chr(cp)) != refused(chr(cp))]
    assert differ == []


# --- logging ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decode_error_record() -> logging.LogRecord:
    from google.protobuf.message import DecodeError

    try:
        raise DecodeError("Error parsing message with type 'asset.v1.GetAssetRequest'")
    except DecodeError:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "grpc._cython.cygrpc",
        logging.ERROR,
        "server.pyx",
        1,
        "Unexpected [%s] raised by servicer method [%s]",
        ("DecodeError", "/asset.v1.AssetService/GetAsset"),
        exc_info,
    )


def test_malformed_request_records_become_one_line_without_traceback() -> None:
    flt = logs.RateLimitFilter(clock=Clock())
    record = decode_error_record()
    assert flt.filter(record)
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == (
        "malformed request to /asset.v1.AssetService/GetAsset from a client: "
        "Error parsing message with type 'asset.v1.GetAssetRequest'"
    )
    assert "Traceback" not in logging.Formatter().format(record)


def test_rate_limit_lets_a_few_through_then_counts_the_suppressed() -> None:
    clock = Clock()
    flt = logs.RateLimitFilter(lines_per_window=3, window_seconds=10, clock=clock)
    passed = [r for r in (decode_error_record() for _ in range(100)) if flt.filter(r)]
    assert len(passed) == 3
    assert "suppressed for 10s" in passed[-1].getMessage()
    other = logging.LogRecord("x", logging.INFO, "f", 1, "unrelated %s", ("line",), None)
    assert flt.filter(other) and other.getMessage() == "unrelated line"  # other kinds pass
    clock.now += 10
    record = decode_error_record()
    assert flt.filter(record)
    assert "[97 similar message(s) suppressed in the 10s before this one]" in record.getMessage()


def test_rate_limit_by_explicit_key_and_one_decision_per_record() -> None:
    flt = logs.RateLimitFilter(lines_per_window=1, clock=Clock())

    def keyed(key: str) -> logging.LogRecord:
        record = logging.LogRecord("a", logging.ERROR, "f", 1, "100%% %s", ("x",), None)
        setattr(record, logs.RATE_KEY, key)
        return record

    first = keyed("k1")
    assert flt.filter(first) and flt.filter(first)  # a second handler sees the same answer
    assert first.getMessage().startswith("100% x [more like this")
    assert not flt.filter(keyed("k1"))
    assert flt.filter(keyed("k2"))


# --- reflection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "symbol",
    [
        "asset.v1.AssetService",
        "asset.v1.AssetService.GetManifest",
        "asset.v1.Asset",
        "asset.v1.AssetStatus",
    ],
)
def test_reflection_finds_the_file_of_services_methods_messages_and_enums(symbol: str) -> None:
    import asset_service._proto.asset.v1.asset_service_pb2  # noqa: F401  (registers the file)

    servicer = ReflectionServicer(["asset.v1.AssetService"])
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    response = servicer._file_containing_symbol(request, symbol)
    assert response.HasField("file_descriptor_response"), response


@pytest.mark.parametrize("symbol", ["asset.v1.AssetService.NoSuchMethod", "Nope", "a.b.c"])
def test_reflection_still_answers_not_found_for_unknown_symbols(symbol: str) -> None:
    servicer = ReflectionServicer(["asset.v1.AssetService"])
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    assert servicer._file_containing_symbol(request, symbol).HasField("error_response")
