"""Selector watches: the cursor that pins and resumes one, and what follow() has yielded."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from asset_client._convert import pb
from asset_client._core import Cursor, list_request
from asset_client.models import (
    Asset,
    AssetStatus,
    AssetType,
    WatchEvent,
    WatchEventType,
)


class SelectorCursor(Cursor):
    """A watch of every asset a selector picks: CHANGED and DELETED events, no snapshot.

    The server replays from the revision it is given, so this client's "0: from now" is
    first pinned to the revision of a one-item listing with the same filter (ListAssets
    reads it in one cut with its page); a resumption then continues from what was seen.
    """

    def __init__(
        self,
        status: AssetStatus | None,
        type_: AssetType | None,
        tags: Iterable[str],
        created_by_task: str | None,
        label: str | None,
        after_revision: int,
        timeout: float | None,
        key: str | None = None,
    ) -> None:
        super().__init__(after_revision, timeout)
        self.listing = list_request(status, type_, tags, created_by_task, label, 1, key)
        self.selector = pb.AssetSelector(
            task_id=self.listing.created_by_task,
            tags=self.listing.tags,
            status=self.listing.status,
            type=self.listing.type,
            label=self.listing.label,
            key=self.listing.key,
        )
        self.pinned = after_revision != 0

    def pin_request(self) -> pb.ListAssetsRequest | None:
        return None if self.pinned else self.listing

    def pin(self, revision: int) -> None:
        super().pin(revision)
        self.pinned = True

    def _request(self) -> pb.WatchAssetRequest:
        return pb.WatchAssetRequest(selector=self.selector, after_revision=self.revision)


class Informer:
    """What follow() has yielded: the last state of each asset in the selection.

    Each page of a listing is read at its own revision and the watch replays from the
    first page's, so one change can arrive twice (on a later page, then replayed); an event
    goes out only if it is newer than what was yielded for its asset. A relisting (after
    HistoryGoneError) accounts for the assets it no longer shows: `recheck` turns each
    one's current record (None: deleted) into an event.
    """

    def __init__(self, status: AssetStatus | None) -> None:
        self.status = status
        self.known: dict[str, Asset] = {}
        self.revision = 0  # the listing's first page's: the watch starts after it
        self._pages = 0
        self._listed: set[str] = set()
        self._last_page_revision = 0
        # Assets a relisting found deleted or out of a status selection: that happened at
        # a revision not above the listing's last page, so their events replayed up to
        # there are older than what was yielded for them.
        self._settled: set[str] = set()

    def start_listing(self) -> None:
        self._pages = 0
        self._listed = set()
        self._settled = set()

    def page_read(self, revision: int) -> None:
        """A page of the listing was read at `revision`."""
        if self._pages == 0:
            self.revision = revision
        self._pages += 1
        self._last_page_revision = revision

    def listed(self, asset: Asset) -> WatchEvent | None:
        """A SNAPSHOT event for a listed asset, unless it was yielded already."""
        self._listed.add(asset.id)
        if not self._newer(asset):
            return None
        return WatchEvent(WatchEventType.SNAPSHOT, asset, asset.revision)

    def unlisted(self) -> list[str]:
        """The assets yielded earlier that the listing just read does not show."""
        return [i for i in self.known if i not in self._listed]

    def recheck(self, asset_id: str, current: Asset | None) -> WatchEvent | None:
        """The event of an unlisted asset: DELETED with the last state yielded (and its
        revision) if it is gone, else CHANGED if it moved (out of a status selection)."""
        self._settled.add(asset_id)
        if current is None:
            last = self.known.pop(asset_id)
            return WatchEvent(WatchEventType.DELETED, last, last.revision)
        if not self._newer(current):
            return None
        return WatchEvent(WatchEventType.CHANGED, current, current.revision)

    def watched(self, event: WatchEvent) -> WatchEvent | None:
        """`event` if it is news to the caller, else None."""
        asset_id = event.asset.id
        if self._settled and event.revision > self._last_page_revision:
            self._settled.clear()
        if asset_id in self._settled:
            return None
        if event.type is WatchEventType.DELETED:
            return event if self.known.pop(asset_id, None) is not None else None
        return event if self._newer(event.asset) else None

    def _newer(self, asset: Asset) -> bool:
        """Whether `asset` is newer than what was yielded for it; if so, remember it.

        An asset that left a status selection gets no more events: it is forgotten.
        """
        last = self.known.get(asset.id)
        if last is not None and asset.revision <= last.revision:
            return False
        if self.status is not None and asset.status is not self.status:
            self.known.pop(asset.id, None)
        else:
            # Watch events carry no inline value; the listing's are not kept either.
            self.known[asset.id] = dataclasses.replace(asset, value=None) if asset.value else asset
        return True
