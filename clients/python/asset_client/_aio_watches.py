"""The client's watches: by id, by selector, informers, waiting for assets."""

# A part of AsyncAssetClient (aio.py), which inherits it. The blocking _watches.py is
# generated from this file by scripts/gen_sync_client.py (`make generate`), as client.py
# is from aio.py. `timeout` is a gRPC deadline, as in the clients, not an asyncio timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable

from asset_client import _aio_streams, _core, _selectors
from asset_client._aio_calls import AsyncClientBase
from asset_client.models import Asset, AssetStatus, AssetType, WatchEvent


class AsyncWatchMethods(AsyncClientBase):
    """watch, watch_selector, follow, wait_until_available."""

    # -- watching ------------------------------------------------------------------------

    def watch(
        self,
        asset_ids: Iterable[str],
        after_revision: int = 0,
        follow: bool = False,
        *,
        timeout: float | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Snapshot then every change, in order; resumes by itself after UNAVAILABLE."""
        cursor = _core.WatchCursor(asset_ids, after_revision, follow, timeout)
        return _aio_streams.watch_events(self._stub, cursor, self.timeout)

    def watch_selector(
        self,
        *,
        status: AssetStatus | None = None,
        type: AssetType | None = None,
        tags: Iterable[str] = (),
        created_by_task: str | None = None,
        label: str | None = None,
        after_revision: int = 0,
        key: str | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Every change, after `after_revision`, of the assets these filters pick; forever.

        CHANGED and DELETED events (no SNAPSHOT: list_page has the state and the revision
        to start after), in revision order, including assets created later; records come
        without their inline VALUE content (`get` has it). With status PENDING a promise's
        fulfilment or failure comes too: it leaves the selection. after_revision 0 means
        from now (pinned with a one-item listing first). Resumes by itself after
        UNAVAILABLE from the last revision yielded. Below the server's in-memory history
        it replays from its store: each asset's latest state since then, not every step.
        HistoryGoneError if the server can no longer replay from that revision: list
        again and watch from the page's revision (or use `follow`, which does).
        """
        cursor = _selectors.SelectorCursor(
            status, type, tags, created_by_task, label, after_revision, timeout, key
        )
        return _aio_streams.watch_events(self._stub, cursor, self.timeout)

    def follow(
        self,
        *,
        status: AssetStatus | None = None,
        type: AssetType | None = None,
        tags: Iterable[str] = (),
        created_by_task: str | None = None,
        label: str | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """The assets these filters pick, then every change to them (an informer); forever.

        A SNAPSHOT event for each listed asset (page after page, with its VALUE), then
        watch_selector's events from the first page's revision (the server replays them
        from its store if the listing took longer than its history reaches). Per asset,
        nothing goes out that is not newer than what was yielded for it, so no change is
        missed or repeated although later pages are read at later revisions. On
        HistoryGoneError it lists again: SNAPSHOT for what is new or changed, DELETED (the
        last state yielded, with its revision) for what is gone, CHANGED for what left a
        status selection.
        `timeout` bounds the whole follow; each listing call has the client's default.
        """
        return _aio_streams.follow(
            self._stub, self.timeout, status, type, tags, created_by_task, label, page_size, timeout
        )

    async def wait_until_available(
        self, asset_ids: Iterable[str], timeout: float | None = None
    ) -> tuple[Asset, ...]:
        """The assets once all are AVAILABLE; AssetFailedError/AssetDeletedError/TimeoutError."""
        return await _aio_streams.wait_until_available(self._stub, asset_ids, timeout, self.timeout)
