"""The two interfaces the domain depends on: a metadata store and a blob storage."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeAlias

from asset_service.domain.errors import IntegrityError
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
from asset_service.domain.replay import Replay
from asset_service.domain.retention._ports import RetentionStore
from asset_service.domain.uploads import UploadSession


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

    async def changes_since(self, after: int, limit: int, task: str = "") -> Replay:
        """What changed after revision `after`, from ONE consistent cut, state-based:
        every record whose revision is above it (its current state, without value) and
        every tombstone above it (a DELETE of tombstone(last state)), in revision order,
        at most `limit` of them (served by an index on revision: what a selector watch
        resumes from once its revision has left the in-memory history).

        With a `task`, only the records and tombstones of assets that task created (a
        selector on a task: an asset's task never changes), found through the task's
        index where it is small, so a watch on one task replays its own changes and not
        the whole store's; `revision` is still the store's at the cut.

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


class StagedBlob(Protocol):
    """Bytes on their way into storage, hashed, not yet visible.

    commit() places them under a key; then exactly one of finish() (a record now points
    at them), rollback()/discard() (none does) or abandon() (unknown: keep everything for
    start-up recovery) ends the blob's life.
    """

    size_bytes: int
    sha256: str
    # crc32c per block, computed in the same pass as the sha256 (final once sealed/staged).
    block_sums: BlockSums

    async def commit(self, key: str) -> str:
        """Durably place the bytes at `key` (never overwriting); return the storage path.

        Bytes there that a live commit holds: Conflict. Bytes no live commit holds (where
        the storage can tell, the local disk: the blob then holds the key until it ends):
        Occupied, whose replace() commits over them once the caller found no record
        pointing at them. Where it cannot tell, bytes older than the orphan grace are
        replaced by commit() itself, younger ones are a Conflict."""

    async def finish(self) -> None:
        """After the record is written: complete a move (remove the source), release."""

    async def rollback(self) -> None:
        """Undo everything: remove placed bytes; a source file stays where it was."""

    def discard(self) -> None:
        """rollback() without awaiting, for cleanup while a cancelled request unwinds."""

    def abandon(self) -> None:
        """Keep bytes, source and journal as they are; recovery settles them later."""


# An upload's chunk: the server passes views of the messages it received, not copies.
Chunk: TypeAlias = bytes | memoryview


class StagingWriter(StagedBlob, Protocol):
    async def write(self, chunk: Chunk) -> None: ...

    async def seal(self) -> None:
        """Flush and fsync; no more writes."""


class _Held(Protocol):
    """A resumable upload's session, held by one stream: no other stream can take it until
    the hold ends (release, remove, or the writer's suspend)."""

    @property
    def session(self) -> UploadSession:
        """As recorded; committed_bytes may be more than the storage finds (never less)."""

    async def save(self, session: UploadSession) -> None:
        """Record `session` durably (about to complete, completed)."""

    async def remove(self) -> None:
        """Remove the session: its record and everything it staged. The hold ends."""

    def release(self) -> None:
        """End the hold, changing nothing (idempotent)."""


class SessionHold(_Held, Protocol):
    async def resume(self) -> SessionWriter:
        """The bytes held durably, read back and hashed (after a restart nothing else can
        vouch for them), ready to take the next ones; the hold passes to the writer."""


class SessionWriter(StagingWriter, _Held, Protocol):
    """A resumable upload's bytes: size_bytes, sha256 (and any other digest) cover the
    WHOLE file, the durable prefix included.

    A stream that was cut ends with suspend(); one that completes with seal() and a commit
    settled by StagedBlob's methods, which concern the bytes only (the record stays until
    save() or remove()).
    """

    async def suspend(self, expires_at: datetime) -> UploadSession:
        """Make what was received durable as far as the storage can (what it cannot is
        dropped: an object store's unfinished part), record that offset and `expires_at`,
        and end the hold. The record as saved."""


class UploadSessions(Protocol):
    """Where resumable uploads keep their sessions: beside the bytes, in the same storage
    (a folder of the storage root, or objects and a multipart upload in the bucket), so
    that they survive a restart and any server sharing the storage can resume them."""

    async def new_session(self, key: str, session: UploadSession) -> SessionWriter:
        """Start a session with no bytes, held by the calling stream; Conflict if there is
        one under `key` already (two first streams racing)."""

    async def take_session(self, key: str) -> SessionHold | None:
        """Hold the session under `key` for one stream: None if there is none, Conflict if
        another stream holds it."""

    async def read_session(self, key: str) -> UploadSession | None:
        """The session as it stands (committed_bytes: what is durable now), without
        holding it."""

    async def sweep_sessions(self, now: datetime, limit: int = 0) -> int:
        """Remove sessions that expired by `now` (and are not held), with everything they
        staged, and what a crash left of one being created: at most `limit` (0: all), the
        rest left for the next call; how many."""


class Leftover(Protocol):
    """A move a dead process journaled but did not settle."""

    @property
    def asset_id(self) -> str: ...

    @property
    def storage_path(self) -> str: ...


class BlobStorage(UploadSessions, Protocol):
    """Where FILE bytes live: storage/local/ (the local disk) or storage/s3/ (an object store)."""

    async def open(self) -> None:
        """Create the layout and this process's staging area."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise Unavailable unless bytes can be stored and read now (the readiness probe,
        every health interval): cheap, and bounded by its caller's timeout."""

    async def leftovers(self, past_grace: bool = False) -> Sequence[Leftover]:
        """Moves journaled by processes that died, for recovery to settle; `past_grace`
        (while serving): only those journaled longer than the orphan grace ago, as the
        record write of a process that died a moment ago may still land."""

    async def settle(self, leftover: Any, committed: bool) -> None:
        """Finish a move whose record committed (remove its source) or undo one that did not."""

    async def sweep_dead_staging(self, limit: int = 0) -> int:
        """Remove staging left by dead processes (after their moves were settled), at most
        `limit` folders or objects (0: all), the rest left for the next call; how many.
        A live process's staging is never removed, however old (its lock says it lives)."""

    def new_writer(self, key: str | None = None) -> StagingWriter:
        """A writer for new bytes. With `key` (where they will be committed, when known
        before they come), commit() must be given that key: an object store then streams
        the bytes to it and needs no copy at commit; ValueError for another key."""

    async def adopt(self, path: str, move: bool) -> StagedBlob:
        """Stage a server-side file under an import root, opened without following symlinks.

        With `move`, the source is removed only by finish(), after the record commits.
        """

    async def clone(
        self, storage_path: str, size_bytes: int, sha256: str, sums: BlockSums
    ) -> StagedBlob | None:
        """Stored bytes (vouched for by the caller: `size_bytes`, `sha256`, `sums` are
        their record's, and it checked them) staged to be committed under another key
        without being copied: the bytes are then stored once. On the local disk a hard
        link, whose count (the file system's) is the reference count: removing one name
        leaves the others whole, through any crash. On an object store, the same object:
        commit() returns `storage_path` itself, the record is written with shared=True
        (MetadataStore.insert) and rollback() never removes it; the records pointing at
        it are its references (MetadataStore.referenced). None where the storage cannot:
        the caller copies them. Committing raises NotFound (SharedBytesGone for the same
        object) if the bytes were removed meanwhile."""

    async def read(
        self,
        storage_path: str,
        size_bytes: int,
        offset: int,
        limit: int,
        chunk_size: int,
        sums: BlockSums | None = None,
    ) -> AsyncIterator[bytes]:
        """The stored bytes; IntegrityError if they are missing or not `size_bytes` long.

        With `sums`, whole blocks are read and each is checked before any of its bytes is
        yielded (a ranged read too): the stream ends with CorruptBytes, naming the block's
        offset, at the first that does not match.
        """

    async def summed(
        self,
        storage_path: str,
        size_bytes: int,
        sha256: str,
        pace: Callable[[int], Awaitable[None]] | None = None,
    ) -> BlockSums:
        """Block sums of bytes stored before they were kept: read whole, vouched for by
        `sha256` (CorruptBytes if they no longer hash to it). `pace(n)` after each chunk."""

    async def verify(self, storage_path: str, size_bytes: int, sums: BlockSums) -> None:
        """Read every block and check it (CorruptBytes); a file found Unverified by
        check_many is then taken as vouched for."""

    async def check(self, storage_path: str, size_bytes: int) -> None:
        """IntegrityError unless the bytes are there with that size."""

    async def check_many(
        self, items: Sequence[tuple[str, int]], since: Sequence[datetime] | None = None
    ) -> Sequence[IntegrityError | None]:
        """check() of every (storage_path, size_bytes) at once (GetManifest's inputs):
        each one's IntegrityError, or None, in order. With `since` (each record's time),
        bytes whose storage says they were written over after it are Unverified (verify()
        them before use); storages that cannot tell check reads only."""

    async def remove(self, storage_path: str) -> None: ...

    async def remove_orphan(
        self, storage_path: str, unclaimed: Callable[[], Awaitable[bool]]
    ) -> bool:
        """Remove bytes the orphan sweep found no record pointing at, if `unclaimed()`,
        asked again right before, still says so: a retry that replaced them and wrote
        its record after the sweep's first look keeps its bytes. Whether they went. On
        the local disk the key's folder is held meanwhile (flock: no commit of the key
        can link; one under way answers False at once, unasked); elsewhere a commit
        replaces only bytes past the orphan grace, which the sweep's candidates are."""

    def orphans(self, after: str = "") -> AsyncIterator[tuple[str, str]]:
        """(asset_id, storage_path) of every stored file old enough to be an orphan, in
        the storage's own order of paths; with `after` (a path it yielded before), those
        past it only, listing none of those before: a pass may stop and resume there.

        Younger files may be another server's commit in flight; the storage's own grace
        period decides (the same one that lets a commit replace a crash leftover).
        """


class ManifestDraft(Protocol):
    """One manifest being written; nothing is visible until finish()."""

    async def add_file(self, asset: Asset) -> str:
        """A local absolute path holding a FILE input's bytes (materialized if need be)."""

    async def add_values(self, assets: Sequence[Asset]) -> dict[str, str]:
        """A local file holding each VALUE's content (may be shared by several manifests,
        like a FILE input's stored file); {asset id: absolute path}."""

    async def finish(self, entries: Mapping[str, str], config: Mapping[str, Any]) -> str:
        """Write input_data.json ({"inputs": entries, "config_params": config}); its path."""

    async def discard(self) -> None: ...


class ManifestStore(Protocol):
    """Where manifests (input_data.json and VALUE files) are written for command-line tasks."""

    async def open(self) -> None: ...

    async def create(self) -> ManifestDraft: ...

    async def sweep(self, older_than_seconds: float, limit: int = 0) -> int:
        """Remove manifests older than that, at most `limit` (0: all); return how many."""

    async def sweep_cache(self, older_than_seconds: float, limit: int = 0) -> int:
        """Remove local copies of stored inputs (an object store's) unused for that long
        (0: none by age), past the cache's byte budget, or left half-written by a crash;
        at most `limit` (0: all); how many. A manifest keeps its own link to a copy."""
