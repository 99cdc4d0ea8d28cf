"""The big store against the small one: GetAsset, ListAssets, a selector watch's start and
the lease sweep, each latency at (by default) 1M assets over the same at 1k."""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.store.sqlite import SqliteStore
from bench import _client as client
from bench._report import Row, load1
from bench._rows import Sizes, alternate, server
from bench._seed import multiply

# Promises in the small store, each with a day's lease: copied with it, a tenth of the big
# store is PENDING with a lease the sweep has to look past.
PROMISES = 100
LEASE_SECONDS = 86400
SWEEP_BATCH = 100  # what one pass of the sweep asks for (leases_run_out's limit)
WATCH_TASK = "bench-watch"  # no seeded record has it: the watch picks the bench's own
# The label and tag of the bench's own promises (no seeded record has either): a watch
# from revision 0 on one of them replays those promises, as the task's does.
WATCH_LABEL = WATCH_TAG = "bench-watch"


async def seed_promises(stub: pb_grpc.AssetServiceAsyncStub, count: int = PROMISES) -> None:
    for i in range(count):
        await stub.CreatePendingAsset(
            pb.CreatePendingAssetRequest(
                task_id=f"lease-{i % 10}",
                label=f"p{i}",
                type=pb.ASSET_TYPE_VALUE,
                lease_seconds=LEASE_SECONDS,
            )
        )


def _k(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n >= 1000 else str(n)


async def _watch_start(
    stub: pb_grpc.AssetServiceAsyncStub,
    after: int,
    selector: pb.AssetSelector | None = None,
) -> float:
    """Seconds from opening a selector watch (by default on WATCH_TASK) from `after` (below
    what the server's history holds: replayed from the store) until it has the change a
    promise just made. From 0, the replay is every change of the bench's promises (a few
    dozen), found through the index of the selector's task, label or tag."""
    made = await stub.CreatePendingAsset(
        pb.CreatePendingAssetRequest(
            task_id=WATCH_TASK, label=WATCH_LABEL, tags=[WATCH_TAG], type=pb.ASSET_TYPE_VALUE
        )
    )
    selector = selector or pb.AssetSelector(task_id=WATCH_TASK)
    request = pb.WatchAssetRequest(selector=selector, after_revision=after)
    started = time.perf_counter()
    call = stub.WatchAsset(request)
    try:
        async for event in call:
            if event.revision >= made.asset.revision:
                return time.perf_counter() - started
    finally:
        call.cancel()
    raise RuntimeError("the selector watch ended before the promise's change")


def _sweep_pass(store: SqliteStore, calls: int) -> Callable[[], Awaitable[float]]:
    """Passes of the lease sweep's query (the store's leases_run_out, a full batch due)."""
    later = datetime.now(UTC) + timedelta(seconds=2 * LEASE_SECONDS)  # every lease run out

    async def run() -> float:
        took = []
        for _ in range(calls):
            started = time.perf_counter()
            due = await store.leases_run_out(later, SWEEP_BATCH)
            took.append(time.perf_counter() - started)
            if len(due) != SWEEP_BATCH:
                raise RuntimeError(f"the sweep found {len(due)} leases run out, not {SWEEP_BATCH}")
        return statistics.median(took)

    return run


def _row(name: str, lat: list[tuple[float, float]], sizes: Sizes, total: int) -> Row:
    b_l, s_l = [t[0] for t in lat], [t[1] for t in lat]
    return Row(
        f"{name} latency {_k(total)} / {_k(sizes.small_store)}",
        "≤1.5",
        [b / s for b, s in lat],
        load1(),
        f"{_k(sizes.small_store)} {statistics.median(s_l) * 1e3:.2f} ms, "
        f"{_k(total)} {statistics.median(b_l) * 1e3:.2f} ms",
        {"big_s": b_l, "small_s": s_l, "big_store": total},
    )


async def big_store_rows(
    small_root: Path, big_root: Path, ids: list[str], sizes: Sizes
) -> list[Row]:
    """The small store (stopped) copied and multiplied to `sizes.big_store`; both served at
    once, each latency measured alternately on both."""
    shutil.copytree(small_root, big_root)
    started = time.monotonic()
    total = multiply(big_root / "assets.db", sizes.big_store)
    print(f"  (seeded {total} assets in {time.monotonic() - started:.0f} s)", flush=True)
    conn = sqlite3.connect(big_root / "assets.db")
    try:
        sample = [i for (i,) in conn.execute("SELECT id FROM assets ORDER BY random() LIMIT 500")]
    finally:
        conn.close()
    rows = []
    small = server(small_root, sizes).start()
    big = server(big_root, sizes).start()
    try:
        async with client.channel(small.address) as s_ch, client.channel(big.address) as b_ch:
            stubs = pb_grpc.AssetServiceStub(s_ch), pb_grpc.AssetServiceStub(b_ch)
            # Below each history's floor (the revision at its start): the store replays.
            floors = [
                (await stub.ListAssets(pb.ListAssetsRequest(page_size=1))).revision - 1
                for stub in stubs
            ]
            id_sets = ids, sample
            n = sizes.latency_calls

            def gets(which: int) -> Callable[[], Awaitable[float]]:
                stub, pool = stubs[which], id_sets[which]
                requests = [pb.GetAssetRequest(asset_id=pool[i % len(pool)]) for i in range(n)]

                def get(request: pb.GetAssetRequest) -> Callable[[], Awaitable[object]]:
                    return lambda: stub.GetAsset(request)

                return lambda: client.median_latency([get(r) for r in requests])

            def lists(which: int) -> Callable[[], Awaitable[float]]:
                stub = stubs[which]
                request = pb.ListAssetsRequest(page_size=100)
                return lambda: client.median_latency(
                    [lambda: stub.ListAssets(request) for _ in range(max(10, n // 4))]
                )

            def watches(which: int) -> Callable[[], Awaitable[float]]:
                stub, after = stubs[which], floors[which]

                async def run() -> float:
                    return statistics.median([await _watch_start(stub, after) for _ in range(10)])

                return run

            def from_zero(
                selector: pb.AssetSelector,
            ) -> Callable[[int], Callable[[], Awaitable[float]]]:
                def make(which: int) -> Callable[[], Awaitable[float]]:
                    stub = stubs[which]

                    async def run() -> float:
                        took = [await _watch_start(stub, 0, selector) for _ in range(5)]
                        return statistics.median(took)

                    return run

                return make

            for name, make in (
                ("GetAsset", gets),
                ("ListAssets(100)", lists),
                ("selector watch start", watches),
                (
                    "selector watch from revision 0",
                    from_zero(pb.AssetSelector(task_id=WATCH_TASK)),
                ),
                (
                    "label selector watch from revision 0",
                    from_zero(pb.AssetSelector(label=WATCH_LABEL)),
                ),
                (
                    "tag selector watch from revision 0",
                    from_zero(pb.AssetSelector(tags=[WATCH_TAG])),
                ),
            ):
                await make(0)()
                await make(1)()
                # `alternate` puts its first argument first on even rounds: the big store.
                lat = [await alternate(turn, make(1), make(0)) for turn in range(sizes.rounds)]
                rows.append(_row(name, lat, sizes, total))
    finally:
        big.stop()
        small.stop()
    # The sweep's query on each store, in this process, the servers stopped.
    stores = [SqliteStore(root / "assets.db", reserve_bytes=0) for root in (small_root, big_root)]
    try:
        for store in stores:
            await store.open()
        passes = [_sweep_pass(store, 50) for store in stores]
        for run in passes:
            await run()
        lat = [await alternate(turn, passes[1], passes[0]) for turn in range(sizes.rounds)]
        rows.append(_row(f"lease sweep pass ({SWEEP_BATCH} due)", lat, sizes, total))
    finally:
        for store in stores:
            await store.close()
    return rows
