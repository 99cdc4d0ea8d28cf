"""Helpers for the SqliteStore full-disk tests: small tmpfs disks, fillers, records."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from asset_service.domain.errors import ResourceExhausted, StorageFull
from asset_service.domain.models import (
    Asset,
    AssetType,
    Status,
    Value,
    ValueKind,
)
from asset_service.store.sqlite import SqliteStore
from tests.records import make_record, pending_record
from tests.tmpfs import mounted as mounted

KiB = 1024
MiB = 1024 * KiB
RESERVE = 1 * MiB


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own."""
    with mounted(tmp_path / "small-disk", "4m") as mount:
        yield mount


@contextlib.asynccontextmanager
async def opened(db: Path, reserve_bytes: int = RESERVE) -> AsyncIterator[SqliteStore]:
    """An open SqliteStore on `db`, closed on the way out."""
    store = SqliteStore(db, reserve_bytes=reserve_bytes)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def value_asset(size: int, tags: tuple[str, ...] = ("t1", "t2")) -> Asset:
    return make_record(
        Status.AVAILABLE,
        AssetType.VALUE,
        "application/octet-stream",
        label="v.bin",
        value=Value(ValueKind.BYTES, os.urandom(size)),
        tags=tags,
        size_bytes=size,
        sha256="0" * 64,
    )


def pending_asset() -> Asset:
    return pending_record()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int = 0) -> None:
    """Write a filler file until the filesystem has only `leave` bytes (rounded down to its
    blocks) free."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    block = 64 * KiB
    try:
        while block:
            if free_bytes(path.parent) - block < leave:
                block //= 2
                continue
            try:
                os.write(fd, b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                block //= 2
    finally:
        os.close(fd)
    assert leave - 8 * KiB <= free_bytes(path.parent) <= leave


async def empty_wal(store: SqliteStore) -> None:
    """Checkpoint and truncate the WAL, as a restart does: the next write needs new blocks."""

    def q(c: sqlite3.Connection) -> tuple[None, None]:
        busy, _, _ = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
        return None, None

    await store._open_writer().solo(q)


def releases(caplog: pytest.LogCaptureFixture) -> int:
    return caplog.text.count("released the")


def pragma(db: Path, name: str) -> int:
    """An integer PRAGMA of the database file, read on a connection of its own."""
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        conn.close()


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


def assert_waits_for_reserve(err: StorageFull, db: Path) -> None:
    """The refusal of a write while the reserve is missing: the cause, and the way out."""
    assert isinstance(err, ResourceExhausted)
    assert err.message.startswith(
        f"the metadata database's disk is full ({db}): its {RESERVE}-byte disk-full reserve "
        f"({db}.reserve), which keeps DeleteAsset working on a full disk, was spent and there "
        "is no room to re-create it ("
    ), err.message
    assert err.message.endswith(
        f"bytes free), so writes other than deletes are refused until {RESERVE} bytes are free "
        "there: free space, e.g. delete assets with DeleteAsset"
    ), err.message
