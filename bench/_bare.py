"""Bare grpc.aio ceilings: `python -m bench._bare KIND` serves one path and prints its port."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from asset_service import allocator
from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.server import SERVER_OPTIONS

SERVICE = "asset.v1.AssetService"
MiB = 1024 * 1024
KINDS = ("upload", "upload-parse", "read", "fanout", "unary")


def _handlers(kind: str, replies: dict[str, bytes]) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The handlers of one ceiling; requests and responses stay raw bytes (no (de)coding)."""
    if kind == "upload":
        # Only counts the bytes of each message received (the count-only server).
        # The service does not parse a chunk message either: it takes a view of the chunk
        # inside the received bytes (asset_service/api/wire.py).
        async def upload(requests: AsyncIterator[bytes], _: Any) -> bytes:
            received = 0
            async for message in requests:
                received += len(message)
            return b""

        return {"UploadAsset": grpc.stream_unary_rpc_method_handler(upload)}

    if kind == "upload-parse":
        # Parses each message with the generated code, then counts the chunk's bytes: what
        # a server of this contract written the usual way does before anything else.
        async def parse(requests: AsyncIterator[pb.UploadAssetRequest], _: Any) -> bytes:
            received = 0
            async for message in requests:
                received += len(message.chunk)
            return b""

        return {
            "UploadAsset": grpc.stream_unary_rpc_method_handler(
                parse, request_deserializer=pb.UploadAssetRequest.FromString
            )
        }

    if kind == "read":
        # One serialized 1 MiB chunk, sent as many times as the request's limit asks.
        chunk = pb.ReadAssetResponse(chunk=bytes(MiB)).SerializeToString()

        async def read(request: bytes, _: Any) -> AsyncIterator[bytes]:
            limit = pb.ReadAssetRequest.FromString(request).limit
            for _ in range(-(-limit // MiB)):
                yield chunk

        return {"ReadAsset": grpc.unary_stream_rpc_method_handler(read)}

    if kind == "fanout":
        # Every stream yields a snapshot, then waits for the round's trigger and yields one
        # message serialized once for all of them.
        asset_id = str(uuid.uuid4())
        created = pb.CreatePendingAssetResponse(
            asset=pb.Asset(id=asset_id, status=pb.ASSET_STATUS_PENDING)
        ).SerializeToString()
        snapshot = pb.WatchAssetResponse(
            type=pb.WATCH_EVENT_TYPE_SNAPSHOT,
            asset=pb.Asset(id=asset_id, status=pb.ASSET_STATUS_PENDING),
        ).SerializeToString()
        changed = pb.WatchAssetResponse(
            type=pb.WATCH_EVENT_TYPE_CHANGED,
            asset=pb.Asset(id=asset_id, status=pb.ASSET_STATUS_AVAILABLE),
        ).SerializeToString()
        trigger = [asyncio.Event()]

        async def create(request: bytes, _: Any) -> bytes:
            trigger[0] = asyncio.Event()
            return created

        async def watch(request: bytes, _: Any) -> AsyncIterator[bytes]:
            event = trigger[0]
            yield snapshot
            await event.wait()
            yield changed

        async def fire(request: bytes, _: Any) -> bytes:
            trigger[0].set()
            return b""

        return {
            "CreatePendingAsset": grpc.unary_unary_rpc_method_handler(create),
            "WatchAsset": grpc.unary_stream_rpc_method_handler(watch),
            "FulfillAsset": grpc.unary_unary_rpc_method_handler(fire),
        }

    if kind == "unary":
        # Answers each method with fixed bytes (the service's own answer, captured by the
        # bench), so both servers send the same response size.
        def answer(reply: bytes) -> Callable[[bytes, Any], Awaitable[bytes]]:
            async def handler(request: bytes, _: Any) -> bytes:
                return reply

            return handler

        return {
            method: grpc.unary_unary_rpc_method_handler(answer(reply))
            for method, reply in replies.items()
        }

    raise ValueError(f"unknown ceiling {kind!r}; one of {', '.join(KINDS)}")


async def serve(
    kind: str, max_streams: int, replies: dict[str, bytes], port: int = 0, shared: bool = False
) -> None:
    """`shared`: listen with SO_REUSEPORT, so that several ceilings on one `port` split its
    connections as the service's --workers do (the kernel spreads them)."""
    options = [*SERVER_OPTIONS, ("grpc.max_concurrent_streams", max_streams)]
    if shared:
        options = [o for o in options if o[0] != "grpc.so_reuseport"] + [("grpc.so_reuseport", 1)]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, _handlers(kind, replies)),)
    )
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"port {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The parent closing our stdin also ends us, so no ceiling outlives a crashed bench.
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--max-streams", type=int, default=100)
    parser.add_argument(
        "--reply",
        action="append",
        default=[],
        metavar="METHOD=HEX",
        help="unary: the serialized answer for METHOD (e.g. GetAsset=0a24...)",
    )
    parser.add_argument(
        "--service-malloc",
        action="store_true",
        help="apply the service's malloc thresholds (asset_service/allocator.py) first: "
        "a bare server otherwise maps and faults in its 1 MiB buffers again per message",
    )
    parser.add_argument("--port", type=int, default=0, help="the port (default: any free one)")
    parser.add_argument(
        "--shared",
        action="store_true",
        help="listen with SO_REUSEPORT: several ceilings on one --port, like --workers",
    )
    args = parser.parse_args()
    if args.service_malloc:
        allocator.keep_chunk_buffers()
    replies = dict(item.split("=", 1) for item in args.reply)
    asyncio.run(
        serve(
            args.kind,
            args.max_streams,
            {m: bytes.fromhex(h) for m, h in replies.items()},
            args.port,
            args.shared,
        )
    )


if __name__ == "__main__":
    main()
