"""SqliteStore on a full disk: StorageFull that says so, deletes that still work, no damage."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service.domain.errors import ResourceExhausted, StorageFull
from asset_service.domain.models import (
    Asset,
    AssetType,
    Failure,
    Status,
    Value,
    ValueKind,
    new_asset_id,
)
from asset_service.store.sqlite import DEFAULT_RESERVE_BYTES, JOURNAL_SIZE_LIMIT, SqliteStore
from tests.records import pending_record

KiB = 1024
MiB = 1024 * KiB
RESERVE = 1 * MiB


@contextlib.contextmanager
def mounted(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of our own (we run as root); failing to mount fails the test, never skips."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with mounted(tmp_path / "small-disk", "4m") as mount:
        yield mount


def value_asset(size: int, tags: tuple[str, ...] = ("t1", "t2")) -> Asset:
    now = datetime.now(UTC)
    data = os.urandom(size)
    return Asset(
        id=new_asset_id(),
        label="v.bin",
        status=Status.AVAILABLE,
        type=AssetType.VALUE,
        media_type="application/octet-stream",
        created_at=now,
        updated_at=now,
        value=Value(ValueKind.BYTES, data),
        tags=tags,
        size_bytes=size,
        sha256="0" * 64,
    )


def pending_asset() -> Asset:
    return pending_record()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path) -> None:
    """Write a filler file until the filesystem refuses a single byte more."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    block = 64 * KiB
    try:
        while block:
            try:
                os.write(fd, b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                block //= 2
    finally:
        os.close(fd)
    assert free_bytes(path.parent) == 0


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def assert_truthful(err: StorageFull, db: Path) -> None:
    assert isinstance(err, ResourceExhausted)
    assert err.message == (
        f"the metadata database's disk is full ({db}): free space, e.g. delete assets "
        "with DeleteAsset"
    )


async def test_reserve_is_created_at_open_and_kept_across_restarts(disk: Path) -> None:
    db = disk / "assets.db"
    store = SqliteStore(db, reserve_bytes=RESERVE)
    await store.open()
    try:
        assert store.reserve.path == disk / "assets.db.reserve"
        assert store.reserve.path.stat().st_size == RESERVE
        # Allocated blocks, not a sparse hole: unlinking it must really free space.
        assert store.reserve.path.stat().st_blocks * 512 >= RESERVE
    finally:
        await store.close()
    before = free_bytes(disk)
    store = SqliteStore(db, reserve_bytes=RESERVE)
    await store.open()
    await store.close()
    assert free_bytes(disk) >= before - 64 * KiB  # reused, not a second reserve


async def test_inserts_fill_the_disk_and_fail_with_storage_full(disk: Path) -> None:
    db = disk / "assets.db"
    store = SqliteStore(db, reserve_bytes=RESERVE)
    await store.open()
    try:
        kept: list[Asset] = []
        failed: StorageFull | None = None
        for _ in range(100):  # 4 MiB disk, 128 KiB values: full long before 100
            candidate = value_asset(128 * KiB)
            try:
                kept.append(await store.insert(candidate))
            except StorageFull as exc:
                failed = exc
                break
        assert failed is not None, "the disk never filled up"
        assert_truthful(failed, db)
        assert "cannot rollback" not in failed.message
        assert await store.get(candidate.id) is None  # the failed insert left nothing
        assert len(kept) >= 5
        # The connection is not stuck in a transaction: reads and the next write work.
        assert set(await store.get_many([a.id for a in kept])) == {a.id for a in kept}
        with pytest.raises(StorageFull):
            await store.insert(value_asset(128 * KiB))
        await store.ping()
        # The insert path never spends the reserve: it is for deletes.
        assert store.reserve.path.stat().st_size == RESERVE
    finally:
        await store.close()
    assert integrity(db) == "ok"


async def test_delete_works_on_a_full_disk_and_frees_room_for_inserts(disk: Path) -> None:
    db = disk / "assets.db"
    store = SqliteStore(db, reserve_bytes=RESERVE)
    await store.open()
    small = await store.insert(value_asset(100))
    big = await store.insert(value_asset(256 * KiB))
    promise = await store.insert(pending_asset())
    # Closing checkpoints and removes the WAL, so after the fill every write needs new
    # blocks: nothing is left over in an already-allocated WAL for a write to reuse.
    await store.close()
    store = SqliteStore(db, reserve_bytes=RESERVE)
    await store.open()
    try:
        fill(disk / "filler")
        with pytest.raises(StorageFull) as info:
            await store.insert(value_asset(100))
        assert_truthful(info.value, db)
        with pytest.raises(StorageFull) as info:
            await store.transition(promise.id, Status.PENDING, Failure("x"), datetime.now(UTC))
        assert_truthful(info.value, db)
        assert (await store.get(promise.id)).status is Status.PENDING  # type: ignore[union-attr]

        gone = await store.delete(big.id)
        assert gone is not None and gone.id == big.id
        assert not store.reserve.path.exists()  # released to make the delete possible
        assert await store.get(big.id) is None

        # The released space lets writes go on; the reserve is not taken back while the
        # disk is this tight (that would fill it again at once).
        again = [await store.insert(value_asset(1 * KiB)) for _ in range(5)]
        await store.transition(promise.id, Status.PENDING, Failure("x"), datetime.now(UTC))
        await store.ping()
        assert not store.reserve.path.exists()

        # Once space is freed elsewhere, the next ping puts the reserve back.
        (disk / "filler").unlink()
        await store.ping()
        assert store.reserve.path.stat().st_size == RESERVE
    finally:
        await store.close()
    assert integrity(db) == "ok"
    store = SqliteStore(db, reserve_bytes=RESERVE)
    await store.open()
    try:
        found = await store.get_many([small.id, big.id, promise.id, *(a.id for a in again)])
        assert set(found) == {small.id, promise.id, *(a.id for a in again)}
        assert found[promise.id].status is Status.FAILED
    finally:
        await store.close()


async def test_without_a_reserve_a_full_disk_refuses_deletes_truthfully(disk: Path) -> None:
    """The control case: what the reserve prevents, and that nothing breaks meanwhile."""
    db = disk / "assets.db"
    store = SqliteStore(db, reserve_bytes=0)
    await store.open()
    doomed = await store.insert(value_asset(256 * KiB))
    await store.close()
    store = SqliteStore(db, reserve_bytes=0)
    await store.open()
    try:
        fill(disk / "filler")
        with pytest.raises(StorageFull) as info:
            await store.delete(doomed.id)
        assert info.value.message == (
            f"the metadata database's disk is full ({db}) and its reserve ({db}.reserve) is "
            f"used up, so even deleting asset {doomed.id} cannot be written: free space on "
            "that disk by other means, then retry"
        )
        with pytest.raises(StorageFull) as info:
            await store.insert(value_asset(100))
        assert_truthful(info.value, db)
        assert await store.get(doomed.id) is not None
        (disk / "filler").unlink()
        assert (await store.delete(doomed.id)) is not None
        assert await store.get(doomed.id) is None
    finally:
        await store.close()
    assert integrity(db) == "ok"


async def test_a_burst_of_big_transactions_does_not_pin_wal_space(tmp_path: Path) -> None:
    db = tmp_path / "assets.db"
    store = SqliteStore(db, reserve_bytes=0)
    await store.open()
    try:
        wal = db.with_name("assets.db-wal")
        for _ in range(5):  # a WAL past the limit; an automatic checkpoint runs on the way
            await store.insert(value_asset(3 * MiB + 900 * KiB))
            if wal.stat().st_size > JOURNAL_SIZE_LIMIT:
                break
        assert wal.stat().st_size > JOURNAL_SIZE_LIMIT
        for _ in range(3):  # the next writes restart the WAL, truncated to the limit
            await store.insert(value_asset(100))
        assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT
    finally:
        await store.close()


async def test_the_default_reserve_dwarfs_what_a_full_disk_delete_writes(
    tmp_path: Path,
) -> None:
    """How the reserve was sized: WAL bytes of deletes on a full disk, small to 4 MiB."""
    with mounted(tmp_path / "disk", "16m") as disk:
        db = disk / "assets.db"
        store = SqliteStore(db, reserve_bytes=RESERVE)
        await store.open()
        sizes = [4 * MiB - 10, 300 * KiB, 5000, 100] + [200] * 300
        ids = [(await store.insert(value_asset(n, tags=("a", "b", "c")))).id for n in sizes]
        await store.close()
        worst = 0
        for asset_id in dict.fromkeys(ids[:4] + ids[::97]):
            store = SqliteStore(db, reserve_bytes=RESERVE)
            await store.open()  # the previous close checkpointed and removed the WAL
            try:
                fill(disk / "filler")
                assert await store.delete(asset_id) is not None
                assert not store.reserve.path.exists()  # it took the reserve, every time
                worst = max(worst, db.with_name("assets.db-wal").stat().st_size)
            finally:
                await store.close()
                (disk / "filler").unlink()
        assert integrity(db) == "ok"
    # Freed pages are not zeroed on this path, so even the 4 MiB record costs ~10 frames.
    assert 0 < worst <= 64 * KiB, worst
    assert 32 * worst <= DEFAULT_RESERVE_BYTES
