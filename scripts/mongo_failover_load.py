"""Two asset-service processes under load while the MongoDB replica set fails over; checks.

Not runnable on the development machine (no MongoDB there): written for the first run on
a real replica set of three or more members (docs/mongodb.md, "First run on a replica
set", the last case). It starts two server processes on a fresh database of
MONGODB_URI's replica set, drives --clients callers against each (promise, fulfil with a
value; every fifth an upload), watches every change with a selector from the second
process, makes the primary step down (replSetStepDown) at --step-down-at seconds, and
stops the load at --seconds. After the servers have settled what the failover left
unknown, it checks, reading at majority:

1. every acknowledged write is in the database (an acknowledged fulfil: AVAILABLE at the
   acknowledged revision) - nothing a client was told succeeded was rolled back;
2. acknowledged revisions are unique;
3. the watcher saw every acknowledged fulfil, and revisions only ever grew on its stream;
4. no stored file lacks a record, and no AVAILABLE upload lacks its file (after settle);
5. writes that failed (UNAVAILABLE, unknown outcome) are counted, and each is settled
   one way or the other (its promise AVAILABLE, or still PENDING).

It prints the counts, the longest stretch without a successful write (the failover's
cost), and exits 0 when every check holds, 1 naming those that failed, 2 when it cannot
run (fewer than three members, no privilege to step down).

  MONGODB_URI='mongodb://h1,h2,h3/?replicaSet=rs0' .venv/bin/python scripts/mongo_failover_load.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
from pymongo import MongoClient
from pymongo.errors import AutoReconnect, OperationFailure
from pymongo.read_concern import ReadConcern

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess


@dataclass
class Op:
    kind: str
    server: int
    asset_id: str
    start: float
    end: float
    code: str
    revision: int = 0


@dataclass
class Run:
    tag: str
    ops: list[Op] = field(default_factory=list)
    events: list[tuple[int, str, int]] = field(default_factory=list)  # revision, id, status
    watch_errors: list[str] = field(default_factory=list)
    stepped_down_at: float | None = None


async def call(run: Run, kind: str, server: int, asset_id: str, coro: Any) -> Any:
    start = time.monotonic()
    try:
        reply = await coro
    except grpc.aio.AioRpcError as exc:
        run.ops.append(Op(kind, server, asset_id, start, time.monotonic(), exc.code().name))
        return None
    asset = getattr(reply, "asset", None)
    run.ops.append(
        Op(
            kind,
            server,
            asset.id if asset is not None else asset_id,
            start,
            time.monotonic(),
            "OK",
            asset.revision if asset is not None else 0,
        )
    )
    return reply


async def client(run: Run, stub: pb_grpc.AssetServiceStub, server: int, until: float) -> None:
    n = 0
    while time.monotonic() < until:
        n += 1
        if n % 5 == 0:
            data = os.urandom(4096)

            async def chunks(data: bytes = data) -> AsyncIterator[pb.UploadAssetRequest]:
                yield pb.UploadAssetRequest(
                    header=pb.UploadHeader(label="load.bin", tags=[run.tag])
                )
                yield pb.UploadAssetRequest(chunk=data)

            upload = stub.UploadAsset(chunks(), timeout=30)  # type: ignore[arg-type]
            await call(run, "upload", server, "", upload)
            continue
        made = await call(
            run,
            "create",
            server,
            "",
            stub.CreatePendingAsset(
                pb.CreatePendingAssetRequest(
                    task_id=f"failover-{server}",
                    label="v",
                    type=pb.ASSET_TYPE_VALUE,
                    tags=[run.tag],
                ),
                timeout=30,
            ),
        )
        if made is None:
            await asyncio.sleep(0.1)
            continue
        asset_id = made.asset.id
        await call(
            run,
            "fulfil",
            server,
            asset_id,
            stub.FulfillAsset(
                pb.FulfillAssetRequest(asset_id=asset_id, value=pb.Value(text=f"v{n}")),
                timeout=30,
            ),
        )


async def watcher(run: Run, stub: pb_grpc.AssetServiceStub, done: asyncio.Event) -> None:
    after = 0
    while not done.is_set():
        stream = stub.WatchAsset(
            pb.WatchAssetRequest(
                selector=pb.AssetSelector(tags=[run.tag]), after_revision=after, follow=True
            )
        )
        try:
            async for event in stream:  # type: ignore[attr-defined]
                run.events.append((event.revision, event.asset.id, event.asset.status))
                after = max(after, event.revision)
        except grpc.aio.AioRpcError as exc:
            run.watch_errors.append(f"{exc.code().name}: {exc.details()}")
            await asyncio.sleep(0.5)


def step_down(uri: str) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=10000)
    try:
        client.admin.command("replSetStepDown", 30)
    except AutoReconnect:
        pass  # the primary closes its connections as it steps down: expected
    finally:
        client.close()


def members(uri: str) -> int:
    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=10000)
    try:
        hello = client.admin.command("hello")
        return len(hello.get("hosts", [])) + len(hello.get("passives", []))
    finally:
        client.close()


def check(run: Run, database_url: str, roots: list[Path]) -> list[str]:
    """What does not hold, read at majority once everything settled."""
    failures: list[str] = []
    client: MongoClient[dict[str, object]] = MongoClient(database_url)
    try:
        db = client.get_default_database()
        assets = db.get_collection("assets", read_concern=ReadConcern("majority"))
        records = {str(d["_id"]): d for d in assets.find({"tags": run.tag})}
    finally:
        client.close()
    acked = [op for op in run.ops if op.code == "OK"]
    revisions = [op.revision for op in acked]
    if len(revisions) != len(set(revisions)):
        failures.append("2: an acknowledged revision was handed out twice")
    for op in acked:
        record = records.get(op.asset_id)
        if record is None:
            failures.append(f"1: acknowledged {op.kind} of {op.asset_id} is not in the database")
        elif op.kind in ("fulfil", "upload") and (
            record.get("status") != "AVAILABLE" or record.get("revision") != op.revision
        ):
            failures.append(f"1: acknowledged {op.kind} of {op.asset_id} became {record}")
    seen = {(asset_id, revision) for revision, asset_id, _ in run.events}
    for op in acked:
        if op.kind == "fulfil" and (op.asset_id, op.revision) not in seen:
            failures.append(f"3: the watcher never saw {op.asset_id} at revision {op.revision}")
    stream = [revision for revision, _, _ in run.events]
    if any(b <= a for a, b in itertools.pairwise(stream)):
        failures.append("3: revisions went backwards (or repeated) on the watch stream")
    for root in roots:
        for path in (root / "uploads").glob("*/*/*"):
            record = records.get(path.parent.name)
            if record is None or record.get("storage_path") != str(path):
                failures.append(f"4: stored file {path} has no record pointing at it")
    for record in records.values():
        stored = str(record.get("storage_path") or "")
        if record.get("status") == "AVAILABLE" and stored and not Path(stored).exists():
            failures.append(f"4: {record['_id']} is AVAILABLE but {stored} is gone")
    for op in run.ops:
        if op.code != "OK" and op.kind == "fulfil":
            state = records.get(op.asset_id, {}).get("status")
            if state not in ("AVAILABLE", "PENDING"):
                failures.append(f"5: failed fulfil of {op.asset_id} left it {state}")
    return failures


def report(run: Run) -> None:
    codes: dict[str, int] = {}
    for op in run.ops:
        codes[f"{op.kind} {op.code}"] = codes.get(f"{op.kind} {op.code}", 0) + 1
    for key in sorted(codes):
        print(f"  {key}: {codes[key]}")
    done = sorted(op.end for op in run.ops if op.code == "OK")
    gaps = [b - a for a, b in itertools.pairwise(done)]
    print(f"  longest stretch without a successful write: {max(gaps, default=0):.2f}s")
    print(f"  watch events: {len(run.events)}; watch errors: {len(run.watch_errors)}")
    for error in run.watch_errors[:5]:
        print(f"    {error}")


async def main(args: argparse.Namespace) -> int:
    uri = os.environ.get("MONGODB_URI", "")
    if not uri:
        print("MONGODB_URI is not set (a replica set of 3+ members)", file=sys.stderr)
        return 2
    if members(uri) < 3:
        print("a failover needs a replica set of 3 or more members", file=sys.stderr)
        return 2
    name = f"asset_failover_{uuid.uuid4().hex[:12]}"
    database_url = urlunsplit(urlsplit(uri)._replace(path=f"/{name}"))
    run = Run(tag=f"failover-{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory(prefix="asset-failover-") as tmp:
        roots = [Path(tmp) / "a", Path(tmp) / "b"]
        servers = [ServerProcess(root, database_url).start(60) for root in roots]
        try:
            channels = [grpc.aio.insecure_channel(s.address) for s in servers]
            stubs = [pb_grpc.AssetServiceStub(c) for c in channels]
            done = asyncio.Event()
            watching = asyncio.create_task(watcher(run, stubs[1], done))
            until = time.monotonic() + args.seconds
            load = [
                asyncio.create_task(client(run, stubs[i], i, until))
                for i in range(2)
                for _ in range(args.clients)
            ]
            await asyncio.sleep(args.step_down_at)
            try:
                await asyncio.to_thread(step_down, uri)
            except OperationFailure as exc:
                print(f"cannot step the primary down: {exc}", file=sys.stderr)
                return 2
            run.stepped_down_at = time.monotonic()
            await asyncio.gather(*load)
            await asyncio.sleep(args.settle)  # the servers settle unknown outcomes
            done.set()
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            for channel in channels:
                await channel.close(None)
            failures = await asyncio.to_thread(check, run, database_url, roots)
        finally:
            for server in servers:
                server.stop()
            client_: MongoClient[dict[str, object]] = MongoClient(uri)
            client_.drop_database(name)
            client_.close()
    report(run)
    for failure in failures:
        print(f"FAIL {failure}")
    print("all checks hold" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="load duration (default 60)")
    parser.add_argument("--clients", type=int, default=16, help="callers per server (16)")
    parser.add_argument(
        "--step-down-at", type=float, default=20, help="seconds into the load (default 20)"
    )
    parser.add_argument(
        "--settle", type=float, default=20, help="seconds for the servers to settle (20)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
