"""Server reflection that answers for method symbols too (grpcurl describe Service.Method)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer as _AsyncReflectionServicer
from grpc_reflection.v1alpha.reflection import SERVICE_NAME

__all__ = ["SERVICE_NAME", "ReflectionServicer", "enable_server_reflection"]


class ReflectionServicer(_AsyncReflectionServicer):  # type: ignore[misc]
    """grpcio's reflection, with `pkg.Service.Method` resolved to the service's file.

    Python's descriptor pool finds services, messages, fields and enums by name but not
    methods, so `grpcurl describe asset.v1.AssetService.GetManifest` got "Symbol not
    found"; the reflection protocol (and grpcurl) expect the file defining the method.
    """

    def __init__(
        self, service_names: Iterable[str], pool: descriptor_pool.DescriptorPool | None = None
    ) -> None:
        super().__init__(service_names, pool=pool)
        self._descriptors = pool or descriptor_pool.Default()

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
    """Like grpc_reflection's, for a grpc.aio server, with method symbols resolved."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        ReflectionServicer(service_names, pool=pool), server
    )
