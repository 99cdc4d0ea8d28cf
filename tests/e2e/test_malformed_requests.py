"""End to end: bytes that are not the request message get INVALID_ARGUMENT on every RPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from tests.e2e.security_helpers import WORKER_RPCS, bearer, token_for, token_server
from tests.serverproc import ServerProcess

SERVICE = pb.DESCRIPTOR.services_by_name["AssetService"]
# A varint that never ends, and a length-delimited field 1 cut short: neither parses as
# any message.
GARBAGE = (b"\xff\xff\xff\xff", b"\x0a\x05ab")
Metadata = Sequence[tuple[str, str]]


async def garbage_call(
    channel: grpc.aio.Channel, method: pb.MethodDescriptor, data: bytes, metadata: Metadata
) -> grpc.aio.AioRpcError:
    """Send `data` as the request of `method` through a channel that sends bytes as they are."""
    path = f"/{SERVICE.full_name}/{method.name}"
    try:
        if method.client_streaming:

            async def requests() -> AsyncIterator[bytes]:
                yield data

            call = channel.stream_unary(path)
            await call(requests(), metadata=metadata, timeout=10)
        elif method.server_streaming:
            stream = channel.unary_stream(path)(data, metadata=metadata, timeout=10)
            async for _ in stream:
                pass
        else:
            await channel.unary_unary(path)(data, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"{method.name} accepted {data!r}")


# What a task token may call at all (docs/security.md): a worker's RPCs but GetUsage;
# other RPCs refuse it first.
TASK_RPCS = WORKER_RPCS - {"GetUsage"}


async def assert_every_rpc_refuses_garbage(
    server: ServerProcess, metadata: Metadata, callable_rpcs: set[str] | None = None
) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        for method in SERVICE.methods:
            for data in GARBAGE:
                err = await garbage_call(channel, method, data, metadata)
                details = err.details() or ""
                if callable_rpcs is not None and method.name not in callable_rpcs:
                    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, details
                    continue
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (
                    f"{method.name} {data!r}: {err.code()} {details}"
                )
                assert method.name in details, details
                assert "Unexpected" not in details, details
    log = "".join(server.log)
    assert "Traceback" not in log and "Unexpected exception" not in log, log[-3000:]


async def test_every_rpc_refuses_bytes_that_are_not_its_message(server: ServerProcess) -> None:
    await assert_every_rpc_refuses_garbage(server, ())


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[ServerProcess]:
    with token_server(tmp_path) as server:
        yield server


@pytest.mark.parametrize("who", ["admin", "task"])
async def test_with_credentials_too_garbage_is_invalid_argument(
    secured: ServerProcess, who: str
) -> None:
    """Behind the security interceptor, a task token's scope check must not trip on it."""
    metadata, rpcs = bearer(token_for("admin")), None
    if who == "task":
        async with grpc.aio.insecure_channel(secured.address) as channel:
            mint = channel.unary_unary(
                f"/{SERVICE.full_name}/MintTaskToken",
                request_serializer=pb.MintTaskTokenRequest.SerializeToString,
                response_deserializer=pb.MintTaskTokenResponse.FromString,
            )
            minted = await mint(pb.MintTaskTokenRequest(task_id="t-1"), metadata=metadata)
        metadata, rpcs = bearer(minted.token), TASK_RPCS
    await assert_every_rpc_refuses_garbage(secured, metadata, rpcs)
