"""SQLite shared by workers: each store's feed has every change, its own and the others', in
revision order; writes take turns; the sweep claim is one among them (store/sqlite/_shared)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service.domain.models import (
    AssetType,
    Change,
    ChangeKind,
    Failure,
    Fulfillment,
    Resync,
    Status,
    Value,
    ValueKind,
)
from asset_service.store.sqlite import SqliteStore, _shared
from asset_service.store.sqlite._shared import LOGGED_VALUE_MAX, Sharing
from tests.records import pending_record

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    """Two stores on one file, as workers 1 and 2 of one server (in one process here)."""
    wakeups = tuple(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2))
    stores = [
        SqliteStore(tmp_path / "a.db", reserve_bytes=0, sharing=Sharing(i, wakeups))
        for i in range(2)
    ]
    for store in stores:
        await store.open()
    try:
        yield stores[0], stores[1]
    finally:
        for store in stores:
            await store.close()
        for fd in wakeups:
            os.close(fd)


async def take(feed: AsyncIterator[Change | Resync], count: int) -> list[Change | Resync]:
    return [await asyncio.wait_for(anext(feed), 5) for _ in range(count)]


def value_pending() -> object:
    return dataclasses.replace(pending_record(), type=AssetType.VALUE)


async def test_each_feed_has_every_change_in_revision_order(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    one, two = pair
    feeds = [one.changes(), two.changes()]
    made = []
    # Interleaved writers, and the same asset changed twice in a row by the other one: the
    # state at each revision, not just the latest.
    for i in range(6):
        writer = (one, two)[i % 2]
        created = await writer.insert(pending_record())
        made.append(created)
        if i % 3 == 0:
            failed = await (two if writer is one else one).transition(
                created.id, Status.PENDING, Failure("no"), NOW
            )
            made.append(failed)
    gone = await one.delete(made[0].id)
    assert gone is not None
    for feed in feeds:
        got = await take(feed, len(made) + 1)
        assert [c.revision for c in got if isinstance(c, Change)] == sorted(
            a.revision for a in [*made, gone]
        )
        assert [(c.asset.id, c.asset.status) for c in got[:-1] if isinstance(c, Change)] == [
            (a.id, a.status) for a in made
        ]
        last = got[-1]
        assert isinstance(last, Change) and last.kind is ChangeKind.DELETE
        assert last.asset.id == made[0].id


async def test_a_value_too_big_for_the_log_comes_from_the_record(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    one, two = pair
    feed = one.changes()
    promise = await two.insert(value_pending())  # type: ignore[arg-type]
    data = b"x" * (LOGGED_VALUE_MAX + 1)
    done = await two.transition(
        promise.id,
        Status.PENDING,
        Fulfillment(len(data), "0" * 64, value=Value(ValueKind.BYTES, data)),
        NOW,
    )
    _created, fulfilled = await take(feed, 2)
    assert isinstance(fulfilled, Change) and fulfilled.revision == done.revision
    assert fulfilled.asset.value == Value(ValueKind.BYTES, data)
    assert fulfilled.asset.status is Status.AVAILABLE


async def test_writes_from_both_take_turns(pair: tuple[SqliteStore, SqliteStore]) -> None:
    one, two = pair
    written = await asyncio.gather(
        *(store.insert(pending_record()) for _ in range(40) for store in (one, two))
    )
    revisions = sorted(a.revision for a in written)
    assert revisions == list(range(revisions[0], revisions[0] + 80))


async def test_a_feed_behind_the_pruned_log_resyncs(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    one, two = pair
    feed = one.changes()
    assert one._shared is not None and one._shared.feed is not None
    one._shared.feed.poke = lambda: None  # type: ignore[method-assign]  # deaf to wake-ups
    one._shared._tasks[1].cancel()  # and to the backstop
    await asyncio.sleep(0)
    for _ in range(3):
        await two.insert(pending_record())
    assert await two._prune_log(2**62) == 3  # everything, as if a minute had passed
    later = await one.insert(pending_record())  # its own write finds the others' gone
    got = await take(feed, 2)
    assert isinstance(got[0], Resync)
    assert isinstance(got[1], Change) and got[1].revision == later.revision


async def test_one_sweep_claim_among_the_workers(pair: tuple[SqliteStore, SqliteStore]) -> None:
    one, two = pair
    assert await one.claim_sweep("a", 3, NOW)
    assert await one.claim_sweep("a", 3, NOW), "its holder keeps it"
    assert not await two.claim_sweep("b", 3, NOW)
    assert await one.claim_sweep("a", 0, NOW)  # given up
    assert await two.claim_sweep("b", 3, NOW)
    assert not await one.claim_sweep("a", 3, NOW)


async def test_each_sweep_has_its_own_claim_among_the_workers(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    one, two = pair
    assert await one.claim_sweep("a", 3, NOW, "lease")
    assert await two.claim_sweep("b", 3, NOW, "retention"), "another sweep, another claim"
    assert not await two.claim_sweep("b", 3, NOW, "lease")
    assert not await one.claim_sweep("a", 3, NOW, "retention")


def test_the_log_reads_back_what_was_written(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.executescript(
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO counters VALUES ('revision', 7);"
        "CREATE TABLE assets (id TEXT, value_kind TEXT, value_data BLOB);"
    )
    assert _shared.create(conn) == 7
    at = datetime(2026, 12, 6, 12, 0, 0, 123000, tzinfo=UTC)  # whole ms, as stored
    asset = dataclasses.replace(
        pending_record(),
        revision=7,
        tags=("a", "b"),
        expires_at=at,
        expiry_rule="ttl",
        retained_until=at,
        key="run-7/out",
    )
    _shared.append(conn, Change(ChangeKind.PUT, asset))
    logged = _shared.read(conn, 6, None, 10)
    assert logged.changes == [Change(ChangeKind.PUT, asset)]
    assert logged.floor == 0 and logged.newest == 7
