"""Lease keepers: renew a promise's lease in the background while a worker produces it."""

# Two keepers with one behaviour: an asyncio task for AsyncAssetClient, a thread for the
# blocking AssetClient (scripts/gen_sync_client.py renames AsyncLeaseKeeper to LeaseKeeper
# in the generated client, as unasync cannot turn a background task into a thread).

from __future__ import annotations

import asyncio
import logging
import threading
from types import TracebackType
from typing import Protocol

import grpc

from asset_client.errors import AssetServiceError
from asset_client.models import Asset, AssetStatus

log = logging.getLogger(__name__)

MIN_EVERY = 0.05
# Worth another try at the next tick; every other refusal is final.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class AsyncLeaseCalls(Protocol):
    """What an AsyncLeaseKeeper calls: AsyncAssetClient's (a protocol, so that this module
    imports neither client)."""

    @property
    def timeout(self) -> float | None: ...

    async def get(
        self,
        asset_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Asset: ...

    async def renew_lease(
        self,
        asset_id: str,
        lease_seconds: int = 0,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Asset: ...


class LeaseCalls(Protocol):
    """What a LeaseKeeper calls: AssetClient's."""

    @property
    def timeout(self) -> float | None: ...

    def get(self, asset_id: str, *, timeout: float | None = None) -> Asset: ...

    def renew_lease(
        self, asset_id: str, lease_seconds: int = 0, *, timeout: float | None = None
    ) -> Asset: ...


class _Keeper:
    """What both keepers share: the interval, the verdict on each error, the record.

    `.lost` is the error that ended the renewals (None while the lease is kept),
    `.renewals` how many succeeded, `.every` the seconds between them (None for a promise
    without a lease: nothing is renewed).
    """

    def __init__(self, asset_id: str, every: float | None, client_timeout: float | None) -> None:
        if every is not None and not every > 0:
            raise ValueError(f"every must be a positive number of seconds, not {every!r}")
        self.asset_id = asset_id
        self.every = None if every is None else max(every, MIN_EVERY)
        self.lost: Exception | None = None  # usually an AssetServiceError
        self.renewals = 0
        self._client_timeout = client_timeout
        self._entered = False

    @property
    def _name(self) -> str:
        return f"keep-lease {self.asset_id}"

    def _enter(self) -> None:
        if self._entered:
            raise RuntimeError(f"the lease keeper of asset {self.asset_id} was already used")
        self._entered = True

    def _set_every(self, asset: Asset) -> None:
        if asset.lease_seconds:
            self.every = max(asset.lease_seconds / 3, MIN_EVERY)
        else:
            log.debug("asset %s was promised without a lease: nothing to renew", self.asset_id)

    @property
    def _deadline(self) -> float:
        """Each renewal must answer within one interval (or the client's default timeout)."""
        assert self.every is not None
        if self._client_timeout is None:
            return self.every
        return min(self.every, self._client_timeout)

    def _renewed(self, asset: Asset) -> None:
        self.renewals += 1
        log.debug("asset %s: lease renewed until %s", self.asset_id, asset.lease_expires_at)

    def _is_transient(self, exc: Exception) -> bool:
        if isinstance(exc, AssetServiceError) and exc.code in TRANSIENT:
            log.info(
                "asset %s: lease renewal failed, retrying in %.1fs: %s",
                self.asset_id,
                self.every,
                exc,
            )
            return True
        return False

    def _refused(self, exc: Exception, current: Asset | None) -> None:
        """A final refusal `exc`; `current` is the asset read again (None if that failed).
        A refusal because the asset became AVAILABLE (the worker delivered) loses nothing."""
        if current is not None and current.status is AssetStatus.AVAILABLE:
            log.debug("asset %s is AVAILABLE: renewals stopped", self.asset_id)
            return
        self.lost = exc
        log.warning("asset %s: lease lost, renewals stopped: %s", self.asset_id, exc)


class AsyncLeaseKeeper(_Keeper):
    """Renews a PENDING asset's lease from an asyncio task while an `async with` block runs.

    Made by `AsyncAssetClient.keep_lease`; see there, and _Keeper for its attributes.
    """

    def __init__(self, client: AsyncLeaseCalls, asset_id: str, every: float | None) -> None:
        super().__init__(asset_id, every, client.timeout)
        self._client = client
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncLeaseKeeper:
        self._enter()
        if self.every is None:
            self._set_every(await self._client.get(self.asset_id))
        if self.every is not None:
            self._task = asyncio.create_task(self._run(), name=self._name)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            # wait() returns once the task is done without raising its CancelledError, while
            # a cancellation of the task running this block still propagates.
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        assert self.every is not None
        while True:
            await asyncio.sleep(self.every)
            if not await self._renew():
                return

    async def _renew(self) -> bool:
        """One renewal; False once renewing is over."""
        try:
            asset = await self._client.renew_lease(self.asset_id, timeout=self._deadline)
        except Exception as exc:
            if self._is_transient(exc):
                return True
            self._refused(exc, await self._read_again())
            return False
        self._renewed(asset)
        return True

    async def _read_again(self) -> Asset | None:
        try:
            return await self._client.get(self.asset_id, timeout=self._deadline)
        except Exception:
            return None


class LeaseKeeper(_Keeper):
    """Renews a PENDING asset's lease from a thread while a `with` block runs.

    Made by `AssetClient.keep_lease`; see there, and _Keeper for its attributes.
    """

    def __init__(self, client: LeaseCalls, asset_id: str, every: float | None) -> None:
        super().__init__(asset_id, every, client.timeout)
        self._client = client
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        self._enter()
        if self.every is None:
            self._set_every(self._client.get(self.asset_id))
        if self.every is not None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._thread is not None:
            self._stop.set()
            # At most one renewal in flight, bounded by its deadline (one interval).
            self._thread.join()

    def _run(self) -> None:
        assert self.every is not None
        while not self._stop.wait(self.every):
            if not self._renew():
                return

    def _renew(self) -> bool:
        """One renewal; False once renewing is over."""
        try:
            asset = self._client.renew_lease(self.asset_id, timeout=self._deadline)
        except Exception as exc:
            if self._is_transient(exc):
                return True
            self._refused(exc, self._read_again())
            return False
        self._renewed(asset)
        return True

    def _read_again(self) -> Asset | None:
        try:
            return self._client.get(self.asset_id, timeout=self._deadline)
        except Exception:
            return None


__all__ = ["MIN_EVERY", "TRANSIENT", "AsyncLeaseKeeper", "LeaseKeeper"]
