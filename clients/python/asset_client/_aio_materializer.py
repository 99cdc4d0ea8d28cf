"""The asyncio driver of a local materialization: wait, fetch into the cache, write."""

# The blocking _materializer.py is generated from this file by scripts/gen_sync_client.py
# (`make generate`), as client.py is from aio.py. `timeout` is a gRPC deadline, as in the
# clients, not an asyncio timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from asset_client._blobcache import LOCK_POLL_SECONDS, BlobCache
from asset_client._materialize import Plan, needs_value
from asset_client._progress import ProgressCallback
from asset_client.errors import AssetStateError
from asset_client.models import Asset, AssetType, Manifest


class AsyncMaterializerCalls(Protocol):
    """What the materializer calls of its client, as it calls it (a protocol, so that this
    module imports neither client)."""

    async def wait_until_available(
        self, asset_ids: Iterable[str], timeout: float | None = None
    ) -> tuple[Asset, ...]: ...

    async def batch_get(self, asset_ids: Iterable[str]) -> list[Asset]: ...

    async def download(
        self, asset_id: str, path: Path, *, progress: bool | ProgressCallback
    ) -> Path: ...


class AsyncMaterializer:
    """Waits for the inputs, fetches FILE inputs into the cache, writes the manifest."""

    def __init__(self, client: AsyncMaterializerCalls, cache: BlobCache) -> None:
        self.client = client
        self.cache = cache
        # Bytes fetched from the server by this materializer, and inputs found cached.
        self.downloaded = 0
        self.reused = 0

    async def run(
        self,
        mappings: Mapping[str, str],
        config_params: Mapping[str, Any] | None,
        dest: str | os.PathLike[str],
        progress: bool | ProgressCallback,
        wait_timeout: float | None,
    ) -> Manifest:
        plan = Plan(mappings, config_params, dest)
        assets: tuple[Asset, ...] = ()
        if plan.asset_ids:
            try:
                assets = await self.client.wait_until_available(plan.asset_ids, wait_timeout)
            except AssetStateError as exc:
                raise plan.named(exc) from exc
        await asyncio.to_thread(plan.prepare)
        missing = [a.id for a in assets if needs_value(a)]
        fetched = {a.id: a for a in await self.client.batch_get(missing)} if missing else {}
        for asset in assets:
            asset = fetched.get(asset.id, asset)
            if asset.type is AssetType.VALUE:
                plan.add(asset.id, await asyncio.to_thread(plan.write_value, asset))
            else:
                plan.add(asset.id, await self._file(asset, plan.file_path(asset), progress))
        return await asyncio.to_thread(plan.finish)

    async def _file(self, asset: Asset, dest: Path, progress: bool | ProgressCallback) -> Path:
        if not asset.sha256:  # nothing to name a blob by: straight to its place
            await self.client.download(asset.id, dest, progress=progress)
            self.downloaded += asset.size_bytes
            return dest
        # Another process fetching the same content holds the lock: wait for it, then
        # find the blob there. (An flock: no event to await across processes.)
        while (lock := await asyncio.to_thread(self.cache.try_lock, asset.sha256)) is None:  # noqa: ASYNC110
            await asyncio.sleep(LOCK_POLL_SECONDS)
        fetched = False
        try:
            if await asyncio.to_thread(self.cache.lookup, asset.sha256, asset.size_bytes):
                self.reused += 1
            else:
                await self.client.download(
                    asset.id, self.cache.path(asset.sha256), progress=progress
                )
                await asyncio.to_thread(self.cache.settle, asset.sha256)
                self.downloaded += asset.size_bytes
                fetched = True
            await asyncio.to_thread(self.cache.place, asset.sha256, dest)
        finally:
            self.cache.unlock(lock)
        if fetched:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.cache.evict, asset.sha256)
        return dest
