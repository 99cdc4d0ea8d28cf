"""FulfillAsset latency with N selector watchers in another process, and with none.

`python -m bench._watchers ADDRESS TASK N` is that other process: it opens N selector
watches on TASK, creates a marker promise, prints "ready" once every watch has it, then
"seen REV" each time every watch has the change at REV. The writer's latency is measured
by the bench process alone, so the watchers' work never shares its event loop.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import Counter

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from bench import _client as client
from bench._report import Row, load1

FULFILS_PER_ROUND = 10
STEP_TIMEOUT = 60.0
SETTLE_SECONDS = 0.15


async def _hold(address: str, task: str, watchers: int) -> None:
    async with client.channel(address) as ch:
        stub = pb_grpc.AssetServiceStub(ch)
        start = (await stub.ListAssets(pb.ListAssetsRequest(page_size=1))).revision
        request = pb.WatchAssetRequest(
            selector=pb.AssetSelector(task_id=task), after_revision=start
        )
        counts: Counter[int] = Counter()
        complete: set[int] = set()
        progress = asyncio.Event()

        async def watch() -> None:
            async for event in stub.WatchAsset(request):
                counts[event.revision] += 1
                if counts[event.revision] == watchers:
                    del counts[event.revision]
                    complete.add(event.revision)
                    progress.set()
                    print(f"seen {event.revision}", flush=True)

        tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
        made = await stub.CreatePendingAsset(
            pb.CreatePendingAssetRequest(task_id=task, label="marker", type=pb.ASSET_TYPE_VALUE)
        )
        deadline = time.monotonic() + STEP_TIMEOUT
        while made.asset.revision not in complete:
            progress.clear()
            await asyncio.wait_for(progress.wait(), max(0.0, deadline - time.monotonic()))
        print("ready", flush=True)
        await asyncio.gather(*tasks)


class Watchers:
    """The watcher process: start, wait for a revision to reach every watch, stop."""

    def __init__(self, address: str, task: str, count: int) -> None:
        self.args = (address, task, str(count))
        self.proc: asyncio.subprocess.Process | None = None
        self.seen: set[int] = set()

    async def __aenter__(self) -> Watchers:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._watchers", *self.args, stdout=asyncio.subprocess.PIPE
        )
        while await self._line() != "ready":
            pass
        return self

    async def _line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), STEP_TIMEOUT)
        if not raw:
            raise RuntimeError(f"the watcher process ended ({await self.proc.wait()})")
        line = raw.decode().strip()
        if line.startswith("seen "):
            self.seen.add(int(line.split()[1]))
        return line

    async def reached(self, revision: int) -> None:
        while revision not in self.seen:
            await self._line()

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _fulfils(
    stub: pb_grpc.AssetServiceAsyncStub, task: str, watchers: Watchers | None
) -> float:
    """The median seconds of FULFILS_PER_ROUND FulfillAsset calls, each on a new promise,
    each after the previous change reached every watcher and the server settled (no
    fan-out overlaps the call: what is measured is the fan-out the call itself causes)."""
    took = []
    for i in range(FULFILS_PER_ROUND):
        made = await stub.CreatePendingAsset(
            pb.CreatePendingAssetRequest(task_id=task, label=f"o{i}", type=pb.ASSET_TYPE_VALUE)
        )
        if watchers is not None:
            await watchers.reached(made.asset.revision)
        # The server finishes each watcher's write after the watcher has its event: let it,
        # so the measured call meets watchers that wait (with none, the same pause).
        await asyncio.sleep(SETTLE_SECONDS)
        request = pb.FulfillAssetRequest(asset_id=made.asset.id, value=pb.Value(text="x"))
        started = time.perf_counter()
        done = await stub.FulfillAsset(request)
        took.append(time.perf_counter() - started)
        if watchers is not None:
            await watchers.reached(done.asset.revision)
    return statistics.median(took)


async def fulfil_latency_row(address: str, watchers: int, rounds: int) -> Row:
    """FulfillAsset latency with `watchers` selector watches on the asset's task / with none;
    the order flipped every round."""
    task = "bench-fulfil"
    pairs: list[tuple[float, float]] = []
    async with client.channel(address) as ch:
        stub = pb_grpc.AssetServiceStub(ch)
        await _fulfils(stub, task, None)  # warm up
        for turn in range(rounds):
            if turn % 2:
                alone = await _fulfils(stub, task, None)
            async with Watchers(address, task, watchers) as held:
                crowded = await _fulfils(stub, task, held)
            if not turn % 2:
                alone = await _fulfils(stub, task, None)
            pairs.append((crowded, alone))
    c_t, a_t = [p[0] for p in pairs], [p[1] for p in pairs]
    return Row(
        f"FulfillAsset latency, {watchers} watchers / none",
        "≤1.5",
        [c / a for c, a in pairs],
        load1(),
        f"with {watchers} selector watchers {statistics.median(c_t) * 1e3:.2f} ms, with none "
        f"{statistics.median(a_t) * 1e3:.2f} ms (median of {FULFILS_PER_ROUND} per round; "
        "the watchers in another process)",
        {"crowded_s": c_t, "alone_s": a_t},
    )


if __name__ == "__main__":
    asyncio.run(_hold(sys.argv[1], sys.argv[2], int(sys.argv[3])))
