"""Reuse rows (issue 24): a get-or-create hit, and an upload of bytes already stored."""

from __future__ import annotations

import statistics
import time

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from bench import _client as client
from bench._procs import wait_quiet
from bench._report import Row, load1
from bench._rows import Sizes
from tests.serverproc import ServerProcess


async def _known_upload(stub: pb_grpc.AssetServiceAsyncStub, payload: client.Payload) -> str:
    """One UploadAsset of bytes the server stores: the header alone (reuse_stored_bytes)."""
    header = pb.UploadHeader(
        label="bench-known.bin",
        expected_size_bytes=payload.size,
        expected_sha256=payload.sha256,
        reuse_stored_bytes=True,
    )
    response = await stub.UploadAsset(iter([pb.UploadAssetRequest(header=header)]))
    return str(response.asset.id)


async def reuse_rows(svc: ServerProcess, sizes: Sizes) -> list[Row]:
    """GetOrCreatePendingAsset answering HIT (a FILE asset: its key's holder read, its file
    checked) against GetAsset of the same asset, one call at a time; and the upload of
    bytes the server already stores (no chunk sent; the server checks them and links them
    under the new key) against sending them, alternately."""
    size, mib = sizes.transfer, sizes.transfer_mib
    payload = client.Payload.make(size)
    rows = []
    async with client.channel(svc.address) as ch:
        stub = pb_grpc.AssetServiceStub(ch)
        key = "bench:hit"
        made = await stub.GetOrCreatePendingAsset(
            pb.GetOrCreatePendingAssetRequest(
                key=key, promise=pb.CreatePendingAssetRequest(task_id="bench", label="hit.bin")
            )
        )
        small = client.Payload.make(client.MiB)
        header = pb.UploadHeader(
            pending_asset_id=made.asset.id,
            expected_size_bytes=small.size,
            expected_sha256=small.sha256,
        )
        await stub.UploadAsset(
            iter([pb.UploadAssetRequest(header=header), pb.UploadAssetRequest(chunk=small.chunk)])
        )
        hit = pb.GetOrCreatePendingAssetRequest(
            key=key, promise=pb.CreatePendingAssetRequest(task_id="bench", label="hit.bin")
        )
        answer = await stub.GetOrCreatePendingAsset(hit)
        if answer.outcome != pb.GET_OR_CREATE_OUTCOME_HIT:
            raise RuntimeError(f"expected a HIT, got {answer.outcome}")
        get = pb.GetAssetRequest(asset_id=made.asset.id)
        ratios, hits, gets = [], [], []
        for _ in range(sizes.rounds):
            h = await client.median_latency(
                [lambda: stub.GetOrCreatePendingAsset(hit)] * sizes.latency_calls
            )
            g = await client.median_latency([lambda: stub.GetAsset(get)] * sizes.latency_calls)
            hits.append(h)
            gets.append(g)
            ratios.append(h / g)
        rows.append(
            Row(
                "get-or-create hit latency",
                "≤3",
                ratios,
                load1(),
                f"hit {statistics.median(hits) * 1e3:.2f} ms, "
                f"GetAsset {statistics.median(gets) * 1e3:.2f} ms",
                {"hit_s": hits, "get_s": gets},
            )
        )

        _, source = await client.upload(stub, payload)
        known: list[float] = []
        sent: list[float] = []
        for turn in range(sizes.rounds):
            order = ("known", "sent") if turn % 2 == 0 else ("sent", "known")
            for what in order:
                wait_quiet()
                start = time.perf_counter()
                if what == "known":
                    asset_id = await _known_upload(stub, payload)
                else:
                    _, asset_id = await client.upload(stub, payload)
                (known if what == "known" else sent).append(time.perf_counter() - start)
                await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset_id))
        await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=source))
        rows.append(
            Row(
                f"upload a known {mib} MiB file",
                "≤1",
                [k / s for k, s in zip(known, sent, strict=True)],
                load1(),
                f"known {statistics.median(known):.2f} s (0 chunks), "
                f"sent {statistics.median(sent):.2f} s",
                {"known_s": known, "sent_s": sent},
            )
        )
    return rows
