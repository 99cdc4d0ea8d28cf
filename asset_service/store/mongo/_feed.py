"""The change feed: ONE MongoDB change stream decoded into Change | Resync, resumed by token."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from pymongo.errors import ConnectionFailure, CursorNotFound, OperationFailure, PyMongoError

from asset_service.domain.models import Asset, Change, ChangeKind, Resync
from asset_service.domain.reads import slim
from asset_service.store.mongo._documents import doc_to_asset

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
# Each update event's state is its post-image, kept by MongoDB at the change itself
# (changeStreamPreAndPostImages, 6.0+), never the record as it is when the event is read
# ("updateLookup"), which put later states on earlier events and reordered the feed
# (issue 21, item 1). Inserts carry their document; a delete needs no pre-image: the
# stamping update just before it, in the same transaction, has the last state.
FULL_DOCUMENT = "required"
# What the stream asks of the server, and no more (issue 21, item 9):
# - only changes of an asset: each takes a revision (inserts, transitions, delete stamps);
#   an update without one (block sums kept later) is no event at all, and no post-image
#   is read for it;
# - the post-image has the state: the update description's copies of the value bytes (up
#   to 4 MiB) and block sums (up to 40 KiB) are dropped, and so are block sums everywhere
#   (never sent to watchers).
CHANGE_STREAM_PIPELINE: list[dict[str, Any]] = [
    {
        "$match": {
            "$or": [
                {"operationType": {"$ne": "update"}},
                {"updateDescription.updatedFields.revision": {"$exists": True}},
            ]
        }
    },
    {
        "$unset": [
            "updateDescription.updatedFields.value_content",
            "updateDescription.updatedFields.block_sums",
            "fullDocument.block_sums",
        ]
    },
]


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

    Events: an insert carries its document, an update its post-image as of the change
    (FULL_DOCUMENT "required"): each Change is the asset's state at its revision, so the
    feed is in revision order. An update without its post-image (which "required" rules
    out) yields Resync rather than a guess. Deletes: a delete event carries only the id;
    MongoStore.delete stamps the record with its new revision (one update) and removes it
    in the same transaction, so the stamp's post-image is the last state at the delete's
    revision. A delete without a stamp seen (someone removed a record by hand, or the
    stream resumed between the two) yields Resync. DELETE changes hold no VALUE bytes; a
    PUT carries its value.
    """

    def __init__(
        self,
        watch: WatchFn,
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        first_stream: ChangeStreamLike | None = None,
        max_identical_failures: int = MAX_IDENTICAL_FAILURES,
        report_transient_after: float = REPORT_TRANSIENT_AFTER_SECONDS,
    ) -> None:
        self._watch = watch
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
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
        # The last state of each asset whose delete stamp was seen, until its delete
        # event (the next event of the same transaction).
        self._delete_stamp: dict[str, Asset] = {}

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                await stream.close()
            except Exception:  # closing a broken stream must not fail shutdown
                log.debug("closing change stream failed", exc_info=True)

    def decode(self, event: Mapping[str, Any]) -> Change | Resync | None:
        """One change event -> a Change, a Resync, or None (nothing to report)."""
        op = event.get("operationType")
        asset_id = str((event.get("documentKey") or {}).get("_id", ""))
        if op in ("insert", "update", "replace"):
            if op == "update":
                fields = (event.get("updateDescription") or {}).get("updatedFields") or {}
                if "revision" not in fields:
                    return None  # not a change of the asset (CHANGE_STREAM_PIPELINE)
            doc = event.get("fullDocument")
            if doc is None:
                return Resync(f"a change of asset {asset_id} came without its post-image")
            asset = doc_to_asset(doc)
            if asset.holds:  # kept in the record, but no part of its changes
                asset = dataclasses.replace(asset, holds=())
            if doc.get("deleted"):
                # The stamp MongoStore.delete writes just before removing the record.
                self._delete_stamp[asset.id] = _slim(asset)
                return None
            return Change(ChangeKind.PUT, asset)
        if op == "delete":
            gone = self._delete_stamp.pop(asset_id, None)
            if gone is None:
                return Resync(f"asset {asset_id} was deleted without a revision stamp")
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
