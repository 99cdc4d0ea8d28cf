"""SqliteStore's disk-full reserve: only deletes while it is missing, back as soon as it fits."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service.config import load_settings
from asset_service.domain.errors import InvalidArgument, StorageFull
from asset_service.domain.models import Asset, Failure, Status
from asset_service.store.sqlite import SqliteStore
from asset_service.store.sqlite._room import INCREMENTAL
from tests.unit.sqlite_disk import (
    RESERVE,
    KiB,
    MiB,
    assert_truthful,
    assert_waits_for_reserve,
    empty_wal,
    fill,
    integrity,
    opened,
    pending_asset,
    pragma,
    releases,
    value_asset,
)
from tests.unit.sqlite_disk import disk as disk  # fixture


async def test_while_the_reserve_is_missing_only_deletes_are_written(disk: Path) -> None:
    db = disk / "assets.db"
    async with opened(db) as store:
        small = await store.insert(value_asset(100))
        big = await store.insert(value_asset(768 * KiB))
        promise = await store.insert(pending_asset())
        # Spent, and the room it gave taken by something else but for 256 KiB.
        await empty_wal(store)
        store.reserve.release("test")
        fill(disk / "filler", leave=256 * KiB)
        # Every write but a delete is refused, saying why, though it would fit.
        with pytest.raises(StorageFull) as info:
            await store.insert(value_asset(100))
        assert_waits_for_reserve(info.value, db)
        with pytest.raises(StorageFull) as info:
            await store.transition(promise.id, Status.PENDING, Failure("x"), datetime.now(UTC))
        assert_waits_for_reserve(info.value, db)
        with pytest.raises(StorageFull) as info:
            await store.check_room()
        assert_waits_for_reserve(info.value, db)
        await store.ping()  # health stays SERVING

        # A delete is written; a 100-byte record gives back too little for the reserve.
        assert await store.delete(small.id) is not None
        assert not store.reserve.path.exists()
        with pytest.raises(StorageFull) as info:
            await store.insert(value_asset(100))
        assert_waits_for_reserve(info.value, db)

        # Deleting the big VALUE frees pages in the file: they go back to the disk, and
        # the reserve is made again from them at once, before anything else...
        assert await store.delete(big.id) is not None
        assert store.reserve.path.stat().st_size == RESERVE
        await store.check_room()
        with pytest.raises(StorageFull) as info:
            await store.insert(value_asset(1 * KiB))
        assert_truthful(info.value, db)
        # ...and writes go on as soon as there is room for them too.
        (disk / "filler").unlink()
        again = [await store.insert(value_asset(1 * KiB)) for _ in range(5)]
        await store.transition(promise.id, Status.PENDING, Failure("x"), datetime.now(UTC))
    assert integrity(db) == "ok"
    async with opened(db) as store:
        found = await store.get_many([small.id, big.id, promise.id, *(a.id for a in again)])
        assert set(found) == {promise.id, *(a.id for a in again)}
        assert found[promise.id].status is Status.FAILED


async def test_space_freed_elsewhere_brings_the_reserve_back_on_the_next_ping(
    disk: Path,
) -> None:
    db = disk / "assets.db"
    async with opened(db) as store:
        store.reserve.release("test")
        fill(disk / "filler", leave=256 * KiB)
        with pytest.raises(StorageFull):
            await store.insert(value_asset(100))
        (disk / "filler").unlink()
        await store.ping()
        assert store.reserve.path.stat().st_size == RESERVE
        await store.insert(value_asset(100))


async def test_the_reserve_comes_back_in_every_fill_and_delete_cycle(
    disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database alone on its disk, filled with VALUEs: their pages are what comes back."""
    db = disk / "assets.db"
    async with opened(db) as store:
        for cycle in range(6):
            made: list[Asset] = []
            for size in (64 * KiB, 100):  # until not even a small record fits
                with pytest.raises(StorageFull):
                    for _ in range(1000):
                        made.append(await store.insert(value_asset(size)))
            # What the database keeps free to checkpoint goes too: the next write, the
            # first delete, needs new blocks that only the reserve has.
            await empty_wal(store)
            fill(disk / "filler")
            for asset in made:
                assert await store.delete(asset.id) is not None, cycle
                if releases(caplog) > cycle and store.reserve.path.exists():
                    break
            assert releases(caplog) == cycle + 1, "the reserve was not spent"
            # Back from the deleted VALUEs' pages alone: the filler is still there.
            assert store.reserve.path.stat().st_size == RESERVE, cycle
            await store.check_room()
            (disk / "filler").unlink()
            await store.insert(value_asset(100))
    assert integrity(db) == "ok"


async def test_open_refuses_a_disk_too_small_ever_to_hold_the_reserve(disk: Path) -> None:
    db = disk / "assets.db"
    store = SqliteStore(db, reserve_bytes=3 * MiB)  # more than half the 4 MiB disk
    try:
        with pytest.raises(InvalidArgument) as info:
            await store.open()
    finally:
        await store.close()
    assert info.value.message == (
        f"the disk holding {db} is {4 * MiB} bytes, too small for the {3 * MiB}-byte "
        "disk-full reserve that keeps DeleteAsset working once that disk is full (it may take "
        "at most half the disk): give --disk-reserve-bytes a smaller size, at least 1MiB, or "
        "put the database on a bigger disk"
    )
    # Nothing held: a store that fits opens on the same file at once.
    async with opened(db):
        pass


async def test_open_without_room_for_the_reserve_warns_and_admits_only_deletes(
    disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = disk / "assets.db"
    async with opened(db) as store:
        doomed = await store.insert(value_asset(512 * KiB))
    store.reserve.path.unlink()
    fill(disk / "filler", leave=640 * KiB)
    async with opened(db) as store:
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith(f"the metadata database's disk is full ({db}): its ")
        assert warnings[0].endswith("with DeleteAsset (DeleteAsset works meanwhile)")
        with pytest.raises(StorageFull) as info:
            await store.insert(value_asset(100))
        assert_waits_for_reserve(info.value, db)
        assert await store.delete(doomed.id) is not None
        assert store.reserve.path.stat().st_size == RESERVE  # from the VALUE's pages


async def test_a_database_made_before_auto_vacuum_is_converted_once(
    disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asset_service.store.sqlite")
    db = disk / "assets.db"
    async with opened(db, 0) as store:
        kept = await store.insert(value_asset(100))
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == INCREMENTAL  # a new one is
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # as older releases made
    finally:
        conn.close()
    for _ in range(2):
        async with opened(db) as store:
            assert await store.get(kept.id) == kept
    assert pragma(db, "auto_vacuum") == INCREMENTAL
    assert caplog.text.count("to incremental auto-vacuum, once") == 1
    assert integrity(db) == "ok"


def test_disk_reserve_bytes_is_zero_or_at_least_a_mebibyte(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert load_settings([], {}).disk_reserve_bytes == 4 * MiB
    assert load_settings(["--disk-reserve-bytes", "0"], {}).disk_reserve_bytes == 0
    env = {"ASSET_SERVICE_DISK_RESERVE_BYTES": "16MiB"}
    assert load_settings([], env).disk_reserve_bytes == 16 * MiB
    with pytest.raises(SystemExit):
        load_settings(["--disk-reserve-bytes", "512KiB"], {})
    assert (
        "'512KiB' is too small to hold what a delete on a full disk writes: give at least "
        "1MiB, or 0 for no reserve" in capsys.readouterr().err
    )
