"""(De)serializers for methods that skip the generated ones: shared watch bytes, chunk views."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

from google.protobuf.message import DecodeError, Message

from asset_service._proto.asset.v1 import asset_service_pb2 as pb

# The one limit on a message either way (server.py; the Python client's _channel.py says
# the same). Uploads and downloads move 1 MiB chunks; 8 MiB leaves room for a 4 MiB VALUE
# plus its envelope and refuses anything bigger before it is buffered.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MESSAGE_LIMITS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)

# UploadAssetRequest's `chunk` (field 2, length-delimited) starts with this key byte.
_CHUNK_KEY = (2 << 3) | 2
# A length's varint within MAX_MESSAGE_BYTES takes at most 4 bytes; a longer one (a
# valid but odd encoding) is left to the full parser.
_MAX_LENGTH_BYTES = 5


# What UploadAsset's handler receives: a parsed message, or a chunk's bytes as a view.
UploadMessage: TypeAlias = pb.UploadAssetRequest | memoryview


def upload_request(raw: bytes) -> UploadMessage:
    """An UploadAssetRequest, or just a view of its chunk's bytes inside `raw`.

    A message that is exactly one chunk field (how every protobuf library encodes a chunk)
    becomes a view of the bytes already received: parsing it would copy the chunk twice
    (into the message, then out as `chunk`), about a tenth of the server's CPU per uploaded
    MiB. Any other message (the header, an empty one, unknown fields, a repeated field) is
    parsed in full, so the result always means what the protobuf parser would say.
    """
    if len(raw) >= 2 and raw[0] == _CHUNK_KEY:
        length = shift = 0
        for i in range(1, min(len(raw), 1 + _MAX_LENGTH_BYTES)):
            byte = raw[i]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if length == len(raw) - i - 1:
                    return memoryview(raw)[i + 1 :]
                break
            shift += 7
    return pb.UploadAssetRequest.FromString(raw)


def response_bytes(message: Message | bytes) -> bytes:
    """A response already serialized (a shared watch event) goes out as it is."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class Malformed:
    """A request whose bytes did not parse: what the handler gets instead, to answer
    INVALID_ARGUMENT (grpc itself would answer UNKNOWN "Unexpected DecodeError")."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def tolerant(parse: Callable[[bytes], Any], method: str, type_name: str) -> Callable[[bytes], Any]:
    """`parse` (a request deserializer), giving a Malformed for bytes that do not parse."""

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            return Malformed(
                f"the {method} request ({len(raw)} bytes) is not a valid {type_name} message "
                f"({exc}); send the message as the .proto contract defines it"
            )

    return deserialize


# ReadAssetResponse: `chunk` is field 1 (length-delimited), `offset` field 2 (varint).
_READ_CHUNK_KEY = b"\x0a"
_READ_OFFSET_KEY = b"\x10"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_response(chunk: bytes | memoryview, offset: int) -> bytes:
    """ReadAssetResponse(chunk=chunk, offset=offset), serialized with one copy of the chunk.

    The message and then its serialization would copy it twice, and a stalled stream holds
    whatever its write holds: one 1 MiB copy, not three (what protobuf writes: fields in
    number order, a zero offset left out).
    """
    parts = [_READ_CHUNK_KEY, _varint(len(chunk)), chunk] if len(chunk) else []
    if offset:
        parts += [_READ_OFFSET_KEY, _varint(offset)]
    return b"".join(parts)
