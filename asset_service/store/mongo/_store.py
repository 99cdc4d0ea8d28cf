"""MongoStore: the production metadata store on a MongoDB replica set (pymongo async API)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pymongo
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import ReadPreference
from pymongo.write_concern import WriteConcern

from asset_service.domain.errors import (
    InvalidArgument,
    KeyTaken,
    NotFound,
    Unavailable,
)
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    BlockSums,
    Change,
    Fulfillment,
    Page,
    Removal,
    Resync,
    Status,
    Transition,
    approx_bytes,
)
from asset_service.domain.replay import Replay
from asset_service.store import _paging
from asset_service.store._fields import lease_condition, rule_expiry, transition_fields
from asset_service.store.mongo import _references, _retention, _schema, _startup, _tombstones
from asset_service.store.mongo._documents import (
    Doc,
    DuplicateKey,
    _doc_bytes,
    _unavailable,
    _write_error,
    decode_token,
    doc_to_asset,
    encode_token,
    ms,
)
from asset_service.store.mongo._feed import (
    CHANGE_STREAM_PIPELINE,
    FULL_DOCUMENT,
    ChangeFeed,
    ChangeStreamLike,
)
from asset_service.store.mongo._leases import WriterLeases
from asset_service.store.mongo._promises import PromiseLeases, overlay
from asset_service.store.mongo._retention_store import MongoRetention
from asset_service.store.mongo._transition import (
    DROP_AFTER,
    USAGE,
    delete_write,
    insert_write,
    lease_steps,
    transition_write,
)
from asset_service.store.mongo._writer import DEFAULT_MAX_QUEUED, GroupWriter, Write

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "asset_service"
# Fail fast: an RPC against an unreachable server answers UNAVAILABLE within seconds.
# Any of these given in the URL's query string wins over the default.
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 2500,
    "connectTimeoutMS": 2500,
    "socketTimeoutMS": 20000,
}


# Every write ends within this many seconds of its submission, queue included (pymongo's
# client-side operation timeout): longer than an election (10-12 s), which a write rides
# through by the writer's retries, far shorter than transactionLifetimeLimitSeconds.
# Reads are not run under it: with a client-side timeout, server selection waits for all
# of it instead of serverSelectionTimeoutMS, and a read should fail in seconds (it is
# bounded by serverSelectionTimeoutMS plus socketTimeoutMS and is not retried for long).
DEFAULT_OPERATION_TIMEOUT = 15.0
# A record without its inline value (nor holds, which only reads show): what snapshot()
# reads.
SLIM_PROJECTION: dict[str, Any] = {
    "value_content": 0,
    "value_kind": 0,
    "block_sums": 0,
    "holds": 0,
}
# A record without its block sums (only get() reads them: ReadAsset checks with them).
LISTED_PROJECTION: dict[str, Any] = {"block_sums": 0}
# Change-stream post-images (each event's state as of the change, issue 21 item 1) came
# with MongoDB 6.0; snapshot reads outside transactions (watch snapshots) with 5.0.
MIN_WIRE_VERSION = 17

REPLICA_SET_HELP = (
    "change streams and transactions need a replica set; a single-node one is fine: start "
    "mongod with --replSet rs0 and run once: mongosh --eval "
    '\'rs.initiate({_id: "rs0", members: [{_id: 0, host: "localhost:27017"}]})\' '
    "(see docs/mongodb.md)"
)


class MongoStore(MongoRetention):
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
        given = {k.lower() for k, _ in parse_qsl(urlsplit(url).query)}
        options = {k: v for k, v in DEFAULT_CLIENT_OPTIONS.items() if k.lower() not in given}
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
        replicated = "setName" in hello or hello.get("msg") == "isdbgrid"
        if not replicated:
            if not self.allow_standalone:
                await self._client.close()
                raise Unavailable(
                    f"MongoDB at {self._redacted()} is a standalone server: {REPLICA_SET_HELP}"
                )
            log.warning("MongoDB is not a replica set: no transactions, no change feed")
            self._transactions = False
            self._writer.max_writes = 1  # no transaction: a batch could half-apply
        elif int(hello.get("maxWireVersion", 0)) < MIN_WIRE_VERSION:
            await self._client.close()
            raise Unavailable(
                f"MongoDB at {self._redacted()} is older than 6.0 (wire version "
                f"{hello.get('maxWireVersion')}); the asset service needs 6.0 or newer: its "
                "watch events are built from the post-images MongoDB keeps at each change "
                "(changeStreamPreAndPostImages), in revision order; snapshot reads serve "
                "watch snapshots"
            )
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

    @property
    def _promises(self) -> PromiseLeases:
        # The database's clock wherever it can judge ($expr, update pipelines: a replica
        # set); FerretDB (allow_standalone, tests) has neither.
        return PromiseLeases(self._lease_docs, self._sweeps, database_clock=self._transactions)

    def _beat_collection(self) -> Any:
        """`writers` through a synchronous client of its own: the writer lease's heartbeat
        thread goes on while the event loop is stalled (_leases.py)."""
        given = {k.lower() for k, _ in parse_qsl(urlsplit(self.url).query)}
        options = {k: v for k, v in DEFAULT_CLIENT_OPTIONS.items() if k.lower() not in given}
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
        if self._ending is not None:
            self._ending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ending
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

    # --- reads ----------------------------------------------------------------------

    async def get(self, asset_id: str) -> Asset | None:
        try:
            doc = await self._assets.find_one({"_id": asset_id})
            if doc is not None and overlay([doc]):
                end = await self._promises.current_end(asset_id)
                if end is None:
                    # Its lease ended since the first read: the promise left PENDING, and
                    # its record now holds the last end.
                    doc = await self._assets.find_one({"_id": asset_id})
                else:
                    doc["lease_expires_at"] = end
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return doc_to_asset(doc) if doc is not None else None

    async def _with_leases(self, docs: list[Doc], session: AsyncClientSession | None) -> None:
        """Show each PENDING promise's lease as its record in `leases` says (one query)."""
        ends = await self._promises.ends(overlay(docs), session)
        for doc in docs:
            end = ends.get(str(doc["_id"]))
            if end is not None:
                doc["lease_expires_at"] = end

    async def referenced(self, storage_paths: Sequence[str]) -> set[str]:
        try:
            return await _references.referenced(self._assets, storage_paths)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def get_many(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        ids = list(dict.fromkeys(asset_ids))
        found: dict[str, Asset] = {}
        try:
            for start in range(0, len(ids), 1000):
                part = ids[start : start + 1000]
                docs = [
                    d async for d in self._assets.find({"_id": {"$in": part}}, LISTED_PROJECTION)
                ]
                await self._with_leases(docs, None)
                for doc in docs:
                    asset = doc_to_asset(doc)
                    found[asset.id] = asset
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return found

    @contextlib.asynccontextmanager
    async def _one_cut(self) -> AsyncIterator[AsyncClientSession | None]:
        """A snapshot session: every read in it sees one majority-committed cluster time
        (the first read's). None without transactions (FerretDB): plain reads."""
        if not self._transactions:
            yield None
            return
        async with self._client.start_session(snapshot=True, causal_consistency=False) as s:
            yield s

    async def snapshot(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        """One consistent cut without values: a snapshot session (MongoDB 5.0+).

        Every find in a `snapshot=True` session reads at the cluster time of the first
        one (readConcern "snapshot" with atClusterTime), which holds majority-committed
        writes only: what a failover may roll back is never shown, and a change missing
        from the cut has a higher revision than every one in it (revision order is
        commit order). The session must finish within the server's
        minSnapshotHistoryWindowInSeconds (5 min); an older snapshot fails with
        SnapshotTooOld (239), which is UNAVAILABLE: the watcher retries with a new one.
        Without transactions (allow_standalone: FerretDB) these are plain reads.
        """
        ids = list(dict.fromkeys(asset_ids))
        found: dict[str, Asset] = {}
        if not ids:
            return found
        try:
            async with self._one_cut() as session:
                for start in range(0, len(ids), 1000):
                    part = ids[start : start + 1000]
                    cursor = self._assets.find(
                        {"_id": {"$in": part}}, SLIM_PROJECTION, session=session
                    ).max_time_ms(_schema.QUERY_MAX_TIME_MS)
                    docs = [doc async for doc in cursor]
                    await self._with_leases(docs, session)  # the same cut
                    for doc in docs:
                        asset = doc_to_asset(doc)
                        found[asset.id] = asset
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return found

    async def query(
        self, flt: AssetFilter, limit: int, page_token: str, max_bytes: int | None = None
    ) -> Page:
        after = decode_token(page_token, flt) if page_token else 0
        where: Doc = {"seq": {"$gt": after}}
        if flt.status is not None:
            where["status"] = flt.status.value
        if flt.type is not None:
            where["type"] = flt.type.value
        if flt.created_by_task:
            where["created_by_task"] = flt.created_by_task
        if flt.label:
            where["label"] = flt.label
        if flt.key:
            where["key"] = flt.key
        if flt.sha256:
            where["sha256"] = flt.sha256
        if flt.tags:
            where["tags"] = {"$all": list(flt.tags)}
        docs: list[Doc] = []
        used, full = 0, False
        try:
            async with self._one_cut() as session:  # the counter and the page: one cut
                revision = await self._revision_in(session)
                cursor = (
                    self._assets.find(where, LISTED_PROJECTION, session=session)
                    .sort("seq", ASCENDING)
                    .limit(limit + 1)
                    .max_time_ms(_schema.QUERY_MAX_TIME_MS)
                )
                try:
                    # Read only what the page can hold, plus one document past it (so
                    # that fill_page knows more follow): the rest stays on the server.
                    async for doc in cursor:
                        docs.append(doc)
                        if len(docs) > limit or full:
                            break
                        used += _doc_bytes(doc)
                        full = max_bytes is not None and used > max_bytes
                finally:
                    await cursor.close()
                await self._with_leases(docs, session)  # the same cut
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        assets, last = _paging.fill_page(
            docs, limit, max_bytes, doc_to_asset, lambda d: int(d["seq"])
        )
        return Page(assets, encode_token(last, flt) if last is not None else "", revision)

    async def _revision_in(self, session: AsyncClientSession | None) -> int:
        doc = await self._counters.find_one({"_id": "revision"}, session=session)
        return int(doc["value"]) if doc else 0

    async def current_revision(self) -> int:
        """Read at majority: a counter value a failover may roll back (and the new
        primary then hand out again, for other writes) would make the watch history
        begin above revisions it must still replay."""
        majority = self._counters.with_options(read_concern=ReadConcern("majority"))
        try:
            doc = await majority.find_one({"_id": "revision"})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return int(doc["value"]) if doc else 0

    async def changes_since(self, after: int, limit: int, task: str = "") -> Replay:
        """One snapshot session (majority, one cluster time): the horizon, the counter,
        the records and the tombstones above `after`, through their revision indexes."""
        try:
            async with self._one_cut() as session:
                return await _tombstones.changes_since(
                    self._assets,
                    self._tombstones,
                    self._counters,
                    session,
                    after,
                    limit,
                    SLIM_PROJECTION,
                    _schema.QUERY_MAX_TIME_MS,
                    task,
                )
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def sweep_tombstones(self, before: datetime) -> int:
        try:
            with pymongo.timeout(self.operation_timeout * 4):
                return await _tombstones.sweep(self._tombstones, self._counters, before)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def count_by_status(self) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        try:
            for status in Status:
                # A count of the (status, seq) index's range: no document is fetched.
                counts[status] = await self._assets.count_documents(
                    {"status": status.value}, maxTimeMS=_schema.QUERY_MAX_TIME_MS
                )
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return counts

    async def leases_run_out(self, now: datetime, limit: int) -> list[Asset]:
        """By the database's clock ($$NOW) on a replica set: `now` is not used there."""
        try:
            due = await self._promises.due(now, limit, _schema.QUERY_MAX_TIME_MS)
            ends = dict(due)
            docs = await self._assets.find(
                {"_id": {"$in": list(ends)}, "status": Status.PENDING.value}, SLIM_PROJECTION
            ).to_list()
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        for doc in docs:
            doc["lease_expires_at"] = ends[str(doc["_id"])]
        assets = sorted((doc_to_asset(d) for d in docs), key=lambda a: (a.lease_expires_at, a.id))
        return assets

    async def claim_sweep(
        self, holder: str, seconds: float, now: datetime, name: str = "lease"
    ) -> bool:
        try:
            return await self._promises.claim_sweep(holder, seconds, now, name)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

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

    async def key_holder(self, key: str) -> Asset | None:
        try:
            doc = await self._assets.find_one({"key_slot": key}, LISTED_PROJECTION)
            if doc is None:
                return None
            await self._with_leases([doc], None)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return doc_to_asset(doc)

    async def release_key(self, asset_id: str, key: str) -> bool:
        # Not through the group writer: no revision, and the change feed skips an update
        # without one (_feed.py); the record's own fields are unchanged.
        try:
            with pymongo.timeout(self.operation_timeout):
                done = await self._assets.update_one(
                    {"_id": asset_id, "key_slot": key}, {"$unset": {"key_slot": ""}}
                )
        except PyMongoError as exc:
            raise _write_error(exc, transaction=False) from exc
        return done.modified_count == 1

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
        # Not through the group writer: no revision, and the change feed skips an update
        # of block_sums alone (_feed.py); clients never see them.
        try:
            with pymongo.timeout(self.operation_timeout):
                done = await self._assets.update_one(
                    {"_id": asset_id, "storage_path": {"$eq": storage_path, "$ne": ""}},
                    {"$set": {"block_sums": sums.encode()}},
                )
        except PyMongoError as exc:
            raise _write_error(exc, transaction=False) from exc
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
