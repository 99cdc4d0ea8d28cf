"""The gRPC edge: every AssetService method behind the error mapper, registered as served."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import pytest
from asset_client import _channel

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.api import wire
from asset_service.api.registration import add_asset_service
from asset_service.api.servicer import AssetServicer, streaming, unary
from asset_service.server import SERVER_OPTIONS
from tests.unit.served import METHODS, Served


async def _unary_shape(self: Any, request: Any, context: Any) -> Any:
    return None


async def _streaming_shape(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
    yield None


# The code of the mapper's two wrappers: a method wrapped by either runs this code.
_MAPPER_CODE = {unary(_unary_shape).__code__, streaming(_streaming_shape).__code__}


class Exploding:
    """A request (and a manager) on which anything the handler touches fails unexpectedly."""

    def __getattr__(self, name: str) -> NoReturn:
        raise RuntimeError(f"unexpected: {name} touched")


class Context:
    """The servicer context's surface the handlers use; abort ends the call as grpc does."""

    def __init__(self) -> None:
        self.aborted: list[tuple[grpc.StatusCode, str]] = []

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        self.aborted.append((code, details))
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: Any) -> NoReturn:
        self.aborted.append((status.code, status.details))
        raise grpc.aio.AbortError()

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def write(self, message: Any) -> None:
        pass


def test_the_service_has_methods_to_check() -> None:
    assert len(METHODS) >= 15 and "WatchAsset" in METHODS and "UploadAsset" in METHODS


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_wrapped_by_the_error_mapper(method: str) -> None:
    handler = getattr(AssetServicer, method)
    assert handler.__code__ in _MAPPER_CODE, f"{method} is not decorated with @unary/@streaming"


@pytest.mark.parametrize("method", METHODS)
async def test_an_unexpected_failure_in_any_method_ends_as_internal(
    method: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a handler hits, the client gets a status naming a log ref, never grpc's
    bare UNKNOWN with the exception's text."""
    servicer = AssetServicer(manager=Exploding())  # type: ignore[arg-type]
    context = Context()
    call = getattr(servicer, method)(Exploding(), context)
    with caplog.at_level(logging.CRITICAL), pytest.raises(grpc.aio.AbortError):
        if inspect.isasyncgen(call):
            async for _ in call:
                pass
        else:
            await call
    [(code, details)] = context.aborted
    assert code is grpc.StatusCode.INTERNAL, (code, details)
    assert details.startswith(f"internal error in {method}; server log ref "), details
    assert servicer.in_flight.count == 0


def test_watch_and_read_are_registered_with_the_pass_through_serializer() -> None:
    """One change fanned out to many watchers is serialized once: WatchAsset's handler must
    send the shared bytes as they are (wire.response_bytes), not re-serialize messages."""
    server = Served()
    add_asset_service(AssetServicer(manager=None), server)
    assert sorted(server.handlers) == METHODS
    watch = server.handlers["WatchAsset"]
    assert watch.response_serializer is wire.response_bytes
    assert watch.response_streaming and not watch.request_streaming
    assert watch.unary_stream is not None
    shared = pb.WatchAssetResponse().SerializeToString() + b"\x08\x01"
    assert watch.response_serializer(shared) is shared
    assert server.handlers["ReadAsset"].response_serializer is wire.response_bytes


def test_one_message_limit_for_the_server_and_the_python_client() -> None:
    """The client's limit is the server's: a bigger one would let it send a message the
    server refuses with a less helpful error; a smaller one would refuse a 4 MiB VALUE."""
    assert _channel.MAX_MESSAGE_BYTES == wire.MAX_MESSAGE_BYTES == 8 * 1024 * 1024
    for option in wire.MESSAGE_LIMITS:
        assert option in SERVER_OPTIONS and option in _channel.CHANNEL_OPTIONS
