"""The change feed: ONE MongoDB change stream decoded into Change | Resync, resumed by token."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from pymongo.errors import ConnectionFailure, CursorNotFound, OperationFailure, PyMongoError

from asset_service.domain.models import Asset, AssetType, Change, ChangeKind, Resync, Status
from asset_service.domain.reads import slim
from asset_service.store.mongo._documents import EPOCH, asset_to_doc, doc_to_asset

log = logging.getLogger(__name__)

# Server error codes that mean a change stream cannot resume from its token.
HISTORY_LOST_CODES = frozenset({286, 280, 136})  # ChangeStreamHistoryLost, ...FatalError, ...
# Change events that end a stream for good (it must be reopened from "now").
STREAM_ENDING_EVENTS = frozenset({"invalidate", "drop", "dropDatabase", "rename"})
# Server error codes an election or a restart produces (pymongo's _RETRYABLE_ERROR_CODES):
# they repeat for the ~10-12 s of an election, so they are never taken for poison.
TRANSIENT_CODES = frozenset({6, 7, 89, 91, 134, 189, 262, 9001, 10058, 10107, 11600, 11602})
TRANSIENT_CODES |= frozenset({43, 13435, 13436})  # 43: CursorNotFound (pymongo resumes it)
# The same non-transient error this many times in a row, with no event or empty batch read
# in between, is poison (an event over 16 MB, Unauthorized...): resuming from the token
# would hit it forever, so the feed reports it and reopens from now with a Resync.
MAX_IDENTICAL_FAILURES = 3
# A transient error that persists this long is reported too (health goes NOT_SERVING),
# while the feed keeps resuming from its token: an election takes 10-12 s.
REPORT_TRANSIENT_AFTER_SECONDS = 30.0
# Value bytes an event would carry twice (or a watcher never needs): the post-image has
# them, so an update's `updatedFields` drops them unless the post-image is missing (the
# feed then rebuilds the state from `updatedFields`); a pre-image is only used for its
# metadata. Keeps events well under the 16 MB limit for 4 MiB values.
CHANGE_STREAM_PIPELINE: list[dict[str, Any]] = [
    {
        "$set": {
            "updateDescription.updatedFields.value_content": {
                "$cond": [
                    {"$eq": [{"$type": "$fullDocument"}, "object"]},
                    "$$REMOVE",
                    "$updateDescription.updatedFields.value_content",
                ]
            }
        }
    },
    {
        "$unset": [
            "fullDocumentBeforeChange.value_content",
            "fullDocumentBeforeChange.value_kind",
            # Block checksums (up to 40 KiB for 10 GiB) are never sent to watchers.
            "fullDocument.block_sums",
            "fullDocumentBeforeChange.block_sums",
        ]
    },
]
# An update of only these fields is not a change of the asset (MongoStore.set_block_sums).
UNSEEN_FIELDS = frozenset({"block_sums"})


class ChangeStreamLike(Protocol):
    """What the feed needs of pymongo's AsyncChangeStream (tests pass a fake)."""

    @property
    def resume_token(self) -> Mapping[str, Any] | None: ...

    @property
    def alive(self) -> bool: ...

    async def try_next(self) -> Mapping[str, Any] | None: ...

    async def close(self) -> None: ...


WatchFn = Callable[[Mapping[str, Any] | None], Awaitable[ChangeStreamLike]]


class ChangeFeed:
    """Turns ONE MongoDB change stream into `Change | Resync`, forever.

    `watch(resume_after)` opens a stream (resume_after=None: from now). The feed keeps
    the stream's `resume_token`, which pymongo advances to each batch's
    postBatchResumeToken, even over empty batches (it reads with `try_next`, one getMore
    at a time), so after an idle weekend the token is still current. After a network
    error, an election or a server restart it reopens with `resume_after` = that token,
    backing off exponentially (with jitter) while the server stays away. When the history
    is gone (error 286/280/136, the token fell off the oplog), the stream ends
    (`invalidate`, collection dropped/renamed) or there is no token to resume from, it
    opens a new stream from now FIRST and only then yields Resync: a watcher that
    re-reads state after the Resync cannot miss a change committed meanwhile.

    Poison: the same non-transient error MAX_IDENTICAL_FAILURES times in a row (an event
    over 16 MB, Unauthorized) sets `failure` (MongoStore.ping then fails, so health says
    NOT_SERVING) and reopens from now with one Resync; a transient error that lasts over
    REPORT_TRANSIENT_AFTER_SECONDS sets `failure` too. Any event or batch read clears it.

    Deletes: a delete event carries only the id. MongoStore.delete stamps the record
    with its new revision (one update) and removes it in the same transaction, so:
    - with pre-images (MongoDB 6.0+, enabled by MongoStore.open when allowed) the
      delete event's `fullDocumentBeforeChange` is the last state at that revision;
    - without them, the stamping update's `updatedFields.revision` gives the revision,
      and the rest comes from the last state this feed saw of the asset (a bounded
      cache), or is left empty (id + revision only: what watchers need). The same cache
      (or the pre-image) rebuilds an update whose `updateLookup` came back empty because
      the record was deleted before the event was read;
    - a delete with neither (someone removed a record by hand) yields Resync.
    The cache and DELETE changes hold no VALUE bytes (up to 4 MiB each): memory stays
    bounded by the number of assets, not their sizes. A PUT carries its value.
    """

    def __init__(
        self,
        watch: WatchFn,
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        cache_size: int = 10_000,
        first_stream: ChangeStreamLike | None = None,
        max_identical_failures: int = MAX_IDENTICAL_FAILURES,
        report_transient_after: float = REPORT_TRANSIENT_AFTER_SECONDS,
    ) -> None:
        self._watch = watch
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._cache_size = cache_size
        self._max_identical = max(1, max_identical_failures)
        self._report_after = report_transient_after
        self._stream = first_stream
        self._opened = first_stream is not None
        self.token: Mapping[str, Any] | None = (
            first_stream.resume_token if first_stream is not None else None
        )
        # Why the feed cannot follow the database right now (None while it can).
        self.failure: str | None = None
        self._streak: tuple[tuple[str, object], int, float] | None = None  # key, count, since
        self._last_seen: OrderedDict[str, Asset] = OrderedDict()
        # The revision and deleter of each delete stamp seen, until its delete event.
        self._delete_stamp: dict[str, tuple[int, str]] = {}

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                await stream.close()
            except Exception:  # closing a broken stream must not fail shutdown
                log.debug("closing change stream failed", exc_info=True)

    def _remember(self, asset: Asset) -> None:
        self._last_seen[asset.id] = _slim(asset)
        self._last_seen.move_to_end(asset.id)
        while len(self._last_seen) > self._cache_size:
            self._last_seen.popitem(last=False)

    def decode(self, event: Mapping[str, Any]) -> Change | Resync | None:
        """One change event -> a Change, a Resync, or None (nothing to report)."""
        op = event.get("operationType")
        key = event.get("documentKey") or {}
        if op in ("insert", "update", "replace"):
            desc = event.get("updateDescription") or {}
            if op == "update" and not desc.get("removedFields"):
                updated = desc.get("updatedFields") or {}
                if updated and UNSEEN_FIELDS.issuperset(updated):
                    return None
            doc = event.get("fullDocument")
            if doc is None:
                # updateLookup found nothing: the record was deleted since. Rebuild the
                # post-image from the pre-image, or from the last state seen.
                asset_id = str(key.get("_id", ""))
                fields = desc.get("updatedFields") or {}
                base = event.get("fullDocumentBeforeChange")
                last = self._last_seen.get(asset_id)
                if base is None and last is not None:
                    base = asset_to_doc(last, last.revision)
                if base is None:
                    if "revision" in fields:
                        stamp = (int(fields["revision"]), str(fields.get("updated_by", "")))
                        self._delete_stamp[asset_id] = stamp
                    return None
                doc = {**base, **fields}
                for name in desc.get("removedFields") or ():
                    doc.pop(name, None)
            if doc.get("deleted"):
                # The stamp MongoStore.delete writes just before removing the record.
                stamp = (int(doc["revision"]), str(doc.get("updated_by", "")))
                self._delete_stamp[str(doc["_id"])] = stamp
                return None
            asset = doc_to_asset(doc)
            self._remember(asset)
            return Change(ChangeKind.PUT, asset)
        if op == "delete":
            asset_id = str(key.get("_id", ""))
            pre = event.get("fullDocumentBeforeChange")
            stamped = self._delete_stamp.pop(asset_id, None)
            last = self._last_seen.pop(asset_id, None)
            if pre is not None and pre.get("deleted"):
                return Change(ChangeKind.DELETE, _slim(doc_to_asset(pre)))
            if stamped is None:
                return Resync(f"asset {asset_id} was deleted without a revision stamp")
            rev, by = stamped
            if last is not None:
                gone = dataclasses.replace(last, revision=rev, updated_by=by)
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
                    updated_by=by,
                )
            return Change(ChangeKind.DELETE, gone)
        return None  # e.g. createIndexes / modify with showExpandedEvents

    async def _open(self, token: Mapping[str, Any] | None) -> ChangeStreamLike:
        stream = await self._watch(token)
        self._stream = stream
        self._opened = True
        self.token = stream.resume_token if stream.resume_token is not None else token
        return stream

    async def _sleep(self, delay: float) -> float:
        await asyncio.sleep(delay * (0.5 + random.random() / 2))
        return min(delay * 2, self._backoff_max)

    def _read_ok(self, stream: ChangeStreamLike) -> None:
        """A batch (or an event) was read: the stream works and its token moved on."""
        self.token = stream.resume_token
        self._streak = None
        if self.failure is not None:
            log.info("change stream reading again after: %s", self.failure)
            self.failure = None

    def _failed(self, exc: BaseException, transient: bool) -> bool:
        """Count `exc` in the run of identical failures; True when it is now poison."""
        key = (type(exc).__name__, getattr(exc, "code", None) or str(exc))
        now = time.monotonic()
        if self._streak is not None and self._streak[0] == key:
            count, since = self._streak[1] + 1, self._streak[2]
        else:
            count, since = 1, now
        self._streak = (key, count, since)
        if transient:
            if now - since >= self._report_after and self.failure is None:
                self.failure = f"change stream failing for {now - since:.0f}s: {exc}"
                log.error("%s; still resuming", self.failure)
            return False
        if count >= self._max_identical:
            self.failure = f"change stream failed {count} times in a row: {exc}"
            if count == self._max_identical:
                log.error("%s; reopening from now", self.failure)
                return True
        return False

    async def run(self) -> AsyncIterator[Change | Resync]:
        delay = self._backoff_initial
        resync: str | None = None  # reason to yield once the new stream is open
        while True:
            stream = self._stream
            try:
                if stream is None:
                    if resync is None and self.token is None and self._opened:
                        # Reopening "from now" could skip what happened since: say so.
                        resync = "change stream had no resume token"
                        log.warning("%s; reopening from now", resync)
                    stream = await self._open(None if resync else self.token)
                if resync is not None:
                    reason, resync = resync, None
                    yield Resync(reason)
                while True:
                    if not stream.alive:
                        resync = "change stream closed by the server"
                        log.warning("%s; reopening from now", resync)
                        break
                    event = await stream.try_next()
                    delay = self._backoff_initial
                    if event is None:
                        self._read_ok(stream)  # an empty batch: the token moved on
                        continue
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
                    self._read_ok(stream)
                    if self.token is None:
                        self.token = event["_id"]
                    event = {}  # hold no value bytes while the consumer works
                    if item is not None:
                        yield item
            except OperationFailure as exc:
                self._keep_token(stream)
                if exc.code in HISTORY_LOST_CODES:
                    if resync is not None:  # even a stream from now failed: do not spin
                        delay = await self._sleep(delay)
                    resync = f"change stream history lost ({exc.code}): {exc}"
                    log.warning("%s; reopening from now", resync)
                else:
                    if self._failed(exc, _transient(exc)):
                        resync = f"change stream kept failing: {exc}"
                    log.warning("change stream failed (%s); retrying in %.1fs", exc, delay)
                    delay = await self._sleep(delay)
            except PyMongoError as exc:
                self._keep_token(stream)
                if self._failed(exc, _transient(exc)):
                    resync = f"change stream kept failing: {exc}"
                log.warning("change stream interrupted (%s); retrying in %.1fs", exc, delay)
                delay = await self._sleep(delay)
            except Exception as exc:  # e.g. undecodable BSON: start over from now
                log.exception("change stream broke; reopening from now in %.1fs", delay)
                self._failed(exc, transient=False)
                resync = f"change stream broke: {exc!r}"
                delay = await self._sleep(delay)
            await self.close()

    def _keep_token(self, stream: ChangeStreamLike | None) -> None:
        """After an error: pymongo's token is where the failed stream got to (or None)."""
        if stream is not None:
            self.token = stream.resume_token


def _transient(exc: PyMongoError) -> bool:
    """An error an election, a restart or a slow server gives: resume from the token."""
    if isinstance(exc, ConnectionFailure | CursorNotFound) or exc.timeout:
        return True
    return isinstance(exc, OperationFailure) and (
        exc.code in TRANSIENT_CODES or exc.has_error_label("ResumableChangeStreamError")
    )


def _slim(asset: Asset) -> Asset:
    return slim(asset)
