"""The client's reads: records, listings, an asset's bytes, manifests."""

# A part of AsyncAssetClient (aio.py), which inherits it. The blocking _reads.py is
# generated from this file by scripts/gen_sync_client.py (`make generate`), as client.py
# is from aio.py. `timeout` is a gRPC deadline, as in the clients, not an asyncio timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

from asset_client import _convert, _core, _reading, _transfers
from asset_client._aio_calls import AsyncClientBase
from asset_client._convert import pb
from asset_client._progress import ProgressCallback
from asset_client.models import Asset, AssetPage, AssetStatus, AssetType, Manifest


class AsyncReadMethods(AsyncClientBase):
    """get, batch_get, list, list_page, download, read, manifest."""

    # -- reading -------------------------------------------------------------------------

    async def get(self, asset_id: str, *, timeout: float | None = None) -> Asset:
        request = pb.GetAssetRequest(asset_id=asset_id)
        return await self._asset_call(self._stub.GetAsset, request, timeout)

    async def batch_get(
        self, asset_ids: Iterable[str], *, timeout: float | None = None
    ) -> builtins.list[Asset]:
        request = pb.BatchGetAssetsRequest(asset_ids=_convert.tags_list(asset_ids))
        response = await self._call(self._stub.BatchGetAssets, request, timeout)
        return [_convert.asset_from_pb(a) for a in response.assets]

    async def list(
        self,
        *,
        status: AssetStatus | None = None,
        type: AssetType | None = None,
        tags: Iterable[str] = (),
        created_by_task: str | None = None,
        label: str | None = None,
        page_size: int = 0,
        key: str | None = None,
        sha256: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Asset]:
        """Every matching asset, oldest first, fetching page after page (timeout per page).
        `key`: made by get_or_create_pending for that key; `sha256`: of that content."""
        request = _core.list_request(
            status, type, tags, created_by_task, label, page_size, key, sha256
        )
        while True:
            response = await self._call(self._stub.ListAssets, request, timeout)
            for msg in response.assets:
                yield _convert.asset_from_pb(msg)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def list_page(
        self,
        *,
        status: AssetStatus | None = None,
        type: AssetType | None = None,
        tags: Iterable[str] = (),
        created_by_task: str | None = None,
        label: str | None = None,
        page_size: int = 0,
        page_token: str = "",
        key: str | None = None,
        sha256: str | None = None,
        timeout: float | None = None,
    ) -> AssetPage:
        """One page of matching assets, its next_page_token ("" after the last page) and
        the revision it was read at: watch_selector(after_revision=) from it misses nothing."""
        request = _core.list_request(
            status, type, tags, created_by_task, label, page_size, key, sha256
        )
        request.page_token = page_token
        response = await self._call(self._stub.ListAssets, request, timeout)
        return _convert.page_from_pb(response)

    async def download(
        self,
        asset_id: str,
        path: str | os.PathLike[str],
        *,
        progress: bool | ProgressCallback = True,
        timeout: float | None = None,
    ) -> Path:
        """Write an asset's bytes to `path` atomically (temp file, fsync, rename)."""
        asset = await self.get(asset_id, timeout=timeout)
        with await asyncio.to_thread(_transfers.Download(path, asset, progress).open) as target:
            async with self._streaming(self._stub.ReadAsset, target.request(), timeout) as call:
                async for msg in call:
                    target.write(msg)
            return await asyncio.to_thread(target.commit)

    async def read(
        self,
        asset_id: str,
        *,
        offset: int = 0,
        limit: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[bytes]:
        """An asset's bytes (a FILE's, or a VALUE's content) in chunks, from `offset`, at
        most `limit` (0: to the end).

        A whole read of a FILE (offset and limit 0) ends with its size and sha256 checked
        against the record: DataLossError after the last chunk if they differ. The chunks
        already yielded cannot be taken back, so write them where they can be discarded,
        or use `download`, which renames a file into place only once it checks out.
        """
        reading = _reading.Reading(await self.get(asset_id, timeout=timeout), offset, limit)
        async with self._streaming(self._stub.ReadAsset, reading.request(), timeout) as call:
            async for msg in call:
                yield reading.chunk(msg)
        reading.finish()

    async def manifest(
        self,
        mappings: Mapping[str, str],
        config_params: Mapping[str, Any] | None = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Manifest:
        """Have the server write input_data.json for these input keys -> asset ids.

        With `wait`, inputs still PENDING are waited for (up to `timeout`, the call's
        deadline) instead of refused at once; a FAILED input still ends it with an error.
        """
        request = _core.manifest_request(mappings, config_params, wait)
        response = await self._call(self._stub.GetManifest, request, timeout)
        return _convert.manifest_from_pb(response)
