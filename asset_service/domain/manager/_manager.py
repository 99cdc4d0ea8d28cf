"""The AssetManager: every use case of the service, over its ports, as one object."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

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
from asset_service.domain.manager._base import Limits
from asset_service.domain.manager._context import Context
from asset_service.domain.manager._reuse import KeyAnswer
from asset_service.domain.models import (
    Asset,
    AssetType,
    PromiseRequest,
)
from asset_service.domain.ports import (
    BlobStorage,
    ManifestStore,
    MetadataStore,
)
from asset_service.domain.scrub import Scrubber
from asset_service.domain.watch import ChangeHub

P = ParamSpec("P")
R = TypeVar("R")


def _use_case(
    use_case: Callable[Concatenate[Context, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[AssetManager, P], Coroutine[Any, Any, R]]:
    """The use case as a method of the manager: called with the manager's Context.

    The method hands back the use case's own coroutine rather than awaiting it in one of
    its own: a coroutine and a frame fewer on every call of every RPC.
    """

    @functools.wraps(use_case)
    def method(self: AssetManager, /, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return use_case(self.ctx, *args, **kwargs)

    return method


class AssetManager:
    """Every use case of the service, over a MetadataStore and a BlobStorage.

    A facade: each method is the use case of the same name in this package's modules,
    called with the one Context they share (the servicer, the server and the tests hold
    this object, not the modules).
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

    start = _use_case(_upkeep.start)
    stop = _use_case(_upkeep.stop)
    recover = _use_case(_upkeep.recover)
    settle_unsettled = _use_case(_upkeep.settle_unsettled)
    sweep_manifests = _use_case(_upkeep.sweep_manifests)
    sweep_cache = _use_case(_upkeep.sweep_cache)
    collect_staging = _use_case(_upkeep.collect_staging)
    reconcile = _use_case(_upkeep.reconcile)

    # --- reads (_reads.py) -------------------------------------------------------------

    get = _use_case(_context.get)
    promised_by = _use_case(_reads.promised_by)
    batch_get = _use_case(_reads.batch_get)
    list_assets = _use_case(_reads.list_assets)
    read = _use_case(_reads.read)
    scrub = _use_case(_reads.scrub)
    manifest = _use_case(_reads.manifest)

    # --- watches (_watches.py) ---------------------------------------------------------

    watch = _use_case(_watches.watch)
    watch_selector = _use_case(_watches.watch_selector)
    sweep_tombstones = _use_case(_watches.sweep_tombstones)

    # --- creation (_known.py, _creation.py) -----------------------------------------

    upload = _use_case(_known.upload)
    register_file = _use_case(_creation.register_file)
    create_value = _use_case(_creation.create_value)

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

    set_expiry = _use_case(_retention.set_expiry)
    place_hold = _use_case(_retention.place_hold)
    release_hold = _use_case(_retention.release_hold)
    hold_task_inputs = _use_case(_retention.hold_task_inputs)
    delete = _use_case(_retention.delete)
    expire_assets = _use_case(_retention.expire_assets)
    collect_orphans = _use_case(_retention.collect_orphans)
    release_retention_sweep = _use_case(_retention.release_retention_sweep)
    usage = _use_case(_retention.usage)
    warn_if_full = _use_case(_retention.warn_if_full)

    # --- resumable uploads (_resumable.py) ---------------------------------------------

    query_upload = _use_case(_resumable.query_upload)
    sweep_upload_sessions = _use_case(_resumable.sweep_upload_sessions)
    settle_sessions = _use_case(_resumable.settle_sessions)

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

    fulfill_from_path = _use_case(_transitions.fulfill_from_path)
    fulfill_with_value = _use_case(_transitions.fulfill_with_value)
    fail = _use_case(_transitions.fail)
    renew_lease = _use_case(_transitions.renew_lease)
    expire_leases = _use_case(_transitions.expire_leases)
    release_sweep = _use_case(_transitions.release_sweep)
