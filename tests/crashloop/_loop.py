"""The loop: start, load, SIGKILL at a random moment, restart on the same root, audit; repeat."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.crashloop._audit import Audit
from tests.crashloop._load import Load
from tests.crashloop._model import (
    CALL_TIMEOUT,
    PENDING,
    CrashLoopConfig,
    Known,
    Ledger,
    MiB,
    Op,
    Report,
    Violation,
)
from tests.crashloop._storage import connect, list_all
from tests.serverproc import ServerProcess
from tests.worker_procs import peers, wait_for_workers, workers_of

# The audit reads every byte back after each kill: keep the store about this small.
KEEP_ASSETS = 40
KEEP_BYTES = 32 * MiB
# Promises kept in stock so that fulfills and fails always have a target.
STOCK = ((pb.ASSET_TYPE_FILE, 6), (pb.ASSET_TYPE_VALUE, 3))
# Every other kill is aimed: after its random delay it waits (this long at most) for a path
# fulfil or move to be in flight, then up to AIM_JITTER more, so it lands inside one. Moves
# are what a crash can destroy and take milliseconds: left to chance, a run of six kills
# caught none about one time in seven. The other kills stay where the delay puts them.
AIM_WAIT = 5.0
AIM_JITTER = 0.004


class CrashLoop:
    """Runs the loop; `run()` returns a Report or raises Violation (unless keep_going)."""

    def __init__(self, config: CrashLoopConfig) -> None:
        self.cfg = config
        # Orphan grace 0: start-up removes every unreferenced stored file, so any file
        # left after a restart is a leak the audit can name.
        self.server = ServerProcess(
            config.root,
            config.database_url,
            import_roots=[config.import_root],
            extra_args=["--orphan-grace", "0", *config.extra_args],
            env=config.env,
        )
        self.report = Report(seed=config.seed)
        self._workers = 0  # kill_worker: how many the supervisor runs
        self._killed_at = 0.0
        self.ledger = Ledger(self.report)
        self.load = Load(self.ledger, config)

    def _say(self, text: str) -> None:
        if self.cfg.progress is not None:
            self.cfg.progress(text)

    async def run(self) -> Report:
        started = time.monotonic()
        self.cfg.import_root.mkdir(parents=True, exist_ok=True)
        self.server.start()
        try:
            for iteration in range(1, self.cfg.kills + 1):
                if self.cfg.minutes and time.monotonic() - started > self.cfg.minutes * 60:
                    break
                await self._iteration(iteration)
        finally:
            self.server.stop()
            self.report.seconds = time.monotonic() - started
        return self.report

    async def _iteration(self, iteration: int) -> None:
        rng = random.Random(f"{self.cfg.seed}/{iteration}")
        delay = rng.uniform(0.0, self.cfg.max_kill_delay)
        where = f"crash loop seed={self.cfg.seed} iteration={iteration}"
        ledger, load = self.ledger, self.load
        ledger.new_iteration()
        load.killed.clear()
        async with connect(self.server.address) as stub:
            await self._prepare(stub, rng)
            clients = [
                asyncio.create_task(
                    load.client(stub, random.Random(f"{self.cfg.seed}/{iteration}/{c}"))
                )
                for c in range(self.cfg.clients)
            ]
            await asyncio.sleep(delay)
            aimed = await self._aim(rng) if iteration % 2 == 0 else ""
            load.killed.set()  # no new op starts: everything unanswered is in doubt
            victim = self._kill(rng)
            self.report.kills += 1
            await asyncio.wait_for(asyncio.gather(*clients), CALL_TIMEOUT)
        if self.cfg.after_kill is not None:
            await asyncio.to_thread(self.cfg.after_kill)
        in_doubt = sorted(op.kind for op in ledger.ops if op.acked is None)
        self._say(
            f"iteration {iteration}: killed {delay:.3f}s into the load{aimed}, "
            f"{len(ledger.ops)} ops, "
            f"{len(in_doubt)} in flight: {', '.join(in_doubt)}"
        )
        log_from = len(self.server.log)
        try:
            live = await self._restarted(victim)
        except (RuntimeError, TimeoutError) as exc:
            raise Violation(f"{where}: the server did not restart after the kill: {exc}") from exc
        async with connect(self.server.address) as stub:
            audit = Audit(
                load, self.server.root, live, self.cfg.storage_check, not self.cfg.kill_worker
            )
            await audit.run(stub)
        if not ledger.problems:
            return
        self.report.violations += [f"{where}: {p}" for p in ledger.problems]
        said = [
            line.rstrip()
            for line in self.server.log[log_from:]
            if "WARNING" in line or "ERROR" in line
        ]
        message = "\n  ".join(
            [
                f"{where} (SIGKILL {delay:.3f}s into the load) broke an invariant:",
                *ledger.problems,
                "the restarted server logged:",
                *said[-20:],
            ]
        )
        self._say(message)
        if not self.cfg.keep_going:
            raise Violation(message)
        async with connect(self.server.address) as stub:  # believe the server from now on
            ledger.known = {a.id: Known.of(a) for a in await list_all(stub)}

    async def _aim(self, rng: random.Random) -> str:
        """Wait for a path fulfil or move to be in flight, then a moment into it."""
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.load.moving.wait(), AIM_WAIT)
        except TimeoutError:
            return f" (aimed: no move started in {AIM_WAIT:.0f}s)"
        waited = time.monotonic() - started
        await asyncio.sleep(rng.uniform(0.0, AIM_JITTER))
        return f" (aimed at a move, +{waited:.3f}s)"

    def _kill(self, rng: random.Random) -> int:
        """SIGKILL the server, or one of its workers (kill_worker); the pid killed."""
        if not self.cfg.kill_worker:
            self.server.kill()
            return self.server.pid
        pids = workers_of(self.server.pid)
        self._workers = len(pids)
        # The load's channel is one connection, held by one worker: kill that one, so
        # every kill catches calls in flight (a kill of the idle worker would test little).
        loaded = [p for p in pids if peers(p, self.server.port)]
        victim = loaded[0] if len(loaded) == 1 else rng.choice(pids)
        self._say(f"workers {pids}, holding the load: {loaded}")
        os.kill(victim, signal.SIGKILL)
        self._killed_at = time.monotonic()
        return victim

    async def _restarted(self, victim: int) -> int | set[int]:
        """Start the server again, or wait for the supervisor to replace the killed
        worker and for the new one to serve; the live pid(s) serving."""
        if not self.cfg.kill_worker:
            self.server.start()
            workers = workers_of(self.server.pid)  # with --workers, they serve
            return set(workers) if workers else self.server.pid
        pids = await asyncio.to_thread(
            wait_for_workers, self.server.pid, self._workers, frozenset({victim}), CALL_TIMEOUT
        )
        deadline = time.monotonic() + CALL_TIMEOUT
        while not all(any(f"(pid {p}) serving" in line for line in self.server.log) for p in pids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers {pids} did not all serve in {CALL_TIMEOUT}s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(
            max(0.0, self._killed_at + self.cfg.settle_after_kill - time.monotonic())
        )
        return set(pids)

    async def _prepare(self, stub: pb_grpc.AssetServiceStub, rng: random.Random) -> None:
        """Keep the store small and promises in stock (not under test: no kill yet)."""
        known = self.ledger.known
        stored = sum(k.size for k in known.values())
        for asset_id in list(known):  # oldest acknowledged first
            if len(known) <= KEEP_ASSETS and stored <= KEEP_BYTES:
                break
            stored -= known[asset_id].size
            op = Op(self.ledger.next(), "delete", target=asset_id, chore=True)
            await self.load.execute(stub, op)
        for type_, want in STOCK:
            have = sum(1 for k in known.values() if k.status == PENDING and k.type == type_)
            for _ in range(want - have):
                op = self.load.create_pending(rng, type_)
                op.chore = True
                await self.load.execute(stub, op)
