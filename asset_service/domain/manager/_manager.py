"""The AssetManager: every use case of the service, over its ports, as one object."""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Mapping,
    Sequence,
)
from typing import Any

from asset_service.domain.commits import Committer
from asset_service.domain.integrity import Integrity
from asset_service.domain.manager import (
    _context,
    _creation,
    _known,
    _reads,
    _resumable,
    _retention,
    _reuse,
    _transitions,
    _upkeep,
    _watches,
)
from asset_service.domain.manager._base import SWEEP_HOLD_SECONDS, Limits
from asset_service.domain.manager._context import Context
from asset_service.domain.manager._reuse import KeyAnswer
from asset_service.domain.manifests import Manifest
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    Page,
    PromiseRequest,
    UploadHeader,
    Value,
    WatchEvent,
)
from asset_service.domain.ports import (
    BlobStorage,
    Chunk,
    ManifestStore,
    MetadataStore,
)
from asset_service.domain.scrub import Checked, Scrubber
from asset_service.domain.uploads import UploadState
from asset_service.domain.usage import Usage
from asset_service.domain.watch import ChangeHub, Selector


class AssetManager:
    """Every use case of the service, over a MetadataStore and a BlobStorage.

    A facade: each method calls the use case of the same name in this package's modules
    with the one Context they share (the servicer, the server and the tests hold this
    object, not the modules).
    """

    def __init__(
        self,
        store: MetadataStore,
        storage: BlobStorage,
        limits: Limits,
        manifests: ManifestStore | None = None,
    ) -> None:
        self.ctx = Context.over(store, storage, limits, manifests)

    # --- its state, as callers read it ---------------------------------------------------

    @property
    def store(self) -> MetadataStore:
        return self.ctx.store

    @property
    def storage(self) -> BlobStorage:
        return self.ctx.storage

    @property
    def manifests(self) -> ManifestStore | None:
        return self.ctx.manifests

    @property
    def limits(self) -> Limits:
        return self.ctx.limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self.ctx.limits = limits

    @property
    def hub(self) -> ChangeHub:
        return self.ctx.hub

    @property
    def commits(self) -> Committer:
        return self.ctx.commits

    @property
    def integrity(self) -> Integrity:
        return self.ctx.integrity

    @property
    def scrubber(self) -> Scrubber:
        return self.ctx.scrubber

    @property
    def sweeper(self) -> str:
        return self.ctx.sweeper

    # --- lifecycle and upkeep (_upkeep.py) ---------------------------------------------

    async def start(self) -> None:
        await _upkeep.start(self.ctx)

    async def stop(self) -> None:
        await _upkeep.stop(self.ctx)

    async def recover(self) -> int:
        return await _upkeep.recover(self.ctx)

    async def settle_unsettled(self) -> int:
        return await _upkeep.settle_unsettled(self.ctx)

    async def sweep_manifests(self, limit: int = 0) -> int:
        return await _upkeep.sweep_manifests(self.ctx, limit)

    async def sweep_cache(self, limit: int = 0) -> int:
        return await _upkeep.sweep_cache(self.ctx, limit)

    async def collect_staging(self, limit: int = 0) -> int:
        return await _upkeep.collect_staging(self.ctx, limit)

    async def reconcile(self) -> int:
        return await _upkeep.reconcile(self.ctx)

    # --- reads (_reads.py) -------------------------------------------------------------

    async def get(self, asset_id: str) -> Asset:
        return await _context.get(self.ctx, asset_id)

    async def promised_by(self, asset_ids: Sequence[str]) -> dict[str, str]:
        return await _reads.promised_by(self.ctx, asset_ids)

    async def batch_get(self, asset_ids: Sequence[str]) -> list[Asset]:
        return await _reads.batch_get(self.ctx, asset_ids)

    async def list_assets(self, flt: AssetFilter, page_size: int, page_token: str) -> Page:
        return await _reads.list_assets(self.ctx, flt, page_size, page_token)

    async def read(self, asset_id: str, offset: int, limit: int) -> AsyncGenerator[bytes, None]:
        return await _reads.read(self.ctx, asset_id, offset, limit)

    async def scrub(
        self, asset_ids: Sequence[str], rate_bytes: float
    ) -> AsyncGenerator[Checked, None]:
        return await _reads.scrub(self.ctx, asset_ids, rate_bytes)

    async def manifest(
        self,
        mappings: Mapping[str, str],
        config_params: Mapping[str, Any],
        *,
        wait: bool = False,
        wait_seconds: float | None = None,
    ) -> Manifest:
        return await _reads.manifest(
            self.ctx, mappings, config_params, wait=wait, wait_seconds=wait_seconds
        )

    # --- watches (_watches.py) ---------------------------------------------------------

    async def watch(
        self, asset_ids: Sequence[str], after_revision: int, follow: bool
    ) -> AsyncGenerator[WatchEvent, None]:
        return await _watches.watch(self.ctx, asset_ids, after_revision, follow)

    async def watch_selector(
        self, selector: Selector, after_revision: int
    ) -> AsyncGenerator[WatchEvent, None]:
        return await _watches.watch_selector(self.ctx, selector, after_revision)

    async def sweep_tombstones(self) -> int:
        return await _watches.sweep_tombstones(self.ctx)

    # --- creation (_known.py, _creation.py) -----------------------------------------

    async def upload(
        self, header: UploadHeader, chunks: AsyncIterator[Chunk], *, by: str = ""
    ) -> Asset:
        return await _known.upload(self.ctx, header, chunks, by=by)

    async def register_file(
        self,
        path: str,
        label: str,
        media_type: str,
        tags: Sequence[str],
        move: bool,
        *,
        by: str = "",
        ttl_seconds: int = 0,
    ) -> Asset:
        return await _creation.register_file(
            self.ctx, path, label, media_type, tags, move, by=by, ttl_seconds=ttl_seconds
        )

    async def create_value(
        self,
        label: str,
        media_type: str,
        value: Value,
        tags: Sequence[str],
        *,
        by: str = "",
        ttl_seconds: int = 0,
    ) -> Asset:
        return await _creation.create_value(
            self.ctx, label, media_type, value, tags, by=by, ttl_seconds=ttl_seconds
        )

    async def create_pending(
        self,
        task_id: str,
        label: str,
        media_type: str,
        type_: AssetType,
        tags: Sequence[str],
        *,
        lease_seconds: int = 0,
        by: str = "",
        ttl_seconds: int = 0,
    ) -> Asset:
        spec = PromiseRequest(task_id, label, media_type, type_, tags, lease_seconds, ttl_seconds)
        return await _creation.create_pending(self.ctx, spec, by=by)

    # --- retention (_retention.py) ----------------------------------------------------

    async def set_expiry(
        self, asset_id: str, ttl_seconds: int, *, clear: bool = False, by: str = ""
    ) -> Asset:
        return await _retention.set_expiry(self.ctx, asset_id, ttl_seconds, clear=clear, by=by)

    async def place_hold(self, asset_id: str, owner: str, reason: str, *, by: str = "") -> Asset:
        return await _retention.place_hold(self.ctx, asset_id, owner, reason, by=by)

    async def release_hold(self, asset_id: str, owner: str) -> Asset:
        return await _retention.release_hold(self.ctx, asset_id, owner)

    async def hold_task_inputs(self, task_id: str, asset_ids: Sequence[str], by: str) -> int:
        return await _retention.hold_task_inputs(self.ctx, task_id, asset_ids, by)

    async def delete(self, asset_id: str, *, by: str = "", force: bool = False) -> Asset:
        return await _retention.delete(self.ctx, asset_id, by=by, force=force)

    async def expire_assets(self, hold_seconds: float = SWEEP_HOLD_SECONDS) -> dict[str, int]:
        return await _retention.expire_assets(self.ctx, hold_seconds)

    async def collect_orphans(self, hold_seconds: float = SWEEP_HOLD_SECONDS) -> int:
        return await _retention.collect_orphans(self.ctx, hold_seconds)

    async def release_retention_sweep(self) -> None:
        await _retention.release_retention_sweep(self.ctx)

    async def usage(self, group: str, keys: Sequence[str] = (), limit: int = 100) -> Usage:
        return await _retention.usage(self.ctx, group, keys, limit)

    async def warn_if_full(self) -> Usage | None:
        return await _retention.warn_if_full(self.ctx)

    # --- resumable uploads (_resumable.py) ---------------------------------------------

    async def query_upload(self, upload_id: str, *, by: str = "") -> UploadState:
        return await _resumable.query_upload(self.ctx, upload_id, by=by)

    async def sweep_upload_sessions(self, limit: int = 0) -> int:
        return await _resumable.sweep_upload_sessions(self.ctx, limit)

    async def settle_sessions(self, within: float = 30.0) -> None:
        await _resumable.settle_sessions(self.ctx, within)

    # --- get-or-create by key (_reuse.py) ----------------------------------------------

    async def get_or_create_pending(
        self,
        key: str,
        task_id: str,
        label: str,
        media_type: str,
        type_: AssetType,
        tags: Sequence[str],
        *,
        lease_seconds: int = 0,
        by: str = "",
        ttl_seconds: int = 0,
    ) -> KeyAnswer:
        spec = PromiseRequest(task_id, label, media_type, type_, tags, lease_seconds, ttl_seconds)
        return await _reuse.get_or_create_pending(self.ctx, key, spec, by=by)

    # --- transitions (_transitions.py) -----------------------------------------------

    async def fulfill_from_path(
        self, asset_id: str, source_path: str, expected_sha: str, *, by: str = ""
    ) -> Asset:
        return await _transitions.fulfill_from_path(
            self.ctx, asset_id, source_path, expected_sha, by=by
        )

    async def fulfill_with_value(
        self, asset_id: str, value: Value, expected_sha: str, *, by: str = ""
    ) -> Asset:
        return await _transitions.fulfill_with_value(self.ctx, asset_id, value, expected_sha, by=by)

    async def fail(self, asset_id: str, reason: str, *, by: str = "") -> Asset:
        return await _transitions.fail(self.ctx, asset_id, reason, by=by)

    async def renew_lease(self, asset_id: str, lease_seconds: int = 0, *, by: str = "") -> Asset:
        return await _transitions.renew_lease(self.ctx, asset_id, lease_seconds, by=by)

    async def expire_leases(self, hold_seconds: float = SWEEP_HOLD_SECONDS) -> int:
        return await _transitions.expire_leases(self.ctx, hold_seconds)

    async def release_sweep(self) -> None:
        await _transitions.release_sweep(self.ctx)

    # --- lifecycle ------------------------------------------------------------------

    # --- watch ------------------------------------------------------------------------

    # --- manifest ---------------------------------------------------------------------
