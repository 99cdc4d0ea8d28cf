"""End to end: a watch over a connection that died in silence ends and resumes (keepalive)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from asset_client import AssetClient, AssetStatus, AssetType, AsyncAssetClient, WatchEvent, _channel

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


class SilentProxy:
    """Forwards TCP both ways; `cut()` stops forwarding on the connections it holds without
    closing them (a NAT or firewall that dropped them: no FIN, no RST), while connections
    made afterwards pass."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.held: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            silent = threading.Event()
            with self.lock:
                self.held.append((down, up, silent))
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b, silent), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, silent: threading.Event) -> None:
        src.settimeout(0.1)
        while not silent.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data or silent.is_set():
                return  # cut: what came in is dropped, and nothing is closed
            try:
                dst.sendall(data)
            except OSError:
                return

    def cut(self) -> int:
        with self.lock:
            for _, _, silent in self.held:
                silent.set()
            return len(self.held)

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for down, up, silent in self.held:
                silent.set()
                down.close()
                up.close()


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[SilentProxy]:
    p = SilentProxy(server.address)
    yield p
    p.close()


def _watched_until_available(
    proxy: SilentProxy, helper: AssetClient, run_watch: Any
) -> list[WatchEvent]:
    """Start a watch of a promise through the proxy, cut the proxy once the snapshot is
    in, fulfil the promise past the proxy; the events the watch delivered."""
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
    assert proxy.cut() >= 1
    helper.fulfill(pending.id, value="done")
    thread.join(BOUND)
    assert not thread.is_alive(), (
        f"the watch still waits {BOUND:.0f}s after its connection died in silence: "
        f"{[(e.type.name, e.asset.status.name) for e in events]}"
    )
    assert not failure, failure
    return events


def test_a_watch_over_a_connection_that_died_in_silence_resumes(
    proxy: SilentProxy, helper: AssetClient
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
    proxy: SilentProxy, helper: AssetClient
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
