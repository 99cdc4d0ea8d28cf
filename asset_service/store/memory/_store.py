"""MemoryStore: a MetadataStore in one process's memory, for in-process tests and demos."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from asset_service.domain.errors import (
    Conflict,
    HistoryGone,
    KeyTaken,
    LeaseRanOut,
    NotFound,
    Unavailable,
)
from asset_service.domain.models import (
    EXPLICIT_EXPIRIES,
    Asset,
    AssetFilter,
    BlockSums,
    Change,
    ChangeKind,
    Fulfillment,
    Page,
    Removal,
    Resync,
    Status,
    Transition,
    Value,
    ValueKind,
)
from asset_service.domain.reads import slim
from asset_service.domain.replay import EVERYTHING, Narrowing, Replay, merged, tombstone
from asset_service.store import _paging
from asset_service.store._claims import LocalSweepClaims
from asset_service.store._fields import (
    LeaseTest,
    lease_condition,
    lease_conflict,
    rule_expiry,
    transition_fields,
)
from asset_service.store._retention import check_removal
from asset_service.store.memory._references import MemoryReferences
from asset_service.store.memory._retention import MemoryRetention


def encode_token(seq: int, flt: AssetFilter) -> str:
    return _paging.encode_token("memory", seq, flt)


def decode_token(token: str, flt: AssetFilter) -> int:
    return _paging.decode_token("memory", token, flt)


def _lease_allows(test: LeaseTest, end: datetime | None, now: datetime) -> bool:
    """What the other stores' conditional writes say about a lease ending at `end`."""
    if test == "none or not run out":
        return end is None or end > now
    return end is not None and end <= now


@dataclass
class _Lease:
    """A promise's lease record: what renewals write (never the asset)."""

    expires_at: datetime
    seconds: int
    renewed_by: str = ""


def _matches(asset: Asset, flt: AssetFilter) -> bool:
    return (
        (flt.status is None or asset.status is flt.status)
        and (flt.type is None or asset.type is flt.type)
        and (not flt.created_by_task or asset.created_by_task == flt.created_by_task)
        and (not flt.label or asset.label == flt.label)
        and (not flt.key or asset.key == flt.key)
        and (not flt.sha256 or asset.sha256 == flt.sha256)
        and all(tag in asset.tags for tag in flt.tags)
    )


def _applied(asset: Asset, change: Transition, now: datetime) -> Asset:
    """`asset` after `change`: the same fields, by the same rules, as the other stores."""
    fields = transition_fields(
        change, now, value_column="value", timestamp=lambda t: t, sums=lambda s: s
    )
    if "status" in fields:
        fields["status"] = Status(fields["status"])
    if "value_kind" in fields:
        kind = fields.pop("value_kind")
        fields["value"] = Value(ValueKind(kind), fields["value"]) if kind else None
    # replace() refuses a name that is not a field of Asset: a new column added there
    # fails here loudly instead of being dropped.
    return dataclasses.replace(asset, **fields)


def _listed(asset: Asset) -> Asset:
    """A record as get_many and query return it: without block sums (get() has them)."""
    return asset if asset.block_sums is None else dataclasses.replace(asset, block_sums=None)


class MemoryStore(MemoryReferences, MemoryRetention):
    """Records in a dict; the same semantics as SqliteStore, proven by the same contract.

    Every read-check-write runs without an await in between, so on one event loop each
    write is atomic and conditional transitions have exactly one winner. Each call first
    yields to the loop once, as a real store's round trip would, so that concurrent
    callers interleave the way they do against SQLite or MongoDB. The records live as
    long as the object: close() and open() keep them, like a database between restarts.
    """

    def __init__(self) -> None:
        super().__init__()
        # Insertion order is `seq` order: transitions replace values in place, so
        # iterating the dict lists records oldest first, as query() must.
        self._rows: dict[str, tuple[int, Asset]] = {}
        self._seq = 0
        self._revision = 0
        self._leases: dict[str, _Lease] = {}
        # Get-or-create keys: the id of the one record holding each (the unique index).
        self._keys: dict[str, str] = {}
        self._sweep = LocalSweepClaims()
        # Writes of lease records (renewals): they take no revision (for tests).
        self.lease_writes = 0
        # Deleted assets: (when, tombstone) by id; and the newest revision swept.
        self._tombstones: dict[str, tuple[datetime, Asset]] = {}
        self._horizon = 0
        self._open = False
        # One queue per changes() feed: several managers sharing this store behave like
        # several servers sharing one database, each with its own change stream.
        self._feeds: list[asyncio.Queue[Change]] = []

    async def _enter(self) -> None:
        await asyncio.sleep(0)
        if not self._open:
            raise Unavailable("the in-memory metadata store is not open")

    def _publish(self, kind: ChangeKind, asset: Asset) -> None:
        # Queued by the writing call itself, before it returns: each queue's order is
        # commit order, and a change is queued before its writer hears of success.
        for feed in self._feeds:
            feed.put_nowait(Change(kind, asset))

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        await self._enter()

    async def check_room(self) -> None:
        await self._enter()

    # --- reads ----------------------------------------------------------------------

    def _read(self, asset: Asset) -> Asset:
        """`asset` as reads show it: a PENDING asset's lease ends when its record says."""
        lease = self._leases.get(asset.id)
        if lease is None or lease.expires_at == asset.lease_expires_at:
            return asset
        return dataclasses.replace(asset, lease_expires_at=lease.expires_at)

    async def get(self, asset_id: str) -> Asset | None:
        await self._enter()
        row = self._rows.get(asset_id)
        return self._with_holds(self._read(row[1])) if row else None

    async def get_many(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        await self._enter()
        return {
            i: _listed(self._with_holds(self._read(self._rows[i][1])))
            for i in asset_ids
            if i in self._rows
        }

    async def settled(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        return await self.get_many(asset_ids)  # a write has applied when it returns

    async def snapshot(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        await self._enter()
        # No await below: no write can land between two of these reads.
        return {i: slim(self._read(self._rows[i][1])) for i in asset_ids if i in self._rows}

    async def query(
        self, flt: AssetFilter, limit: int, page_token: str, max_bytes: int | None = None
    ) -> Page:
        after = decode_token(page_token, flt) if page_token else 0
        await self._enter()

        def rows() -> Iterator[tuple[int, Asset]]:
            for seq, asset in self._rows.values():
                if seq > after and _matches(asset, flt):
                    yield seq, asset

        # fill_page never awaits, so no write can land in the middle of a page.
        assets, last = _paging.fill_page(
            rows(),
            limit,
            max_bytes,
            lambda row: _listed(self._with_holds(self._read(row[1]))),
            lambda row: row[0],
        )
        return Page(assets, encode_token(last, flt) if last is not None else "", self._revision)

    async def current_revision(self) -> int:
        await self._enter()
        return self._revision

    async def count_by_status(self) -> dict[Status, int]:
        await self._enter()
        counts = dict.fromkeys(Status, 0)
        for _, asset in self._rows.values():
            counts[asset.status] += 1
        return counts

    async def changes_since(self, after: int, limit: int, narrow: Narrowing = EVERYTHING) -> Replay:
        await self._enter()
        if after < self._horizon:
            raise HistoryGone(after, self._horizon)
        # No await below: one cut.
        records = sorted(
            (a for _, a in self._rows.values() if a.revision > after and narrow.admits(a)),
            key=lambda a: a.revision,
        )
        gone = sorted(
            (t for _, t in self._tombstones.values() if t.revision > after and narrow.admits(t)),
            key=lambda t: t.revision,
        )
        return merged(
            [Change(ChangeKind.PUT, slim(a)) for a in records[:limit]],
            [Change(ChangeKind.DELETE, t) for t in gone[:limit]],
            self._revision,
            limit,
        )

    async def sweep_tombstones(self, before: datetime) -> int:
        await self._enter()
        old = [i for i, (when, _) in self._tombstones.items() if when < before]
        for asset_id in old:
            self._horizon = max(self._horizon, self._tombstones.pop(asset_id)[1].revision)
        return len(old)

    # --- writes -----------------------------------------------------------------------

    async def insert(self, asset: Asset, *, shared: bool = False) -> Asset:
        await self._enter()
        if asset.id in self._rows:
            raise Conflict(f"asset {asset.id} already exists")
        if asset.key in self._keys:
            raise KeyTaken(asset.key)
        if shared:
            self._require_shared(asset.storage_path)
        if asset.key:
            self._keys[asset.key] = asset.id
        stored = dataclasses.replace(asset, tags=tuple(asset.tags), revision=self._next_revision())
        self._seq += 1
        self._rows[asset.id] = (self._seq, stored)
        if stored.status is Status.PENDING and stored.lease_seconds:
            assert stored.lease_expires_at is not None, "a leased promise needs its end"
            self._leases[stored.id] = _Lease(stored.lease_expires_at, stored.lease_seconds)
        self._account(None, stored)
        self._publish(ChangeKind.PUT, stored)
        return stored

    async def key_holder(self, key: str) -> Asset | None:
        await self._enter()
        row = self._rows.get(self._keys.get(key, ""))
        return _listed(self._read(row[1])) if row else None

    async def release_key(self, asset_id: str, key: str) -> bool:
        await self._enter()
        if self._keys.get(key) != asset_id:
            return False
        del self._keys[key]
        return True

    async def transition(
        self,
        asset_id: str,
        expected: Status,
        change: Transition,
        now: datetime,
        *,
        shared: bool = False,
    ) -> Asset:
        await self._enter()
        row = self._rows.get(asset_id)
        if row is None:
            raise NotFound(f"asset {asset_id} not found")
        seq, current = row
        if current.status is not expected:
            raise Conflict(f"asset {asset_id} is {current.status.value}, expected {expected.value}")
        lease = self._leases.get(asset_id)
        test, end = lease_condition(change), lease.expires_at if lease else None
        if test is not None and not _lease_allows(test, end, now):
            raise lease_conflict(asset_id, test, end)
        if rule_expiry(change) is not None and current.expiry_rule in EXPLICIT_EXPIRIES:
            raise Conflict(f"asset {asset_id}'s expiry was set by a client meanwhile")
        if shared and isinstance(change, Fulfillment):
            self._require_shared(change.storage_path)
        updated = dataclasses.replace(
            _applied(current, change, now), revision=self._next_revision()
        )
        if updated.status is not Status.PENDING and lease is not None:
            # The lease ends with the promise; the record keeps its last end.
            del self._leases[asset_id]
            updated = dataclasses.replace(updated, lease_expires_at=lease.expires_at)
        self._rows[asset_id] = (seq, updated)
        self._account(current, updated)
        if updated.status is not Status.PENDING:
            self._settle_task(current)
        self._publish(ChangeKind.PUT, updated)
        return updated

    async def renew_lease(self, asset_id: str, seconds: int, now: datetime, by: str) -> Asset:
        await self._enter()
        row, lease = self._rows.get(asset_id), self._leases.get(asset_id)
        if row is None:
            raise NotFound(f"asset {asset_id} not found")
        if lease is None:
            raise Conflict(f"asset {asset_id} has no lease to renew")
        if lease.expires_at <= now:
            raise LeaseRanOut(asset_id, lease.expires_at)
        end = now + timedelta(seconds=seconds or lease.seconds)
        lease.expires_at = end.replace(microsecond=end.microsecond // 1000 * 1000)
        lease.renewed_by = by
        self.lease_writes += 1
        return self._read(row[1])

    async def set_block_sums(self, asset_id: str, storage_path: str, sums: BlockSums) -> bool:
        await self._enter()
        row = self._rows.get(asset_id)
        if row is None or row[1].storage_path != storage_path or not storage_path:
            return False
        self._rows[asset_id] = (row[0], dataclasses.replace(row[1], block_sums=sums))
        return True

    async def leases_run_out(self, now: datetime, limit: int) -> list[Asset]:
        await self._enter()
        due = sorted(
            (lease.expires_at, asset_id)
            for asset_id, lease in self._leases.items()
            if lease.expires_at <= now
        )
        return [slim(self._read(self._rows[asset_id][1])) for _, asset_id in due[:limit]]

    async def claim_sweep(
        self, holder: str, seconds: float, now: datetime, name: str = "lease"
    ) -> bool:
        await self._enter()
        return self._sweep.claim(holder, seconds, now, name)

    async def delete(
        self, asset_id: str, by: str = "", removal: Removal | None = None
    ) -> Asset | None:
        await self._enter()
        row = self._rows.get(asset_id)
        if row is None:
            return None
        check_removal(self._with_holds(row[1]), removal)
        del self._rows[asset_id]
        gone = dataclasses.replace(
            self._read(row[1]),
            revision=self._next_revision(),
            updated_by=by,
            deletion_reason=removal.reason if removal is not None else "",
        )
        self._leases.pop(asset_id, None)
        self._holds.pop(asset_id, None)
        self._account(row[1], None)
        self._settle_task(row[1])
        if self._keys.get(gone.key) == asset_id:
            del self._keys[gone.key]  # as a unique index forgets a deleted row
        self._tombstones[asset_id] = (datetime.now(UTC), tombstone(gone))
        self._publish(ChangeKind.DELETE, gone)
        return gone

    def changes(self) -> AsyncIterator[Change | Resync]:
        """Every change committed from this call on (not from the first read: the feed
        must not miss what is written between subscribing and reading)."""
        feed: asyncio.Queue[Change] = asyncio.Queue()
        self._feeds.append(feed)
        return self._drain(feed)

    async def _drain(self, feed: asyncio.Queue[Change]) -> AsyncIterator[Change | Resync]:
        try:
            while True:
                yield await feed.get()
        finally:
            self._feeds.remove(feed)
