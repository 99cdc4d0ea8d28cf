"""Writer-lease liveness (issue 21, item 6): lag, stalls and clocks do not kill live writers.

`Writers` is the `writers` collection of a fake primary, shared by every "process" of a
test (thread-safe: a heartbeat thread and a peer on its own event loop write it too). It
follows MongoDB's documented rules, not the code's: a write is visible on the primary at
once and acknowledged "majority" only after `majority_lag` seconds (a collection with no
write concern of its own gets the deployment's implicit default, which is "majority"
since MongoDB 5.0); `$$NOW` is the server's clock, which a failover may move; filters and
update pipelines are evaluated by tests/unit/fake_mongo.py. Leases are 0.3 s here (5 s
in production), beats every 0.03 s (1 s).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import timedelta
from typing import Any

import pytest
from pymongo.write_concern import WriteConcern

from asset_service.store.mongo._leases import WriterLeases
from tests.unit.fake_mongo import T0
from tests.unit.mongo_fake import apply_update, matches

LEASE, BEAT = 0.3, 0.03


class Db:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.offset = timedelta(0)
        self.majority_lag = 0.0
        self.killed: list[str] = []

    def now(self) -> Any:
        moment = T0 + timedelta(seconds=time.monotonic() - self.started) + self.offset
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    def update(self, where: Mapping[str, Any], update: Any, upsert: bool) -> None:
        with self.lock:
            now = self.now()
            found = [d for d in self.docs.values() if matches(d, where, now)]
            if found:
                self.docs[found[0]["_id"]] = apply_update(found[0], update, now)
            elif upsert:
                self.docs[where["_id"]] = apply_update(
                    {"_id": where["_id"]}, update, now, inserting=True
                )

    def select(self, where: Mapping[str, Any]) -> list[dict[str, Any]]:
        with self.lock:
            now = self.now()
            return [dict(d) for d in self.docs.values() if matches(d, where, now)]

    def delete(self, where: Mapping[str, Any]) -> None:
        with self.lock:
            now = self.now()
            for d in [d for d in self.docs.values() if matches(d, where, now)][:1]:
                del self.docs[d["_id"]]

    def lag(self, concern: WriteConcern | None) -> float:
        majority = concern is None or concern.document.get("w") == "majority"
        return self.majority_lag if majority else 0.0


class Writers:
    """The async collection of one process (any event loop)."""

    def __init__(self, db: Db, concern: WriteConcern | None = None) -> None:
        self.db, self.concern = db, concern

    def with_options(self, *, write_concern: WriteConcern) -> Writers:
        return Writers(self.db, write_concern)

    async def update_one(self, where: Mapping[str, Any], update: Any, upsert: bool = False) -> None:
        self.db.update(where, update, upsert)
        await asyncio.sleep(self.db.lag(self.concern))

    async def _found(self, where: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for doc in self.db.select(where):
            yield doc

    def find(self, where: Mapping[str, Any], *_: Any) -> AsyncIterator[dict[str, Any]]:
        return self._found(where)

    async def delete_one(self, where: Mapping[str, Any]) -> None:
        self.db.delete(where)


class SyncWriters:
    """The same collection through a synchronous client (the heartbeat thread)."""

    def __init__(self, db: Db, concern: WriteConcern | None = None) -> None:
        self.db, self.concern = db, concern

    def with_options(self, *, write_concern: WriteConcern) -> SyncWriters:
        return SyncWriters(self.db, write_concern)

    def update_one(self, where: Mapping[str, Any], update: Any, upsert: bool = False) -> None:
        self.db.update(where, update, upsert)
        time.sleep(self.db.lag(self.concern))


def writer(db: Db, name: str, **options: Any) -> WriterLeases:
    async def kill(lsids: list[Mapping[str, Any]]) -> None:
        db.killed += [str(lsid["id"]) for lsid in lsids]

    return WriterLeases(
        Writers(db),
        kill,
        name,
        lease_seconds=LEASE,
        renew_seconds=BEAT,
        beats=SyncWriters(db),
        **options,
    )


async def started(db: Db, name: str, **options: Any) -> WriterLeases:
    lease = writer(db, name, **options)
    await lease.register({"id": f"lsid-{name}"})
    lease.start()
    return lease


class Peer:
    """A writer in a process of its own: its own thread and event loop, so that it runs
    while the test's loop is stalled."""

    def __init__(self, db: Db, name: str, seconds: float) -> None:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main(db, name, seconds)))

    async def _main(self, db: Db, name: str, seconds: float) -> None:
        lease = await started(db, name)
        await asyncio.sleep(seconds)
        await lease.close()

    def __enter__(self) -> Peer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def db() -> Iterator[Db]:
    yield Db()


async def test_majority_lag_does_not_kill_a_live_writer(db: Db) -> None:
    """Beats that waited for a majority acknowledgement, in series, came further apart
    than a lease whenever replication lagged by more than one."""
    db.majority_lag = 3 * LEASE
    a, b = await started(db, "a"), await started(db, "b")
    try:
        await asyncio.sleep(4 * LEASE)
    finally:
        await a.close()
        await b.close()
    assert db.killed == []
    assert a.beats >= 10 and b.beats >= 10


async def test_an_event_loop_stall_does_not_kill_a_live_writer(db: Db) -> None:
    a = await started(db, "a")
    try:
        with Peer(db, "b", seconds=5 * LEASE):
            await asyncio.sleep(LEASE)
            time.sleep(3 * LEASE)  # this process's event loop is blocked; its beats go on
            await asyncio.sleep(LEASE)
    finally:
        await a.close()
    assert db.killed == []


async def test_a_failover_to_a_node_with_another_clock_kills_nobody(db: Db) -> None:
    """$$NOW jumps an hour ahead (the new primary's clock): the leases' `seen` all look
    an hour old, but no peer judges by it."""
    a, b = await started(db, "a"), await started(db, "b")
    try:
        await asyncio.sleep(LEASE)
        db.offset = timedelta(hours=1)
        assert await a.reap() == await b.reap() == 0  # at once, before any new beat
        await asyncio.sleep(2.5 * LEASE)
        db.offset = timedelta(hours=-1)  # and a node an hour behind
        assert await a.reap() == await b.reap() == 0
        await asyncio.sleep(2.5 * LEASE)
    finally:
        await a.close()
        await b.close()
    assert db.killed == []


async def test_a_dead_writer_is_still_ended_within_about_a_lease(db: Db) -> None:
    a = await started(db, "a")
    dead = await started(db, "dead")
    dead._stop.set()  # the process is gone: no more beats, nothing cleaned up
    for task in dead._tasks:
        task.cancel()
    start = time.monotonic()
    try:
        for _ in range(int(10 * LEASE / BEAT)):
            if "lsid-dead" in db.killed:
                break
            await asyncio.sleep(BEAT)
    finally:
        await a.close()
    waited = time.monotonic() - start
    assert db.killed == ["lsid-dead"], db.killed
    assert waited < 3 * LEASE, f"ended after {waited:.2f}s"
    assert "dead" not in db.docs


async def test_a_loop_stalled_past_the_limit_stops_beating(db: Db) -> None:
    """A loop that does not run for `stall_limit` is taken for hung: its transaction
    (which may hold the counter) is ended like a dead process's."""
    a = await started(db, "a", stall_limit=LEASE)
    try:
        with Peer(db, "b", seconds=6 * LEASE):
            await asyncio.sleep(LEASE)
            time.sleep(4 * LEASE)
    finally:
        await a.close()
    assert db.killed == ["lsid-a"]
