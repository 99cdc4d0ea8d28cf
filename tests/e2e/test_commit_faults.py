"""Faults injected exactly at the record write: bytes stay iff a record may point at them.

A real grpc.aio server runs in this process over a store wrapper that can hold the write,
raise after the write applied, raise instead of writing, or fail the re-read; clients talk
to it through real stubs. Each case runs for uploads, path fulfills and RegisterFile(move),
and for shared bytes (issue 24): an upload of stored bytes without a chunk
(reuse_stored_bytes) and one that sends them again, each a second name for the stored
file, which must stay whole whatever happens to the new one.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.config import load_settings
from asset_service.domain.errors import Unavailable
from asset_service.domain.models import Asset
from asset_service.server import RunningServer, start
from asset_service.store.sqlite import SqliteStore
from tests.e2e.helpers import read_all, stored_files, upload

_serial = itertools.count()


class FaultyStore:
    """A real SqliteStore whose next record write can be held, or fail before or after."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.armed = False
        self.hold: asyncio.Event | None = None
        self.fail_before = False
        self.fail_after = False
        self.reads_fail = False
        self.then_reads_fail = False  # from the armed write on, until the test clears it
        self.write_started = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _write(self, fn: Callable[..., Awaitable[Asset]], *args: Any) -> Asset:
        if not self.armed:
            return await fn(*args)
        self.armed = False
        self.reads_fail = self.then_reads_fail
        self.write_started.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.fail_before:
            raise Unavailable("injected: connection lost before the write was sent")
        result = await fn(*args)
        if self.fail_after:
            raise Unavailable("injected: connection lost after the write was sent")
        return result

    async def insert(self, asset: Asset, *, shared: bool = False) -> Asset:
        return await self._write(functools.partial(self.inner.insert, shared=shared), asset)

    async def transition(self, *args: Any, shared: bool = False) -> Asset:
        return await self._write(functools.partial(self.inner.transition, shared=shared), *args)

    async def get(self, asset_id: str) -> Asset | None:
        if self.reads_fail:
            raise Unavailable("injected: reads fail")
        return await self.inner.get(asset_id)

    async def settled(self, asset_ids: list[str]) -> dict[str, Asset]:
        if self.reads_fail:
            raise Unavailable("injected: reads fail")
        return await self.inner.settled(asset_ids)


@dataclass
class Rig:
    running: RunningServer
    store: FaultyStore
    stub: pb_grpc.AssetServiceStub
    root: Path
    incoming: Path

    async def settle(self) -> None:
        """Wait for record writes that outlived their RPC, then settle unknown outcomes."""
        commits = self.running.manager.commits
        while commits.publishing:
            await asyncio.wait(set(commits.publishing))
        await commits.settle()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    settings = load_settings(
        [
            "--listen",
            "127.0.0.1:0",
            "--storage-root",
            str(tmp_path / "data"),
            "--import-root",
            str(incoming),
        ],
        {},
    )
    store = FaultyStore(SqliteStore(tmp_path / "data" / "assets.db"))
    running = await start(settings, store=store)  # type: ignore[arg-type]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield Rig(
                running, store, pb_grpc.AssetServiceStub(channel), settings.storage_root, incoming
            )
    finally:
        await running.stop(1)


@dataclass
class Op:
    """One way to make bytes visible; `source` is the worker file a move may remove."""

    content: bytes
    source: Path | None
    call: Callable[[float | None], Awaitable[Any]]
    find: Callable[[], Awaitable[pb.Asset | None]]
    # Stored files that were there before and must stay (the bytes a reuse shares).
    keep: frozenset[str] = frozenset()


async def make_op(kind: str, rig: Rig) -> Op:
    n = next(_serial)
    content = f"{kind} payload {n} ".encode() * 1000
    label = f"{kind}-{n}.bin"
    stub = rig.stub

    async def by_label() -> pb.Asset | None:
        found = await stub.ListAssets(pb.ListAssetsRequest(label=label))
        return found.assets[0] if found.assets else None

    if kind in ("reuse", "resend"):
        base = await upload(stub, [content], label=f"base-{n}.bin")
        keep = frozenset({base.storage_path})
        if kind == "reuse":
            header: dict[str, object] = {
                "label": label,
                "expected_size_bytes": len(content),
                "expected_sha256": hashlib.sha256(content).hexdigest(),
                "reuse_stored_bytes": True,
            }
            return Op(
                content,
                None,
                lambda timeout: upload(stub, [], timeout=timeout or 30, **header),
                by_label,
                keep,
            )
        return Op(
            content,
            None,
            lambda timeout: upload(stub, [content], timeout=timeout or 30, label=label),
            by_label,
            keep,
        )
    if kind == "upload":
        return Op(
            content,
            None,
            lambda timeout: upload(stub, [content], timeout=timeout or 30, label=label),
            by_label,
        )
    source = rig.incoming / label
    source.write_bytes(content)
    if kind == "register":
        request = pb.RegisterFileRequest(path=str(source), label=label, move=True)
        return Op(content, source, lambda t: stub.RegisterFile(request, timeout=t), by_label)
    pending = (
        await stub.CreatePendingAsset(pb.CreatePendingAssetRequest(task_id="t", label=label))
    ).asset
    fulfill = pb.FulfillAssetRequest(asset_id=pending.id, source_path=str(source))

    async def current() -> pb.Asset | None:
        return (await stub.GetAsset(pb.GetAssetRequest(asset_id=pending.id))).asset

    return Op(content, source, lambda t: stub.FulfillAsset(fulfill, timeout=t), current)


async def assert_committed(rig: Rig, op: Op) -> None:
    """The record is AVAILABLE, its bytes read back, and a moved source is gone."""
    asset = await op.find()
    assert asset is not None and asset.status == pb.ASSET_STATUS_AVAILABLE
    assert asset.sha256 == hashlib.sha256(op.content).hexdigest()
    assert await read_all(rig.stub, asset.id) == op.content
    if op.source is not None:
        assert not op.source.exists(), "the move completed: the source must be gone"
    for kept in op.keep:  # one file, two names
        assert os.stat(kept).st_ino == os.stat(asset.storage_path).st_ino
    assert_clean(rig, {asset.storage_path, *op.keep})


async def assert_rolled_back(rig: Rig, op: Op) -> None:
    """No record points at new bytes, none are left, and the source is untouched."""
    asset = await op.find()
    assert asset is None or asset.status == pb.ASSET_STATUS_PENDING
    if op.source is not None:
        assert op.source.read_bytes() == op.content, "the worker's file must stay"
    for kept in op.keep:  # the stored bytes stay whole, with no other name left
        assert Path(kept).read_bytes() == op.content and os.stat(kept).st_nlink == 1
    assert_clean(rig, set(op.keep))


def assert_clean(rig: Rig, expected: set[str]) -> None:
    files = {str(p) for p in stored_files(rig.root)}
    assert files == expected, f"stored files {files} != {expected}"
    assert list(rig.running.manager.storage.intents.iterdir()) == []  # type: ignore[attr-defined]


KINDS = ["upload", "fulfill", "register", "reuse", "resend"]


@pytest.mark.parametrize("kind", KINDS)
async def test_write_applied_then_error_is_confirmed_by_a_re_read(rig: Rig, kind: str) -> None:
    op = await make_op(kind, rig)
    rig.store.armed, rig.store.fail_after = True, True
    await op.call(10)  # the re-read shows the write applied: an OK answer
    await assert_committed(rig, op)


@pytest.mark.parametrize("kind", KINDS)
async def test_unknown_outcome_keeps_the_bytes_and_the_source(rig: Rig, kind: str) -> None:
    op = await make_op(kind, rig)
    rig.store.armed, rig.store.fail_after = True, True
    rig.store.then_reads_fail = True  # the re-read fails too: nobody can know yet
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await op.call(10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "may or may not have been written" in (info.value.details() or "")
    rig.store.reads_fail = False
    asset = await op.find()
    assert asset is not None and asset.status == pb.ASSET_STATUS_AVAILABLE
    assert await read_all(rig.stub, asset.id) == op.content, "AVAILABLE, so its bytes stay"
    if op.source is not None:
        assert op.source.read_bytes() == op.content, "not removed while the outcome was unknown"
    await rig.settle()  # what the server's settle loop does once the store answers
    await assert_committed(rig, op)


@pytest.mark.parametrize("kind", KINDS)
async def test_unknown_outcome_of_a_write_that_did_not_apply_rolls_back(
    rig: Rig, kind: str
) -> None:
    op = await make_op(kind, rig)
    rig.store.armed, rig.store.fail_before = True, True
    rig.store.then_reads_fail = True
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await op.call(10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    rig.store.reads_fail = False
    await rig.settle()
    await assert_rolled_back(rig, op)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_write_that_failed_cleanly_rolls_back(rig: Rig, kind: str) -> None:
    op = await make_op(kind, rig)
    rig.store.armed, rig.store.fail_before = True, True
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await op.call(10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await assert_rolled_back(rig, op)


@pytest.mark.parametrize("how", ["cancel", "deadline"])
@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_while_the_record_is_written(rig: Rig, kind: str, how: str) -> None:
    op = await make_op(kind, rig)
    rig.store.armed, rig.store.hold = True, asyncio.Event()
    rig.store.write_started.clear()
    call = asyncio.ensure_future(op.call(None if how == "cancel" else 1.0))
    await asyncio.wait_for(rig.store.write_started.wait(), 10)
    if how == "cancel":
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    else:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.2)  # let the server see the cancellation before the write lands
    rig.store.hold.set()
    await rig.settle()
    await assert_committed(rig, op)
