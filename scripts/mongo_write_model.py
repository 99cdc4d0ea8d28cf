"""Writes/s of the MongoDB group writer against a modelled replica set with a given RTT.

Issue 21 item 5: one revision counter orders every write of the deployment, so the time a
transaction holds it caps the deployment. This runs P real MongoStores (P server
processes, one event loop) against the fake replica set of tests/unit/mongo_fake, where
every command costs one round trip (--rtt-ms) and a majority commit one more
(replication), and a transaction that writes the counter while another holds it gets a
WriteConflict at once (MongoDB's documented rule). Each process has --clients callers in
a closed loop (insert, then fail it: two writes). It prints writes/s for the deployment,
per process (fairness: the slowest process's share of the fastest's, and Jain's index),
median and 99th-percentile latency (modelled time), transactions and conflicts.

  .venv/bin/python scripts/mongo_write_model.py                      # RTT 0.3 and 1 ms; 1, 4, 8
  .venv/bin/python scripts/mongo_write_model.py --rtt-ms 1 --processes 8 --seconds 10

A model, not MongoDB: server-side CPU, disk and lock waits are not in it. Time is the
modelled clock (VirtualTimeLoop: round trips take time, this process's CPU takes none),
so the numbers are the protocol's; --wall-clock runs in real time instead, where all the
"processes" share this one Python process's CPU (the table prints the CPU used per wall
second). Numbers: docs/mongodb.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pymongo.asynchronous.client_session import AsyncClientSession

from asset_service.domain.errors import AssetError
from asset_service.domain.models import (
    Asset,
    AssetType,
    Failure,
    Status,
    new_asset_id,
)
from asset_service.store.mongo import MongoStore
from tests.unit.mongo_fake import Server, attach
from tests.unit.test_mongo_writes import NOW, closed_port


@dataclass
class Result:
    rtt_ms: float
    processes: int
    clients: int
    seconds: float
    writes_per_second: float
    per_process: list[float]
    slowest_share: float
    jain: float
    p50_ms: float
    p99_ms: float
    transactions: int
    conflicts: int
    errors: int
    cpu_per_second: float


def asset() -> Asset:
    return Asset(
        id=new_asset_id(),
        label="model",
        status=Status.PENDING,
        type=AssetType.FILE,
        media_type="application/octet-stream",
        created_at=NOW,
        updated_at=NOW,
    )


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever nothing is ready: every
    modelled round trip (an asyncio.sleep) takes its time on this clock and none on the
    wall, and the CPU this process spends takes none on this clock. What is measured is
    then the protocol (round trips, conflicts, back-offs), not Python's speed."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if not self._ready and scheduled:  # type: ignore[attr-defined]
            self._now = max(self._now, scheduled[0]._when)
        super()._run_once()  # type: ignore[misc]


async def client(store: MongoStore, until: float, done: list[int], lat: list[float]) -> int:
    loop = asyncio.get_running_loop()
    errors = 0
    while loop.time() < until:
        start = loop.time()
        try:
            made = await store.insert(asset())
            done[0] += 1
            lat.append(loop.time() - start)
            start = loop.time()
            await store.transition(made.id, Status.PENDING, Failure("model"), NOW)
            done[0] += 1
            lat.append(loop.time() - start)
        except AssetError:
            errors += 1
    return errors


CURRENT: list[Server] = []  # the server of the configuration being run


async def run(rtt_ms: float, processes: int, clients: int, seconds: float) -> Result:
    server = Server(rtt=rtt_ms / 1000)
    CURRENT[:] = [server]
    server.record = False
    server.unique = {}  # the counter makes revisions unique; no index scan per insert
    server.put("counters", {"_id": "revision", "value": 0})
    stores = []
    for _ in range(processes):
        store = MongoStore(
            f"mongodb://127.0.0.1:{closed_port()}/db?serverSelectionTimeoutMS=100",
            operation_timeout=15.0,
        )
        stores.append(attach(store, server))
    counts = [[0] for _ in stores]
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    start = loop.time()
    until = start + seconds
    errors = await asyncio.gather(
        *(
            client(store, until, counts[i], latencies)
            for i, store in enumerate(stores)
            for _ in range(clients)
        )
    )
    took = loop.time() - start
    wall = time.monotonic() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    transactions = sum(s._writer.transactions for s in stores)
    for store in stores:
        await store.close()
    per = [c[0] / took for c in counts]
    total = sum(per)
    jain = total**2 / (len(per) * sum(x * x for x in per)) if total else 0.0
    latencies.sort()
    cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / wall
    return Result(
        rtt_ms=rtt_ms,
        processes=processes,
        clients=clients,
        seconds=round(took, 2),
        writes_per_second=round(total),
        per_process=[round(x) for x in per],
        slowest_share=round(min(per) / max(per), 2) if max(per) else 0.0,
        jain=round(jain, 3),
        p50_ms=round(1000 * statistics.median(latencies), 1) if latencies else 0.0,
        p99_ms=round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else 0.0,
        transactions=transactions,
        conflicts=server.conflicts,
        errors=sum(errors),
        cpu_per_second=round(cpu, 2),
    )


async def main(args: argparse.Namespace) -> list[Result]:
    results = []
    print(
        f"{'RTT ms':>6} {'procs':>5} {'writes/s':>9} {'slowest/fastest':>15} {'Jain':>5} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'txns':>6} {'conflicts':>9} {'errors':>6} {'CPU/s':>5}"
    )
    for rtt in args.rtt_ms:
        for processes in args.processes:
            r = await run(rtt, processes, args.clients, args.seconds)
            results.append(r)
            print(
                f"{r.rtt_ms:>6g} {r.processes:>5} {r.writes_per_second:>9} "
                f"{r.slowest_share:>15} {r.jain:>5} {r.p50_ms:>7} {r.p99_ms:>7} "
                f"{r.transactions:>6} {r.conflicts:>9} {r.errors:>6} {r.cpu_per_second:>5}",
                flush=True,
            )
    return results


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rtt-ms",
        type=float,
        nargs="+",
        default=[0.3, 1.0],
        help="round-trip times to model, in ms (default 0.3 1)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1, 4, 8],
        help="server processes sharing the replica set (default 1 4 8)",
    )
    parser.add_argument("--clients", type=int, default=64, help="callers per process")
    parser.add_argument("--seconds", type=float, default=5.0, help="per configuration")
    parser.add_argument("--json", type=Path, help="write every result here too")
    parser.add_argument(
        "--wall-clock",
        action="store_true",
        help="real time instead of the modelled clock (this process's CPU then counts)",
    )
    return parser.parse_args(argv)


async def finish(session: AsyncClientSession, command_name: str) -> dict[str, Any]:
    """commitTransaction / abortTransaction reach the configuration's fake server."""
    return await CURRENT[0].finish(session, command_name)


if __name__ == "__main__":
    arguments = parse()
    with mock.patch.object(AsyncClientSession, "_finish_transaction_with_retry", finish):
        factory = asyncio.SelectorEventLoop if arguments.wall_clock else VirtualTimeLoop
        with asyncio.Runner(loop_factory=factory) as runner:
            found = runner.run(main(arguments))
    if arguments.json:
        arguments.json.write_text(json.dumps([asdict(r) for r in found], indent=1))
