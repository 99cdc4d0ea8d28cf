"""Retention (issue 23) over every store: expiry, holds and accounting.

An expired asset goes by ONE conditional delete that re-checks, in the store's own atomic
write, that it has expired and that nothing holds it (a hold, a task's PENDING promise
naming it as an input, a manifest within its TTL). Accounting cells move in the same
write as the records, so after any workload they equal a recount of the records.
Times are real ones (an hour away from now), so the database's clock on a replica set
and the caller's agree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asset_service.domain.errors import Conflict, Held, ResourceExhausted
from asset_service.domain.models import (
    EXPIRY_TTL,
    Asset,
    AssetFilter,
    AssetType,
    ChangeKind,
    ExpiryChange,
    Failure,
    Fulfillment,
    Hold,
    HoldKind,
    Removal,
    RuleExpiry,
    Status,
)
from asset_service.domain.ports import MetadataStore
from asset_service.domain.usage import ALL, TOTAL, UsageGroup, recount
from asset_service.store.memory import MemoryStore
from tests.contract.conftest import Backend
from tests.records import pending_record

HOUR = timedelta(hours=1)
FULFILL = Fulfillment(size_bytes=5, sha256="ab" * 32, storage_path="generated/t/x")


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def available(
    *, expires: datetime | None = None, rule: str = "", tags: tuple[str, ...] = (), size: int = 7
) -> Asset:
    record = pending_record(tags=tags, task="")
    return dataclasses.replace(
        record,
        status=Status.AVAILABLE,
        size_bytes=size,
        sha256="cd" * 32,
        storage_path=f"uploads/x/{record.id}",
        expires_at=expires,
        expiry_rule=rule,
    )


def expired_removal(now: datetime, reason: str = "expired (ttl)") -> Removal:
    return Removal(reason=reason, expired=True, now=now)


async def all_records(store: MetadataStore) -> list[Asset]:
    found: list[Asset] = []
    token = ""
    while True:
        page = await store.query(AssetFilter(), 1000, token)
        found += page.assets
        token = page.next_token
        if not token:
            return found


async def kept_cells(store: MetadataStore) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Every cell the store keeps, read through usage() group by group."""
    cells: dict[tuple[str, str, str], tuple[int, int]] = {}
    for group in UsageGroup:
        read = await store.usage(group.value, [], 1000)
        assert not read.more
        cells.update(read.cells)
    return {cell: value for cell, value in cells.items() if value != (0, 0)}


# --- expiry -----------------------------------------------------------------------------


async def test_an_expired_asset_is_listed_by_its_expiry_and_removed_once(backend: Backend) -> None:
    store, now = backend.store, _now()
    due = await store.insert(available(expires=now - HOUR, rule="failed"))
    later = await store.insert(available(expires=now + HOUR, rule=EXPIRY_TTL))
    never = await store.insert(available())
    promise = await store.insert(dataclasses.replace(pending_record(), expires_at=now - HOUR))

    listed = [a.id for a in await store.expired(now, 10)]
    assert listed == [due.id], (listed, later.id, never.id, promise.id)

    gone = await store.delete(due.id, "retention", expired_removal(now, "expired (rule failed)"))
    assert gone is not None and gone.deletion_reason == "expired (rule failed)"
    assert gone.updated_by == "retention"
    assert await store.delete(due.id, "retention", expired_removal(now)) is None  # once
    # The DELETE says why, from the tombstone too.
    replay = await store.changes_since(due.revision, 100)
    (deleted,) = [c for c in replay.changes if c.kind is ChangeKind.DELETE]
    assert deleted.asset.id == due.id and deleted.asset.deletion_reason == "expired (rule failed)"

    with pytest.raises(Conflict, match="has not expired"):
        await store.delete(later.id, "retention", expired_removal(now))
    with pytest.raises(Conflict, match="has not expired"):
        await store.delete(promise.id, "retention", expired_removal(now))
    assert await store.get(later.id) is not None and await store.get(promise.id) is not None


async def test_the_expiry_query_is_limited_and_earliest_first(backend: Backend) -> None:
    store, now = backend.store, _now()
    made = [await store.insert(available(expires=now - HOUR * (i + 1))) for i in range(5)]
    listed = [a.id for a in await store.expired(now, 3)]
    assert listed == [a.id for a in reversed(made)][:3]


async def test_a_client_expiry_is_a_change_that_rules_never_replace(backend: Backend) -> None:
    store, now = backend.store, _now()
    promise = await store.insert(pending_record())
    chosen = await store.transition(
        promise.id, Status.PENDING, ExpiryChange(now + HOUR, EXPIRY_TTL, "ops"), now
    )
    assert chosen.expires_at == now + HOUR and chosen.expiry_rule == EXPIRY_TTL
    assert chosen.revision > promise.revision and chosen.status is Status.PENDING
    by_rule = dataclasses.replace(FULFILL, expiry=RuleExpiry(now + 2 * HOUR, "values"))
    with pytest.raises(Conflict, match="set by a client"):
        await store.transition(promise.id, Status.PENDING, by_rule, now)
    done = await store.transition(promise.id, Status.PENDING, FULFILL, now)
    assert done.expires_at == now + HOUR and done.expiry_rule == EXPIRY_TTL


async def test_a_rule_expiry_goes_with_the_transition(backend: Backend) -> None:
    store, now = backend.store, _now()
    promise = await store.insert(pending_record())
    failure = Failure("broke", expiry=RuleExpiry(now + HOUR, "failed"))
    failed = await store.transition(promise.id, Status.PENDING, failure, now)
    assert failed.expires_at == now + HOUR and failed.expiry_rule == "failed"
    assert (await store.get(promise.id)).expiry_rule == "failed"  # type: ignore[union-attr]


# --- holds ------------------------------------------------------------------------------


async def test_a_hold_keeps_an_expired_asset_until_it_is_released(backend: Backend) -> None:
    store, now = backend.store, _now()
    due = await store.insert(available(expires=now - HOUR))
    hold = Hold("pipeline-7", HoldKind.EXPLICIT, "re-run pending", now, "ops")
    held = await store.place_hold(due.id, hold, 4)
    assert held.holds == (hold,) and held.revision == due.revision  # not a change
    assert (await store.get(due.id)).holds == (hold,)  # type: ignore[union-attr]
    assert await store.expired(now, 10) == []
    with pytest.raises(Held, match="pipeline-7 \\(re-run pending\\)"):
        await store.delete(due.id, "retention", expired_removal(now))
    with pytest.raises(Held, match="pipeline-7"):
        await store.delete(due.id, "ops", Removal(unheld=True, now=now))

    _, released = await store.release_hold(due.id, "someone-else")
    assert not released
    after, released = await store.release_hold(due.id, "pipeline-7")
    assert released and after.holds == ()
    assert [a.id for a in await store.expired(now, 10)] == [due.id]
    assert await store.delete(due.id, "retention", expired_removal(now)) is not None


async def test_holds_are_limited_per_asset_and_replaced_by_owner(backend: Backend) -> None:
    store, now = backend.store, _now()
    asset = await store.insert(available())
    for owner in ("a", "b"):
        await store.place_hold(asset.id, Hold(owner, reason="first", placed_at=now), 2)
    again = await store.place_hold(asset.id, Hold("a", reason="second", placed_at=now), 2)
    assert sorted((h.owner, h.reason) for h in again.holds) == [("a", "second"), ("b", "first")]
    with pytest.raises(ResourceExhausted, match="2 holds"):
        await store.place_hold(asset.id, Hold("c", placed_at=now), 2)
    # A forced delete (no Removal) takes the holds with it.
    assert await store.delete(asset.id, "admin") is not None


async def test_a_task_holds_its_inputs_until_its_last_promise_leaves_pending(
    backend: Backend,
) -> None:
    store, now = backend.store, _now()
    source = await store.insert(available(expires=now - HOUR))
    first = await store.insert(pending_record(task="t-9"))
    second = await store.insert(pending_record(task="t-9"))
    hold = Hold("task:t-9", HoldKind.TASK, "input of task t-9", now, "orchestrator")
    assert await store.hold_inputs("t-9", [source.id, "0" * 32], hold) == [source.id]
    assert await store.hold_inputs("nobody", [source.id], hold) == []  # no PENDING promise
    assert await store.expired(now, 10) == []
    with pytest.raises(Held, match="task:t-9"):
        await store.delete(source.id, "retention", expired_removal(now))

    await store.transition(first.id, Status.PENDING, FULFILL, now)
    assert (await store.get(source.id)).holds == (hold,)  # type: ignore[union-attr]
    await store.transition(second.id, Status.PENDING, Failure("gave up"), now)
    assert (await store.get(source.id)).holds == ()  # type: ignore[union-attr]
    assert [a.id for a in await store.expired(now, 10)] == [source.id]


async def test_deleting_a_tasks_last_promise_releases_its_holds(backend: Backend) -> None:
    store = backend.store
    source = await store.insert(available())
    promise = await store.insert(pending_record(task="t-del"))
    await store.hold_inputs("t-del", [source.id], Hold("task:t-del", HoldKind.TASK))
    assert await store.delete(promise.id, "ops") is not None
    assert (await store.get(source.id)).holds == ()  # type: ignore[union-attr]


async def test_a_manifest_keeps_its_inputs_until_its_ttl(backend: Backend) -> None:
    store, now = backend.store, _now()
    due = await store.insert(available(expires=now - HOUR))
    await store.retain([due.id, "0" * 32], now + HOUR)
    await store.retain([due.id], now)  # never shortened
    assert (await store.get(due.id)).retained_until == now + HOUR  # type: ignore[union-attr]
    assert await store.expired(now, 10) == []
    with pytest.raises(Held, match="a manifest that lists it"):
        await store.delete(due.id, "retention", expired_removal(now))
    later = now + 2 * HOUR
    assert [a.id for a in await store.expired(later, 10)] == [due.id]
    # It defers the expiry only: an admin's DeleteAsset is not refused for it.
    assert await store.delete(due.id, "ops", Removal(unheld=True, now=now)) is not None


# --- accounting -------------------------------------------------------------------------


async def run_workload(store: MetadataStore, seed: int, steps: int) -> None:
    """Random creates, transitions, expiry changes, holds and deletes."""
    rng = random.Random(seed)
    now = _now()
    live: list[Asset] = []
    for _ in range(steps):
        move = rng.random()
        tags = tuple(rng.sample(["a", "b", "c", "d"], rng.randint(0, 2)))
        if move < 0.4 or not live:
            task = rng.choice(["", "t1", "t2"])
            if task and rng.random() < 0.6:
                record = pending_record(task=task, tags=tags)
                if rng.random() < 0.5:
                    record = dataclasses.replace(record, type=AssetType.VALUE)
            else:
                record = available(tags=tags, size=rng.randint(0, 5000))
            live.append(await store.insert(record))
            continue
        asset = rng.choice(live)
        if move < 0.7 and asset.status is Status.PENDING:
            change = (
                dataclasses.replace(FULFILL, size_bytes=rng.randint(1, 9000))
                if rng.random() < 0.6
                else Failure("x")
            )
            live[live.index(asset)] = await store.transition(asset.id, Status.PENDING, change, now)
        elif move < 0.8:
            change_expiry = ExpiryChange(now + HOUR, EXPIRY_TTL, "x")
            live[live.index(asset)] = await store.transition(
                asset.id, asset.status, change_expiry, now
            )
        elif move < 0.85:
            await store.place_hold(asset.id, Hold("h", placed_at=now), 8)
        else:
            await store.delete(asset.id, "x")
            live.remove(asset)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_accounting_matches_a_full_recount_after_a_random_workload(
    backend: Backend, seed: int
) -> None:
    await run_workload(backend.store, seed, 120)
    assert await kept_cells(backend.store) == recount(await all_records(backend.store))


async def test_usage_reads_the_largest_keys_or_the_ones_asked(backend: Backend) -> None:
    store = backend.store
    for tag, size in (("small", 1), ("big", 1000), ("mid", 50), ("big", 1)):
        await store.insert(available(tags=(tag,), size=size))
    top = await store.usage(UsageGroup.TAG.value, [], 2)
    assert top.keys == ["big", "mid"] and top.more
    assert top.cells[(UsageGroup.TAG.value, "big", TOTAL)] == (2, 1001)
    assert top.cells[(ALL, "", Status.AVAILABLE.value)] == (4, 1052)
    asked = await store.usage(UsageGroup.TAG.value, ["small", "none"], 2)
    assert asked.keys == ["small", "none"] and not asked.more
    assert asked.cells[(UsageGroup.TAG.value, "small", TOTAL)] == (1, 1)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 60))
async def test_memory_accounting_matches_a_recount_for_any_workload(seed: int, steps: int) -> None:
    """The property over many workloads, on the in-memory fake (milliseconds each)."""
    store = MemoryStore()
    await store.open()
    try:
        await run_workload(store, seed, steps)
        assert await kept_cells(store) == recount(await all_records(store))
    finally:
        await store.close()


@pytest.mark.needs("atomic_find_and_modify")
async def test_racing_expiries_remove_each_asset_once(backend: Backend) -> None:
    """Two sweepers (two servers on one store) racing for the same expired assets: each
    conditional delete has one winner, so each asset goes once, with one DELETE."""
    store, now = backend.store, _now()
    made = [await store.insert(available(expires=now - HOUR)) for _ in range(12)]
    first = made[0].revision - 1

    async def sweep() -> list[str]:
        removed = []
        for asset in await store.expired(now, 100):
            try:
                if await store.delete(asset.id, "retention", expired_removal(now)) is not None:
                    removed.append(asset.id)
            except Conflict:
                pass
        return removed

    a, b = await asyncio.gather(sweep(), sweep())
    assert sorted(a + b) == sorted(x.id for x in made) and not set(a) & set(b)
    replay = await store.changes_since(first, 1000)
    deletes = [c.asset.id for c in replay.changes if c.kind is ChangeKind.DELETE]
    assert sorted(deletes) == sorted(x.id for x in made)
