"""SqliteStore.get on the event loop: small records without a thread hop, the rest as before."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from asset_service.domain.errors import Unavailable
from asset_service.domain.models import Asset, AssetType, Failure, Status, Value, ValueKind
from asset_service.store.sqlite import LOOP_READ_MAX_VALUE, SqliteStore
from asset_service.store.sqlite._shared import Sharing
from tests.records import pending_record


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    return sqlite_store


def value_record(size: int) -> Asset:
    base = pending_record()
    return Asset(
        **{
            **base.__dict__,
            "status": Status.AVAILABLE,
            "type": AssetType.VALUE,
            "value": Value(ValueKind.BYTES, b"x" * size),
            "size_bytes": size,
        }
    )


class ReadersBlocked:
    """Every reader thread busy in a job of its own until the block ends."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.release = threading.Event()
        self.jobs: list[Any] = []

    def __enter__(self) -> ReadersBlocked:
        started = threading.Barrier(store_threads(self.store) + 1)

        def hold() -> None:
            started.wait(10)
            assert self.release.wait(10)

        self.jobs = [
            self.store._readers.executor.submit(hold) for _ in range(store_threads(self.store))
        ]
        started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        for job in self.jobs:
            job.result(10)


def store_threads(store: SqliteStore) -> int:
    return store._readers.executor._max_workers


async def test_small_records_and_missing_ids_are_read_without_a_reader_thread(
    store: SqliteStore,
) -> None:
    small = await store.insert(value_record(LOOP_READ_MAX_VALUE))
    pending = await store.insert(pending_record())
    with ReadersBlocked(store):
        # Every reader thread is held: these answer only because they run on the loop.
        got = await asyncio.wait_for(store.get(small.id), 5)
        assert got == small
        assert got is not None and got.value == small.value
        assert await asyncio.wait_for(store.get(pending.id), 5) == pending
        assert await asyncio.wait_for(store.get("no-such-id"), 5) is None


async def test_a_value_over_the_loop_limit_is_read_on_a_reader_thread(store: SqliteStore) -> None:
    big = await store.insert(value_record(LOOP_READ_MAX_VALUE + 1))
    with ReadersBlocked(store) as blocked:
        read = asyncio.create_task(store.get(big.id))
        await asyncio.sleep(0.2)
        assert not read.done(), "a big value must not be read on the event loop"
        blocked.release.set()
        got = await asyncio.wait_for(read, 5)
    assert got == big
    assert got is not None and got.value == big.value


class BusyConnection:
    """The loop's connection answering SQLITE_BUSY (as during WAL recovery)."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real
        self.calls = 0

    def execute(self, *args: object) -> sqlite3.Cursor:
        self.calls += 1
        raise sqlite3.OperationalError("database is locked")


async def test_busy_on_the_loop_falls_back_to_a_reader_thread(store: SqliteStore) -> None:
    record = await store.insert(value_record(100))
    assert store._readers.loop_conn is not None
    busy = BusyConnection(store._readers.loop_conn)
    store._readers.loop_conn = busy  # type: ignore[assignment]
    try:
        assert await store.get(record.id) == record
        assert await store.get("no-such-id") is None
        assert busy.calls == 2
    finally:
        store._readers.loop_conn = busy.real


async def test_the_loop_read_sees_each_write_once_it_is_acknowledged(store: SqliteStore) -> None:
    # Read-your-writes: every acknowledged write is visible to the next get on the loop.
    record = await store.insert(pending_record())
    for _ in range(20):
        assert (await store.get(record.id)) == record
        deleted = await store.delete(record.id)
        assert deleted is not None
        assert await store.get(record.id) is None
        record = await store.insert(pending_record())


async def test_the_loop_leaves_no_read_transaction_open(store: SqliteStore) -> None:
    # An open read transaction on the loop's connection would pin the WAL and stop every
    # checkpoint from resetting it.
    record = await store.insert(value_record(10))
    await store.get(record.id)
    await store.get("no-such-id")
    assert store._readers.loop_conn is not None
    assert not store._readers.loop_conn.in_transaction

    def checkpoint(c: sqlite3.Connection) -> tuple[tuple[int, int, int], None]:
        row = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return (int(row[0]), int(row[1]), int(row[2])), None

    assert store._writer is not None
    busy, _, _ = await store._writer.solo(checkpoint)
    assert busy == 0, "a reader held the WAL: TRUNCATE could not complete"


async def test_a_closed_store_refuses_the_loop_read(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "b.db", reserve_bytes=0)
    await s.open()
    record = await s.insert(pending_record())
    await s.close()
    with pytest.raises(Unavailable):
        await s.get(record.id)


async def test_a_record_read_again_is_reread_once_its_writer_commits(store: SqliteStore) -> None:
    """A store alone on its database (it holds the claim) is its only writer: its writer's
    count of what it ran says when a record read before may have changed."""
    made = await store.insert(pending_record())
    first = await store.get(made.id)
    assert first is not None and await store.get(made.id) is first, "nothing committed since"
    # The record itself changed.
    failed = await store.transition(made.id, Status.PENDING, Failure("boom"), datetime.now(UTC))
    again = await store.get(made.id)
    assert again is not None and again.status is Status.FAILED and again == failed
    # Another record written: whatever was known is read again.
    await store.insert(pending_record())
    assert await store.get(made.id) is not again


async def test_a_worker_rereads_a_record_another_worker_changed(tmp_path: Path) -> None:
    """Workers share the file: another one's commit (its own connection, behind this
    store's back) is seen by SQLite's data_version on the next read on the loop."""
    wakeups = tuple(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2))
    store = SqliteStore(tmp_path / "a.db", reserve_bytes=0, sharing=Sharing(0, wakeups))
    await store.open()
    try:
        made = await store.insert(pending_record())
        first = await store.get(made.id)
        assert first is not None and await store.get(made.id) is first
        other = sqlite3.connect(store.path)
        try:
            with other:
                other.execute("UPDATE assets SET label = 'renamed' WHERE id = ?", (made.id,))
        finally:
            other.close()
        again = await store.get(made.id)
        assert again is not None and again.label == "renamed"
    finally:
        await store.close()
        for fd in wakeups:
            os.close(fd)


async def test_what_is_known_is_bounded_by_its_values_bytes(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asset_service.store.sqlite import _readers

    monkeypatch.setattr(_readers, "KNOWN_MAX_BYTES", 3000)
    one, two = [await store.insert(value_record(2000)) for _ in range(2)]
    first = await store.get(one.id)
    assert await store.get(one.id) is first
    await store.get(two.id)  # 4000 bytes would be known: what was is forgotten first
    assert store._readers._known_bytes == 2000
    again = await store.get(one.id)
    assert again == first and again is not first
