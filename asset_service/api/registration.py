"""AssetService's registration: the generated handlers, but bytes passed through where
they are already serialized, and tolerant request decoders."""

from __future__ import annotations

from typing import Any, cast

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.api import wire
from asset_service.api.interceptor import SecurityInterceptor
from asset_service.api.servicer import AssetServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AssetService"].full_name


class _Collected:
    """Stands in for the server to collect the generated stubs' method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.handlers = dict(handlers)


def add_asset_service(
    servicer: AssetServicer,
    server: Any,
    anonymous: SecurityInterceptor | None = None,
) -> None:
    """The generated registration, but WatchAsset and ReadAsset send pre-serialized bytes
    and UploadAsset takes its chunks as views of the received messages (api/wire).

    One change fanned out to many watchers is serialized once (api/convert.SharedEvents);
    every other method keeps the generated handler. Interceptors see the same handler
    shapes, and reflection reads descriptors, not handlers. With `anonymous` (a server
    without security) each handler is wrapped here, once, as that interceptor would wrap
    it on every call.
    """
    collected = _Collected()
    pb_grpc.add_AssetServiceServicer_to_server(servicer, cast(Any, collected))
    handlers = collected.handlers
    handlers["WatchAsset"] = grpc.unary_stream_rpc_method_handler(
        servicer.WatchAsset,
        request_deserializer=pb.WatchAssetRequest.FromString,
        response_serializer=wire.response_bytes,
    )
    handlers["ReadAsset"] = grpc.unary_stream_rpc_method_handler(
        servicer.ReadAsset,
        request_deserializer=pb.ReadAssetRequest.FromString,
        response_serializer=wire.response_bytes,
    )
    handlers["UploadAsset"] = grpc.stream_unary_rpc_method_handler(
        servicer.UploadAsset,
        request_deserializer=wire.upload_request,
        response_serializer=pb.UploadAssetResponse.SerializeToString,
    )
    # Bytes that are not the request message: INVALID_ARGUMENT from the handler (servicer),
    # not grpc's UNKNOWN. A streamed request fails as the handler reads it (servicer too).
    methods = pb.DESCRIPTOR.services_by_name["AssetService"].methods_by_name
    for name, handler in list(handlers.items()):
        parse = wire.tolerant(
            cast(Any, handler.request_deserializer), name, methods[name].input_type.full_name
        )
        if handler.unary_unary is not None:
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                handler.unary_unary, parse, handler.response_serializer
            )
        elif handler.unary_stream is not None:
            handlers[name] = grpc.unary_stream_rpc_method_handler(
                handler.unary_stream, parse, handler.response_serializer
            )
    if anonymous is not None:
        handlers = {
            name: anonymous.anonymous_handler(f"/{SERVICE_NAME}/{name}", handler)
            for name, handler in handlers.items()
        }
    # Generic only, not also as registered methods as the generated code does: GenericOnly.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class GenericOnly:
    """The server as the code adding services sees it: every handler a generic one only.

    grpc.aio keeps one pending request per registered method, and its serving loop waits on
    all of them (asyncio.wait: a callback added to and removed from each) for every call it
    accepts: with AssetService's, health's and reflection's methods, about a twentieth of
    the server's CPU per GetAsset (py-spy). The generated code (health) adds each handler
    as a generic one too, so a call finds the same handler, one dictionary look-up away.
    """

    def __init__(self, server: Any) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        """Left out: the same handlers came as generic ones just before."""
