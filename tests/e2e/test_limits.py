"""End to end: one client cannot exhaust the server (uploads, streams, watch buffers)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import pytest
from asset_client import AssetStatus, AsyncAssetClient

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.api.wire import MAX_MESSAGE_BYTES
from tests.conftest import StartServer
from tests.e2e.helpers import all_assets, expect_error, stored_files, upload
from tests.serverproc import ServerProcess

KiB = 1024


@asynccontextmanager
async def connect(server: ServerProcess) -> AsyncIterator[pb_grpc.AssetServiceStub]:
    """A stub on a connection of its own (streams are limited per connection)."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # Channels to one address share a connection unless told otherwise.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        yield pb_grpc.AssetServiceStub(channel)


def header(label: str, **fields: object) -> pb.UploadAssetRequest:
    return pb.UploadAssetRequest(
        header=pb.UploadHeader(label=label, media_type="text/plain", **fields)  # type: ignore[arg-type]
    )


def memory_kib(server: ServerProcess, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of the server process."""
    with open(f"/proc/{server.pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {server.pid}")


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def pending_values(stub: pb_grpc.AssetServiceStub, count: int) -> list[str]:
    ids = []
    for i in range(count):
        request = pb.CreatePendingAssetRequest(
            task_id="load", label=f"v{i}.bin", type=pb.ASSET_TYPE_VALUE
        )
        ids.append((await stub.CreatePendingAsset(request)).asset.id)
    return ids


def value_of(i: int, size: int = 256 * KiB) -> bytes:
    return bytes([i % 251]) * size


async def fulfill_all(stub: pb_grpc.AssetServiceStub, ids: list[str]) -> None:
    for i, asset_id in enumerate(ids):
        request = pb.FulfillAssetRequest(asset_id=asset_id, value=pb.Value(data=value_of(i)))
        await stub.FulfillAsset(request)


def assert_final_states(ids: list[str], last: dict[str, pb.Asset]) -> None:
    assert set(last) == set(ids), f"{len(set(ids) - set(last))} asset(s) never reported"
    for i, asset_id in enumerate(ids):
        asset = last[asset_id]
        assert asset.status == pb.ASSET_STATUS_AVAILABLE, asset_id
        assert asset.value.data == value_of(i), f"{asset_id} reported with the wrong value"


def assert_no_errors_logged(server: ServerProcess) -> None:
    """A stalled, cancelled or refused client is the client's business, not a server error."""
    errors = [line for line in server.log if " ERROR " in line or "Traceback" in line]
    assert not errors, "".join(errors)


# -- uploads ---------------------------------------------------------------------------------


async def test_uploads_over_the_limit_are_refused_at_once_and_every_end_frees_a_slot(
    start_server: StartServer,
) -> None:
    server = start_server("--max-concurrent-uploads", "2")
    async with connect(server) as stub:
        gates = [asyncio.Event(), asyncio.Event()]

        async def held(gate: asyncio.Event, label: str) -> AsyncIterator[pb.UploadAssetRequest]:
            yield header(label)
            await gate.wait()
            yield pb.UploadAssetRequest(chunk=label.encode())

        first = stub.UploadAsset(held(gates[0], "first.txt"), timeout=30)
        second = stub.UploadAsset(held(gates[1], "second.txt"), timeout=30)
        for call in (first, second):
            await call.wait_for_connection()
        # A round trip on the same connection: the server has taken both calls by now.
        await stub.ListAssets(pb.ListAssetsRequest())

        started = time.monotonic()
        await expect_error(
            upload(stub, [b"third"], label="third.txt", timeout=10),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "--max-concurrent-uploads 2",
        )
        assert time.monotonic() - started < 2, "the refusal should not wait for a slot"

        gates[0].set()
        assert (await first).asset.size_bytes == len(b"first.txt")  # success frees a slot
        await upload(stub, [b"fourth"], label="fourth.txt", timeout=10)
        # A failed upload frees its slot too: two in a row would otherwise fill both.
        for _ in range(2):
            await expect_error(
                upload(stub, [b"x"], label="bad.txt", expected_size_bytes=5, timeout=10),
                grpc.StatusCode.DATA_LOSS,
            )
        await upload(stub, [b"fifth"], label="fifth.txt", timeout=10)
        gates[1].set()
        await second
        labels = sorted(a.label for a in await all_assets(stub))
    assert labels == ["fifth.txt", "first.txt", "fourth.txt", "second.txt"]
    assert_no_errors_logged(server)


@pytest.mark.parametrize("sent", [["header"], ["header", "chunk"]])
async def test_silent_upload_times_out_leaving_nothing_and_freeing_its_slot(
    start_server: StartServer, sent: list[str]
) -> None:
    server = start_server("--upload-idle-timeout", "1", "--max-concurrent-uploads", "1")
    async with connect(server) as stub:
        never = asyncio.Event()

        async def silent() -> AsyncIterator[pb.UploadAssetRequest]:
            yield header("silent.txt")
            if "chunk" in sent:
                yield pb.UploadAssetRequest(chunk=b"x" * 64 * KiB)
            await never.wait()

        started = time.monotonic()
        await expect_error(
            stub.UploadAsset(silent(), timeout=30),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "--upload-idle-timeout",
        )
        assert 0.9 < time.monotonic() - started < 5
        assert stored_files(server.root) == [], "the staging file must be removed"
        assert await all_assets(stub) == []
        # The limit is one upload: this one runs only if the silent one gave its slot back.
        done = await upload(stub, [b"after"], label="after.txt", timeout=10)
    assert done.size_bytes == len(b"after")
    assert_no_errors_logged(server)


# What grpcio's asyncio client reports when its own write fails (grpc/grpc#36066).
CLIENT_REWRITE = "Internal error from Core"


async def test_uploads_whose_next_chunk_races_the_idle_timeout_all_get_its_status(
    start_server: StartServer,
) -> None:
    """Issue 18 saw 4 of 300 idle uploads answered INTERNAL with no log line. The server
    answers DEADLINE_EXCEEDED; grpcio's asyncio client (a request iterator) replaces that
    with its own "INTERNAL: Internal error from Core" when its next write fails because the
    stream just ended (grpc/grpc#36066; 2 in 1200 here). Writing explicitly and then
    awaiting the call, as asset_client does, gets the server's status almost every time;
    on a loaded machine the client library still rewrote one in 300 (a full `make test`
    run). That rewrite is the client's own text, never one the server sends (the server's
    INTERNAL says "internal error in <method>; server log ref ..."), so it is told apart and
    bounded here; everything else must be the server's DEADLINE_EXCEEDED naming the flag."""
    count = 300
    server = start_server(
        "--upload-idle-timeout", "1", "--max-concurrent-uploads", str(count),
        "--max-streams-per-connection", str(count + 10),
    )  # fmt: skip
    async with connect(server) as stub:

        async def idle_then_write(i: int) -> str:
            call = stub.UploadAsset(timeout=30)  # type: ignore[call-arg]
            await call.write(header(f"u{i}.bin"))
            await asyncio.sleep(0.95 + i % 16 / 100)  # around the server's deadline
            with contextlib.suppress(asyncio.InvalidStateError, grpc.RpcError):
                if not call.done():
                    await call.write(pb.UploadAssetRequest(chunk=b"x" * KiB))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            code, details = info.value.code(), info.value.details() or ""
            if (code, details) == (grpc.StatusCode.INTERNAL, CLIENT_REWRITE):
                return "rewritten by the client"
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
            assert "--upload-idle-timeout" in details
            return "server's status"

        seen = await asyncio.gather(*(idle_then_write(i) for i in range(count)))
        assert seen.count("server's status") >= count * 0.98, seen
        assert stored_files(server.root) == []
    assert_no_errors_logged(server)


# -- streams per connection --------------------------------------------------------------------


async def test_calls_over_the_stream_limit_wait_on_that_connection_only(
    start_server: StartServer,
) -> None:
    server = start_server("--max-streams-per-connection", "3")
    async with connect(server) as first, connect(server) as second:
        [asset_id] = await pending_values(first, 1)
        watches = [
            first.WatchAsset(pb.WatchAssetRequest(asset_ids=[asset_id], follow=True))
            for _ in range(3)
        ]
        for watch in watches:
            event = await watch.read()
            assert event.type == pb.WATCH_EVENT_TYPE_SNAPSHOT  # type: ignore[union-attr]
        get = pb.GetAssetRequest(asset_id=asset_id)
        # HTTP/2's answer to a fourth stream: it waits for a free one, here past its deadline.
        await expect_error(first.GetAsset(get, timeout=1), grpc.StatusCode.DEADLINE_EXCEEDED)
        assert (await second.GetAsset(get, timeout=5)).asset.id == asset_id
        watches[0].cancel()
        assert (await first.GetAsset(get, timeout=5)).asset.id == asset_id
        for watch in watches[1:]:
            watch.cancel()
    assert_no_errors_logged(server)


async def test_short_calls_over_the_stream_limit_queue_and_none_is_refused(
    start_server: StartServer,
) -> None:
    """Many more quick calls in flight than --max-streams-per-connection: the client queues
    the extra ones and every call succeeds. (grpc's server-side "overload protection" counts
    ended streams it has not freed yet and refuses new ones with REFUSED_STREAM, which a
    client sees as UNAVAILABLE; the server turns it off.)"""
    server = start_server("--max-streams-per-connection", "4")
    async with connect(server) as stub:
        [asset_id] = await pending_values(stub, 1)
        get = pb.GetAssetRequest(asset_id=asset_id)
        for _ in range(5):
            answers = await asyncio.gather(
                *(stub.GetAsset(get, timeout=30) for _ in range(64)), return_exceptions=True
            )
            refused = [a for a in answers if isinstance(a, BaseException)]
            assert refused == [], f"{len(refused)} of 64 calls failed: {refused[0]!r}"
    assert_no_errors_logged(server)


# -- watch buffers -----------------------------------------------------------------------------


async def test_stalled_watcher_is_bounded_then_ended_and_resumes_without_loss(
    start_server: StartServer,
) -> None:
    # 240 x 256 KiB = 60 MiB of changes: unbounded buffering grew this server by ~65 MiB;
    # bounded, it holds 1 MiB of buffer plus what the HTTP/2 window has in flight.
    count = 240
    server = start_server("--watch-stall-timeout", "2", "--watch-buffer-bytes", "1MiB")
    async with connect(server) as stub, connect(server) as watcher:
        ids = await pending_values(stub, count)
        call = watcher.WatchAsset(pb.WatchAssetRequest(asset_ids=ids))
        first = await call.read()  # one event, then the watcher stops reading
        assert isinstance(first, pb.WatchAssetResponse)
        before = memory_kib(server, "VmRSS")
        await fulfill_all(stub, ids)
        await until(
            lambda: any("did not read for 2s" in line for line in server.log),
            timeout=20,
            what="the server to end the stalled stream",
        )
        growth_mib = (memory_kib(server, "VmHWM") - before) / 1024
        assert growth_mib < 40, f"server grew by {growth_mib:.0f} MiB for one stalled watcher"

        # What was in flight is still delivered, then the stream ends with UNAVAILABLE.
        last: dict[str, pb.Asset] = {first.asset.id: first.asset}
        revisions = [first.revision]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while (msg := await call.read()) is not grpc.aio.EOF:
                assert isinstance(msg, pb.WatchAssetResponse)
                last[msg.asset.id] = msg.asset
                revisions.append(msg.revision)
        err = info.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert "--watch-stall-timeout" in (err.details() or "")
        told = int(re.search(r"after_revision=(\d+)", err.details() or "").group(1))  # type: ignore[union-attr]
        assert told <= revisions[-1], "the advice must not skip what the client never got"

        resumed = watcher.WatchAsset(
            pb.WatchAssetRequest(asset_ids=ids, after_revision=revisions[-1])
        )
        async for msg in resumed:
            last[msg.asset.id] = msg.asset
            revisions.append(msg.revision)
    assert revisions == sorted(revisions), "events must come in revision order"
    assert len(set(revisions)) == len(revisions), "no event may come twice"
    assert_final_states(ids, last)
    assert_no_errors_logged(server)


async def test_slow_reader_is_not_ended_and_sees_every_final_state_in_order(
    start_server: StartServer,
) -> None:
    # 60 x 256 KiB overflows both the buffer and the HTTP/2 window (~6 MiB here), so the
    # server does wait on this reader; but it reads one event every 50 ms. The server sees
    # reading only as window space (bytes): the reader first takes its 60 small snapshot
    # events, so that the window holds ~24 big events, read in ~1.2 s < 2 s.
    count = 60
    server = start_server("--watch-stall-timeout", "2", "--watch-buffer-bytes", "1MiB")
    async with connect(server) as stub, connect(server) as watcher:
        ids = await pending_values(stub, count)
        last: dict[str, pb.Asset] = {}
        revisions: list[int] = []

        async def read_slowly() -> None:
            async for msg in watcher.WatchAsset(pb.WatchAssetRequest(asset_ids=ids)):
                last[msg.asset.id] = msg.asset
                revisions.append(msg.revision)
                await asyncio.sleep(0.05)

        started = time.monotonic()
        reader = asyncio.create_task(read_slowly())
        await until(lambda: len(revisions) == count, timeout=10, what="the snapshot")
        await fulfill_all(stub, ids)
        await asyncio.wait_for(reader, 60)  # ends with OK once all are terminal
        elapsed = time.monotonic() - started
    assert elapsed > 2, "the reader should have been slower than the stall timeout"
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    assert_final_states(ids, last)
    assert not any("did not read for" in line for line in server.log)


async def test_python_client_resumes_a_stalled_watch_by_itself(
    start_server: StartServer,
) -> None:
    count = 60
    server = start_server("--watch-stall-timeout", "1", "--watch-buffer-bytes", "1MiB")
    async with connect(server) as stub:
        ids = await pending_values(stub, count)
        async with AsyncAssetClient(server.address, timeout=30) as client:
            events = client.watch(ids, timeout=60)
            first = await anext(events)  # then the caller stops iterating for a while
            await fulfill_all(stub, ids)
            await until(
                lambda: any("did not read for 1s" in line for line in server.log),
                timeout=20,
                what="the server to end the stalled stream",
            )
            rest = [event async for event in events]
    final = {e.asset.id: e.asset for e in [first, *rest]}
    assert set(final) == set(ids)
    assert all(a.status is AssetStatus.AVAILABLE for a in final.values())
    revisions = [e.revision for e in [first, *rest]]
    assert revisions == sorted(revisions)
    assert_no_errors_logged(server)
