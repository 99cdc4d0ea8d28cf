"""SqliteStore group commit: one transaction for many queued writes, each with its own outcome."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from asset_service.domain.errors import Conflict, NotFound, Unavailable
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    Change,
    ChangeKind,
    Failure,
    Status,
)
from asset_service.store.sqlite import SqliteStore, _writes
from asset_service.store.sqlite._writer import GroupWriter
from tests.records import pending_record


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    return sqlite_store


def pending(asset_id: str | None = None) -> Asset:
    return pending_record(asset_id, tags=("t",))


def writer(store: SqliteStore) -> GroupWriter:
    assert store._writer is not None
    return store._writer


def published(store: SqliteStore) -> list[Change]:
    out = []
    while not store._changes.empty():
        out.append(store._changes.get_nowait())
    return out


class Held:
    """Holds the writer thread in a job of its own until released."""

    def __init__(self, store: SqliteStore, *, in_transaction: bool = False) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

        def job(c: sqlite3.Connection) -> tuple[None, None]:
            if in_transaction:  # a grouped write: BEGIN IMMEDIATE has run, the lock is held
                assert c.in_transaction
                c.execute("UPDATE counters SET value = value WHERE name = 'revision'")
            self.started.set()
            assert self.release.wait(10)
            return None, None

        w = writer(store)
        self.task: asyncio.Task[Any] = asyncio.create_task(
            w.submit(job) if in_transaction else w.solo(job)
        )

    async def __aenter__(self) -> Held:
        assert await asyncio.to_thread(self.started.wait, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.task


async def queued(store: SqliteStore, n: int) -> None:
    """Wait until n writes wait in the writer's queue."""
    for _ in range(1000):
        if len(writer(store)._queue) >= n:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{len(writer(store)._queue)} writes queued, expected {n}")


async def test_concurrent_inserts_share_transactions_and_get_unique_increasing_revisions(
    store: SqliteStore,
) -> None:
    assets = [pending() for _ in range(200)]
    before = store.transactions
    stored = await asyncio.gather(*(store.insert(a) for a in assets))
    # Each caller got its own record back.
    assert [s.id for s in stored] == [a.id for a in assets]
    revisions = [s.revision for s in stored]
    assert len(set(revisions)) == 200
    assert sorted(revisions) == list(range(1, 201))  # gap-free too
    assert store.transactions - before < 200
    # The change feed is in revision (commit) order and matches what each caller got.
    changes = published(store)
    assert [c.asset.revision for c in changes] == list(range(1, 201))
    by_id = {s.id: s.revision for s in stored}
    assert all(by_id[c.asset.id] == c.asset.revision for c in changes)
    found = await store.get_many([a.id for a in assets])
    assert {i: a.revision for i, a in found.items()} == by_id


async def test_a_failing_write_fails_alone_and_leaves_no_gap(store: SqliteStore) -> None:
    existing = await store.insert(pending())
    done = await store.insert(pending())
    await store.transition(done.id, Status.PENDING, Failure("gone"), datetime.now(UTC))
    published(store)
    first, last = pending(), pending()
    async with Held(store):
        before = store.transactions
        tasks = [
            asyncio.create_task(store.insert(first)),
            asyncio.create_task(store.insert(pending(existing.id))),  # duplicate id
            asyncio.create_task(
                store.transition("no-such-id", Status.PENDING, Failure("x"), datetime.now(UTC))
            ),
            asyncio.create_task(
                store.transition(done.id, Status.PENDING, Failure("x"), datetime.now(UTC))
            ),
            asyncio.create_task(
                store.transition(existing.id, Status.PENDING, Failure("ok"), datetime.now(UTC))
            ),
            asyncio.create_task(store.insert(last)),
        ]
        await queued(store, len(tasks))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert store.transactions - before == 1  # one group transaction for all six
    ok_first, dup, missing, lost, failed, ok_last = results
    assert isinstance(dup, Conflict) and "already exists" in dup.message
    assert isinstance(missing, NotFound)
    assert isinstance(lost, Conflict) and "is FAILED, expected PENDING" in lost.message
    assert isinstance(ok_first, Asset) and isinstance(failed, Asset) and isinstance(ok_last, Asset)
    # The failed writes took no revision: the batch's revisions follow on without a gap.
    assert [ok_first.revision, failed.revision, ok_last.revision] == [4, 5, 6]
    assert [(c.asset.id, c.asset.revision) for c in published(store)] == [
        (first.id, 4),
        (existing.id, 5),
        (last.id, 6),
    ]
    assert (await store.get(existing.id)) == failed
    assert (await store.get(first.id)) is not None and (await store.get(last.id)) is not None
    assert (await store.get(done.id)).failure_reason == "gone"  # type: ignore[union-attr]


async def test_a_failed_commit_fails_every_write_of_the_batch_and_publishes_nothing(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    promise = await store.insert(pending())
    published(store)
    commits = 0

    def broken(c: sqlite3.Connection) -> None:
        nonlocal commits
        commits += 1
        raise sqlite3.OperationalError("disk I/O error")

    assets = [pending() for _ in range(5)]
    async with Held(store):
        monkeypatch.setattr(writer(store), "commit", broken)
        tasks = [asyncio.create_task(store.insert(a)) for a in assets]
        tasks.append(
            asyncio.create_task(
                store.transition(promise.id, Status.PENDING, Failure("x"), datetime.now(UTC))
            )
        )
        await queued(store, len(tasks))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert commits == 1 + len(tasks)  # the batch, then each write alone
    for r in results:
        assert isinstance(r, Unavailable) and "disk I/O error" in r.message, r
    assert published(store) == []
    assert await store.get_many([a.id for a in assets]) == {}
    assert (await store.get(promise.id)).status is Status.PENDING  # type: ignore[union-attr]
    # The connection is not stuck in a transaction: the next write works and takes the
    # revision after the last committed one.
    monkeypatch.undo()
    again = await store.insert(pending())
    assert again.revision == promise.revision + 1


async def test_a_batch_whose_commit_fails_once_is_retried_write_by_write(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = iter([True])

    def flaky(c: sqlite3.Connection) -> None:
        if next(failures, False):
            raise sqlite3.OperationalError("disk I/O error")
        c.execute("COMMIT")

    assets = [pending() for _ in range(4)]
    async with Held(store):
        monkeypatch.setattr(writer(store), "commit", flaky)
        tasks = [asyncio.create_task(store.insert(a)) for a in assets]
        await queued(store, len(tasks))
    stored = await asyncio.gather(*tasks)
    assert [s.revision for s in stored] == [1, 2, 3, 4]
    assert [c.asset.id for c in published(store)] == [a.id for a in assets]


async def test_a_write_cancelled_while_queued_is_never_applied(store: SqliteStore) -> None:
    doomed, kept = pending(), pending()
    async with Held(store):
        task = asyncio.create_task(store.insert(doomed))
        other = asyncio.create_task(store.insert(kept))
        await queued(store, 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(writer(store)._queue) == 1  # removed from the queue at once
    stored = await other
    assert stored.revision == 1  # the cancelled write took no revision
    assert await store.get(doomed.id) is None
    assert [c.asset.id for c in published(store)] == [kept.id]


async def test_a_write_cancelled_once_under_way_still_commits_and_is_published(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    asset = pending()
    started = threading.Event()
    release = threading.Event()
    real = _writes.next_revision

    def slow_revision(c: sqlite3.Connection, *rest: Any) -> int:
        started.set()
        assert release.wait(10)
        return real(c, *rest)

    monkeypatch.setattr(_writes, "next_revision", slow_revision)
    task = asyncio.create_task(store.insert(asset))
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    monkeypatch.setattr(_writes, "next_revision", real)
    await store.ping()  # after the write: the writer runs jobs in order
    assert (await store.get(asset.id)) is not None
    assert [(c.kind, c.asset.id) for c in published(store)] == [(ChangeKind.PUT, asset.id)]


async def test_reads_do_not_wait_for_a_write_transaction_in_progress(store: SqliteStore) -> None:
    a = await store.insert(pending())
    b = await store.insert(pending())
    async with Held(store, in_transaction=True):
        # The writer thread sits inside BEGIN IMMEDIATE ... with the write lock held.
        got = await asyncio.wait_for(store.get(a.id), 5)
        assert got == a
        many = await asyncio.wait_for(store.get_many([a.id, b.id]), 5)
        assert set(many) == {a.id, b.id}
        cut = await asyncio.wait_for(store.snapshot([a.id, b.id]), 5)
        assert {i: x.revision for i, x in cut.items()} == {a.id: 1, b.id: 2}
        page = await asyncio.wait_for(store.query(AssetFilter(), 10, ""), 5)
        assert [x.id for x in page.assets] == [a.id, b.id]
        # A write queued meanwhile waits for the writer, and is not visible yet.
        late = pending()
        task = asyncio.create_task(store.insert(late))
        await queued(store, 1)
        assert await store.get(late.id) is None
    stored = await task
    assert await store.get(late.id) == stored  # read-your-writes once answered


async def test_a_large_snapshot_is_one_cut_while_writes_commit(store: SqliteStore) -> None:
    """Past 500 ids the snapshot takes several statements in one read transaction."""
    assets = await asyncio.gather(*(store.insert(pending()) for _ in range(1200)))
    ids = [a.id for a in assets]
    stop = asyncio.Event()

    async def churn() -> None:
        for a in assets[::-1]:
            if stop.is_set():
                return
            await store.transition(a.id, Status.PENDING, Failure("x"), datetime.now(UTC))

    task = asyncio.create_task(churn())
    try:
        for _ in range(5):
            cut = await store.snapshot(ids)
            assert len(cut) == 1200
            # One cut: whatever revision it was taken at, every transition with a lower
            # revision is in it and none with a higher one (churn runs from the end).
            failed = sorted(
                (x for x in cut.values() if x.status is Status.FAILED), key=lambda x: x.revision
            )
            n = len(failed)
            assert [x.id for x in failed] == [a.id for a in assets[::-1][:n]]
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await task


async def test_deletes_run_alone_and_in_queue_order(store: SqliteStore) -> None:
    a = await store.insert(pending())
    published(store)
    b = pending()
    async with Held(store):
        before = store.transactions
        t_insert = asyncio.create_task(store.insert(b))
        t_delete = asyncio.create_task(store.delete(a.id, by="admin"))
        t_missing = asyncio.create_task(store.delete("no-such-id"))
        t_after = asyncio.create_task(store.insert(pending()))
        await queued(store, 4)
    inserted, gone, missing, after = await asyncio.gather(t_insert, t_delete, t_missing, t_after)
    assert gone is not None and gone.updated_by == "admin" and missing is None
    assert [inserted.revision, gone.revision, after.revision] == [2, 3, 4]
    assert store.transactions - before == 2  # the two grouped inserts; deletes run alone
    assert [(c.kind, c.asset.revision) for c in published(store)] == [
        (ChangeKind.PUT, 2),
        (ChangeKind.DELETE, 3),
        (ChangeKind.PUT, 4),
    ]


async def test_close_commits_the_writes_already_queued(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    store = SqliteStore(db, reserve_bytes=0)
    await store.open()
    assets = [pending() for _ in range(10)]
    held = Held(store)
    await held.__aenter__()
    tasks = [asyncio.create_task(store.insert(a)) for a in assets]
    await queued(store, 10)
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0.01)
    with pytest.raises(Unavailable):
        await store.insert(pending())  # closed to new writes
    await held.__aexit__()
    await closing
    assert [s.revision for s in await asyncio.gather(*tasks)] == list(range(1, 11))
    assert not db.with_name("a.db-wal").exists()  # the writer closed last: WAL checkpointed
    store = SqliteStore(db, reserve_bytes=0)
    await store.open()
    try:
        assert set(await store.get_many([a.id for a in assets])) == {a.id for a in assets}
    finally:
        await store.close()


async def test_a_batch_stops_at_its_byte_budget(store: SqliteStore) -> None:
    writer(store).max_bytes = 10
    async with Held(store):
        before = store.transactions
        tasks = [asyncio.create_task(writer(store).submit(lambda c: (None, None), 4))]
        tasks += [asyncio.create_task(writer(store).submit(lambda c: (None, None), 4))]
        tasks += [asyncio.create_task(writer(store).submit(lambda c: (None, None), 4))]
        await queued(store, 3)
    await asyncio.gather(*tasks)
    assert store.transactions - before == 2  # 4 + 4, then 4
