"""End to end: SIGTERM turns readiness NOT_SERVING, drains calls while listening, ends in time."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.conftest import StartServer
from tests.serverproc import ServerProcess

SERVICE = "asset.v1.AssetService"
# What a stop may take beyond its grace (the steps after the drain are bounded by 2 s
# each in server.py; a process slow to exit on a busy machine gets the rest).
STOP_SLACK = 5.0


async def health_answers(address: str) -> dict[str, str]:
    """What a probe sees, on a connection of its own: a status name, or the error code."""
    answers = {}
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
                answers[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as exc:
                answers[name] = exc.code().name
    return answers


async def wait_exit(server: ServerProcess, seconds: float) -> int:
    assert server.proc is not None
    deadline = time.monotonic() + seconds
    while server.proc.poll() is None:
        assert time.monotonic() < deadline, f"the server did not exit within {seconds:g}s"
        await asyncio.sleep(0.05)
    return server.proc.returncode


async def watched_promise(stub: pb_grpc.AssetServiceStub) -> tuple[str, Any]:
    """A PENDING promise and a watch of it that never ends (follow), past its SNAPSHOT."""
    promise = await stub.CreatePendingAsset(
        pb.CreatePendingAssetRequest(task_id="t", label="in.json", type=pb.ASSET_TYPE_VALUE)
    )
    watch = stub.WatchAsset(pb.WatchAssetRequest(asset_ids=[promise.asset.id], follow=True))
    assert (await watch.read()).type == pb.WATCH_EVENT_TYPE_SNAPSHOT  # type: ignore[union-attr]
    return promise.asset.id, watch


async def test_sigterm_answers_not_ready_but_alive_while_calls_drain_before_it_closes(
    start_server: StartServer,
) -> None:
    grace = 4.0
    server = start_server("--shutdown-grace", str(grace))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        # Two calls in flight: a watch that never ends, a manifest waiting for its input.
        asset_id, watch = await watched_promise(stub)
        manifest = asyncio.ensure_future(
            stub.GetManifest(
                pb.GetManifestRequest(asset_mappings={"in": asset_id}, wait=True), timeout=30
            )
        )
        assert await health_answers(server.address) == {"": "SERVING", SERVICE: "SERVING"}

        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        # Probes, on new connections, see readiness NOT_SERVING, never "connection refused";
        # liveness stays SERVING (a pod restarted mid-drain would cut the drain short).
        while (answers := await health_answers(server.address)) != {
            "": "SERVING",
            SERVICE: "NOT_SERVING",
        }:
            assert answers == {"": "SERVING", SERVICE: "SERVING"}, answers
            assert time.monotonic() - signalled < 2, "readiness never said NOT_SERVING"
        assert not manifest.done(), "the waiting call is still in flight"
        assert server.proc.poll() is None  # type: ignore[union-attr]

        # Calls still work while they drain: the input arrives, the manifest answers.
        await stub.FulfillAsset(
            pb.FulfillAssetRequest(asset_id=asset_id, value=pb.Value(text='{"ok": 1}'))
        )
        answer = await asyncio.wait_for(manifest, 5)
        assert Path(answer.entries["in"]).read_text() == '{"ok": 1}'
        changed = await watch.read()
        assert changed.asset.status == pb.ASSET_STATUS_AVAILABLE  # type: ignore[union-attr]
        assert time.monotonic() - signalled < grace
        assert await health_answers(server.address) == {"": "SERVING", SERVICE: "NOT_SERVING"}

        # The watch holds the drain to the end of the grace; then the process ends.
        assert await wait_exit(server, grace + STOP_SLACK) == 0
        elapsed = time.monotonic() - signalled
        assert grace - 0.5 < elapsed < grace + STOP_SLACK, f"stopped after {elapsed:.1f}s"
        watch.cancel()
    log = "".join(server.log)
    assert "call(s) in flight get up to 4.0s" in log and "stopped" in log
    assert "Traceback" not in log and "gave up" not in log, log


async def test_a_stop_with_nothing_in_flight_does_not_wait_for_the_grace(
    start_server: StartServer,
) -> None:
    server = start_server("--shutdown-grace", "30")
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert await wait_exit(server, STOP_SLACK) == 0
    assert time.monotonic() - signalled < STOP_SLACK


def test_a_zero_health_interval_is_refused_at_start_up() -> None:
    """Issue 18: ASSET_SERVICE_HEALTH_INTERVAL=0 was accepted, spun the server at 90-99 %
    CPU, and SIGTERM then never finished."""
    done = subprocess.run(
        [sys.executable, "-m", "asset_service", "--listen", "127.0.0.1:0"],
        env={"ASSET_SERVICE_HEALTH_INTERVAL": "0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "asset-service: error: ASSET_SERVICE_HEALTH_INTERVAL (the variable of "
        "--health-interval): '0' is not above 0; accepted: a duration like 10s, 5m, 1h, 250ms, "
        "1h30m or 1.5 (seconds), above 0"
    ]


async def test_a_second_sigterm_says_the_stop_is_under_way_and_keeps_the_drain(
    start_server: StartServer,
) -> None:
    """A second SIGTERM or SIGINT (an impatient Ctrl-C) was ignored without a word: the
    operator could not tell a stop under way from one that had not started. It is still no
    harder stop (a worker may get each stop twice), but a line says what is left."""
    grace = 3.0
    server = start_server("--shutdown-grace", str(grace))
    async with grpc.aio.insecure_channel(server.address) as channel:
        _, watch = await watched_promise(pb_grpc.AssetServiceStub(channel))
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        # The same stop delivered twice at once (a group's signal, and a supervisor's or
        # `timeout`'s copy) says nothing; a second signal a moment later is answered.
        server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        while (await health_answers(server.address))[SERVICE] != "NOT_SERVING":
            assert time.monotonic() - signalled < 2, "readiness never said NOT_SERVING"
        await asyncio.sleep(max(0.0, signalled + 1.2 - time.monotonic()))
        assert not any("already stopping" in line for line in server.log)
        server.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
        deadline = time.monotonic() + 2
        while not any("already stopping" in line for line in server.log):
            assert time.monotonic() < deadline, "".join(server.log)
            await asyncio.sleep(0.05)
        assert server.proc.poll() is None, "the drain goes on"  # type: ignore[union-attr]
        assert await wait_exit(server, grace + STOP_SLACK) == 0
        assert time.monotonic() - signalled > grace - 0.5
        watch.cancel()
    (line,) = [line for line in server.log if "already stopping" in line]
    assert "1 call(s) in flight get up to" in line and "SIGKILL ends them now" in line


async def test_calls_the_grace_cuts_are_logged_and_counted_as_their_clients_see_them(
    start_server: StartServer,
) -> None:
    """Calls still running when the grace ran out reached their clients as UNAVAILABLE
    ("Cancelling all calls") but were logged and counted as CANCELLED, the code of a client
    that gave up: an operator could not tell a stop's cuts from impatient clients."""
    grace = 1.0
    server = start_server("--shutdown-grace", str(grace), "--metrics-listen", "127.0.0.1:0")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        promise = await stub.CreatePendingAsset(
            pb.CreatePendingAssetRequest(task_id="t", label="in.json", type=pb.ASSET_TYPE_VALUE)
        )
        manifest = asyncio.ensure_future(
            stub.GetManifest(
                pb.GetManifestRequest(asset_mappings={"in": promise.asset.id}, wait=True),
                timeout=30,
            )
        )
        await asyncio.sleep(0.3)  # the manifest waits
        server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(manifest, grace + STOP_SLACK)
            raise AssertionError("the waiting manifest answered")
        except grpc.aio.AioRpcError as cut:
            assert cut.code() == grpc.StatusCode.UNAVAILABLE, cut
        assert await wait_exit(server, grace + STOP_SLACK) == 0
    (line,) = [line for line in server.log if "access: /asset.v1.AssetService/GetManifest" in line]
    assert "GetManifest UNAVAILABLE" in line, line
