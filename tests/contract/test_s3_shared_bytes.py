"""Bytes stored once on S3 (issue 24 item 2), against a real MinIO: one object however many
assets hold the same bytes, kept while any record points at it and removed with the last.

An AssetManager over SQLite and S3Storage runs in-process; the bucket is listed directly
(as an operator would). Races and crashes are made deterministic by a store wrapper that
pauses, or fails, at a chosen call (domain/references.py has the argument these check).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from asset_service.domain import keys, recovery
from asset_service.domain.errors import Unavailable
from asset_service.domain.manager import AssetManager, Limits, _base
from asset_service.domain.manager._base import new_record
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    Status,
    UploadHeader,
    new_asset_id,
)
from asset_service.storage.imports import ImportRoots
from asset_service.storage.s3 import S3Storage
from asset_service.store.sqlite import SqliteStore
from tests.backends import MinIO
from tests.contract import s3_helpers
from tests.managers import running

DATA = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(DATA).hexdigest()
GRACE = 60.0


class PausingStore:
    """A real SqliteStore whose calls can be paused or failed, once, at a chosen method."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.pause_at = ""  # method name: the next call waits for `go` before running
        self.fail_at = ""  # method name: the next call raises Unavailable instead
        self.lose_reply_at = ""  # method name: the next call applies, then raises Unavailable
        self.paused = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in (self.pause_at, self.fail_at, self.lose_reply_at):
            return method

        async def gated(*args: Any, **kw: Any) -> Any:
            if name == self.fail_at:
                self.fail_at = ""
                raise Unavailable(f"injected: {name} failed")
            if name == self.lose_reply_at:
                self.lose_reply_at = ""
                await method(*args, **kw)
                raise Unavailable(f"injected: the reply to {name} was lost")
            self.pause_at = ""
            self.paused.set()
            await asyncio.wait_for(self.go.wait(), 10)
            return await method(*args, **kw)

        return gated


class Borrowed(PausingStore):
    """The store of another manager in this process (a second server): not its to open."""

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
async def world(minio: MinIO, tmp_path: Path) -> AsyncIterator[tuple[AssetManager, PausingStore]]:
    url = f"s3://{s3_helpers.BUCKET}/{uuid.uuid4().hex}/"
    storage = S3Storage(url, tmp_path / "state", GRACE, **s3_helpers.credentials(minio))
    store = PausingStore(SqliteStore(tmp_path / "db.sqlite"))
    manager = AssetManager(store, storage, Limits())  # type: ignore[arg-type]
    async with running(manager):
        yield manager, store


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def known(label: str = "again.bin") -> UploadHeader:
    """An upload of bytes the server stores, without a chunk."""
    return UploadHeader(
        label=label, expected_size_bytes=len(DATA), expected_sha256=SHA, reuse_stored_bytes=True
    )


async def objects(manager: AssetManager) -> list[str]:
    """The objects of stored assets (uploads/ and generated/) in the bucket."""
    storage = manager.ctx.storage
    assert isinstance(storage, S3Storage)
    found = []
    for area in ("uploads/", "generated/"):
        async for item in storage.listed(storage.location.prefix + area):
            found.append(storage.location.path_of(item["Key"]))
    return sorted(found)


async def read_all(manager: AssetManager, asset_id: str) -> bytes:
    return b"".join([c async for c in await manager.read(asset_id, 0, 0)])


async def test_two_assets_of_the_same_bytes_keep_one_object(
    world: tuple[AssetManager, PausingStore],
) -> None:
    manager, _ = world
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    # Sent again (the server finds it stores them) and not sent at all (reuse).
    sent = await manager.upload(UploadHeader(label="sent.bin"), chunks(DATA[:5], DATA[5:]))
    reused = await manager.upload(known(), chunks())
    promise = await manager.create_pending(
        "task-1", "out.bin", "application/octet-stream", AssetType.FILE, []
    )
    fulfilled = await manager.upload(UploadHeader(pending_asset_id=promise.id), chunks(DATA))
    assert fulfilled.status is Status.AVAILABLE
    held = [first, sent, reused, fulfilled]
    assert {a.storage_path for a in held} == {first.storage_path}
    assert await objects(manager) == [first.storage_path]
    # Any of them may go first: the others still read whole; the last takes the object.
    for asset in [first, reused, fulfilled]:
        await manager.delete(asset.id)
        assert await objects(manager) == [first.storage_path]
        assert await read_all(manager, sent.id) == DATA
    await manager.delete(sent.id)
    assert await objects(manager) == []


async def test_expiry_removes_the_object_with_its_last_holder(
    world: tuple[AssetManager, PausingStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, _ = world
    short = await manager.upload(UploadHeader(label="short.bin", ttl_seconds=60), chunks(DATA))
    long = await manager.upload(known("long.bin"), chunks())
    await manager.set_expiry(long.id, 3600)
    now = _base.now()
    monkeypatch.setattr(_base, "now", lambda: now + timedelta(seconds=120))
    assert sum((await manager.expire_assets()).values()) == 1
    assert await objects(manager) == [short.storage_path]
    assert await read_all(manager, long.id) == DATA
    monkeypatch.setattr(_base, "now", lambda: now + timedelta(seconds=7200))
    assert sum((await manager.expire_assets()).values()) == 1
    assert await objects(manager) == []


async def test_a_clone_racing_the_delete_of_the_last_holder_keeps_its_bytes(
    world: tuple[AssetManager, PausingStore],
) -> None:
    """The clone's record write is held back until the source's delete has committed and
    removed the object: the shared write is refused and the upload keeps the bytes it
    sent, so the new asset reads whole."""
    manager, store = world
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    store.pause_at = "insert"
    upload = asyncio.create_task(manager.upload(UploadHeader(label="sent.bin"), chunks(DATA)))
    await asyncio.wait_for(store.paused.wait(), 10)
    await manager.delete(first.id)
    assert await objects(manager) == [], "the last holder went: its object with it"
    store.go.set()
    second = await upload
    assert second.storage_path != first.storage_path
    assert await objects(manager) == [second.storage_path]
    assert await read_all(manager, second.id) == DATA


async def test_a_delete_racing_a_clone_that_landed_keeps_the_object(
    world: tuple[AssetManager, PausingStore],
) -> None:
    """The delete's record is gone but its read of the references is held back while a
    clone commits: the read then sees the clone and the object stays."""
    manager, store = world
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    store.pause_at = "referenced"
    delete = asyncio.create_task(manager.delete(first.id))
    await asyncio.wait_for(store.paused.wait(), 10)
    # The delete committed: nothing holds the bytes, so a clone cannot share them.
    reused = manager.upload(known(), chunks())
    with pytest.raises(Exception, match="send them"):
        await reused
    sent = await manager.upload(UploadHeader(label="sent.bin"), chunks(DATA))
    assert sent.storage_path != first.storage_path
    store.go.set()
    await delete
    assert await objects(manager) == [sent.storage_path]
    assert await read_all(manager, sent.id) == DATA


async def test_a_shared_commit_whose_write_fails_removes_nothing(
    world: tuple[AssetManager, PausingStore],
) -> None:
    manager, store = world
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    store.fail_at = "insert"
    with pytest.raises(Unavailable):
        await manager.upload(known(), chunks())
    assert await objects(manager) == [first.storage_path]
    assert await read_all(manager, first.id) == DATA
    # And the retry shares the same object, still one in the bucket.
    again = await manager.upload(known(), chunks())
    assert again.storage_path == first.storage_path
    assert await objects(manager) == [first.storage_path]


async def test_the_orphan_sweep_keeps_an_object_another_record_holds(
    world: tuple[AssetManager, PausingStore], minio: MinIO
) -> None:
    """The object's key names the first asset; once that one is deleted, the sweep finds
    no record of that id, and must still keep the object the second points at. A crash
    between the last delete and the removal (the reference read fails) leaves it for
    the sweep, which removes it then."""
    manager, store = world
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    second = await manager.upload(known(), chunks())
    await manager.delete(first.id)
    await s3_helpers.backdate(minio, first.storage_path, GRACE * 2)
    assert await manager.reconcile() == 0
    assert await read_all(manager, second.id) == DATA
    store.fail_at = "referenced"  # the delete cannot tell: it keeps the bytes
    await manager.delete(second.id)
    assert await objects(manager) == [first.storage_path]
    assert await manager.reconcile() == 1
    assert await objects(manager) == []


@pytest.mark.parametrize("streams", [1, 2])
async def test_a_resumable_upload_of_stored_bytes_shares_them(
    world: tuple[AssetManager, PausingStore], minio: MinIO, streams: int
) -> None:
    """A resumable upload (upload_id) whose bytes turn out to be stored already ends like
    any other upload of them, in one stream or resumed in a second: a second record at the
    same object, its session's own bytes dropped; a later stream of the same upload_id
    answers with that asset."""
    manager, _ = world
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    resumable = UploadHeader(label="resumed.bin", upload_id="upload-0001", expected_sha256=SHA)
    at = 0
    if streams == 2:
        cut = len(DATA) // 2

        async def cut_short() -> AsyncIterator[bytes]:
            yield DATA[:cut]
            raise ConnectionResetError("the stream is cut")

        with pytest.raises(ConnectionResetError):
            await manager.upload(resumable, cut_short())
        at = (await manager.query_upload("upload-0001")).committed_bytes
        assert at <= cut  # whole parts only: none of 8 MiB here
    resumed = dataclasses.replace(resumable, write_offset=at)
    done = await manager.upload(resumed, chunks(DATA[at:]))
    assert done.storage_path == first.storage_path and done.id != first.id
    assert await objects(manager) == [first.storage_path]
    storage = manager.ctx.storage
    assert isinstance(storage, S3Storage)
    await storage.drain()
    assert await s3_helpers.session_leftovers(minio, storage.location.prefix) == [
        f"{storage.location.prefix}tmp/uploads/{k}"
        for k in await _session_records(minio, storage.location.prefix)
    ], "only the session's record is left (until it expires), not its bytes"
    again = await manager.upload(resumed, chunks(DATA[at:]))
    assert again.id == done.id
    await manager.delete(first.id)
    assert await read_all(manager, done.id) == DATA
    await manager.delete(done.id)
    assert await objects(manager) == []


async def _session_records(minio: MinIO, prefix: str) -> list[str]:
    """The record objects of sessions under `prefix` (tmp/uploads/<key>/session.json)."""
    area = f"{prefix}tmp/uploads/"
    async with s3_helpers.client(minio) as s3:
        listed = await s3.list_objects_v2(Bucket=s3_helpers.BUCKET, Prefix=area)
    return [
        o["Key"][len(area) :]
        for o in listed.get("Contents", ())
        if o["Key"].endswith("/session.json")
    ]


async def test_recovery_keeps_a_moved_object_that_others_share(
    minio: MinIO, tmp_path: Path
) -> None:
    """A server dies after a move's record committed, before settling its journal. Another
    server shares the object and the first record is deleted. When the first host starts
    again, recovery finds no record for the move, but records point at its object: the
    move did commit (the worker's file goes) and the object stays."""
    url = f"s3://{s3_helpers.BUCKET}/{uuid.uuid4().hex}/"
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    creds = s3_helpers.credentials(minio)
    store = SqliteStore(tmp_path / "db.sqlite")
    other = AssetManager(store, S3Storage(url, tmp_path / "other-state", GRACE, **creds), Limits())
    async with running(other):
        dead = S3Storage(url, tmp_path / "state", GRACE, ImportRoots([incoming]), **creds)
        await dead.open()
        source = incoming / "out.bin"
        source.write_bytes(DATA)
        staged = await dead.adopt(str(source), move=True)
        asset_id, now = new_asset_id(), _base.now()
        path = await staged.commit(keys.upload_key(asset_id, "out.bin", now))
        moved = new_record(
            Status.AVAILABLE,
            AssetType.FILE,
            "out.bin",
            "application/octet-stream",
            "",
            asset_id=asset_id,
            at=now,
            storage_path=path,
            size_bytes=staged.size_bytes,
            sha256=staged.sha256,
            block_sums=staged.block_sums,
        )
        await store.insert(moved)
        staged.abandon()  # the process dies before finish(): the move stays journaled
        await dead.close()

        shared = await other.upload(known(), chunks())
        assert shared.storage_path == path
        await other.delete(asset_id)
        assert await objects(other) == [path]

        restarted = S3Storage(url, tmp_path / "state", GRACE, ImportRoots([incoming]), **creds)
        await restarted.open()
        try:
            assert await recovery.recover(store, restarted) >= 1
            assert await restarted.leftovers() == []
        finally:
            await restarted.close()
        assert not source.exists(), "the move committed: the worker's file goes"
        assert await objects(other) == [path]
        assert await read_all(other, shared.id) == DATA


async def test_an_unknown_outcome_settled_after_sharing_keeps_the_object(
    world: tuple[AssetManager, PausingStore],
) -> None:
    """A record write whose outcome was unknown had applied; meanwhile another asset
    shared its object and the first was deleted. Settling then finds no record of its
    own, but a record at its object: the bytes are kept (finished, not rolled back)."""
    manager, store = world
    store.lose_reply_at, store.fail_at = "insert", "settled"
    with pytest.raises(Unavailable, match="may or may not have been written"):
        await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    [first] = (await manager.list_assets(AssetFilter(label="first.bin"), 10, "")).assets
    shared = await manager.upload(known(), chunks())
    assert shared.storage_path == first.storage_path
    await manager.delete(first.id)
    assert await manager.settle_unsettled() == 1
    assert await objects(manager) == [first.storage_path]
    assert await read_all(manager, shared.id) == DATA


async def test_two_servers_racing_shares_and_deletes_lose_and_leak_nothing(
    minio: MinIO, tmp_path: Path
) -> None:
    """Two servers (their own locks and S3Storage instances, one store, one bucket) upload
    the same bytes, reuse them and delete their holders all at once, round after round:
    every record left reads whole, and every object left is some record's."""
    url = f"s3://{s3_helpers.BUCKET}/{uuid.uuid4().hex}/"
    creds = s3_helpers.credentials(minio)
    store = SqliteStore(tmp_path / "db.sqlite")
    stores = [PausingStore(store), Borrowed(store)]  # one store: the first opens it
    managers = [
        AssetManager(
            stores[i],  # type: ignore[arg-type]
            S3Storage(url, tmp_path / f"state-{i}", GRACE, **creds),
            Limits(),
        )
        for i in range(2)
    ]
    for m in managers:
        await m.start()
    a, b = managers
    shared = 0  # records that found their bytes stored already, over the rounds
    try:
        for round_ in range(4):
            first = await a.upload(UploadHeader(label=f"first-{round_}.bin"), chunks(DATA))
            early = await asyncio.gather(
                b.upload(UploadHeader(label="sent.bin"), chunks(DATA)),
                a.upload(known(), chunks()),
            )
            shared += sum(e.storage_path == first.storage_path for e in early)
            # Now the holders go while others come to share their object.
            results = await asyncio.gather(
                a.delete(first.id),
                b.upload(known(), chunks()),
                b.delete(early[0].id),
                a.upload(UploadHeader(label="sent-too.bin"), chunks(DATA)),
                a.delete(early[1].id),
                b.upload(known(), chunks()),
                return_exceptions=True,
            )
            for r in results:
                # A reuse may find nothing left to share (NOT_FOUND: send them).
                assert not isinstance(r, BaseException) or "send them" in str(r), r
            assert isinstance(results[3], Asset), "an upload that sent its bytes succeeds"
            records = (await a.list_assets(AssetFilter(), 100, "")).assets
            paths = {r.storage_path for r in records}
            assert await objects(a) == sorted(paths), "an object with no record, or none"
            shared += len(records) - len(paths)
            for record in records:
                assert await read_all(b, record.id) == DATA
            # The holders go, from either server, all at once: the last takes the object.
            await asyncio.gather(*(managers[i % 2].delete(r.id) for i, r in enumerate(records)))
            assert await objects(a) == []
        assert shared > 0, "no record ever shared an object"
    finally:
        for m in reversed(managers):
            await m.stop()


async def test_server_side_files_of_stored_bytes_share_the_object(
    minio: MinIO, tmp_path: Path
) -> None:
    """RegisterFile (a move and a copy) and a path FulfillAsset of bytes stored already:
    one object; a moved file goes once the record is in, a copied one stays."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    url = f"s3://{s3_helpers.BUCKET}/{uuid.uuid4().hex}/"
    creds = s3_helpers.credentials(minio)
    storage = S3Storage(url, tmp_path / "state", GRACE, ImportRoots([incoming]), **creds)
    manager = AssetManager(SqliteStore(tmp_path / "db.sqlite"), storage, Limits())
    async with running(manager):
        first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
        moved, copied, output = (incoming / n for n in ("moved.bin", "copied.bin", "out.bin"))
        for path in (moved, copied, output):
            path.write_bytes(DATA)
        by_move = await manager.register_file(str(moved), "", "", (), move=True)
        by_copy = await manager.register_file(str(copied), "", "", (), move=False)
        promise = await manager.create_pending("task-1", "out.bin", "", AssetType.FILE, ())
        by_path = await manager.fulfill_from_path(promise.id, str(output), "")
        assert {a.storage_path for a in (by_move, by_copy, by_path)} == {first.storage_path}
        assert await objects(manager) == [first.storage_path]
        assert not moved.exists() and not output.exists() and copied.read_bytes() == DATA
        assert await s3_helpers.staged(minio, url.split("/", 3)[3]) == 0
        await manager.delete(first.id)
        assert await read_all(manager, by_path.id) == DATA
