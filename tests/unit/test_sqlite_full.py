"""SqliteStore on a full disk: StorageFull that says so, deletes that still work, no damage."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service.domain.errors import StorageFull
from asset_service.domain.models import Asset, Failure, Status
from asset_service.store.sqlite import DEFAULT_RESERVE_BYTES, JOURNAL_SIZE_LIMIT
from asset_service.store.sqlite._room import Room
from tests.unit.sqlite_disk import (
    RESERVE,
    KiB,
    MiB,
    assert_truthful,
    empty_wal,
    fill,
    free_bytes,
    integrity,
    mounted,
    opened,
    pending_asset,
    releases,
    value_asset,
)
from tests.unit.sqlite_disk import disk as disk  # fixture


async def test_reserve_is_created_at_open_and_kept_across_restarts(disk: Path) -> None:
    db = disk / "assets.db"
    async with opened(db) as store:
        assert store.reserve.path == disk / "assets.db.reserve"
        assert store.reserve.path.stat().st_size == RESERVE
        # Allocated blocks, not a sparse hole: unlinking it must really free space.
        assert store.reserve.path.stat().st_blocks * 512 >= RESERVE
    before = free_bytes(disk)
    async with opened(db):  # a restart
        pass
    assert free_bytes(disk) >= before - 64 * KiB  # reused, not a second reserve


async def test_inserts_fill_the_disk_and_fail_with_storage_full(disk: Path) -> None:
    db = disk / "assets.db"
    async with opened(db) as store:
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
    assert integrity(db) == "ok"


async def test_a_full_disk_delete_spends_the_reserve_and_takes_it_back(
    disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = disk / "assets.db"
    async with opened(db) as store:
        small = await store.insert(value_asset(100))
        promise = await store.insert(pending_asset())
        await empty_wal(store)
        fill(disk / "filler")
        with pytest.raises(StorageFull) as info:
            await store.insert(value_asset(100))
        assert_truthful(info.value, db)
        with pytest.raises(StorageFull) as info:
            await store.transition(promise.id, Status.PENDING, Failure("x"), datetime.now(UTC))
        assert_truthful(info.value, db)
        await store.check_room()  # the reserve is there: nothing is held back
        assert (await store.get(promise.id)).status is Status.PENDING  # type: ignore[union-attr]

        gone = await store.delete(small.id)
        assert gone is not None and gone.id == small.id
        assert await store.get(small.id) is None
        assert releases(caplog) == 1  # released to make the delete possible...
        # ...and made again at once from what the delete's WAL gave back: the disk is full
        # again, but the next delete will find it.
        assert store.reserve.path.stat().st_size == RESERVE
        assert free_bytes(disk) < RESERVE
    assert integrity(db) == "ok"


async def test_without_a_reserve_a_full_disk_refuses_deletes_truthfully(disk: Path) -> None:
    """The control case: what the reserve prevents, and that nothing breaks meanwhile."""
    db = disk / "assets.db"
    async with opened(db, 0) as store:
        doomed = await store.insert(value_asset(256 * KiB))
    async with opened(db, 0) as store:
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
    assert integrity(db) == "ok"


async def test_a_burst_of_big_transactions_does_not_pin_wal_space(tmp_path: Path) -> None:
    db = tmp_path / "assets.db"
    async with opened(db, 0) as store:
        wal = db.with_name("assets.db-wal")
        for _ in range(5):  # a WAL past the limit; an automatic checkpoint runs on the way
            await store.insert(value_asset(3 * MiB + 900 * KiB))
            if wal.stat().st_size > JOURNAL_SIZE_LIMIT:
                break
        assert wal.stat().st_size > JOURNAL_SIZE_LIMIT
        for _ in range(3):  # the next writes restart the WAL, truncated to the limit
            await store.insert(value_asset(100))
        assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT


async def test_the_default_reserve_dwarfs_what_a_full_disk_delete_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How the reserve was sized: WAL bytes of deletes on a full disk, small to 4 MiB, and
    of each step that gives the deleted pages back to the disk afterwards."""
    wal_sizes: dict[str, list[int]] = {"delete": [], "step": []}

    def wal_size(db: Path) -> int:
        wal = db.with_name(db.name + "-wal")
        return wal.stat().st_size if wal.exists() else 0

    real_make, real_checkpoint = Room.make, Room._checkpoint

    def make(room: Room, conn: sqlite3.Connection, force: bool = False) -> bool:
        if force and room.reserve.missing:
            wal_sizes["delete"].append(wal_size(room.db))
        return real_make(room, conn, force)

    def checkpoint(conn: sqlite3.Connection) -> bool:
        path = Path(conn.execute("PRAGMA database_list").fetchone()[2])
        wal_sizes["step"].append(wal_size(path))
        return real_checkpoint(conn)

    monkeypatch.setattr(Room, "make", make)
    monkeypatch.setattr(Room, "_checkpoint", staticmethod(checkpoint))
    with mounted(tmp_path / "disk", "16m") as disk:
        db = disk / "assets.db"
        async with opened(db) as store:
            sizes = [4 * MiB - 10, 300 * KiB, 5000, 100] + [200] * 300
            ids = [(await store.insert(value_asset(n, tags=("a", "b", "c")))).id for n in sizes]
            for n, asset_id in enumerate(dict.fromkeys(ids[:4] + ids[::97])):
                await empty_wal(store)
                fill(disk / "filler")
                assert await store.delete(asset_id) is not None
                assert releases(caplog) == n + 1  # it took the reserve, every time
                (disk / "filler").unlink()
        assert integrity(db) == "ok"
    # Freed pages are not zeroed on this path, so even the 4 MiB record costs ~10 frames
    # (one more for the revision index, one for the tombstone: issue 21; one for each of
    # the get-or-create key, its holder slot and the sha256 index: issue 24).
    worst = max(wal_sizes["delete"])
    assert 0 < worst <= 96 * KiB, wal_sizes
    assert 32 * worst <= DEFAULT_RESERVE_BYTES
    # Each step giving pages back (after a delete through the reserve) fits in it too.
    assert 0 < max(wal_sizes["step"]) <= RESERVE // 2, wal_sizes
