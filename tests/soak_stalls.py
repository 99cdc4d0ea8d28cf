"""The soak's second phase (scripts/soak): normal clients beside stalled watchers, silent
uploads and big values, while the server's RSS is watched; the limits end the stalled."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.crashloop import CHANNEL_OPTIONS, connect, list_all, read_back, storage_violations
from tests.serverproc import ServerProcess, database_url_for, drop_database_of

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
Stalled = tuple[grpc.aio.Channel, "grpc.aio.UnaryStreamCall[Any, Any]", str]
MiB = 1024 * 1024
CALL = 30.0  # deadline of every normal call: generous, a normal call is never slow
# The limits under test, when this server has them.
LIMITS = {
    "--upload-idle-timeout": "2",
    "--watch-buffer-bytes": "4MiB",
    "--watch-stall-timeout": "5",
    "--max-concurrent-uploads": "16",
}


@dataclass
class Stall:
    ops: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    slowest: float = 0.0

    def bad(self, text: str) -> None:
        print(f"VIOLATION: {text}", flush=True)
        self.violations.append(text)


def server_flags() -> set[str]:
    shown = subprocess.run(
        [sys.executable, "-m", "asset_service", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    return {word.rstrip(",") for word in shown.split() if word.startswith("--")}


async def normal(stall: Stall, what: str, call: Awaitable[T]) -> T | None:
    """One normal call; any error is a violation (normal clients must keep working)."""
    started = time.monotonic()
    try:
        result = await call
    except grpc.aio.AioRpcError as err:
        stall.bad(f"a normal client's {what} failed: {err.code().name}: {err.details()}")
        return None
    stall.slowest = max(stall.slowest, time.monotonic() - started)
    stall.ops[what] += 1
    return result


async def normal_client(
    stub: pb_grpc.AssetServiceStub, rng: random.Random, stall: Stall, until: float
) -> None:
    while time.monotonic() < until:
        kind = rng.choice(("upload", "value", "promise"))
        if kind == "upload":
            data = rng.randbytes(rng.randint(0, 2 * MiB))
            sha = hashlib.sha256(data).hexdigest()

            async def requests(
                data: bytes = data, sha: str = sha
            ) -> AsyncIterator[pb.UploadAssetRequest]:
                yield pb.UploadAssetRequest(
                    header=pb.UploadHeader(label="normal.bin", expected_sha256=sha)
                )
                for start in range(0, len(data), MiB):
                    yield pb.UploadAssetRequest(chunk=data[start : start + MiB])

            up = await normal(stall, "upload", stub.UploadAsset(requests(), timeout=CALL))
            if up is None:
                continue
            wrong = await read_back(stub, up.asset)
            if wrong:
                stall.bad(f"uploaded asset {up.asset.id}: {wrong}")
            stall.ops["read back"] += 1
            gone = pb.DeleteAssetRequest(asset_id=up.asset.id)
            await normal(stall, "delete", stub.DeleteAsset(gone, timeout=CALL))
        elif kind == "value":
            req = pb.CreateValueAssetRequest(label="note", value=pb.Value(text=f"{rng.random()}"))
            await normal(stall, "create value", stub.CreateValueAsset(req, timeout=CALL))
        else:
            ask = pb.CreatePendingAssetRequest(task_id="soak", label="p", type=pb.ASSET_TYPE_VALUE)
            promise = await normal(stall, "promise", stub.CreatePendingAsset(ask, timeout=CALL))
            if promise is None:
                continue
            fulfil = pb.FulfillAssetRequest(
                asset_id=promise.asset.id, value=pb.Value(json=f'{{"x": {rng.random()}}}')
            )
            await normal(stall, "fulfil value", stub.FulfillAsset(fulfil, timeout=CALL))


async def big_value_watcher(
    stub: pb_grpc.AssetServiceStub, rng: random.Random, stall: Stall, until: float
) -> None:
    """A well-behaved watcher: it must see each big VALUE arrive, whatever the others do."""
    while time.monotonic() < until:
        ask = pb.CreatePendingAssetRequest(task_id="soak", label="big", type=pb.ASSET_TYPE_VALUE)
        made = await normal(stall, "promise", stub.CreatePendingAsset(ask, timeout=CALL))
        if made is None:
            continue
        promise = made.asset

        async def watch(asset_id: str = promise.id) -> pb.Asset:
            req = pb.WatchAssetRequest(asset_ids=[asset_id])
            last = pb.Asset()
            async for event in stub.WatchAsset(req, timeout=CALL):
                last = event.asset
            return last

        watcher = asyncio.create_task(watch())
        value = pb.Value(data=rng.randbytes(rng.randint(MiB, 3 * MiB)))
        fulfil = pb.FulfillAssetRequest(asset_id=promise.id, value=value)
        if await normal(stall, "fulfil big value", stub.FulfillAsset(fulfil, timeout=CALL)) is None:
            watcher.cancel()
            continue
        try:
            seen = await watcher
        except grpc.aio.AioRpcError as err:
            stall.bad(
                f"a normal watcher of {promise.id} failed: {err.code().name}: {err.details()}"
            )
            continue
        if seen.status != pb.ASSET_STATUS_AVAILABLE or seen.value != value:
            stall.bad(f"a normal watcher of {promise.id} ended without its AVAILABLE value")
        else:
            stall.ops["watch big value"] += 1


async def stalled_watchers(
    address: str, stub: pb_grpc.AssetServiceStub, args: argparse.Namespace, stall: Stall
) -> tuple[list[Stalled], list[str]]:
    """Two watchers on their own connections: one reads the snapshot then stops, one never reads."""
    ids: list[str] = []
    for i in range(args.stall_values):
        ask = pb.CreatePendingAssetRequest(
            task_id="stall", label=f"big-{i}", type=pb.ASSET_TYPE_VALUE
        )
        made = await normal(stall, "promise", stub.CreatePendingAsset(ask, timeout=CALL))
        if made is not None:
            ids.append(made.asset.id)
    stalled: list[Stalled] = []
    for reads in (True, False):
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        call = pb_grpc.AssetServiceStub(channel).WatchAsset(
            pb.WatchAssetRequest(asset_ids=ids, follow=True)
        )
        if reads:
            for _ in ids:
                await call.read()
        name = "watcher that stopped after the snapshot" if reads else "watcher that never read"
        stalled.append((channel, call, name))
    return stalled, ids


async def silent_upload(address: str, with_chunk: bool, idle: float | None, stall: Stall) -> None:
    """Sends a header (and maybe a chunk), then nothing: the server must let it go."""
    name = "silent upload after a chunk" if with_chunk else "silent upload after the header"
    silence = asyncio.Event()  # set only once the call is over

    async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=pb.UploadHeader(label="silent.bin"))
        if with_chunk:
            yield pb.UploadAssetRequest(chunk=b"s" * 65536)
        await silence.wait()

    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        call = pb_grpc.AssetServiceStub(channel).UploadAsset(requests())
        started = time.monotonic()
        try:
            if idle is None:
                await asyncio.sleep(3600)  # cancelled at the end of the phase
                return
            limit = idle + 15
            await asyncio.wait_for(call, limit)
            stall.bad(f"{name}: the server accepted an upload that never finished")
        except TimeoutError:
            stall.bad(f"{name}: still open {limit:.0f}s later (--upload-idle-timeout {idle})")
        except grpc.aio.AioRpcError as err:
            took = time.monotonic() - started
            stall.notes.append(f"{name}: ended by the server after {took:.1f}s: {err.code().name}")
            stall.ops["silent upload ended by the server"] += 1
        finally:
            call.cancel()
            silence.set()  # lets the request generator, and grpc's task reading it, finish


async def stall_phase(args: argparse.Namespace, work: Path) -> Stall:
    stall = Stall()
    flags = server_flags()
    extra = ["--orphan-grace", "0"]
    for flag, value in LIMITS.items():
        if flag in flags:
            extra += [flag, value]
        else:
            stall.notes.append(f"this server has no {flag}: what it limits is not checked")
    idle = float(LIMITS["--upload-idle-timeout"]) if "--upload-idle-timeout" in flags else None
    stall_timeout = (
        float(LIMITS["--watch-stall-timeout"]) if "--watch-stall-timeout" in flags else None
    )
    (work / "stall").mkdir()
    url = database_url_for(work / "stall")
    server = ServerProcess(work / "stall" / "data", url, extra_args=extra).start()
    print(f"stall phase: server pid {server.pid} with {' '.join(extra)}", flush=True)
    rng = random.Random(args.seed)
    try:
        async with connect(server.address) as stub:
            warm = time.monotonic() + 2
            await asyncio.gather(
                normal_client(stub, random.Random(1), stall, warm),
                big_value_watcher(stub, random.Random(2), stall, warm),
            )
            stall.rss_before = stall.rss_peak = server.rss_bytes()
            until = time.monotonic() + args.stall_seconds
            done = asyncio.Event()

            async def sample() -> None:
                while not done.is_set():
                    stall.rss_peak = max(stall.rss_peak, server.rss_bytes())
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample())
            silent = [
                asyncio.create_task(silent_upload(server.address, chunk, idle, stall))
                for chunk in (False, True)
            ]
            stalled, ids = await stalled_watchers(server.address, stub, args, stall)

            async def producer() -> None:
                """Fulfils what the stalled watchers follow with big VALUEs, over the phase."""
                gap = args.stall_seconds / max(1, len(ids)) * 0.8
                for asset_id in ids:
                    value = pb.Value(data=rng.randbytes(int(args.value_mib * MiB)))
                    req = pb.FulfillAssetRequest(asset_id=asset_id, value=value)
                    call = stub.FulfillAsset(req, timeout=CALL)
                    await normal(stall, "fulfil a stalled-watched value", call)
                    await asyncio.sleep(gap)

            await asyncio.gather(
                producer(),
                *(normal_client(stub, random.Random(10 + i), stall, until) for i in range(3)),
                big_value_watcher(stub, random.Random(20), stall, until),
            )
            for channel, call, name in stalled:
                if stall_timeout is None:
                    call.cancel()
                else:
                    await _drain(call, name, stall_timeout, stall)
                await channel.close()
            if idle is None:
                for task in silent:
                    task.cancel()
            await asyncio.gather(*silent, return_exceptions=True)
            done.set()
            await sampler
            await asyncio.sleep(1)
            stall.rss_after = server.rss_bytes()
            growth = (stall.rss_peak - stall.rss_before) / MiB
            if growth > args.rss_budget_mib:
                stall.bad(
                    f"server RSS grew {growth:.0f} MiB over its warmed-up "
                    f"{stall.rss_before / MiB:.0f} MiB (budget {args.rss_budget_mib:.0f} MiB)"
                )
            files = await list_all(stub, type_=pb.ASSET_TYPE_FILE)
            for problem in storage_violations(server.root, files, server.pid):
                stall.bad(f"after the stall phase: {problem}")
            # What an orchestrator does first: list everything, default page size.
            await normal(stall, "list every asset", list_all(stub, page_size=0))
    finally:
        code = server.stop()
        drop_database_of(url)
        (work / "stall" / "server.log").write_text("".join(server.log))
        if stall.violations:
            errors = [line.rstrip() for line in server.log if " ERROR " in line]
            print("stall phase server errors:", *errors[-10:], sep="\n  ")
    if code != 0:
        stall.bad(f"the server did not stop cleanly on SIGTERM (exit code {code})")
    return stall


async def _drain(
    call: grpc.aio.UnaryStreamCall[Any, Any], name: str, stall_timeout: float, stall: Stall
) -> None:
    async def drain() -> None:
        while await call.read() is not grpc.aio.EOF:
            pass

    try:
        await asyncio.wait_for(drain(), stall_timeout + 15)
        stall.notes.append(f"{name}: the stream ended with OK")
    except TimeoutError:
        stall.bad(
            f"{name}: still served {stall_timeout + 15:.0f}s after it stopped reading "
            f"(--watch-stall-timeout {stall_timeout})"
        )
    except grpc.aio.AioRpcError as err:
        stall.notes.append(f"{name}: ended by the server with {err.code().name}")
        stall.ops["stalled watcher ended by the server"] += 1


# --- main ---------------------------------------------------------------------------------
