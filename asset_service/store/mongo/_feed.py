"""The change feed: ONE MongoDB change stream decoded into Change | Resync, resumed by token."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from pymongo.errors import OperationFailure, PyMongoError

from asset_service.domain.models import Asset, AssetType, Change, ChangeKind, Resync, Status
from asset_service.store.mongo._documents import EPOCH, asset_to_doc, doc_to_asset

log = logging.getLogger(__name__)

# Server error codes that mean a change stream cannot resume from its token.
HISTORY_LOST_CODES = frozenset({286, 280, 136})  # ChangeStreamHistoryLost, ...FatalError, ...
# Change events that end a stream for good (it must be reopened from "now").
STREAM_ENDING_EVENTS = frozenset({"invalidate", "drop", "dropDatabase", "rename"})


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
