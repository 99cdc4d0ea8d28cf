"""Uploads that skip bytes already stored (issue 24), in-process over SQLite and the local disk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asset_service.domain import keys
from asset_service.domain.errors import InvalidArgument, NotFound
from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    Status,
    UploadHeader,
    new_asset_id,
)
from asset_service.storage.local import LocalStorage
from asset_service.store.sqlite import SqliteStore
from tests.managers import running

DATA = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[AssetManager]:
    m = AssetManager(
        SqliteStore(tmp_path / "db.sqlite"), LocalStorage(tmp_path / "blobs"), Limits()
    )
    async with running(m):
        yield m


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def known(size: int = len(DATA), sha: str = SHA, **kw: object) -> UploadHeader:
    fields: dict[str, object] = {"label": "again.bin", **kw}
    return UploadHeader(
        expected_size_bytes=size,
        expected_sha256=sha,
        reuse_stored_bytes=True,
        **fields,  # type: ignore[arg-type]
    )


async def read_all(m: AssetManager, asset_id: str) -> bytes:
    return b"".join([c async for c in await m.read(asset_id, 0, 0)])


async def test_known_bytes_make_an_asset_of_their_own_without_a_chunk(
    manager: AssetManager,
) -> None:
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    again = await manager.upload(known(), chunks())
    assert again.id != first.id and again.label == "again.bin"
    assert (again.sha256, again.size_bytes, again.status) == (SHA, len(DATA), Status.AVAILABLE)
    assert again.storage_path != first.storage_path
    assert await read_all(manager, again.id) == DATA
    # Each stands alone: deleting the source leaves the copy whole.
    await manager.delete(first.id)
    assert await read_all(manager, again.id) == DATA


async def test_known_bytes_are_stored_once_and_each_name_goes_alone(
    manager: AssetManager, tmp_path: Path
) -> None:
    """On the local disk the second asset is a hard link: one inode, whose link count is
    the reference count; deleting either asset leaves the other whole, the last one takes
    the bytes."""
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    again = await manager.upload(known(), chunks())
    one, two = os.stat(first.storage_path), os.stat(again.storage_path)
    assert (one.st_ino, one.st_nlink) == (two.st_ino, 2)
    assert again.block_sums == first.block_sums is not None
    await manager.delete(first.id)
    assert os.stat(again.storage_path).st_nlink == 1
    assert await read_all(manager, again.id) == DATA
    await manager.delete(again.id)
    stored = [*(tmp_path / "blobs" / "uploads").rglob("*")]
    assert [p for p in stored if p.is_file()] == []


async def test_a_second_name_a_crash_left_without_a_record_is_swept(tmp_path: Path) -> None:
    """A crash between the link and its record leaves a name no record points at:
    start-up's reconcile removes that name (past the grace) and the first asset stays."""
    store = SqliteStore(tmp_path / "db.sqlite")
    storage = LocalStorage(tmp_path / "blobs", orphan_grace_seconds=0.0)
    m = AssetManager(store, storage, Limits())
    async with running(m):
        first = await m.upload(UploadHeader(label="first.bin"), chunks(DATA))
        stored = await m.get(first.id)
        assert stored.block_sums is not None
        cloned = await storage.clone(stored.storage_path, len(DATA), SHA, stored.block_sums)
        assert cloned is not None
        orphan = await cloned.commit(keys.upload_key(new_asset_id(), "x.bin", stored.created_at))
        cloned.abandon()  # the process died here: no record
        assert os.stat(orphan).st_nlink == 2
        assert await m.reconcile() == 1
        assert not os.path.exists(orphan)
        assert os.stat(stored.storage_path).st_nlink == 1
        assert await read_all(m, first.id) == DATA


async def test_known_bytes_fulfil_a_promise(manager: AssetManager) -> None:
    await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    promise = await manager.create_pending("task-1", "out.bin", "", AssetType.FILE, ())
    done = await manager.upload(known(pending_asset_id=promise.id, label=""), chunks())
    assert done.id == promise.id and done.status is Status.AVAILABLE and done.sha256 == SHA
    assert "/generated/task-1/" in done.storage_path
    assert await read_all(manager, done.id) == DATA


async def test_unknown_bytes_are_not_found_and_nothing_is_made(manager: AssetManager) -> None:
    await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    with pytest.raises(NotFound, match=r"no stored bytes .* send them"):
        await manager.upload(known(sha="ab" * 32), chunks())
    # The sha256 alone is not enough: the size must match too.
    with pytest.raises(NotFound, match="no stored bytes"):
        await manager.upload(known(size=len(DATA) - 1), chunks())
    page = await manager.list_assets(AssetFilter(), 10, "")
    assert [a.label for a in page.assets] == ["first.bin"]


async def test_stored_bytes_changed_on_disk_are_not_copied(manager: AssetManager) -> None:
    """The declared sha256 matches the record, but the file no longer does: the server's
    own check of the stored bytes decides, and the client must send them."""
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    path = Path(first.storage_path)
    with path.open("r+b") as f:
        f.seek(1024 * 1024 + 5)
        f.write(b"X")  # same size, other bytes, written after the record
    with pytest.raises(NotFound, match="send them"):
        await manager.upload(known(), chunks())
    marked = await manager.get(first.id)
    assert marked.corrupt_reason  # found by the check, marked for everyone


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (known(upload_id="resumable-1234"), "not for a resumable upload"),
        (known(sha=""), "needs expected_size_bytes and expected_sha256"),
        (
            UploadHeader(label="x", expected_sha256=SHA, reuse_stored_bytes=True),
            "needs expected_size_bytes",
        ),
    ],
)
async def test_a_malformed_reuse_header_is_invalid(
    manager: AssetManager, header: UploadHeader, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await manager.upload(header, chunks())


async def test_a_reuse_stream_with_a_chunk_is_invalid(manager: AssetManager) -> None:
    await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    with pytest.raises(InvalidArgument, match="must carry no chunk"):
        await manager.upload(known(), chunks(b"x"))


async def test_bytes_sent_again_are_stored_once(manager: AssetManager) -> None:
    """An upload that sends bytes the server already stores keeps one copy: the staged one
    goes, the asset is a second name for the stored file (the local disk)."""
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    second = await manager.upload(
        UploadHeader(label="second.bin", expected_sha256=SHA), chunks(DATA[:1000], DATA[1000:])
    )
    one, two = os.stat(first.storage_path), os.stat(second.storage_path)
    assert one.st_ino == two.st_ino and one.st_nlink == 2
    assert second.sha256 == SHA and second.block_sums == first.block_sums
    promise = await manager.create_pending("task-1", "out.bin", "", AssetType.FILE, ())
    fulfilled = await manager.upload(UploadHeader(pending_asset_id=promise.id), chunks(DATA))
    assert os.stat(fulfilled.storage_path).st_ino == one.st_ino
    assert os.stat(first.storage_path).st_nlink == 3
    await manager.delete(first.id)
    await manager.delete(second.id)
    assert await read_all(manager, fulfilled.id) == DATA


async def test_bytes_sent_again_are_kept_when_the_stored_ones_are_corrupt(
    manager: AssetManager,
) -> None:
    """The stored copy is read and checked before the sent one is let go: stored bytes
    that rotted are never what a new upload gets."""
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    with Path(first.storage_path).open("r+b") as f:
        f.seek(5)
        f.write(b"X")
    second = await manager.upload(UploadHeader(label="second.bin"), chunks(DATA))
    assert os.stat(second.storage_path).st_ino != os.stat(first.storage_path).st_ino
    assert await read_all(manager, second.id) == DATA
    assert (await manager.get(first.id)).corrupt_reason


async def test_a_resumable_upload_of_stored_bytes_is_a_second_name(
    manager: AssetManager,
) -> None:
    """A resumable upload (upload_id) completed in its first stream keeps stored bytes
    once too: the session's own copy goes, the asset is a hard link to the stored file,
    and a later stream of the same upload_id answers with it."""
    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    header = UploadHeader(label="resumable.bin", upload_id="upload-0001", expected_sha256=SHA)
    done = await manager.upload(header, chunks(DATA))
    one, two = os.stat(first.storage_path), os.stat(done.storage_path)
    assert (one.st_ino, one.st_nlink) == (two.st_ino, 2)
    assert (await manager.upload(header, chunks(DATA))).id == done.id
    await manager.delete(first.id)
    assert await read_all(manager, done.id) == DATA


async def test_a_reuse_whose_chosen_holder_is_deleted_meanwhile_shares_another(
    manager: AssetManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several assets hold the bytes; the one the server picked is deleted between its
    clone and the clone's commit (its name gone): the server looks again, not NOT_FOUND."""
    from asset_service.domain.manager import _known

    first = await manager.upload(UploadHeader(label="first.bin"), chunks(DATA))
    second = await manager.upload(known(label="second.bin"), chunks())
    real, deleted = _known.clone_of, []

    async def clone_then_delete(ctx: object, source: Asset) -> object:
        cloned = await real(ctx, source)  # type: ignore[arg-type]
        if not deleted:
            deleted.append(source.id)
            await manager.delete(source.id)
        return cloned

    monkeypatch.setattr(_known, "clone_of", clone_then_delete)
    third = await manager.upload(known(label="third.bin"), chunks())
    assert deleted == [first.id]
    assert await read_all(manager, third.id) == DATA
    assert os.stat(third.storage_path).st_ino == os.stat(second.storage_path).st_ino
