"""MongoStore: the production metadata store on a MongoDB replica set (pymongo async API)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pymongo
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import ReadPreference
from pymongo.results import UpdateResult
from pymongo.write_concern import WriteConcern

from asset_service.domain.errors import (
    InvalidArgument,
    KeyTaken,
    NotFound,
    Unavailable,
)
from asset_service.domain.models import (
    Asset,
    BlockSums,
    Change,
    Fulfillment,
    Removal,
    Resync,
    Status,
    Transition,
    approx_bytes,
)
from asset_service.store._fields import lease_condition, rule_expiry, transition_fields
from asset_service.store._tasks import cancel_all
from asset_service.store.mongo import _references, _retention, _schema, _startup, _tombstones
from asset_service.store.mongo._documents import (
    Doc,
    DuplicateKey,
    _unavailable,
    _write_error,
    doc_to_asset,
    ms,
)
from asset_service.store.mongo._feed import (
    CHANGE_STREAM_PIPELINE,
    FULL_DOCUMENT,
    ChangeFeed,
    ChangeStreamLike,
)
from asset_service.store.mongo._leases import WriterLeases
from asset_service.store.mongo._reads import LISTED_PROJECTION, MongoReads
from asset_service.store.mongo._retention_store import MongoRetention
from asset_service.store.mongo._transition import (
    DROP_AFTER,
    USAGE,
    delete_write,
    insert_write,
    lease_steps,
    transition_write,
)
from asset_service.store.mongo._write import Write
from asset_service.store.mongo._writer import DEFAULT_MAX_QUEUED, GroupWriter

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "asset_service"

# Every write ends within this many seconds of its submission, queue included (pymongo's
# client-side operation timeout): longer than an election (10-12 s), which a write rides
# through by the writer's retries, far shorter than transactionLifetimeLimitSeconds.
# Reads are not run under it: with a client-side timeout, server selection waits for all
# of it instead of serverSelectionTimeoutMS, and a read should fail in seconds (it is
# bounded by serverSelectionTimeoutMS plus socketTimeoutMS and is not retried for long).
DEFAULT_OPERATION_TIMEOUT = 15.0
REPLICA_SET_HELP = (
    "change streams and transactions need a replica set; a single-node one is fine: start "
    "mongod with --replSet rs0 and run once: mongosh --eval "
    '\'rs.initiate({_id: "rs0", members: [{_id: 0, host: "localhost:27017"}]})\' '
    "(see docs/mongodb.md)"
)


class MongoStore(MongoReads, MongoRetention):
    """Asset records in one MongoDB collection (docs/mongodb.md).

    Revisions. One counter document (`counters/_id: "revision"`) is `$inc`-ed inside the
    SAME multi-document transaction as the writes it numbers, so revisions are handed
    out in commit order, the oplog (hence the change stream) lists writes in revision
    order, and a WatchAsset cursor `after_revision=N` means "every commit after the
    N-th", the same for every asset. Writes do not each run a transaction: a process's
    RPCs queue them and ONE group writer (_writer.py) runs up to 64 per transaction
    with one `$inc` and a constant number of round trips, so only processes compete for
    the counter and each holds it briefly; a process that dies with its transaction open
    is ended by its peers' lease checks within seconds (_leases.py). Revisions are unique
    and increasing, not dense. Why this design and what else was weighed:
    docs/mongodb.md, "Revisions".

    Transitions. Inside its batch's transaction the record changes through ONE conditional
    update whose filter holds `status: expected`: racing writers get exactly one winner;
    the batch's read-back (same snapshot) tells an applied write (the record carries its
    revision) from NotFound and Conflict. There is no read-modify-write.

    Reads outside transactions are at read concern "majority" (GetAsset, BatchGet,
    ListAssets and watch snapshots all show the same, durable, state; docs/mongodb.md).

    `allow_standalone=True` is for tests on wire-compatible servers without replica
    sets (FerretDB): writes then run without a transaction (revisions are still unique
    and growing, but not in commit order under concurrency) and there is no change feed.
    """

    def __init__(
        self,
        url: str,
        *,
        allow_standalone: bool = False,
        operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
        on_group_commit: Callable[[int], None] | None = None,
        write_queue: int = DEFAULT_MAX_QUEUED,
        orphan_grace: float | None = None,
    ) -> None:
        self.url = url
        self.allow_standalone = allow_standalone
        self.operation_timeout = operation_timeout
        # The storage's --orphan-grace: open() refuses one a write could outlive.
        self.orphan_grace = orphan_grace
        options = _startup.client_options(url)
        try:
            self._client: AsyncMongoClient[Doc] = AsyncMongoClient(
                url, tz_aware=True, connect=False, **options
            )
            # Reads go to the primary whatever the URL says: a secondary lags, so a
            # GetAsset right after a fulfil (or a transition's re-read) would see the past.
            self._db = self._client.get_default_database(
                DEFAULT_DATABASE, read_preference=ReadPreference.PRIMARY
            )
        except (PyMongoError, ValueError) as exc:
            raise InvalidArgument(f"database URL {self._redacted()}: {exc}") from exc
        if self._client.read_preference != ReadPreference.PRIMARY:
            log.warning(
                "the database URL asks for read preference %s; the asset store reads from "
                "the primary regardless (a secondary would return stale assets)",
                self._client.read_preference.document,
            )
        wc = WriteConcern("majority")
        # Reads see majority-committed records only (a transaction's own reads use its
        # snapshot instead: pymongo sends no read concern inside one).
        majority = ReadConcern("majority")
        self._assets: AsyncCollection[Doc] = self._db.get_collection(
            "assets", write_concern=wc, read_concern=majority
        )
        self._counters: AsyncCollection[Doc] = self._db.get_collection("counters", write_concern=wc)
        self._tombstones: AsyncCollection[Doc] = self._db.get_collection(
            "tombstones", write_concern=wc
        )
        # Promise leases: records of their own, renewed without touching `assets`.
        self._lease_docs: AsyncCollection[Doc] = self._db.get_collection(
            "leases", write_concern=wc, read_concern=majority
        )
        self._sweeps: AsyncCollection[Doc] = self._db.get_collection("sweeps", write_concern=wc)
        # Accounting cells (domain/usage.py), moved in the transaction of each write.
        self._usage: AsyncCollection[Doc] = self._db.get_collection("usage", write_concern=wc)
        self._transactions = True
        self._pre_images = False
        self._feed: ChangeFeed | None = None
        # Every record write goes through the group writer (_writer.py), on one session
        # whose lsid is leased in `writers` (_leases.py); sessions whose transaction may
        # still be open are ended with killSessions (_transactions.py).
        self._writer = GroupWriter(
            self._transact, self, timeout=operation_timeout, max_queued=write_queue
        )
        self._writer.on_batch = on_group_commit  # each group transaction's size (metrics)
        self._session: AsyncClientSession | None = None
        self._doubtful: list[Mapping[str, Any]] = []
        self._ending: asyncio.Task[None] | None = None
        self._leases: WriterLeases | None = None
        self._beat_client: pymongo.MongoClient[Doc] | None = None

    @property
    def database_name(self) -> str:
        return self._db.name

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        try:
            hello = await self._client.admin.command("hello")
        except PyMongoError as exc:
            raise Unavailable(
                f"cannot reach MongoDB at {self._redacted()}: {exc}; is mongod running and "
                "the URL right? (mongodb://host:27017/dbname?replicaSet=rs0)"
            ) from exc
        try:
            self._transactions = _startup.replicated(
                hello, self.allow_standalone, self._redacted(), REPLICA_SET_HELP
            )
        except Unavailable:
            await self._client.close()
            raise
        if not self._transactions:
            self._writer.max_writes = 1  # no transaction: a batch could half-apply
        if self._transactions:
            horizon = _startup.commit_horizon(
                self.operation_timeout, await _startup.transaction_lifetime(self._client)
            )
            try:
                _startup.check_orphan_grace(self.orphan_grace, horizon)
            except InvalidArgument:
                await self._client.close()
                raise
        try:
            await self._ensure_indexes()
            await self._raise_revision_floor()
            await _schema.prepare_leases(
                self._assets, self._lease_docs, self._sweeps, self._db.name
            )
            await self._prepare_retention(self._db.name)
        except PyMongoError as exc:
            raise Unavailable(f"cannot prepare MongoDB database {self._db.name}: {exc}") from exc
        if self._transactions:
            await self._enable_pre_images()
            if not self._pre_images:
                await self._client.close()
                raise Unavailable(
                    f"cannot turn on change-stream post-images for {self._db.name}.assets: "
                    "watch events are built from them; run once, as a user allowed collMod: "
                    f"db.getSiblingDB({self._db.name!r}).runCommand({{collMod: 'assets', "
                    "changeStreamPreAndPostImages: {enabled: true}}) (docs/mongodb.md)"
                )
            try:
                first = await self._open_stream(None)
            except PyMongoError as exc:
                raise Unavailable(f"cannot open a MongoDB change stream: {exc}") from exc
            self._feed = ChangeFeed(self._open_stream, first_stream=first)
            self._leases = WriterLeases(
                self._db.get_collection("writers"),
                self._kill_sessions,
                uuid.uuid4().hex,
                beats=self._beat_collection(),
                user=await _startup.database_user(self._client),
            )
            self._leases.start()

    def _beat_collection(self) -> Any:
        """`writers` through a synchronous client of its own: the writer lease's heartbeat
        thread goes on while the event loop is stalled (_leases.py)."""
        options = _startup.client_options(self.url)
        self._beat_client = pymongo.MongoClient(
            self.url, tz_aware=True, connect=False, maxPoolSize=2, **options
        )
        return self._beat_client.get_default_database(
            DEFAULT_DATABASE, read_preference=ReadPreference.PRIMARY
        ).get_collection("writers")

    async def _kill_sessions(self, lsids: list[Mapping[str, Any]]) -> None:
        await self._client.admin.command("killSessions", lsids)

    async def _ensure_indexes(self) -> None:
        await _schema.ensure_indexes(self._assets, self._db.name)
        await _schema.ensure_indexes(
            self._tombstones, self._db.name, _tombstones.TOMBSTONE_INDEXES, "tombstones"
        )

    async def _raise_revision_floor(self) -> None:
        await _schema.raise_revision_floor(self._assets, self._counters, self._tombstones)
        await _tombstones.begin_horizon(self._counters)

    async def _enable_pre_images(self) -> None:
        self._pre_images = await _schema.enable_pre_images(self._db)

    async def _open_stream(self, resume_after: Mapping[str, Any] | None) -> ChangeStreamLike:
        stream = await self._assets.watch(
            CHANGE_STREAM_PIPELINE, full_document=FULL_DOCUMENT, resume_after=resume_after
        )
        return stream

    async def close(self) -> None:
        await self._writer.close()
        await cancel_all([self._ending])
        if self._doubtful:
            # One last try; else their transactions end by the server's lifetime limit
            # (and a peer's lease check ends them sooner: this process's lease goes).
            with contextlib.suppress(PyMongoError), pymongo.timeout(2.0):
                await self._end_doubtful()
        if self._leases is not None:
            await self._leases.close()
        if self._beat_client is not None:
            await asyncio.to_thread(self._beat_client.close)
        if self._session is not None:
            with contextlib.suppress(PyMongoError):
                await self._session.end_session()
        if self._feed is not None:
            await self._feed.close()
        await self._client.close()

    async def check_room(self) -> None:
        """MongoDB manages its own disk: nothing is held back here."""

    async def ping(self) -> None:
        if self._feed is not None and self._feed.failure is not None:
            # Health says NOT_SERVING while watchers cannot follow the database.
            raise Unavailable(f"the MongoDB change feed is failing: {self._feed.failure}")
        try:
            await self._client.admin.command("ping")
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    def _redacted(self) -> str:
        """The URL without credentials or options, for messages."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rpartition("@")[2]
        return f"{parts.scheme}://{netloc}"

    # --- plumbing ---------------------------------------------------------------------

    async def _drain_writer(self) -> None:
        await self._writer.drain()

    async def before(self, session: Any, writes: list[Write], revisions: list[int]) -> None:
        """The batch's statements on `leases`, before the records' (_transition.py)."""
        await lease_steps(self._promises, session, writes)
        await _references.share_steps(self._assets, session, writes)

    async def remove_stamped(self, session: Any, gone: list[Doc]) -> None:
        """Delete the stamped records, and keep their tombstones (one command each)."""
        await super().remove_stamped(session, gone)
        await _tombstones.keep(self._tombstones, [doc_to_asset(d) for d in gone], session)

    async def after(self, session: Any, done: list[tuple[Write, Doc | None, int]]) -> None:
        """The batch's accounting (_retention.py), and the leases of conditional deletes
        that applied: a constant number of commands."""
        moves = []
        dropped = []
        for write, doc, rev in done:
            moved = write.extra[USAGE](doc, rev) if USAGE in write.extra else None
            if moved is None:
                continue
            moves.append(moved)
            if write.extra.get(DROP_AFTER):
                dropped.append(write.asset_id)
        if dropped:
            await self._promises.leases.delete_many({"_id": {"$in": dropped}}, session=session)
        await _retention.account(self._usage, self._assets, moves, session)

    # --- reads: MongoReads (_reads.py) -----------------------------------------------

    # --- writes -----------------------------------------------------------------------

    async def insert(self, asset: Asset, *, shared: bool = False) -> Asset:
        write = insert_write(asset, self._promises, approx_bytes(asset))
        if shared:
            write = _references.shared(write, asset.storage_path)
        try:
            result: Asset = await self._writer.submit(write)
        except DuplicateKey as exc:
            # MongoDB names the index in the message, FerretDB does not: an id that is not
            # there was never the duplicate (ids are new UUIDs; Conflict if it was).
            if asset.key and ("key_slot" in exc.message or await self.get(asset.id) is None):
                raise KeyTaken(asset.key) from None
            raise
        return result

    async def release_key(self, asset_id: str, key: str) -> bool:
        # The record's own fields are unchanged (the change feed skips it, _feed.py).
        done = await self._quiet_update(
            {"_id": asset_id, "key_slot": key}, {"$unset": {"key_slot": ""}}
        )
        return done.modified_count == 1

    async def _quiet_update(self, where: Doc, change: Doc) -> UpdateResult:
        """One update of a record outside the group writer: no revision, so the change
        feed skips it (_feed.py)."""
        try:
            with pymongo.timeout(self.operation_timeout):
                return await self._assets.update_one(where, change)
        except PyMongoError as exc:
            raise _write_error(exc, transaction=False) from exc

    async def transition(
        self,
        asset_id: str,
        expected: Status,
        change: Transition,
        now: datetime,
        *,
        shared: bool = False,
    ) -> Asset:
        sets = transition_fields(change, now, value_column="value_content", timestamp=ms)
        cost = len(change.value.data) if isinstance(change, Fulfillment) and change.value else 0
        by_rule = rule_expiry(change) is not None
        write = transition_write(
            asset_id, expected, sets, lease_condition(change), now, cost, by_rule=by_rule
        )
        if shared and isinstance(change, Fulfillment):
            write = _references.shared(write, change.storage_path)
        result: Asset = await self._writer.submit(write)
        return result

    async def renew_lease(self, asset_id: str, seconds: int, now: datetime, by: str) -> Asset:
        """One update of the lease's document (by $$NOW), beside one read of the asset:
        no transaction, no revision, nothing on the change stream of `assets`."""
        try:
            with pymongo.timeout(self.operation_timeout):
                return await self._promises.renew_and_read(
                    self._assets, asset_id, seconds, now, by, LISTED_PROJECTION
                )
        except PyMongoError as exc:
            raise _write_error(exc, transaction=False) from exc

    async def set_block_sums(self, asset_id: str, storage_path: str, sums: BlockSums) -> bool:
        # Block sums alone (the change feed skips it, _feed.py): clients never see them.
        done = await self._quiet_update(
            {"_id": asset_id, "storage_path": {"$eq": storage_path, "$ne": ""}},
            {"$set": {"block_sums": sums.encode()}},
        )
        return done.matched_count == 1

    async def delete(
        self, asset_id: str, by: str = "", removal: Removal | None = None
    ) -> Asset | None:
        write = delete_write(
            asset_id, by, _NothingToDelete, removal, database_clock=self._transactions
        )
        try:
            result: Asset = await self._writer.submit(write)
        except _NothingToDelete:
            return None
        return result

    def changes(self) -> AsyncIterator[Change | Resync]:
        if self._feed is None:
            raise Unavailable(
                f"no change feed: MongoDB is not open or not a replica set; {REPLICA_SET_HELP}"
            )
        return self._feed.run()


class _NothingToDelete(NotFound):
    """No record to delete: the write's outcome (nothing written, no revision used)."""
