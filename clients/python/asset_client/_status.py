"""google.rpc.Status and PreconditionFailure, decoded with protobuf alone."""

# The server puts a google.rpc.Status (with PreconditionFailure details) in the
# grpc-status-details-bin trailer. Its classes ship in googleapis-common-protos, which
# would be a second dependency for two small messages, and a copy of google/rpc/*.proto
# registered in the default pool would clash with that package's where both are installed
# (the server's environment). So the client declares the two messages itself, field for
# field (the wire format knows only the numbers), in a descriptor pool of its own.

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
PRECONDITION_FAILURE_TYPE = "google.rpc.PreconditionFailure"


def _field(name: str, number: int, type_: Any, message: str = "") -> _F:
    """A singular scalar field, or (with `message`, a type name) a repeated message field."""
    field = _F(name=name, number=number, type=type_, label=_F.LABEL_OPTIONAL)
    if message:
        field.label = _F.LABEL_REPEATED
        field.type_name = message
    return field


def _file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="asset_client/rpc_status.proto", package="asset_client.rpc", syntax="proto3"
    )
    # google.protobuf.Any, as Status.details holds it: the type URL and the message bytes.
    fd.message_type.add(name="Any").field.extend(
        [_field("type_url", 1, _F.TYPE_STRING), _field("value", 2, _F.TYPE_BYTES)]
    )
    fd.message_type.add(name="Status").field.extend(
        [
            _field("code", 1, _F.TYPE_INT32),
            _field("message", 2, _F.TYPE_STRING),
            _field("details", 3, _F.TYPE_MESSAGE, ".asset_client.rpc.Any"),
        ]
    )
    failure = fd.message_type.add(name="PreconditionFailure")
    failure.nested_type.add(name="Violation").field.extend(
        [
            _field("type", 1, _F.TYPE_STRING),
            _field("subject", 2, _F.TYPE_STRING),
            _field("description", 3, _F.TYPE_STRING),
        ]
    )
    failure.field.append(
        _field("violations", 1, _F.TYPE_MESSAGE, ".asset_client.rpc.PreconditionFailure.Violation")
    )
    return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
Status: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("asset_client.rpc.Status")
)
PreconditionFailure: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("asset_client.rpc.PreconditionFailure")
)


def violations(status_details: bytes) -> list[tuple[str, str, str]]:
    """(type, subject, description) of each precondition violation in a status trailer."""
    status = Status.FromString(status_details)
    found: list[tuple[str, str, str]] = []
    for detail in status.details:
        if detail.type_url.rpartition("/")[2] != PRECONDITION_FAILURE_TYPE:
            continue
        failure = PreconditionFailure.FromString(detail.value)
        found.extend((v.type, v.subject, v.description) for v in failure.violations)
    return found
