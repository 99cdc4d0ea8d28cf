"""UploadAsset's chunk views mean exactly what the protobuf parser says, and copy nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.api import wire
from asset_service.api.interceptor import security_interceptor
from asset_service.api.registration import add_asset_service
from asset_service.api.servicer import AssetServicer
from asset_service.config import load_settings
from asset_service.security.setup import Security
from tests.unit.served import Served


def _same_as_parser(raw: bytes) -> None:
    """wire.upload_request(raw) agrees with UploadAssetRequest.FromString(raw)."""
    try:
        parsed = pb.UploadAssetRequest.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            wire.upload_request(raw)
        return
    got = wire.upload_request(raw)
    if isinstance(got, memoryview):
        assert parsed.WhichOneof("payload") == "chunk"
        assert got.tobytes() == parsed.chunk
        assert parsed.ListFields() == [
            (pb.UploadAssetRequest.DESCRIPTOR.fields_by_name["chunk"], got.tobytes())
        ]
    else:
        assert got == parsed


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 2097151, 2097152])
def test_a_chunk_message_is_a_view_of_the_received_bytes(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    raw = pb.UploadAssetRequest(chunk=data).SerializeToString()
    got = wire.upload_request(raw)
    assert isinstance(got, memoryview)
    assert got.obj is raw, "the chunk was copied"
    assert got == data
    _same_as_parser(raw)


def test_a_header_is_parsed_in_full() -> None:
    message = pb.UploadAssetRequest(
        header=pb.UploadHeader(label="a.bin", expected_size_bytes=3, tags=["x"])
    )
    got = wire.upload_request(message.SerializeToString())
    assert isinstance(got, pb.UploadAssetRequest) and got == message


def _chunk_field(data: bytes, length: bytes | None = None) -> bytes:
    if length is None:
        length = pb.UploadAssetRequest(chunk=data).SerializeToString()[1 : -len(data) or None]
    return b"\x12" + length + data


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # an empty message: no payload
        b"\x12",  # a key without its length
        b"\x12\x05abc",  # a length past the end
        b"\x12\x02abc",  # a length short of the end, the rest not a field
        _chunk_field(b"first") + _chunk_field(b"second"),  # a repeated field: the last wins
        _chunk_field(b"abc") + b"\x18\x01",  # an unknown field after the chunk
        b"\x18\x01" + _chunk_field(b"abc"),  # an unknown field before it
        pb.UploadAssetRequest(header=pb.UploadHeader(label="h")).SerializeToString()
        + _chunk_field(b"abc"),  # a header, then a chunk: the oneof keeps the chunk
        _chunk_field(b"abc") + pb.UploadAssetRequest(header=pb.UploadHeader()).SerializeToString(),
        _chunk_field(b"abc", length=b"\x83\x00"),  # a valid, non-minimal length
        _chunk_field(b"abc", length=b"\x83\x80\x80\x80\x80\x00"),  # longer than 5 bytes
        _chunk_field(b"", length=b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00"),  # too long
        b"\x12\xff\xff\xff\xff\xff",  # an unterminated length
    ],
)
def test_every_other_encoding_means_what_the_parser_says(raw: bytes) -> None:
    _same_as_parser(raw)


def test_a_non_minimal_length_within_five_bytes_is_still_a_view() -> None:
    raw = _chunk_field(b"abc", length=b"\x83\x80\x00")
    got = wire.upload_request(raw)
    assert isinstance(got, memoryview) and got == b"abc"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_agree_with_the_parser(raw: bytes) -> None:
    _same_as_parser(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=8))
def test_a_chunk_field_with_anything_after_it_agrees_with_the_parser(
    data: bytes, tail: bytes
) -> None:
    _same_as_parser(_chunk_field(data) + tail)


@pytest.mark.parametrize("open_server", [False, True])
def test_the_server_registers_the_view_decoder_for_uploads(
    open_server: bool, tmp_path: Path
) -> None:
    """UploadAsset's handler as the server registers it (with and without the anonymous
    wrapping of a server without security) decodes with wire.upload_request: the generated
    one would copy every chunk twice."""

    anonymous = None
    if open_server:
        security = Security(load_settings(["--storage-root", str(tmp_path)], {}))
        anonymous = security_interceptor(security, None)  # type: ignore[arg-type]
    server = Served()
    add_asset_service(AssetServicer(manager=None), server, anonymous)  # type: ignore[arg-type]
    upload = server.handlers["UploadAsset"]
    assert upload.request_deserializer is wire.upload_request
    assert upload.request_streaming and not upload.response_streaming
    assert server.handlers["WatchAsset"].response_serializer is wire.response_bytes
    assert server.handlers["ReadAsset"].response_serializer is wire.response_bytes


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16384, 1024 * 1024])
@pytest.mark.parametrize("offset", [0, 1, 127, 128, 2**31, 2**62])
def test_read_responses_are_what_protobuf_would_send(size: int, offset: int) -> None:
    chunk = bytes(i % 251 for i in range(size))
    data = wire.read_response(chunk, offset)
    assert data == pb.ReadAssetResponse(chunk=chunk, offset=offset).SerializeToString()
    parsed = pb.ReadAssetResponse.FromString(data)
    assert parsed.chunk == chunk and parsed.offset == offset
