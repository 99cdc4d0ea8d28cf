"""Each group of rows: the service and its bare ceiling measured alternately, round by round."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from bench import _client as client
from bench._procs import (
    Ceiling,
)
from bench._report import Row, load1
from bench._seed import seed_inputs
from tests.serverproc import ServerProcess

MiB = client.MiB


@dataclass(frozen=True)
class Sizes:
    transfer_mib: int
    watchers: int
    calls: int
    small_store: int
    big_store: int
    latency_calls: int
    rounds: int
    max_streams: int
    server_args: tuple[str, ...] = ()  # more flags for every service process (--server-arg)

    @property
    def transfer(self) -> int:
        return self.transfer_mib * MiB


async def alternate(
    turn: int, service: Callable[[], Awaitable[float]], bare: Callable[[], Awaitable[float]]
) -> tuple[float, float]:
    """Both measurements, the order flipped every round so neither always runs second."""
    if turn % 2:
        b = await bare()
        return await service(), b
    s = await service()
    return s, await bare()


def server(root: Path, sizes: Sizes) -> ServerProcess:
    return ServerProcess(
        root / "data",
        f"sqlite:///{root / 'assets.db'}",
        extra_args=["--max-streams-per-connection", str(sizes.max_streams), *sizes.server_args],
    )


async def fanout_rows(svc: ServerProcess, sizes: Sizes) -> list[Row]:
    with Ceiling("fanout", sizes.max_streams) as bare:
        async with client.channel(svc.address) as s_ch, client.channel(bare.address) as b_ch:
            s_stub, b_stub = pb_grpc.AssetServiceStub(s_ch), pb_grpc.AssetServiceStub(b_ch)
            await client.fanout(s_stub, 10)
            await client.fanout(b_stub, 10)
            times = [
                await alternate(
                    turn,
                    lambda: client.fanout(s_stub, sizes.watchers),
                    lambda: client.fanout(b_stub, sizes.watchers),
                )
                for turn in range(sizes.rounds)
            ]
    s_t, b_t = [t[0] for t in times], [t[1] for t in times]
    return [
        Row(
            f"fan-out to {sizes.watchers} watchers",
            "≤1.2",
            [s / b for s, b in times],
            load1(),
            f"service {statistics.median(s_t) * 1e3:.1f} ms, "
            f"bare {statistics.median(b_t) * 1e3:.1f} ms (time ratio)",
            {"service_s": s_t, "bare_s": b_t},
        )
    ]


async def unary_rows(svc: ServerProcess, sizes: Sizes) -> list[Row]:
    """GetAsset at 1/16/64 in flight and CreatePendingAsset at 64 against a bare server that
    answers with the service's own serialized answers."""
    async with client.channel(svc.address) as s_ch:
        s_stub = pb_grpc.AssetServiceStub(s_ch)
        created = await s_stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label="bench", value=pb.Value(json='{"k": 1}'))
        )
        get = pb.GetAssetRequest(asset_id=created.asset.id)
        pending = pb.CreatePendingAssetRequest(
            task_id="bench", label="out.json", type=pb.ASSET_TYPE_VALUE
        )
        replies = {
            "GetAsset": (await s_stub.GetAsset(get)).SerializeToString(),
            "CreatePendingAsset": (await s_stub.CreatePendingAsset(pending)).SerializeToString(),
        }
        rows = []
        with Ceiling("unary", sizes.max_streams, replies) as bare:
            async with client.channel(bare.address) as b_ch:
                b_stub = pb_grpc.AssetServiceStub(b_ch)
                cases = [("GetAsset", "≥0.7", n) for n in (1, 16, 64)]
                cases.append(("CreatePendingAsset", "≥0.5", 64))
                for method, bar, in_flight in cases:
                    request = get if method == "GetAsset" else pending

                    def caller(
                        stub: pb_grpc.AssetServiceAsyncStub,
                        method: str = method,
                        request: object = request,
                        in_flight: int = in_flight,
                    ) -> Callable[[], Awaitable[float]]:
                        call = getattr(stub, method)
                        return lambda: client.closed_loop(
                            lambda: call(request), in_flight, sizes.calls
                        )

                    await caller(s_stub)()  # warm up both at this concurrency
                    await caller(b_stub)()
                    rates = [
                        await alternate(turn, caller(s_stub), caller(b_stub))
                        for turn in range(sizes.rounds)
                    ]
                    s_r, b_r = [r[0] for r in rates], [r[1] for r in rates]
                    rows.append(
                        Row(
                            f"{method} at {in_flight} in flight",
                            bar,
                            [s / b for s, b in rates],
                            load1(),
                            f"service {statistics.median(s_r):.0f}/s, "
                            f"bare {statistics.median(b_r):.0f}/s",
                            {"service_per_s": s_r, "bare_per_s": b_r},
                        )
                    )
    return rows


async def store_rows(tmp: Path, sizes: Sizes) -> list[Row]:
    """GetManifest over 1000 inputs against ListAssets(1000), then GetAsset/ListAssets latency
    on the same store multiplied from `small_store` to `big_store` assets."""
    from bench._scale import big_store_rows, seed_promises  # they import this module

    small_root, big_root = tmp / "small", tmp / "big"
    small = server(small_root, sizes).start()
    try:
        async with client.channel(small.address) as ch:
            stub = pb_grpc.AssetServiceStub(ch)
            files = min(500, sizes.small_store // 2)
            ids = await seed_inputs(stub, files, files)
            extra = sizes.small_store - len(ids)
            if extra > 0:
                ids += await seed_inputs(stub, 0, extra)
            await seed_promises(stub)  # leases for the sweep's row (bench/_scale.py)
            manifest = pb.GetManifestRequest(
                asset_mappings={f"in{i:04d}": asset_id for i, asset_id in enumerate(ids[:1000])}
            )
            listing = pb.ListAssetsRequest(page_size=1000)
            await stub.GetManifest(manifest)
            await stub.ListAssets(listing)
            times = [
                await alternate(
                    turn,
                    lambda: client.timed(lambda: stub.GetManifest(manifest)),
                    lambda: client.timed(lambda: stub.ListAssets(listing)),
                )
                for turn in range(sizes.rounds)
            ]
            # The same, but every VALUE content new to the server (first use: its shared
            # file is created); the values are made untimed before each round.
            fresh_times = []
            for turn in range(sizes.rounds):
                new = await seed_inputs(stub, 0, files, salt=f"round {turn}")
                fresh = pb.GetManifestRequest(
                    asset_mappings={
                        f"in{i:04d}": asset_id for i, asset_id in enumerate(ids[:files] + new)
                    }
                )

                async def first_use(request: pb.GetManifestRequest = fresh) -> float:
                    return await client.timed(lambda: stub.GetManifest(request))

                fresh_times.append(
                    await alternate(
                        turn, first_use, lambda: client.timed(lambda: stub.ListAssets(listing))
                    )
                )
    finally:
        small.stop()
    m_t, l_t = [t[0] for t in times], [t[1] for t in times]
    f_t = [t[0] for t in fresh_times]
    rows = [
        Row(
            f"GetManifest {len(manifest.asset_mappings)} inputs",
            "≤3",
            [m / li for m, li in times],
            load1(),
            f"GetManifest {statistics.median(m_t) * 1e3:.1f} ms, "
            f"ListAssets(1000) {statistics.median(l_t) * 1e3:.1f} ms (time ratio)",
            {"manifest_s": m_t, "list_s": l_t},
        ),
        Row(
            f"GetManifest {len(manifest.asset_mappings)} inputs, VALUEs new",
            "",
            [m / li for m, li in fresh_times],
            load1(),
            f"info: each VALUE content used for the first time; GetManifest "
            f"{statistics.median(f_t) * 1e3:.1f} ms (time ratio to ListAssets(1000))",
            {"manifest_s": f_t, "list_s": [t[1] for t in fresh_times]},
        ),
    ]

    return rows + await big_store_rows(small_root, big_root, ids, sizes)


async def guarded(names: list[str], group: Awaitable[list[Row]]) -> list[Row]:
    """A group that fails (the service is being changed under us) leaves ERROR rows and lets
    the other groups run."""
    try:
        return await group
    except Exception as exc:  # reported in the table; the run goes on
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        await asyncio.sleep(0)
        return [Row(name, "≥0", error=message) for name in names]
