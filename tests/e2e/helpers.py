"""Helpers shared by the end-to-end tests: uploads, storage inspection, errors, client drivers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import re
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from asset_client import AsyncAssetClient

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess

MiB = 1024 * 1024


def pattern_chunks(total: int, chunk: int = MiB, seed: bytes = b"seed") -> Iterable[bytes]:
    """Deterministic, incompressible-looking bytes, generated chunk by chunk."""
    block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(8192))
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        offset = (sent // chunk) % len(block)
        piece = (block[offset:] + block[:offset]) * (n // len(block) + 1)
        yield piece[:n]
        sent += n


def digest_of(chunks: Iterable[bytes]) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    for c in chunks:
        h.update(c)
        size += len(c)
    return h.hexdigest(), size


async def upload(
    stub: pb_grpc.AssetServiceStub,
    chunks: Iterable[bytes],
    timeout: float = 120,
    **header: object,
) -> pb.Asset:
    async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=pb.UploadHeader(**header))  # type: ignore[arg-type]
        for chunk in chunks:
            yield pb.UploadAssetRequest(chunk=chunk)

    response = await stub.UploadAsset(requests(), timeout=timeout)
    return response.asset


async def pending_asset(
    stub: pb_grpc.AssetServiceStub, label: str, task_id: str = "t", **fields: Any
) -> pb.Asset:
    """A PENDING asset of task `task_id` (CreatePendingAsset; `fields`: the request's others)."""
    request = pb.CreatePendingAssetRequest(task_id=task_id, label=label, **fields)
    return (await stub.CreatePendingAsset(request)).asset


async def value_asset(stub: pb_grpc.AssetServiceStub, label: str, **value: Any) -> pb.Asset:
    """A VALUE asset holding pb.Value(**value) (CreateValueAsset)."""
    request = pb.CreateValueAssetRequest(label=label, value=pb.Value(**value))
    return (await stub.CreateValueAsset(request)).asset


async def unfinished_upload(
    label: str, chunks: Iterable[bytes], sent: asyncio.Event
) -> AsyncIterator[pb.UploadAssetRequest]:
    """An upload's requests that never end: the header and the chunks, then `sent` is set
    and the stream stays open (until the call is cancelled, or its server dies)."""
    yield pb.UploadAssetRequest(header=pb.UploadHeader(label=label))
    for chunk in chunks:
        yield pb.UploadAssetRequest(chunk=chunk)
    sent.set()
    await asyncio.sleep(3600)


def upload_sync(address: str, chunks: Iterable[bytes], **header: object) -> pb.Asset:
    """UploadAsset through the sync client, which reports the server's status as sent.

    The asyncio client does not when the server ends the stream early (a limit, a full
    disk) while a chunk is on its way: the failed write turns the server's status into
    "INTERNAL: Internal error from Core" (grpc/grpc#36066). Run it with asyncio.to_thread.
    """

    def requests() -> Iterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=pb.UploadHeader(**header))  # type: ignore[arg-type]
        for chunk in chunks:
            yield pb.UploadAssetRequest(chunk=chunk)

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        response: pb.UploadAssetResponse = stub.UploadAsset(requests(), timeout=60)
        return response.asset


async def read_all(stub: pb_grpc.AssetServiceStub, asset_id: str) -> bytes:
    parts = [r.chunk async for r in stub.ReadAsset(pb.ReadAssetRequest(asset_id=asset_id))]
    return b"".join(parts)


def stored_files(root: Path) -> list[Path]:
    """Every file in the storage's final areas and staging (not the lock files, not the db,
    not the empty file the readiness probe creates and removes in its staging at once)."""
    found = []
    for area in ("uploads", "generated", "tmp/staging"):
        base = root / area
        if base.exists():
            found += [
                p
                for p in base.rglob("*")
                if p.is_file() and p.name != ".lock" and not p.name.startswith(".ping-")
            ]
    return sorted(found)


async def all_assets(stub: pb_grpc.AssetServiceStub) -> list[pb.Asset]:
    assets, token = [], ""
    while True:
        page = await stub.ListAssets(pb.ListAssetsRequest(page_size=1000, page_token=token))
        assets += page.assets
        token = page.next_page_token
        if not token:
            return assets


async def expect_error(
    call: object, code: grpc.StatusCode, *fragments: str
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.RpcError) as info:  # the asyncio and the sync client's errors
        await call  # type: ignore[misc]
    err: grpc.aio.AioRpcError = info.value  # type: ignore[assignment]
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
    for fragment in fragments:
        assert fragment in (err.details() or ""), f"{fragment!r} not in {err.details()!r}"
    return err


T = TypeVar("T")


class AsyncDriver:
    """Drives an AsyncAssetClient from blocking test code, so one test body covers both clients.

    The client lives on an event loop in a thread of its own; the coroutines and async
    iterators its methods return run there and come back as plain values and iterators.
    """

    def __init__(self, address: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def connect() -> AsyncAssetClient:
            return AsyncAssetClient(address, timeout=15)  # its channel binds to this loop

        self.inner = self._run(connect())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def _stub(self) -> Any:
        return self.inner._stub

    @_stub.setter
    def _stub(self, stub: Any) -> None:
        self.inner._stub = stub

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isasyncgen(result):
                return self._iterate(result)
            if inspect.iscoroutine(result):
                return self._run(result)
            if hasattr(result, "__aenter__"):  # keep_lease
                return self._enter(result)
            return result

        return call

    @contextlib.contextmanager
    def _enter(self, manager: Any) -> Iterator[Any]:
        """`async with` on the client's loop, as a `with` block in the caller's thread."""
        value = self._run(manager.__aenter__())
        try:
            yield value
        except BaseException as exc:
            if not self._run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._run(manager.__aexit__(None, None, None))

    def task_names(self) -> set[str]:
        """The names of the tasks not done on the client's loop."""

        async def names() -> set[str]:
            return {t.get_name() for t in asyncio.all_tasks()}

        return self._run(names())

    def _iterate(self, events: Any) -> Iterator[Any]:
        async def step() -> tuple[bool, Any]:
            try:
                return False, await anext(events)
            except StopAsyncIteration:
                return True, None

        try:
            while True:
                done, item = self._run(step())
                if done:
                    return
                yield item
        finally:
            self._run(events.aclose())

    def close(self) -> None:
        try:
            self._run(self.inner.close())
            self._run(self._loop.shutdown_default_executor())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


class InjectedUnavailable(grpc.RpcError):
    """The error a cut stream raises: UNAVAILABLE, as when the connection drops."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "injected disconnect"


class CutWatch:
    """A WatchAsset call that delivers `keep` messages, runs `meanwhile`, then fails."""

    def __init__(self, call: Any, keep: int, meanwhile: Callable[[], object]) -> None:
        self.call, self.keep, self.meanwhile = call, keep, meanwhile

    def __iter__(self) -> Iterator[Any]:
        messages = iter(self.call)
        for _ in range(self.keep):
            yield next(messages)
        self.meanwhile()
        raise InjectedUnavailable()

    async def __aiter__(self) -> AsyncIterator[Any]:
        messages = aiter(self.call)
        for _ in range(self.keep):
            yield await anext(messages)
        self.meanwhile()
        raise InjectedUnavailable()

    def cancel(self) -> None:
        self.call.cancel()


class RecordingStub:
    """Stands in for the client's stub: records requests; cuts the first watch streams.

    `listed` runs after each listing (e.g. the one that pins "from now").
    """

    def __init__(
        self,
        real: Any,
        cuts: list[tuple[int, Callable[[], object]]],
        listed: Callable[[], object] = lambda: None,
    ) -> None:
        self.real = real
        self.cuts = cuts
        self.listed = listed
        self.watches: list[pb.WatchAssetRequest] = []
        self.lists: list[pb.ListAssetsRequest] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def ListAssets(self, request: pb.ListAssetsRequest, timeout: float | None) -> Any:
        self.lists.append(request)
        call = self.real.ListAssets(request, timeout=timeout)
        if not inspect.isawaitable(call):
            self.listed()
            return call

        async def answered() -> Any:  # the asyncio client's call runs once awaited
            page = await call
            self.listed()
            return page

        return answered()

    def WatchAsset(self, request: pb.WatchAssetRequest, timeout: float | None) -> Any:
        self.watches.append(request)
        call = self.real.WatchAsset(request, timeout=timeout)
        if len(self.watches) <= len(self.cuts):
            keep, meanwhile = self.cuts[len(self.watches) - 1]
            return CutWatch(call, keep, meanwhile)
        return call


def server_trace(server: ServerProcess, details: str | None) -> str:
    """For an INTERNAL answer ("server log ref X"): the server's log from that ref on, so a
    failing test shows the traceback of the bug, not just its reference."""
    match = re.search(r"server log ref (\w+)", details or "")
    if match is None:
        return ""
    lines = server.log
    start = next((i for i, line in enumerate(lines) if match.group(1) in line), None)
    if start is None:
        return f"(ref {match.group(1)} not found in the server log)"
    return "server log:\n" + "".join(lines[start : start + 60])
