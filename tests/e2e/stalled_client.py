"""A client process that opens streams and never reads them: `python -m tests.e2e.stalled_client`.

Prints READY once the server has answered every stream's first message (so each server
handler is running, blocked on this client), then sleeps until killed.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.api.wire import MAX_MESSAGE_BYTES


async def main(args: argparse.Namespace) -> None:
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
    # Fixed flow-control windows (no BDP probing): what the transport takes in without the
    # application reading stays small, so every stream's server write blocks early and the
    # same way on every run.
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(args.address, options=options) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        calls: list[Any] = [
            stub.ReadAsset(pb.ReadAssetRequest(asset_id=args.read), metadata=metadata)
            for _ in range(args.reads)
        ]
        calls += [
            stub.WatchAsset(
                pb.WatchAssetRequest(asset_ids=[args.watch], follow=True), metadata=metadata
            )
            for _ in range(args.watches)
        ]
        # Initial metadata comes with a stream's first message: its handler is running.
        await asyncio.gather(*(call.wait_for_connection() for call in calls))
        print("READY", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--read", default="", help="asset id to open ReadAsset streams of")
    parser.add_argument("--reads", type=int, default=0)
    parser.add_argument("--watch", default="", help="asset id to watch (follow)")
    parser.add_argument("--watches", type=int, default=0)
    parser.add_argument("--token", default="")
    asyncio.run(main(parser.parse_args()))
