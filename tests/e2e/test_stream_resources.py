"""End to end: streams whose client stops reading or dies are bounded, ended, and release all."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.conftest import StartServer
from tests.e2e.helpers import MiB, expect_error, pattern_chunks, read_all, upload
from tests.e2e.security_helpers import SecureFiles, bearer, server_process, token_for
from tests.serverproc import ServerProcess, serving

REPO = Path(__file__).resolve().parents[2]
STALLED = "ReadAsset client did not read"

# What the server may hold for one stalled ReadAsset: the chunk the storage read last (a
# one-chunk batch), that chunk serialized into its message, and grpc's own copy of the
# message waiting for window space: three 1 MiB chunks, plus 1 MiB of allocator rounding.
# (Before issue 18: a 4 MiB batch, the message and its serialization, ~8-10 MiB each.)
PER_STREAM_BYTES = 4 * MiB
# The server's own growth with any number of streams: a heap arena per reading thread.
FIXED_BYTES = 24 * MiB
# An open read holds its file and that file's folder (opened without following links).
FDS_PER_STREAM = 2
# Threads and the database's reader connections come from pools (asyncio's for file reads,
# grpc's own, SQLite's readers) that grow with concurrency, a few at a time, and stay; a
# thread or descriptor per stream would show one per stream.
POOL_SLACK = 4


@dataclass
class Usage:
    rss: int
    fds: int
    stored_fds: int  # open in the storage root: stored files and their folders
    threads: int

    @classmethod
    def of(cls, server: ServerProcess) -> Usage:
        proc = psutil.Process(server.pid)
        stored = 0
        for fd in Path(f"/proc/{server.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                stored += os.readlink(fd).startswith(f"{server.root}/")
        return cls(proc.memory_info().rss, proc.num_fds(), stored, proc.num_threads())


async def released(server: ServerProcess, base: Usage, connections: int = 0) -> None:
    """Within seconds: no stored file open beyond the baseline, and no descriptor beyond the
    pools' slack and the client connections still open."""
    deadline = time.monotonic() + 10
    while True:
        now = Usage.of(server)
        if now.stored_fds <= base.stored_fds and now.fds <= base.fds + connections + POOL_SLACK:
            return
        assert time.monotonic() < deadline, f"not released: {now} (baseline {base})"
        await asyncio.sleep(0.05)


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def stalled_client(server: ServerProcess, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A client process holding streams it never reads (tests/e2e/stalled_client.py);
    SIGKILLed on the way out whatever happened."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.stalled_client", server.address, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline().strip() == "READY", "the client did not start"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


async def read_head(stub: pb_grpc.AssetServiceStub, asset_id: str) -> None:
    request = pb.ReadAssetRequest(asset_id=asset_id, limit=4 * MiB)
    assert sum([len(msg.chunk) async for msg in stub.ReadAsset(request)]) == 4 * MiB


def stalls(server: ServerProcess) -> int:
    return sum(STALLED in line for line in server.log)


def assert_no_problems_logged(server: ServerProcess) -> None:
    """No error, no traceback: a client's leaving or stalling is the client's business."""
    found = [line for line in server.log if " ERROR " in line or "Traceback" in line]
    assert not found, "".join(server.log[-60:])


async def test_stalled_readers_are_bounded_refused_over_the_limit_ended_and_release_all(
    start_server: StartServer,
) -> None:
    n = 16
    # A stall timeout longer than a loaded machine (CI: 2 cores) takes to open every read
    # and measure: the first client must be the one that ends them, by dying.
    server = start_server("--max-concurrent-reads", str(n), "--read-stall-timeout", "10")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        # Far more than a client's flow-control windows and socket buffers take in.
        asset = await upload(stub, pattern_chunks(32 * MiB), label="big.bin")
        # Warm up: the heap, and the reading threads (a pool shared by every read, up to
        # its size), so that the baseline holds what any number of reads leaves behind.
        await asyncio.gather(*(read_head(stub, asset.id) for _ in range(n)))
        await asyncio.sleep(0.5)
        base = Usage.of(server)

        # A client that dies while its reads are blocked: everything comes back at once.
        with stalled_client(server, "--read", asset.id, "--reads", str(n)) as client:
            # Every read open (on a loaded machine the last ones start a while after the
            # client's READY), then a moment for their first chunks to be in flight.
            opened = base.stored_fds + n * FDS_PER_STREAM
            await until(lambda: Usage.of(server).stored_fds >= opened, 20, f"{n} reads to open")
            await asyncio.sleep(1)
            held = Usage.of(server)
            growth = held.rss - base.rss
            bound = n * PER_STREAM_BYTES + FIXED_BYTES
            assert growth <= bound, (
                f"{n} stalled reads grew the server by {growth / MiB:.0f} MiB "
                f"({growth / n / MiB:.1f} MiB each; bound {bound / MiB:.0f} MiB)"
            )
            assert held.stored_fds - base.stored_fds == n * FDS_PER_STREAM
            await expect_error(
                read_all(stub, asset.id),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"--max-concurrent-reads {n}",
            )
            client.kill()
            await released(server, base)
        assert stalls(server) == 0, "ended by the client's death, not by the stall timeout"
        assert Usage.of(server).threads <= base.threads + POOL_SLACK

        # A client that lives but stops reading: the stall timeout ends its reads, and their
        # files and slots come back while it still holds its connection.
        with stalled_client(server, "--read", asset.id, "--reads", str(n)):
            try:
                await until(lambda: stalls(server) == n, 30, "the stall timeout to end every read")
            except AssertionError as exc:
                tail = "".join(server.log[-40:])
                ended = f"{stalls(server)} of {n} ended"
                raise AssertionError(f"{exc}: {ended}; the server's last lines:\n{tail}") from None
            # The client's connection is still open: one descriptor more.
            await released(server, base, 1)
            data = await read_all(stub, asset.id)  # the slots are free again
            assert hashlib.sha256(data).hexdigest() == asset.sha256
        await released(server, base)
        assert Usage.of(server).threads <= base.threads + POOL_SLACK
    assert_no_problems_logged(server)


async def test_a_stalled_read_ends_with_unavailable_naming_the_offset_to_resume_from(
    start_server: StartServer,
) -> None:
    server = start_server("--read-stall-timeout", "1")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        asset = await upload(stub, pattern_chunks(32 * MiB), label="big.bin")
        call = stub.ReadAsset(pb.ReadAssetRequest(asset_id=asset.id))
        first = await call.read()
        assert isinstance(first, pb.ReadAssetResponse)
        received = [first.chunk]
        await until(lambda: stalls(server) == 1, 10, "the stall timeout")
        # What was already on its way still arrives, then the status.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while (msg := await call.read()) is not grpc.aio.EOF:
                assert isinstance(msg, pb.ReadAssetResponse)
                assert msg.offset == sum(len(c) for c in received)
                received.append(msg.chunk)
        err = info.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert "--read-stall-timeout" in (err.details() or "")
        told = int(re.search(r"offset=(\d+)", err.details() or "").group(1))  # type: ignore[union-attr]
        have = sum(len(c) for c in received)
        assert told <= have < 32 * MiB, "every byte before the offset named was sent"
        rest = stub.ReadAsset(pb.ReadAssetRequest(asset_id=asset.id, offset=have))
        received += [msg.chunk async for msg in rest]
    assert hashlib.sha256(b"".join(received)).hexdigest() == asset.sha256
    assert_no_problems_logged(server)


async def test_a_killed_client_holding_many_streams_leaves_no_traceback_and_no_fd(
    tmp_path: Path,
) -> None:
    """Issue 18: ~100 "Token ... created in a different Context" tracebacks when a client
    holding 1000 watches on one connection was killed. A streaming handler left waiting at
    a `yield` when its call ended was closed by the garbage collector in another context,
    where the interceptor's reset of the caller failed; its file stayed open until then."""
    (tmp_path / "imports").mkdir()
    files = SecureFiles(tmp_path).with_tokens()
    with serving(
        server_process(
            tmp_path, tmp_path / "imports", [*files.args, "--max-streams-per-connection", "1100"]
        )
    ) as server:
        admin = bearer(token_for("admin"))
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)

            async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
                yield pb.UploadAssetRequest(header=pb.UploadHeader(label="big.bin"))
                for chunk in pattern_chunks(32 * MiB):
                    yield pb.UploadAssetRequest(chunk=chunk)

            big = (await stub.UploadAsset(requests(), metadata=admin, timeout=60)).asset
            pending = await stub.CreatePendingAsset(
                pb.CreatePendingAssetRequest(task_id="t", label="out.txt"), metadata=admin
            )
            args = ["--read", big.id, "--reads", "8", "--watch", pending.asset.id]
            args += ["--watches", "1000", "--token", token_for("reader")]
            base: Usage | None = None
            for _ in range(3):
                with stalled_client(server, *args) as client:
                    client.kill()
                if base is None:  # the first round warms the pools up
                    await asyncio.sleep(1)
                    base = Usage.of(server)
                await released(server, base)
                # The server still answers, and anything collected late has been by now.
                await stub.GetAsset(pb.GetAssetRequest(asset_id=big.id), metadata=admin)
                await asyncio.sleep(0.5)
    assert_no_problems_logged(server)
