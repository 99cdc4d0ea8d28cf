"""--workers 2: two processes behind one port share one SQLite store, end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess, database_url_for, serving
from tests.worker_procs import channel_on, wait_for_workers, workers_of

GRACE = 4.0


@pytest.fixture
def two(tmp_path: Path) -> Iterator[ServerProcess]:
    """Two workers on SQLite; on MONGODB_URI's replica set when it is given (each worker
    then reads its own change stream; not run here)."""
    url = database_url_for(tmp_path)
    args = ["--workers", "2", "--shutdown-grace", str(GRACE)]
    with serving(ServerProcess(tmp_path / "data", url, extra_args=args)) as proc:
        yield proc


async def _ping(channel: grpc.aio.Channel) -> None:
    await pb_grpc.AssetServiceStub(channel).ListAssets(pb.ListAssetsRequest(page_size=1))


@pytest.fixture
async def stubs(
    two: ServerProcess,
) -> AsyncIterator[tuple[pb_grpc.AssetServiceAsyncStub, pb_grpc.AssetServiceAsyncStub]]:
    """A stub whose connection worker 1 holds, and one whose connection worker 2 holds."""
    workers = wait_for_workers(two.pid, 2)
    first = await channel_on(workers[0], workers, two.port, _ping)
    second = await channel_on(workers[1], workers, two.port, _ping)
    try:
        yield pb_grpc.AssetServiceStub(first), pb_grpc.AssetServiceStub(second)
    finally:
        await first.close()
        await second.close()


def pending(task: str, label: str) -> pb.CreatePendingAssetRequest:
    return pb.CreatePendingAssetRequest(task_id=task, label=label, type=pb.ASSET_TYPE_VALUE)


async def test_a_watcher_on_one_worker_sees_every_write_through_the_other_in_order(
    stubs: tuple[pb_grpc.AssetServiceAsyncStub, pb_grpc.AssetServiceAsyncStub],
) -> None:
    here, there = stubs
    start = (await here.ListAssets(pb.ListAssetsRequest(page_size=1))).revision
    selector = pb.WatchAssetRequest(
        selector=pb.AssetSelector(task_id="t"), after_revision=start, follow=True
    )
    seen: list[tuple[int, str, int]] = []
    expected: list[tuple[int, str, int]] = []
    done = asyncio.Event()

    async def watch() -> None:
        async for event in here.WatchAsset(selector):
            seen.append((event.revision, event.asset.id, event.asset.status))
            if len(seen) >= len(expected) and expected and not done.is_set():
                done.set()

    watcher = asyncio.create_task(watch())
    try:
        # Writes through the other worker, interleaved with some through this one; each
        # write's reply names its revision: the watch must show every one, in order.
        writes = []
        for i in range(12):
            stub = there if i % 3 else here
            created = (await stub.CreatePendingAsset(pending("t", f"o{i}"))).asset
            writes.append(created)
            # Read right after the write, through the other worker.
            got = (
                await (here if stub is there else there).GetAsset(
                    pb.GetAssetRequest(asset_id=created.id)
                )
            ).asset
            assert got.revision == created.revision
        for i, asset in enumerate(writes[:8]):
            if i % 2:
                reply = await there.FulfillAsset(
                    pb.FulfillAssetRequest(asset_id=asset.id, value=pb.Value(text=f"v{i}"))
                )
            else:
                reply = await there.FailAsset(pb.FailAssetRequest(asset_id=asset.id, reason="x"))
            writes.append(reply.asset)
        gone = await there.DeleteAsset(pb.DeleteAssetRequest(asset_id=writes[0].id))
        expected[:] = [(a.revision, a.id, a.status) for a in writes]
        expected.append((gone.asset.revision, gone.asset.id, gone.asset.status))
        if len(seen) >= len(expected):
            done.set()
        await asyncio.wait_for(done.wait(), 15)
    finally:
        watcher.cancel()
    assert seen == sorted(expected), "every change, once, in revision order"


async def test_every_watcher_on_every_worker_sees_concurrent_writes_in_revision_order(
    two: ServerProcess,
) -> None:
    """Writers on both workers at once, three selector watchers on each worker: every
    watcher gets every change, once, in revision order, the same sequence on both."""
    workers = wait_for_workers(two.pid, 2)
    channels = [await channel_on(w, workers, two.port, _ping) for w in workers]
    try:
        stubs = [pb_grpc.AssetServiceStub(c) for c in channels]
        start = (await stubs[0].ListAssets(pb.ListAssetsRequest(page_size=1))).revision
        request = pb.WatchAssetRequest(selector=pb.AssetSelector(task_id="c"), after_revision=start)
        seen: list[list[int]] = [[] for _ in range(6)]
        total = asyncio.Event()
        expected: set[int] = set()

        async def watch(stub: pb_grpc.AssetServiceAsyncStub, into: list[int]) -> None:
            async for event in stub.WatchAsset(request):
                into.append(event.revision)
                if expected and all(len(s) >= len(expected) for s in seen):
                    total.set()

        watchers = [asyncio.create_task(watch(stubs[i % 2], seen[i])) for i in range(len(seen))]

        async def writer(stub: pb_grpc.AssetServiceAsyncStub, name: str) -> list[int]:
            revisions = []
            for i in range(10):
                made = (await stub.CreatePendingAsset(pending("c", f"{name}-{i}"))).asset
                revisions.append(made.revision)
                fulfilled = await stub.FulfillAsset(
                    pb.FulfillAssetRequest(asset_id=made.id, value=pb.Value(text=name))
                )
                revisions.append(fulfilled.asset.revision)
            return revisions

        try:
            written = await asyncio.gather(*(writer(stubs[i % 2], f"w{i}") for i in range(4)))
            expected.update(r for revisions in written for r in revisions)
            assert len(expected) == 80, "each write its own revision"
            if all(len(s) >= len(expected) for s in seen):
                total.set()
            await asyncio.wait_for(total.wait(), 20)
        finally:
            for task in watchers:
                task.cancel()
    finally:
        for channel in channels:
            await channel.close()
    for i, got in enumerate(seen):
        assert got == sorted(expected), f"watcher {i} (worker {i % 2 + 1}): {got}"


async def test_an_id_watch_on_one_worker_ends_with_a_fulfil_through_the_other(
    stubs: tuple[pb_grpc.AssetServiceAsyncStub, pb_grpc.AssetServiceAsyncStub],
) -> None:
    here, there = stubs
    asset = (await there.CreatePendingAsset(pending("t", "out"))).asset
    events = here.WatchAsset(pb.WatchAssetRequest(asset_ids=[asset.id]))
    first = await asyncio.wait_for(anext(aiter(events)), 10)
    assert first.type == pb.WATCH_EVENT_TYPE_SNAPSHOT
    done = await there.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=asset.id, value=pb.Value(text="big" * 30000))
    )
    rest = [e async for e in events]  # the stream ends once the asset is terminal
    assert [(e.type, e.revision) for e in rest] == [
        (pb.WATCH_EVENT_TYPE_CHANGED, done.asset.revision)
    ]
    assert rest[0].asset.value.text == "big" * 30000  # a value too big for the change log


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_SERVICE_")}
    return subprocess.run(
        [sys.executable, "-m", "asset_service", "--log-level", "INFO", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_accidental_second_server_is_refused(
    two: ServerProcess, tmp_path: Path, workers: str
) -> None:
    same_port = _run(
        "--listen", two.address, "--storage-root", str(tmp_path / "other"), "--workers", workers
    )
    assert same_port.returncode == 2, same_port.stderr
    assert f"address {two.address} is in use" in same_port.stderr
    if not two.database_url.startswith("sqlite"):
        return  # servers on other ports may share a MongoDB database: that is no accident
    same_database = _run(
        "--listen",
        "127.0.0.1:0",
        "--storage-root",
        str(tmp_path / "other2"),
        "--database-url",
        two.database_url,
        "--workers",
        workers,
    )
    assert same_database.returncode == 2, same_database.stderr
    assert "another asset-service process is using" in same_database.stderr
    assert "run one server with --workers N" in same_database.stderr
    assert len(workers_of(two.pid)) == 2, "the first server is untouched"


async def test_a_killed_worker_is_replaced_and_nothing_acknowledged_is_lost(
    two: ServerProcess,
) -> None:
    workers = wait_for_workers(two.pid, 2)
    async with grpc.aio.insecure_channel(two.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        acked = [(await stub.CreatePendingAsset(pending("k", f"a{i}"))).asset for i in range(20)]
    os.kill(workers[0], signal.SIGKILL)
    replaced = await asyncio.to_thread(wait_for_workers, two.pid, 2, frozenset({workers[0]}))
    assert workers[1] in replaced
    # The new worker serves: connections land on both again.
    fresh = next(w for w in replaced if w != workers[1])
    deadline = time.monotonic() + 30
    while not any(f"worker 1/2 (pid {fresh}) serving" in line for line in two.log):
        assert time.monotonic() < deadline, "".join(two.log[-20:])
        await asyncio.sleep(0.05)
    channel = await channel_on(fresh, replaced, two.port, _ping)
    try:
        stub = pb_grpc.AssetServiceStub(channel)
        listed = await stub.ListAssets(pb.ListAssetsRequest(page_size=100, created_by_task="k"))
        assert {a.id for a in listed.assets} == {a.id for a in acked}
        later = (await stub.CreatePendingAsset(pending("k", "after"))).asset
        assert later.revision > max(a.revision for a in acked)
    finally:
        await channel.close()
    assert any("was killed by SIGKILL; starting another" in line for line in two.log)


async def test_sigterm_drains_every_worker_and_stops(two: ServerProcess) -> None:
    workers = wait_for_workers(two.pid, 2)
    channels = [await channel_on(w, workers, two.port, _ping) for w in workers]
    try:
        stubs = [pb_grpc.AssetServiceStub(c) for c in channels]
        promise = (await stubs[0].CreatePendingAsset(pending("d", "in"))).asset
        request = pb.GetManifestRequest(asset_mappings={"in": promise.id}, wait=True)
        # One call in flight on each worker, waiting for the promise.
        waits = [asyncio.ensure_future(s.GetManifest(request, timeout=30)) for s in stubs]
        await asyncio.sleep(0.5)
        two.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        await asyncio.sleep(0.5)
        # Within the grace the calls in flight may still finish: fulfil the promise.
        await stubs[1].FulfillAsset(
            pb.FulfillAssetRequest(asset_id=promise.id, value=pb.Value(text="ok"))
        )
        answers = await asyncio.wait_for(asyncio.gather(*waits), GRACE + 5)
        assert all(a.entries["in"] for a in answers)
    finally:
        for channel in channels:
            await channel.close()
    assert two.proc is not None
    code = await asyncio.to_thread(two.proc.wait, GRACE + 20)
    assert code == 0, "".join(two.log[-20:])
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the stop"
    assert sum("stopped" in line for line in two.log) >= 3  # two workers and the supervisor


def _two_free_ports() -> int:
    """A port P with P+1 free too (both bound, then released)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no two adjacent free ports")


def test_each_worker_serves_its_own_metrics_on_the_next_port(tmp_path: Path) -> None:
    port = _two_free_ports()
    with serving(
        ServerProcess(
            tmp_path / "data",
            f"sqlite:///{tmp_path / 'assets.db'}",
            extra_args=["--workers", "2", "--metrics-listen", f"127.0.0.1:{port}"],
        )
    ) as proc:
        workers = wait_for_workers(proc.pid, 2)
        for offset in (0, 1):
            url = f"http://127.0.0.1:{port + offset}/metrics"
            with urllib.request.urlopen(url, timeout=10) as answer:
                assert b"asset_service_build_info" in answer.read()
        lines = [line for line in proc.log if "metrics at http://" in line]
        assert any("[worker 1/2]" in line and f":{port}/" in line for line in lines), lines
        assert any("[worker 2/2]" in line and f":{port + 1}/" in line for line in lines), lines
        assert len(workers) == 2


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--database-url", "memory://"], "memory:// keeps records inside one process"),
        (["--listen", "unix:{tmp}/s.sock"], "several processes cannot share the unix socket"),
        (["--workers", "0"], "--workers"),
        (["--workers", "-2"], "--workers"),
        # Worker 2's metrics port would be 65536: it failed with an error about a value
        # nobody gave, after worker 1 had started.
        (["--metrics-listen", "127.0.0.1:65535"], "65536 is past 65535; give a port of at most"),
    ],
)
def test_what_workers_cannot_share_is_refused_at_start_up(
    tmp_path: Path, args: list[str], said: str
) -> None:
    argv = ["--listen", "127.0.0.1:0", "--storage-root", str(tmp_path / "data"), "--workers", "2"]
    done = _run(*argv, *(a.format(tmp=tmp_path) for a in args))
    assert done.returncode == 2, done.stderr
    assert said in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr  # a line, no traceback
