"""End to end: a watch over a connection that died in silence ends and resumes (keepalive)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from asset_client import AssetClient, AssetStatus, AssetType, AsyncAssetClient, WatchEvent, _channel

from tests.e2e.tcp_proxy import TcpProxy, proxy_to
from tests.serverproc import ServerProcess


@pytest.fixture(autouse=True)
def fast_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's own keepalive, sooner: 11 s (the server refuses pings more often than
    every 10 s with GOAWAY too_many_pings, which would end the watch for another reason)
    and 2 s to answer, where it uses 30 s and 20 s."""
    monkeypatch.setattr(_channel, "KEEPALIVE_TIME_MS", 11_000)
    monkeypatch.setattr(_channel, "KEEPALIVE_TIMEOUT_MS", 2_000)


# Without keepalive the watch waits for ever; this is the test's bound on it.
BOUND = 40.0


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[TcpProxy]:
    with proxy_to(server.port) as p:
        yield p


def _watched_until_available(
    proxy: TcpProxy, helper: AssetClient, run_watch: Any
) -> list[WatchEvent]:
    """Start a watch of a promise through the proxy, silence the proxy once the snapshot
    is in, fulfil the promise past it; the events the watch delivered."""
    pending = helper.create_pending("task-k", "k.txt", type=AssetType.VALUE)
    events: list[WatchEvent] = []
    first = threading.Event()
    failure: list[BaseException] = []

    def watch() -> None:
        try:
            run_watch(pending.id, events, first)
        except BaseException as exc:  # shown by the assertion below
            failure.append(exc)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert first.wait(15), "the watch's snapshot did not arrive"
    assert proxy.silence() >= 1
    helper.fulfill(pending.id, value="done")
    thread.join(BOUND)
    assert not thread.is_alive(), (
        f"the watch still waits {BOUND:.0f}s after its connection died in silence: "
        f"{[(e.type.name, e.asset.status.name) for e in events]}"
    )
    assert not failure, failure
    return events


def test_a_watch_over_a_connection_that_died_in_silence_resumes(
    proxy: TcpProxy, helper: AssetClient
) -> None:
    with AssetClient(proxy.address, timeout=15) as client:

        def run_watch(asset_id: str, events: list[WatchEvent], first: threading.Event) -> None:
            for event in client.watch([asset_id], timeout=BOUND + 30):
                events.append(event)
                first.set()

        events = _watched_until_available(proxy, helper, run_watch)
    assert events[0].asset.status is AssetStatus.PENDING
    assert events[-1].asset.status is AssetStatus.AVAILABLE


def test_an_async_watch_over_a_connection_that_died_in_silence_resumes(
    proxy: TcpProxy, helper: AssetClient
) -> None:
    def run_watch(asset_id: str, events: list[WatchEvent], first: threading.Event) -> None:
        async def main() -> None:
            async with AsyncAssetClient(proxy.address, timeout=15) as client:
                async for event in client.watch([asset_id], timeout=BOUND + 30):
                    events.append(event)
                    first.set()

        asyncio.run(main())

    events = _watched_until_available(proxy, helper, run_watch)
    assert events[0].asset.status is AssetStatus.PENDING
    assert events[-1].asset.status is AssetStatus.AVAILABLE
