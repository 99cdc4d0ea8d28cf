"""Server reflection, v1 and v1alpha, serving the contract with its comments (source info)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer as _AsyncReflectionServicer
from grpc_reflection.v1alpha.reflection import SERVICE_NAME as V1ALPHA_SERVICE_NAME

log = logging.getLogger(__name__)

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
METHOD = "ServerReflectionInfo"
# The FileDescriptorSet of protos/ with source info, made by scripts/gen_protos.py.
DESCRIPTORS = "descriptors.binpb"

__all__ = [
    "SERVICE_NAMES",
    "V1_SERVICE_NAME",
    "ReflectionServicer",
    "enable_server_reflection",
    "source_files",
]


def source_files(pool: descriptor_pool.DescriptorPool) -> dict[str, bytes]:
    """Our .proto files as `pool` holds them, with their comments (source info), by name.

    The runtime's descriptor pool drops source info, so reflection served descriptors
    without a word of the contract's documentation. Only the source info is taken from
    descriptors.binpb: the rest stays what the pool served before (protoc's json_name,
    absent from the pool, would turn grpcurl's JSON field names from storage_path into
    storagePath under every script that reads them).
    """
    try:
        data = resources.files("asset_service._proto").joinpath(DESCRIPTORS).read_bytes()
    except OSError as exc:  # an install that left the package data out
        log.warning("reflection serves the contract without its comments: %s", exc)
        return {}
    served = {}
    for generated in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        try:
            found = pool.FindFileByName(generated.name)
        except KeyError:
            continue  # not imported by this server: nothing to serve
        proto = descriptor_pb2.FileDescriptorProto()
        found.CopyToProto(proto)
        proto.source_code_info.CopyFrom(generated.source_code_info)
        served[proto.name] = proto.SerializeToString()
    return served


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, which grpcio-reflection does not ship.

    v1 is v1alpha renamed: the same messages with the same fields and numbers
    (grpc/grpc src/proto/grpc/reflection/v1), so the same bytes on the wire; only the
    package, and so the service's full name, differ.
    """
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    proto.options.Clear()
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.java_multiple_files = True
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # assigning even "" would set it
                field.type_name = field.type_name.replace(old, new)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(old, new)
        method.output_type = method.output_type.replace(old, new)
    return proto


def _register_v1(pool: descriptor_pool.DescriptorPool) -> None:
    """Make the v1 service describable (`grpcurl describe grpc.reflection.v1...`)."""
    proto = _v1_file()
    try:
        pool.FindFileByName(proto.name)
    except KeyError:
        pool.AddSerializedFile(proto.SerializeToString())


class ReflectionServicer(_AsyncReflectionServicer):  # type: ignore[misc]
    """grpcio's reflection, with `pkg.Service.Method` resolved to the service's file, and
    our files served with their comments.

    Python's descriptor pool finds services, messages, fields and enums by name but not
    methods, so `grpcurl describe asset.v1.AssetService.GetManifest` got "Symbol not
    found"; the reflection protocol (and grpcurl) expect the file defining the method.
    """

    def __init__(
        self,
        service_names: Iterable[str],
        pool: descriptor_pool.DescriptorPool | None = None,
        sources: dict[str, bytes] | None = None,
    ) -> None:
        super().__init__(service_names, pool=pool)
        self._descriptors = pool or descriptor_pool.Default()
        self._sources = source_files(self._descriptors) if sources is None else sources

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response") and self._sources:
                self._with_sources(response.file_descriptor_response.file_descriptor_proto)
            yield response

    def _with_sources(self, files: Any) -> None:
        for i, serialized in enumerate(files):
            name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
            if name in self._sources:
                files[i] = self._sources[name]

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if response.HasField("error_response"):
            service_name, _, method = fully_qualified_name.rpartition(".")
            if self._has_method(service_name, method):
                return super()._file_containing_symbol(request, service_name)
        return response

    def _has_method(self, service_name: str, method: str) -> bool:
        if not service_name:
            return False
        try:
            service = self._descriptors.FindServiceByName(service_name)
        except KeyError:
            return False
        return method in service.methods_by_name


def enable_server_reflection(
    service_names: Iterable[str],
    server: grpc.aio.Server,
    pool: descriptor_pool.DescriptorPool | None = None,
) -> None:
    """Reflection v1 (buf curl, grpcurl 1.9+, grpcui) and v1alpha (older tools) on a grpc.aio
    server, listing `service_names` and both reflection services."""
    _register_v1(pool or descriptor_pool.Default())
    servicer = ReflectionServicer((*service_names, *SERVICE_NAMES), pool=pool)
    # One servicer behind both names: v1 messages are v1alpha's byte for byte.
    handlers = {
        METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    for name in SERVICE_NAMES:
        # Generic only, as every service of this server (api/registration.GenericOnly).
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
