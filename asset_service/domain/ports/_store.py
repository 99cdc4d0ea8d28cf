"""The metadata store: records, their transitions and changes, in one atomic write each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Protocol

from asset_service.domain.models import (
    Asset,
    AssetFilter,
    BlockSums,
    Change,
    Page,
    Removal,
    Resync,
    Status,
    Transition,
)
from asset_service.domain.replay import EVERYTHING, Narrowing, Replay
from asset_service.domain.retention._ports import RetentionStore


class MetadataStore(RetentionStore, Protocol):
    """Asset records. Every write assigns the next revision of one store-wide counter.

    Implementations: store/sqlite/ (embedded default), store/mongo/ (production).
    The contract suite in tests/contract runs against every one of them.
    """

    async def open(self) -> None:
        """Connect, create schema/indexes; raise Unavailable with a fix-it message on failure."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise Unavailable unless the store answers."""

    async def check_room(self) -> None:
        """Raise StorageFull if writes other than deletes are refused for lack of space.

        A store that keeps a disk-full reserve (SQLite) first re-creates it if there is
        room. The domain calls this after removing stored bytes (which may share the
        store's disk) and before taking in new ones, so that bytes never take the room the
        reserve is waiting for. Others have nothing to check.
        """

    async def insert(self, asset: Asset, *, shared: bool = False) -> Asset:
        """Store a new record; return it with revision (and timestamps) assigned.

        `shared`: the record's storage_path holds bytes other records point at (an object
        store's bytes stored once): write it only if, in the same atomic write, an
        AVAILABLE record still points there, else write nothing and raise SharedBytesGone
        (the last one was deleted meanwhile; its bytes may be on their way out). On
        MongoDB the write also touches that record, so a racing delete of it conflicts
        with this write instead of both applying (snapshot isolation's write skew).

        A PENDING asset with `lease_seconds` gets its lease record in the same write. It
        runs out at `lease_expires_at` in stores whose clock is the caller's (memory,
        SQLite), `lease_seconds` after the write by the database's clock in MongoDB; the
        returned record says when.

        A record with a `key` becomes the key's holder in the same atomic write (the store
        keeps one holder per key: a unique index), or nothing is written and KeyTaken is
        raised when another record holds it (get-or-create's one producer per key).
        """

    async def key_holder(self, key: str) -> Asset | None:
        """The record holding `key` (as get_many reads it), or None: no record holds it, or
        the one that did was deleted."""

    async def release_key(self, asset_id: str, key: str) -> bool:
        """Let the record `asset_id` stop holding `key`, if it holds it (one conditional
        write; False otherwise): get-or-create found it can no longer serve the key (FAILED,
        corrupt, bytes gone). Not a change of the asset: no revision, no change event; the
        record keeps its `key` field (listing by key still shows it)."""

    async def get(self, asset_id: str) -> Asset | None:
        """The record, with its block sums (what ReadAsset checks bytes against)."""

    async def get_many(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        """The records, without block sums (like query(): a batch of big files' sums is
        kilobytes each, and no caller of these needs them)."""

    async def settled(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        """The records as they will stay (like get_many), read once every write this
        process sent before the call has a definite outcome: durable, or never to apply.

        What settles a write whose outcome was unknown: bytes are kept or removed by
        it. MongoDB ends the sessions of doubtful transactions, then reads at majority
        after a majority write (a commit a failover rolls back is never taken for
        success); raise Unavailable when that cannot be done now. Stores whose writes
        are durable when they return answer like get_many.
        """

    async def snapshot(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        """The states of `asset_ids` as of ONE point in time, WITHOUT inline values.

        Watch snapshots, watch catch-ups and manifests compare revisions across assets,
        so these states must be one consistent cut of committed writes (on MongoDB:
        majority-committed, one cluster time; a write a failover may roll back is never
        in it). Values are left out so that up to 1000 records sit in memory at once;
        whoever needs a value fetches it with get_many.
        """

    async def query(
        self, flt: AssetFilter, limit: int, page_token: str, max_bytes: int | None = None
    ) -> Page:
        """Oldest first, at most `limit` records; raise InvalidArgument for a token this
        store did not issue. With `max_bytes`, the page also ends before the records'
        approx_bytes() would pass it (it always holds at least one record).

        The page and its `revision` (the highest revision committed) are one consistent
        cut: a change the page does not show has a higher revision than `revision`.
        """

    async def current_revision(self) -> int:
        """The highest revision committed so far (0 for an empty store); on MongoDB
        majority-committed, so never one a failover may roll back and hand out again."""

    async def changes_since(self, after: int, limit: int, narrow: Narrowing = EVERYTHING) -> Replay:
        """What changed after revision `after`, from ONE consistent cut, state-based:
        every record whose revision is above it (its current state, without value) and
        every tombstone above it (a DELETE of tombstone(last state)), in revision order,
        at most `limit` of them (served by an index on revision: what a selector watch
        resumes from once its revision has left the in-memory history).

        Narrowed (`narrow`: a selector's task, key, label, tags, type), only the records
        and tombstones it admits, found through the index of the most selective of its
        fields that has one (key, task, label, a tag) where that set is small, so a watch
        on ten assets of a million-record store replays their changes and not the whole
        store's; `limit` and `more` count the changes kept, `revision` is still the
        store's at the cut.

        HistoryGone if tombstones after `after` may have been swept (`after` below the
        newest one swept, or below the revision tombstones began to be kept at).
        """

    async def sweep_tombstones(self, before: datetime) -> int:
        """Remove the tombstones of deletions made before `before`; how many. A resume
        from a revision below the newest one removed is refused from then on."""

    async def count_by_status(self) -> dict[Status, int]:
        """How many records each status has, every status named (0 for none). Counted from
        an index, not by reading records: the metrics ask at most every 30 s."""

    async def transition(
        self,
        asset_id: str,
        expected: Status,
        change: Transition,
        now: datetime,
        *,
        shared: bool = False,
    ) -> Asset:
        """One conditional write: apply `change` only if the status is `expected`.

        `shared` (a Fulfillment whose storage_path holds bytes other records point at):
        also only while an AVAILABLE record still points there, as insert() says.

        A Corruption applies to an AVAILABLE asset (`expected`) like any transition.
        Leases are judged by the store's clock: `now` in stores whose clock is the caller's
        (memory, SQLite), the database's ($$NOW) in MongoDB. A Fulfillment applies only
        while the asset has no lease or its lease has not run out (else LeaseRanOut); a
        Failure with lease_ran_out only once it has. A transition out of PENDING ends the
        lease in the same atomic write: its record goes, and the asset keeps its last end.
        A change carrying a RuleExpiry (an operator rule's) applies only while the asset's
        expiry_rule is not one of EXPLICIT_EXPIRIES (Conflict otherwise): a rule never
        replaces what a client set meanwhile.
        Raise NotFound if the asset is gone, Conflict (naming the current status, or the
        lease) if another writer got there first.
        """

    async def referenced(self, storage_paths: Sequence[str]) -> set[str]:
        """Those of `storage_paths` that some record (any status) points at, read from
        an index on storage_path. Bytes go only once this says no record points at them:
        read AFTER a record's delete committed, it sees every record that could still
        share them (a shared write needs a live one, so none can appear once none is)."""

    async def set_block_sums(self, asset_id: str, storage_path: str, sums: BlockSums) -> bool:
        """Keep block sums computed after the fact (an asset stored before they were kept,
        on its first read or by the scrub), if the record still points at `storage_path`.

        Not a change of the asset: no revision, no watch event (clients never see them).
        False if the record is gone or points elsewhere.
        """

    async def renew_lease(self, asset_id: str, seconds: int, now: datetime, by: str) -> Asset:
        """Extend a PENDING asset's lease to `seconds` (0: the lease's own) from now, by
        the store's clock, if it has not run out; the asset as get() would read it.

        A heartbeat, not a change: only the lease's record is written (no revision, no
        change event, no pre-image, the revision counter untouched). LeaseRanOut if the
        lease has run out; NotFound if there is no such asset; Conflict if it has no lease
        (never had one, or left PENDING).
        """

    async def leases_run_out(self, now: datetime, limit: int) -> list[Asset]:
        """Up to `limit` PENDING assets whose lease ran out by the store's clock (`now`,
        or the database's), earliest first, without inline values (a PENDING asset has
        none)."""

    async def claim_sweep(
        self, holder: str, seconds: float, now: datetime, name: str = "lease"
    ) -> bool:
        """Whether `holder` may run the sweep `name` now ("lease": expired leases,
        "retention": expired assets): it holds that sweep's one claim in the store for
        `seconds` more (0: gives it up) if the claim is free, ran out, or is already its
        own. One sweeper at a time: servers sharing a store do not all race the same
        conditional writes."""

    async def delete(
        self, asset_id: str, by: str = "", removal: Removal | None = None
    ) -> Asset | None:
        """Remove the record (and its lease's and holds); return its last state (with a
        new revision, removal.reason as its deletion_reason) or None.

        The last state names `by` as its updated_by: a DELETE change says who deleted.
        In the same transaction, keep tombstone(last state) with the time of deletion
        (the store's clock) for changes_since, until sweep_tombstones removes it. With
        `removal`, only if its conditions hold (Held, or Conflict for an expiry that is
        not due), checked in that same atomic write.
        """

    def changes(self) -> AsyncIterator[Change | Resync]:
        """Every committed change in commit order; consumed by ONE task per process.

        Yield Resync when changes may have been missed (then subscribers re-read state).
        The iterator runs for the life of the process and recovers from transient errors.
        """
