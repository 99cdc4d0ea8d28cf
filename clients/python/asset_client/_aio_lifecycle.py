"""The client's calls that keep or end assets: delete, expiry, holds, usage, scrub."""

# A part of AsyncAssetClient (aio.py), which inherits it. The blocking _lifecycle.py is
# generated from this file by scripts/gen_sync_client.py (`make generate`), as client.py
# is from aio.py. `timeout` is a gRPC deadline, as in the clients, not an asyncio timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from asset_client import _convert
from asset_client._aio_calls import AsyncClientBase
from asset_client._convert import pb
from asset_client.models import Asset, ScrubResult, Usage


class AsyncLifecycleMethods(AsyncClientBase):
    """delete, set_expiry, place_hold, release_hold, get_usage, scrub."""

    # -- keeping and removing ------------------------------------------------------------

    async def delete(
        self, asset_id: str, *, force: bool = False, timeout: float | None = None
    ) -> Asset:
        """Remove an asset's record and bytes; returns its last state. A held asset is
        refused (FailedPreconditionError naming the holders) unless `force` (admin)."""
        request = pb.DeleteAssetRequest(asset_id=asset_id, force=force)
        return await self._asset_call(self._stub.DeleteAsset, request, timeout)

    async def set_expiry(
        self,
        asset_id: str,
        ttl_seconds: int = 0,
        *,
        clear: bool = False,
        timeout: float | None = None,
    ) -> Asset:
        """Expire the asset `ttl_seconds` from now, or (clear=True) never."""
        request = pb.SetExpiryRequest(asset_id=asset_id, ttl_seconds=ttl_seconds, clear=clear)
        return await self._asset_call(self._stub.SetExpiry, request, timeout)

    async def place_hold(
        self, asset_id: str, owner: str, reason: str = "", *, timeout: float | None = None
    ) -> Asset:
        """Keep the asset (no expiry, no delete without force) until `owner` releases it."""
        request = pb.PlaceHoldRequest(asset_id=asset_id, owner=owner, reason=reason)
        return await self._asset_call(self._stub.PlaceHold, request, timeout)

    async def release_hold(
        self, asset_id: str, owner: str, *, timeout: float | None = None
    ) -> Asset:
        """Remove `owner`'s hold (NotFoundError if it has none)."""
        request = pb.ReleaseHoldRequest(asset_id=asset_id, owner=owner)
        return await self._asset_call(self._stub.ReleaseHold, request, timeout)

    async def get_usage(
        self,
        group: str = "status",
        keys: Iterable[str] = (),
        *,
        limit: int = 0,
        timeout: float | None = None,
    ) -> Usage:
        """Assets and bytes the store holds, by status and by `group` (status, type, tag,
        task): of `keys`, or of the `limit` largest (0: 100)."""
        request = pb.GetUsageRequest(group=group, keys=list(keys), limit=limit)
        response = await self._call(self._stub.GetUsage, request, timeout)
        return _convert.usage_from_pb(response)

    async def scrub(
        self,
        asset_ids: Iterable[str] = (),
        *,
        rate_mib_per_second: float = 0.0,
        timeout: float | None = None,
    ) -> AsyncIterator[ScrubResult]:
        """Admin: re-read stored bytes now and check every block (the named assets, or every
        AVAILABLE FILE asset), at most `rate_mib_per_second` (0: unbounded); one result per
        asset. Corrupt ones are marked (Asset.corrupt_reason), restored ones unmarked."""
        request = pb.ScrubAssetsRequest(
            asset_ids=list(asset_ids), rate_mib_per_second=rate_mib_per_second
        )
        async with self._streaming(self._stub.ScrubAssets, request, timeout) as call:
            async for msg in call:
                yield _convert.scrubbed_from_pb(msg)
