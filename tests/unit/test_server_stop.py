"""A stop says NOT_SERVING first, lets calls drain while it listens, and ends in bounded time."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time

import pytest

from asset_service import server as server_module
from asset_service.api.inflight import InFlight
from asset_service.probes import LIVENESS, NOT_SERVING, READINESS, SERVING, Probes
from asset_service.server import STOP_STEP_SECONDS, RunningServer
from tests.health import health_status


class Server:
    """grpc.aio.Server's stop(): records when it was called; `hang` never returns."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.stopped_with: float | None = None

    async def stop(self, grace: float) -> None:
        self.stopped_with = grace
        if self.hang:
            await asyncio.Event().wait()


class Manager:
    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True
        if self.hang:
            await asyncio.Event().wait()


async def stubborn(done: asyncio.Event) -> None:
    """A background task that ignores cancellation (as the health loop did, issue 18)."""
    while not done.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)


async def serving_health() -> Probes:
    probes = Probes([], 1.0)
    await probes.start()
    return probes


async def test_a_stop_ends_in_bounded_time_whatever_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    step = 0.3
    monkeypatch.setattr(server_module, "STOP_STEP_SECONDS", step)
    done = asyncio.Event()
    background = [asyncio.create_task(stubborn(done))]
    in_flight = InFlight()
    in_flight.__enter__()  # a call that never ends
    server, manager = Server(hang=True), Manager(hang=True)
    running = RunningServer(
        server,  # type: ignore[arg-type]
        manager,  # type: ignore[arg-type]
        await serving_health(),
        0,
        background,
        None,  # type: ignore[arg-type]
        in_flight,
    )
    grace = 0.5
    started = time.monotonic()
    try:
        # The grace, then at most one step each: background tasks, the listener, the manager.
        async with asyncio.timeout(grace + 3 * step + 5):
            await running.stop(grace)
    finally:
        done.set()
    elapsed = time.monotonic() - started
    assert elapsed < grace + 3 * step + 1, f"the stop took {elapsed:.1f}s"
    assert server.stopped_with is not None and manager.stopped
    for name in (LIVENESS, READINESS):
        assert await health_status(running.probes.servicer, name) == NOT_SERVING


async def test_readiness_says_not_serving_while_calls_drain_and_the_listener_stays_open() -> None:
    in_flight = InFlight()
    in_flight.__enter__()
    server, manager = Server(), Manager()
    running = RunningServer(
        server,  # type: ignore[arg-type]
        manager,  # type: ignore[arg-type]
        await serving_health(),
        0,
        [],
        None,  # type: ignore[arg-type]
        in_flight,
    )
    stopping = asyncio.create_task(running.stop(30))
    await asyncio.sleep(0.2)
    # Load balancers stop sending calls; a liveness probe must not restart the pod mid-drain.
    assert await health_status(running.probes.servicer, READINESS) == NOT_SERVING
    assert await health_status(running.probes.servicer, LIVENESS) == SERVING
    assert server.stopped_with is None, "the listener closed while a call was in flight"
    assert not stopping.done()
    started = time.monotonic()
    in_flight.__exit__(None, None, None)  # the last call ends: the stop goes on at once
    async with asyncio.timeout(5):
        await stopping
    assert time.monotonic() - started < 1
    assert server.stopped_with is not None and server.stopped_with <= STOP_STEP_SECONDS
    assert manager.stopped
    assert await health_status(running.probes.servicer, LIVENESS) == NOT_SERVING


def test_a_stuck_stop_ends_the_process_after_its_bound() -> None:
    code = (
        "import logging, time\n"
        "logging.basicConfig()\n"
        "from asset_service.server import exit_if_stuck\n"
        "exit_if_stuck(0.3)\n"
        "time.sleep(30)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert time.monotonic() - started < 10
    assert done.returncode == 1
    assert "did not finish within 0.3s" in done.stderr
