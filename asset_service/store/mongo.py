"""MongoStore: the production metadata store on a MongoDB replica set (pymongo async API)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlsplit

from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from asset_service.domain.errors import Conflict, InvalidArgument, NotFound, Unavailable
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    Change,
    ChangeKind,
    Failure,
    Fulfilment,
    Page,
    Resync,
    Status,
    Value,
    ValueKind,
)
from asset_service.store import _paging

log = logging.getLogger(__name__)

Doc = dict[str, Any]
T = TypeVar("T")

DEFAULT_DATABASE = "asset_service"
# Fail fast: an RPC against an unreachable server answers UNAVAILABLE within seconds.
# Any of these given in the URL's query string wins over the default.
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 2500,
    "connectTimeoutMS": 2500,
    "socketTimeoutMS": 20000,
}
# Server error codes that mean a change stream cannot resume from its token.
HISTORY_LOST_CODES = frozenset({286, 280, 136})  # ChangeStreamHistoryLost, ...FatalError, ...
# Change events that end a stream for good (it must be reopened from "now").
STREAM_ENDING_EVENTS = frozenset({"invalidate", "drop", "dropDatabase", "rename"})
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

REPLICA_SET_HELP = (
    "change streams and transactions need a replica set; a single-node one is fine: start "
    "mongod with --replSet rs0 and run once: mongosh --eval "
    '\'rs.initiate({_id: "rs0", members: [{_id: 0, host: "localhost:27017"}]})\' '
    "(see docs/mongodb.md)"
)


# --- documents <-> assets -----------------------------------------------------------


def _ms(ts: datetime) -> datetime:
    """BSON dates hold milliseconds: truncate so a returned Asset equals what a read gives."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


def _value_fields(value: Value | None) -> Doc:
    if value is None:
        return {"value_kind": None, "value_content": None}
    return {"value_kind": value.kind.value, "value_content": value.data}


def asset_to_doc(asset: Asset, revision: int) -> Doc:
    return {
        "_id": asset.id,
        "seq": revision,  # insertion order, never changes: the keyset of ListAssets
        "label": asset.label,
        "status": asset.status.value,
        "type": asset.type.value,
        "media_type": asset.media_type,
        "storage_path": asset.storage_path,
        **_value_fields(asset.value),
        "created_by_task": asset.created_by_task,
        "tags": list(asset.tags),
        "size_bytes": asset.size_bytes,
        "sha256": asset.sha256,
        "created_at": _ms(asset.created_at),
        "updated_at": _ms(asset.updated_at),
        "failure_reason": asset.failure_reason,
        "fulfilled_from": asset.fulfilled_from,
        "revision": revision,
    }


def _aware(ts: Any) -> datetime:
    if not isinstance(ts, datetime):
        return EPOCH
    return ts.astimezone(UTC) if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def doc_to_asset(doc: Mapping[str, Any]) -> Asset:
    value = None
    if doc.get("value_kind"):
        value = Value(ValueKind(doc["value_kind"]), bytes(doc.get("value_content") or b""))
    return Asset(
        id=str(doc["_id"]),
        label=doc.get("label", ""),
        status=Status(doc.get("status", Status.PENDING.value)),
        type=AssetType(doc.get("type", AssetType.FILE.value)),
        media_type=doc.get("media_type", ""),
        storage_path=doc.get("storage_path", ""),
        value=value,
        created_by_task=doc.get("created_by_task", ""),
        tags=tuple(doc.get("tags") or ()),
        size_bytes=int(doc.get("size_bytes", 0)),
        sha256=doc.get("sha256", ""),
        created_at=_aware(doc.get("created_at")),
        updated_at=_aware(doc.get("updated_at")),
        failure_reason=doc.get("failure_reason", ""),
        fulfilled_from=doc.get("fulfilled_from", ""),
        revision=int(doc.get("revision", 0)),
    )


def encode_token(seq: int) -> str:
    return _paging.encode_token("mongo", seq)


def decode_token(token: str) -> int:
    return _paging.decode_token("mongo", token)


def _doc_bytes(doc: Mapping[str, Any]) -> int:
    value = doc.get("value_content")
    return len(value) if isinstance(value, bytes | str) else 0


def _unavailable(exc: PyMongoError) -> Unavailable:
    if isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError):
        return Unavailable(f"MongoDB is unreachable: {exc}")
    return Unavailable(f"MongoDB error: {exc}")


# --- the change feed ------------------------------------------------------------------


class ChangeStreamLike(Protocol):
    """What the feed needs of pymongo's AsyncChangeStream (tests pass a fake)."""

    @property
    def resume_token(self) -> Mapping[str, Any] | None: ...

    async def next(self) -> Mapping[str, Any]: ...

    async def close(self) -> None: ...


WatchFn = Callable[[Mapping[str, Any] | None], Awaitable[ChangeStreamLike]]


class ChangeFeed:
    """Turns ONE MongoDB change stream into `Change | Resync`, forever.

    `watch(resume_after)` opens a stream (resume_after=None: from now). The feed keeps
    the `_id` of the last event it handled (or the stream's post-batch resume token
    before any event) and, after a network error, an election or a server restart,
    reopens with `resume_after` = that token, backing off exponentially (with jitter)
    while the server stays away. When the history is gone (error 286/280/136, the token
    fell off the oplog) or the stream ends (`invalidate`, collection dropped/renamed) it
    opens a new stream from now FIRST and only then yields Resync: a watcher that
    re-reads state after the Resync cannot miss a change committed meanwhile.

    Deletes: a delete event carries only the id. MongoStore.delete stamps the record
    with its new revision (one update) and removes it in the same transaction, so:
    - with pre-images (MongoDB 6.0+, enabled by MongoStore.open when allowed) the
      delete event's `fullDocumentBeforeChange` is the full last state at that revision;
    - without them, the stamping update's `updatedFields.revision` gives the revision,
      and the rest comes from the last state this feed saw of the asset (a bounded
      cache), or is left empty (id + revision only: what watchers need). The same cache
      (or the pre-image) rebuilds an update whose `updateLookup` came back empty because
      the record was deleted before the event was read;
    - a delete with neither (someone removed a record by hand) yields Resync.
    """

    def __init__(
        self,
        watch: WatchFn,
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        cache_size: int = 10_000,
        first_stream: ChangeStreamLike | None = None,
    ) -> None:
        self._watch = watch
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._cache_size = cache_size
        self._stream = first_stream
        self.token: Mapping[str, Any] | None = (
            first_stream.resume_token if first_stream is not None else None
        )
        self._last_seen: OrderedDict[str, Asset] = OrderedDict()
        self._delete_revision: dict[str, int] = {}

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                await stream.close()
            except Exception:  # closing a broken stream must not fail shutdown
                log.debug("closing change stream failed", exc_info=True)

    def _remember(self, asset: Asset) -> None:
        self._last_seen[asset.id] = asset
        self._last_seen.move_to_end(asset.id)
        while len(self._last_seen) > self._cache_size:
            self._last_seen.popitem(last=False)

    def decode(self, event: Mapping[str, Any]) -> Change | Resync | None:
        """One change event -> a Change, a Resync, or None (nothing to report)."""
        op = event.get("operationType")
        key = event.get("documentKey") or {}
        if op in ("insert", "update", "replace"):
            doc = event.get("fullDocument")
            if doc is None:
                # updateLookup found nothing: the record was deleted since. Rebuild the
                # post-image from the pre-image, or from the last state seen.
                asset_id = str(key.get("_id", ""))
                desc = event.get("updateDescription") or {}
                fields = desc.get("updatedFields") or {}
                base = event.get("fullDocumentBeforeChange")
                last = self._last_seen.get(asset_id)
                if base is None and last is not None:
                    base = asset_to_doc(last, last.revision)
                if base is None:
                    if "revision" in fields:
                        self._delete_revision[asset_id] = int(fields["revision"])
                    return None
                doc = {**base, **fields}
                for name in desc.get("removedFields") or ():
                    doc.pop(name, None)
            if doc.get("deleted"):
                # The stamp MongoStore.delete writes just before removing the record.
                self._delete_revision[str(doc["_id"])] = int(doc["revision"])
                return None
            asset = doc_to_asset(doc)
            self._remember(asset)
            return Change(ChangeKind.PUT, asset)
        if op == "delete":
            asset_id = str(key.get("_id", ""))
            pre = event.get("fullDocumentBeforeChange")
            rev = self._delete_revision.pop(asset_id, None)
            last = self._last_seen.pop(asset_id, None)
            if pre is not None and pre.get("deleted"):
                return Change(ChangeKind.DELETE, doc_to_asset(pre))
            if rev is None:
                return Resync(f"asset {asset_id} was deleted without a revision stamp")
            if last is not None:
                gone = Asset(**{**last.__dict__, "revision": rev})
            else:
                gone = Asset(
                    id=asset_id,
                    label="",
                    status=Status.PENDING,
                    type=AssetType.FILE,
                    media_type="",
                    created_at=EPOCH,
                    updated_at=EPOCH,
                    revision=rev,
                )
            return Change(ChangeKind.DELETE, gone)
        return None  # e.g. createIndexes / modify with showExpandedEvents

    async def _open(self, token: Mapping[str, Any] | None) -> ChangeStreamLike:
        stream = await self._watch(token)
        self._stream = stream
        if token is None:
            self.token = stream.resume_token
        return stream

    async def _sleep(self, delay: float) -> float:
        await asyncio.sleep(delay * (0.5 + random.random() / 2))
        return min(delay * 2, self._backoff_max)

    async def run(self) -> AsyncIterator[Change | Resync]:
        delay = self._backoff_initial
        resync: str | None = None  # reason to yield once the new stream is open
        while True:
            stream = self._stream
            try:
                if stream is None:
                    stream = await self._open(None if resync else self.token)
                if resync is not None:
                    reason, resync = resync, None
                    yield Resync(reason)
                while True:
                    event = await stream.next()
                    delay = self._backoff_initial
                    op = event.get("operationType")
                    if op in STREAM_ENDING_EVENTS:
                        resync = f"change stream ended by a {op} event"
                        log.warning("%s; reopening from now", resync)
                        break
                    try:
                        item = self.decode(event)
                    except Exception as exc:  # a malformed record must not stop the feed
                        log.exception("cannot decode change event %r", event.get("_id"))
                        item = Resync(f"undecodable change event: {exc}")
                    self.token = event["_id"]
                    if item is not None:
                        yield item
            except OperationFailure as exc:
                if exc.code in HISTORY_LOST_CODES:
                    if resync is not None:  # even a stream from now failed: do not spin
                        delay = await self._sleep(delay)
                    resync = f"change stream history lost ({exc.code}): {exc}"
                    log.warning("%s; reopening from now", resync)
                else:
                    log.warning("change stream failed (%s); retrying in %.1fs", exc, delay)
                    delay = await self._sleep(delay)
            except PyMongoError as exc:
                log.warning("change stream interrupted (%s); retrying in %.1fs", exc, delay)
                delay = await self._sleep(delay)
            except Exception as exc:  # e.g. undecodable BSON: start over from now
                log.exception("change stream broke; reopening from now in %.1fs", delay)
                resync = f"change stream broke: {exc!r}"
                delay = await self._sleep(delay)
            await self.close()


# --- the store --------------------------------------------------------------------------


class MongoStore:
    """Asset records in one MongoDB collection (docs/mongodb.md).

    Revisions. One counter document (`counters/_id: "revision"`) is `$inc`-ed inside the
    SAME multi-document transaction as the asset write it numbers. Two transactions that
    both increment it write-conflict, and the loser is retried (pymongo's
    `with_transaction`) only after the winner committed; so revisions are handed out in
    commit order, the oplog (hence the change stream) lists writes in revision order,
    and a WatchAsset cursor `after_revision=N` means "every commit after the N-th", the
    same for every asset. An aborted write (e.g. a lost race) does not consume a revision.
    Limits: all writes of a deployment serialize on that one document (a few thousand
    writes per second; heavy write contention shows up as retried transactions, given up
    after pymongo's 120 s); on a sharded cluster the counter lives on one shard, so every
    write is a cross-shard transaction. A plain `$inc` outside the transaction would
    scale better but could commit revision 6 before 5: a watcher resuming after 6 would
    then never see 5.

    Transitions. Inside that transaction the record changes through ONE conditional
    `find_one_and_update` whose filter holds `status: expected`: racing writers get
    exactly one winner; a non-match reads the record (same snapshot) to tell NotFound
    from Conflict. There is no read-modify-write.

    `allow_standalone=True` is for tests on wire-compatible servers without replica
    sets (FerretDB): writes then run without a transaction (revisions are still unique
    and growing, but not in commit order under concurrency) and there is no change feed.
    """

    def __init__(self, url: str, *, allow_standalone: bool = False) -> None:
        self.url = url
        self.allow_standalone = allow_standalone
        given = {k.lower() for k, _ in parse_qsl(urlsplit(url).query)}
        options = {k: v for k, v in DEFAULT_CLIENT_OPTIONS.items() if k.lower() not in given}
        try:
            self._client: AsyncMongoClient[Doc] = AsyncMongoClient(
                url, tz_aware=True, connect=False, **options
            )
            self._db = self._client.get_default_database(DEFAULT_DATABASE)
        except (PyMongoError, ValueError) as exc:
            raise InvalidArgument(f"database URL {self._redacted()}: {exc}") from exc
        wc = WriteConcern("majority")
        self._assets: AsyncCollection[Doc] = self._db.get_collection("assets", write_concern=wc)
        self._counters: AsyncCollection[Doc] = self._db.get_collection("counters", write_concern=wc)
        self._transactions = True
        self._pre_images = False
        self._feed: ChangeFeed | None = None

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
        try:
            await self._assets.create_index([("seq", ASCENDING)], name="seq", unique=True)
            for name, keys in (
                ("status_seq", [("status", ASCENDING), ("seq", ASCENDING)]),
                ("task_seq", [("created_by_task", ASCENDING), ("seq", ASCENDING)]),
                ("tags_seq", [("tags", ASCENDING), ("seq", ASCENDING)]),
                ("label_seq", [("label", ASCENDING), ("seq", ASCENDING)]),
            ):
                await self._assets.create_index(keys, name=name)
            await self._counters.update_one(
                {"_id": "revision"}, {"$setOnInsert": {"value": 0}}, upsert=True
            )
        except PyMongoError as exc:
            raise Unavailable(f"cannot prepare MongoDB database {self._db.name}: {exc}") from exc
        if self._transactions:
            await self._enable_pre_images()
            try:
                first = await self._open_stream(None)
            except PyMongoError as exc:
                raise Unavailable(f"cannot open a MongoDB change stream: {exc}") from exc
            self._feed = ChangeFeed(self._open_stream, first_stream=first)

    async def _enable_pre_images(self) -> None:
        try:
            await self._db.command(
                "collMod", "assets", changeStreamPreAndPostImages={"enabled": True}
            )
            self._pre_images = True
        except PyMongoError as exc:
            log.info(
                "change stream pre-images unavailable (%s); deletes carry id and revision", exc
            )

    async def _open_stream(self, resume_after: Mapping[str, Any] | None) -> ChangeStreamLike:
        extra: dict[str, Any] = {}
        if self._pre_images:
            extra["full_document_before_change"] = "whenAvailable"
        stream = await self._assets.watch(
            full_document="updateLookup", resume_after=resume_after, **extra
        )
        return stream

    async def close(self) -> None:
        if self._feed is not None:
            await self._feed.close()
        await self._client.close()

    async def ping(self) -> None:
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

    async def _write(self, fn: Callable[[AsyncClientSession | None], Awaitable[T]]) -> T:
        """Run `fn` in one transaction (retried on transient errors); map driver errors."""
        try:
            if not self._transactions:
                return await fn(None)
            async with self._client.start_session() as session:
                return await session.with_transaction(
                    fn,
                    read_concern=ReadConcern("snapshot"),
                    write_concern=WriteConcern("majority"),
                )
        except DuplicateKeyError as exc:
            raise Conflict(f"asset already exists: {exc}") from exc
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    async def _next_revision(self, session: AsyncClientSession | None) -> int:
        doc = await self._counters.find_one_and_update(
            {"_id": "revision"},
            {"$inc": {"value": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        assert doc is not None
        return int(doc["value"])

    # --- reads ----------------------------------------------------------------------

    async def get(self, asset_id: str) -> Asset | None:
        try:
            doc = await self._assets.find_one({"_id": asset_id})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return doc_to_asset(doc) if doc is not None else None

    async def get_many(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        ids = list(dict.fromkeys(asset_ids))
        found: dict[str, Asset] = {}
        try:
            for start in range(0, len(ids), 1000):
                part = ids[start : start + 1000]
                async for doc in self._assets.find({"_id": {"$in": part}}):
                    asset = doc_to_asset(doc)
                    found[asset.id] = asset
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return found

    async def query(
        self, flt: AssetFilter, limit: int, page_token: str, max_bytes: int | None = None
    ) -> Page:
        after = decode_token(page_token) if page_token else 0
        where: Doc = {"seq": {"$gt": after}}
        if flt.status is not None:
            where["status"] = flt.status.value
        if flt.type is not None:
            where["type"] = flt.type.value
        if flt.created_by_task:
            where["created_by_task"] = flt.created_by_task
        if flt.label:
            where["label"] = flt.label
        if flt.tags:
            where["tags"] = {"$all": list(flt.tags)}
        cursor = self._assets.find(where).sort("seq", ASCENDING).limit(limit + 1)
        docs: list[Doc] = []
        used, full = 0, False
        try:
            # Read only what the page can hold, plus one document past it (so that
            # fill_page knows more follow): the rest stays on the server.
            async for doc in cursor:
                docs.append(doc)
                if len(docs) > limit or full:
                    break
                used += _doc_bytes(doc)
                full = max_bytes is not None and used > max_bytes
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        finally:
            await cursor.close()
        assets, last = _paging.fill_page(
            docs, limit, max_bytes, doc_to_asset, lambda d: int(d["seq"])
        )
        return Page(assets, encode_token(last) if last is not None else "")

    # --- writes -----------------------------------------------------------------------

    async def insert(self, asset: Asset) -> Asset:
        async def w(session: AsyncClientSession | None) -> Asset:
            rev = await self._next_revision(session)
            doc = asset_to_doc(asset, rev)
            await self._assets.insert_one(doc, session=session)
            return doc_to_asset(doc)

        return await self._write(w)

    async def transition(
        self, asset_id: str, expected: Status, change: Fulfilment | Failure, now: datetime
    ) -> Asset:
        sets: Doc
        if isinstance(change, Fulfilment):
            sets = {
                "status": Status.AVAILABLE.value,
                "storage_path": change.storage_path,
                **_value_fields(change.value),
                "size_bytes": change.size_bytes,
                "sha256": change.sha256,
                "fulfilled_from": change.fulfilled_from,
            }
            if change.media_type:
                sets["media_type"] = change.media_type
        else:
            sets = {"status": Status.FAILED.value, "failure_reason": change.reason}
        sets["updated_at"] = _ms(now)

        async def w(session: AsyncClientSession | None) -> Asset:
            rev = await self._next_revision(session)
            doc = await self._assets.find_one_and_update(
                {"_id": asset_id, "status": expected.value},
                {"$set": {**sets, "revision": rev}},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            if doc is None:
                current = await self._assets.find_one(
                    {"_id": asset_id}, {"status": 1}, session=session
                )
                if current is None:
                    raise NotFound(f"asset {asset_id} not found")
                raise Conflict(f"asset {asset_id} is {current['status']}, expected {expected}")
            return doc_to_asset(doc)

        return await self._write(w)

    async def delete(self, asset_id: str) -> Asset | None:
        async def w(session: AsyncClientSession | None) -> Asset | None:
            rev = await self._next_revision(session)
            # Stamp the new revision first so the change feed can number the delete.
            doc = await self._assets.find_one_and_update(
                {"_id": asset_id},
                {"$set": {"revision": rev, "deleted": True}},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            if doc is None:
                raise _NothingToDelete
            await self._assets.delete_one({"_id": asset_id}, session=session)
            return doc_to_asset(doc)

        try:
            return await self._write(w)
        except _NothingToDelete:
            return None

    def changes(self) -> AsyncIterator[Change | Resync]:
        if self._feed is None:
            raise Unavailable(
                f"no change feed: MongoDB is not open or not a replica set; {REPLICA_SET_HELP}"
            )
        return self._feed.run()


class _NothingToDelete(Exception):
    """Aborts the delete transaction (and gives its revision back) when there is no record."""
