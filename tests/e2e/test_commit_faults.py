"""Faults injected exactly at the record write: bytes stay iff a record may point at them.

A real grpc.aio server runs in this process over a store wrapper that can hold the write,
raise after the write applied, raise instead of writing, or fail the re-read; clients talk
to it through real stubs. Each case runs for uploads, path fulfills and RegisterFile(move),
and for shared bytes (issue 24): an upload of stored bytes without a chunk
(reuse_stored_bytes), one that sends them again and one that fulfils a promise with them,
each a second name for the stored file (on MinIO: a second record at the same object),
which must stay whole whatever happens to the new one, and go with the last holder.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import os
import uuid
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
from tests.backends import MinIO
from tests.contract import s3_helpers
from tests.e2e.helpers import pending_asset, read_all, stored_files, upload

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

    def arm(
        self,
        *,
        fail_before: bool = False,
        fail_after: bool = False,
        then_reads_fail: bool = False,
        hold: asyncio.Event | None = None,
    ) -> None:
        """Sets what the next record write does: fail before or after it is sent, or wait
        for `hold`; with then_reads_fail, reads fail too from that write on."""
        self.armed = True
        self.fail_before, self.fail_after, self.hold = fail_before, fail_after, hold
        self.then_reads_fail = then_reads_fail

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
    # The object store's (MinIO's) bucket prefix, or "" on the local disk.
    s3_prefix: str = ""
    minio: MinIO | None = None

    async def stored(self) -> set[str]:
        """The storage paths of every stored file (and staging) there is."""
        if not self.s3_prefix:
            return {str(p) for p in stored_files(self.root)}
        assert self.minio is not None
        found = set()
        async with s3_helpers.client(self.minio) as s3:
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=s3_helpers.BUCKET, Prefix=self.s3_prefix
            )
            async for page in pages:
                for o in page.get("Contents", []):
                    if not o["Key"].startswith(f"{self.s3_prefix}tmp/"):
                        found.add(f"s3://{s3_helpers.BUCKET}/{o['Key']}")
        if await s3_helpers.staged(self.minio, self.s3_prefix):
            found.add("(staging left in the bucket)")
        return found

    async def settle(self) -> None:
        """Wait for record writes that outlived their RPC, then settle unknown outcomes."""
        commits = self.running.manager.commits
        while commits.publishing:
            await asyncio.wait(set(commits.publishing))
        await commits.settle()


@pytest.fixture
async def rig(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """The server on the local disk, or (a case of SHARED on "s3") on MinIO."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    args = ["--listen", "127.0.0.1:0", "--storage-root", str(tmp_path / "data")]
    args += ["--import-root", str(incoming)]
    callspec = getattr(request.node, "callspec", None)
    on_s3 = callspec is not None and callspec.params.get("storage") == "s3"
    prefix, minio = "", None
    if on_s3:
        minio = request.getfixturevalue("minio")
        for name, value in minio.aws_env().items():
            monkeypatch.setenv(name, value)
        prefix = f"faults-{uuid.uuid4().hex[:8]}/"
        args += ["--storage-url", f"s3://{s3_helpers.BUCKET}/{prefix}"]
    settings = load_settings(args, {})
    (tmp_path / "data").mkdir(exist_ok=True)
    store = FaultyStore(SqliteStore(tmp_path / "data" / "assets.db"))
    running = await start(settings, store=store)  # type: ignore[arg-type]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            yield Rig(running, store, stub, settings.storage_root, incoming, prefix, minio)
    finally:
        await running.stop(1)


@dataclass
class Op:
    """One way to make bytes visible; `source` is the worker file a move may remove."""

    content: bytes
    source: Path | None
    call: Callable[[float | None], Awaitable[Any]]
    find: Callable[[], Awaitable[pb.Asset | None]]
    # Stored files that were there before and must stay (the bytes a reuse shares), and
    # the asset that holds them.
    keep: frozenset[str] = frozenset()
    base: str = ""


async def make_op(kind: str, rig: Rig) -> Op:
    n = next(_serial)
    content = f"{kind} payload {n} ".encode() * 1000
    label = f"{kind}-{n}.bin"
    stub = rig.stub

    async def by_label() -> pb.Asset | None:
        found = await stub.ListAssets(pb.ListAssetsRequest(label=label))
        return found.assets[0] if found.assets else None

    if kind == "refulfill":
        # A promise fulfilled by an upload of bytes already stored: a shared transition.
        base = await upload(stub, [content], label=f"base-{n}.bin")
        promised = await stub.CreatePendingAsset(
            pb.CreatePendingAssetRequest(task_id="t", label=label)
        )

        async def promise() -> pb.Asset | None:
            return (await stub.GetAsset(pb.GetAssetRequest(asset_id=promised.asset.id))).asset

        return Op(
            content,
            None,
            lambda timeout: upload(
                stub, [content], timeout=timeout or 30, pending_asset_id=promised.asset.id
            ),
            promise,
            frozenset({base.storage_path}),
            base.id,
        )
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
                base.id,
            )
        return Op(
            content,
            None,
            lambda timeout: upload(stub, [content], timeout=timeout or 30, label=label),
            by_label,
            keep,
            base.id,
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
    pending = await pending_asset(stub, label)
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
    for kept in op.keep:  # one file, two names (one object, two records)
        if rig.s3_prefix:
            assert asset.storage_path == kept
        else:
            assert os.stat(kept).st_ino == os.stat(asset.storage_path).st_ino
    await assert_clean(rig, {asset.storage_path, *op.keep})
    if op.base:
        # The bytes go with the last of their holders only, whichever goes first.
        await rig.stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=op.base))
        assert await read_all(rig.stub, asset.id) == op.content
        await rig.stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset.id))
        await assert_clean(rig, set())


async def assert_rolled_back(rig: Rig, op: Op) -> None:
    """No record points at new bytes, none are left, and the source is untouched."""
    asset = await op.find()
    assert asset is None or asset.status == pb.ASSET_STATUS_PENDING
    if op.source is not None:
        assert op.source.read_bytes() == op.content, "the worker's file must stay"
    for kept in op.keep:  # the stored bytes stay whole, with no other name left
        if not rig.s3_prefix:
            assert Path(kept).read_bytes() == op.content and os.stat(kept).st_nlink == 1
    if op.base:
        assert await read_all(rig.stub, op.base) == op.content
    await assert_clean(rig, set(op.keep))


async def unavailable(op: Op) -> str:
    """Runs the operation, which must fail UNAVAILABLE; the error's details."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await op.call(10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    return info.value.details() or ""


async def assert_clean(rig: Rig, expected: set[str]) -> None:
    files = await rig.stored()
    assert files == expected, f"stored files {files} != {expected}"
    if not rig.s3_prefix:
        assert list(rig.running.manager.storage.intents.iterdir()) == []  # type: ignore[attr-defined]


# (storage, kind): every kind on the local disk; those with shared bytes on MinIO too,
# where the records pointing at one object are its references (domain/references.py).
SHARED = ["reuse", "resend", "refulfill"]
CASES = [("local", k) for k in ["upload", "fulfill", "register", *SHARED]] + [
    ("s3", k) for k in SHARED
]


@pytest.mark.parametrize(("storage", "kind"), CASES)
async def test_write_applied_then_error_is_confirmed_by_a_re_read(
    rig: Rig, storage: str, kind: str
) -> None:
    op = await make_op(kind, rig)
    rig.store.arm(fail_after=True)
    await op.call(10)  # the re-read shows the write applied: an OK answer
    await assert_committed(rig, op)


@pytest.mark.parametrize(("storage", "kind"), CASES)
async def test_unknown_outcome_keeps_the_bytes_and_the_source(
    rig: Rig, storage: str, kind: str
) -> None:
    op = await make_op(kind, rig)
    # The re-read fails too: nobody can know yet.
    rig.store.arm(fail_after=True, then_reads_fail=True)
    assert "may or may not have been written" in await unavailable(op)
    rig.store.reads_fail = False
    asset = await op.find()
    assert asset is not None and asset.status == pb.ASSET_STATUS_AVAILABLE
    assert await read_all(rig.stub, asset.id) == op.content, "AVAILABLE, so its bytes stay"
    if op.source is not None:
        assert op.source.read_bytes() == op.content, "not removed while the outcome was unknown"
    await rig.settle()  # what the server's settle loop does once the store answers
    await assert_committed(rig, op)


@pytest.mark.parametrize(("storage", "kind"), CASES)
async def test_unknown_outcome_of_a_write_that_did_not_apply_rolls_back(
    rig: Rig, storage: str, kind: str
) -> None:
    op = await make_op(kind, rig)
    rig.store.arm(fail_before=True, then_reads_fail=True)
    await unavailable(op)
    rig.store.reads_fail = False
    await rig.settle()
    await assert_rolled_back(rig, op)


@pytest.mark.parametrize(("storage", "kind"), CASES)
async def test_a_write_that_failed_cleanly_rolls_back(rig: Rig, storage: str, kind: str) -> None:
    op = await make_op(kind, rig)
    rig.store.arm(fail_before=True)
    await unavailable(op)
    await assert_rolled_back(rig, op)


@pytest.mark.parametrize("how", ["cancel", "deadline"])
@pytest.mark.parametrize(("storage", "kind"), CASES)
async def test_cancelled_while_the_record_is_written(
    rig: Rig, storage: str, kind: str, how: str
) -> None:
    op = await make_op(kind, rig)
    hold = asyncio.Event()
    rig.store.arm(hold=hold)
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
    hold.set()
    await rig.settle()
    await assert_committed(rig, op)
