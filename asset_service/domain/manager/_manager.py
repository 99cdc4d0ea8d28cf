"""The AssetManager: every use case of the service, over its ports."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Mapping,
    Sequence,
)
from datetime import timedelta
from typing import Any

from asset_service.domain import recovery
from asset_service.domain.errors import (
    FailedPrecondition,
    HistoryGone,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    shown_list,
)
from asset_service.domain.manager import (
    _base,
    _creation,
    _known,
    _resumable,
    _retention,
    _reuse,
    _transitions,
)
from asset_service.domain.manager._base import (
    DEFAULT_PAGE_SIZE,
    MAX_BATCH,
    MAX_PAGE_SIZE,
    MAX_RESPONSE_BYTES,
    READ_CHUNK_BYTES,
    SWEEP_HOLD_SECONDS,
    Limits,
    chunks_of,
)
from asset_service.domain.manager._context import Context, Core
from asset_service.domain.manager._reuse import KeyAnswer
from asset_service.domain.manifests import Manifest, build_manifest, wait_for_inputs
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    Page,
    Status,
    UploadHeader,
    Value,
    WatchEvent,
    approx_bytes,
    parse_asset_id,
    validate_tags,
    validate_task_id,
)
from asset_service.domain.ports import (
    BlobStorage,
    Chunk,
    ManifestStore,
    MetadataStore,
)
from asset_service.domain.reads import READ_BATCH
from asset_service.domain.scrub import Checked
from asset_service.domain.uploads import UploadState
from asset_service.domain.usage import Usage
from asset_service.domain.watch import (
    Selector,
    SelectorStream,
    WatchStream,
    went_back,
)

log = logging.getLogger(__name__)

# How long a GetManifest that waits without a deadline keeps its inputs from expiring
# when manifests are kept forever (--manifest-ttl 0): renewed by each such call.
WAIT_RETENTION_SECONDS = 86400.0


class AssetManager(Core):
    """Every use case of the service, over a MetadataStore and a BlobStorage."""

    def __init__(
        self,
        store: MetadataStore,
        storage: BlobStorage,
        limits: Limits,
        manifests: ManifestStore | None = None,
    ) -> None:
        self.ctx = Context.over(store, storage, limits, manifests)

    # --- creation (_known.py, _creation.py) ------------------------------------------------------

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
        return await _creation.create_pending(
            self.ctx,
            task_id,
            label,
            media_type,
            type_,
            tags,
            lease_seconds=lease_seconds,
            by=by,
            ttl_seconds=ttl_seconds,
        )

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
        return await _reuse.get_or_create_pending(
            self.ctx,
            key,
            task_id,
            label,
            media_type,
            type_,
            tags,
            lease_seconds=lease_seconds,
            by=by,
            ttl_seconds=ttl_seconds,
        )

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

    async def start(self) -> None:
        await self.storage.open()
        if self.manifests is not None:
            await self.manifests.open()
        await self.store.open()
        await self.recover()
        if await self.reconcile():
            await self.space_freed()
        await self.sweep_upload_sessions()
        self.hub.start(self.store.changes(), self.store.current_revision)

    async def stop(self) -> None:
        await self.release_sweep()
        await self.release_retention_sweep()
        await self.settle_sessions()
        await self.commits.stop()
        await self.hub.close()
        await self.store.close()
        await self.storage.close()

    async def recover(self) -> int:
        """Settle moves that crashed processes left half-done (see recovery.recover)."""
        return await recovery.recover(self.store, self.storage)

    async def settle_unsettled(self) -> int:
        """Settle record writes whose outcome was unknown (the server calls this often)."""
        return await self.commits.settle()

    async def sweep_manifests(self, limit: int = 0) -> int:
        """Remove manifest folders older than the TTL (tasks read them when they start),
        at most `limit` (0: all)."""
        if self.limits.manifest_ttl_seconds <= 0 or self.manifests is None:
            return 0
        removed = await self.manifests.sweep(self.limits.manifest_ttl_seconds, limit)
        if removed:
            log.info("removed %d manifest folder(s) past their TTL", removed)
            await self.space_freed()
        return removed

    async def sweep_cache(self, limit: int = 0) -> int:
        """Remove local copies of object-store inputs unused for the manifest TTL (the
        last manifest linked to one is gone by then), past the cache's budget, or cut by
        a crash: at most `limit` (0: all)."""
        if self.manifests is None:
            return 0
        removed = await self.manifests.sweep_cache(self.limits.manifest_ttl_seconds, limit)
        if removed:
            await self.space_freed()
        return removed

    async def collect_staging(self, limit: int = 0) -> int:
        """While serving: settle moves of processes that died since start-up (by their
        journals and records) and remove their staging, at most `limit` of each."""
        removed = await recovery.recover(self.store, self.storage, limit, serving=True)
        if removed:
            log.info("collected %d staging leftover(s) of dead processes", removed)
            await self.space_freed()
        return removed

    async def reconcile(self) -> int:
        """Remove stored bytes no record points at (see recovery.reconcile)."""
        return await recovery.reconcile(self.store, self.storage)

    async def promised_by(self, asset_ids: Sequence[str]) -> dict[str, str]:
        """{asset id: the task that promised it ("" if none)} for the ids that name an
        asset; malformed and unknown ids are left out. One read, without inline values."""
        ids = []
        for raw in asset_ids:
            with contextlib.suppress(InvalidArgument):
                ids.append(parse_asset_id(raw))
        found = await self.store.snapshot(ids) if ids else {}
        return {asset_id: asset.created_by_task for asset_id, asset in found.items()}

    async def batch_get(self, asset_ids: Sequence[str]) -> list[Asset]:
        if not asset_ids:
            raise InvalidArgument("asset_ids is empty; name at least one asset")
        if len(asset_ids) > MAX_BATCH:
            raise InvalidArgument(f"{len(asset_ids)} ids given; the limit is {MAX_BATCH}")
        ids = [parse_asset_id(i, "asset_ids entry") for i in asset_ids]
        found: dict[str, Asset] = {}
        used = 0
        unique = sorted(set(ids))
        for start in range(0, len(unique), READ_BATCH):
            part = await self.store.get_many(unique[start : start + READ_BATCH])
            used += sum(approx_bytes(a) for a in part.values())
            if used > MAX_RESPONSE_BYTES:
                raise ResourceExhausted(
                    f"the {len(unique)} assets asked for weigh more than the "
                    f"{MAX_RESPONSE_BYTES / 1024**2:g} MiB a response may carry (their VALUEs); "
                    "ask for fewer ids, or page with ListAssets"
                )
            found.update(part)
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if missing:
            raise NotFound(f"{len(missing)} asset(s) not found: {shown_list(missing)}")
        return [found[i] for i in ids]

    async def list_assets(self, flt: AssetFilter, page_size: int, page_token: str) -> Page:
        if page_size < 0:
            raise InvalidArgument(f"page_size must not be negative (got {page_size})")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        validate_tags(flt.tags)
        # A page of large VALUEs ends early (next_page_token set) to fit one response.
        return await self.store.query(flt, size, page_token, MAX_RESPONSE_BYTES)

    async def read(self, asset_id: str, offset: int, limit: int) -> AsyncGenerator[bytes, None]:
        """Check first (so errors come before any chunk), then return the chunk stream."""
        asset = await self.get(asset_id)
        if asset.status is not Status.AVAILABLE:
            raise FailedPrecondition(
                f"asset {asset.id} is {asset.status.value}; only AVAILABLE assets can be read"
            )
        if offset < 0 or limit < 0:
            raise InvalidArgument("offset and limit must not be negative")
        if offset > asset.size_bytes:
            raise InvalidArgument(f"offset {offset} is past the end ({asset.size_bytes} bytes)")
        if asset.type is AssetType.VALUE:
            assert asset.value is not None
            end = asset.size_bytes if limit == 0 else min(asset.size_bytes, offset + limit)
            return chunks_of(asset.value.data[offset:end])
        return await self.integrity.open_read(asset, offset, limit, READ_CHUNK_BYTES)

    async def scrub(
        self, asset_ids: Sequence[str], rate_bytes: float
    ) -> AsyncGenerator[Checked, None]:
        """Check stored bytes now (the named assets, or every AVAILABLE FILE asset)."""
        return self.scrubber.run(asset_ids, rate_bytes)

    # --- watch ------------------------------------------------------------------------

    async def watch(
        self, asset_ids: Sequence[str], after_revision: int, follow: bool
    ) -> AsyncGenerator[WatchEvent, None]:
        """Validate, subscribe, read the snapshot; return the event stream.

        Subscribing before reading means no change can fall between the snapshot and
        the stream; changes already covered by the snapshot are skipped by revision.
        """
        if not asset_ids:
            raise InvalidArgument("asset_ids is empty; name at least one asset to watch")
        if len(asset_ids) > MAX_BATCH:
            raise InvalidArgument(f"{len(asset_ids)} ids given; the limit is {MAX_BATCH}")
        if after_revision < 0:
            raise InvalidArgument(f"after_revision must not be negative ({after_revision})")
        ids = list(dict.fromkeys(parse_asset_id(i, "asset_ids entry") for i in asset_ids))
        sub = self.hub.subscribe(ids)
        try:
            # One consistent cut (read after subscribing): every change it does not hold
            # has a higher revision than all it holds, and reaches the subscription.
            snapshot = await self.store.snapshot(ids)
            missing = [i for i in ids if i not in snapshot]
            if missing:
                raise NotFound(f"{len(missing)} asset(s) not found: {shown_list(missing)}")
        except BaseException:
            sub.close()
            raise
        stream = WatchStream(
            sub,
            self.store.get_many,
            self.store.snapshot,
            snapshot,
            after_revision,
            follow,
            self.limits.watch_catch_up_batch,
        )
        return stream.events()

    async def watch_selector(
        self, selector: Selector, after_revision: int
    ) -> AsyncGenerator[WatchEvent, None]:
        """Every change to the assets `selector` matches after `after_revision`, CHANGED or
        DELETED with slim records, in revision order, until cancelled: from the shared
        history, or from the store where the history no longer reaches back.

        HistoryGone if neither can replay from that revision: list again.
        """
        if after_revision < 0:
            raise InvalidArgument(f"after_revision must not be negative ({after_revision})")
        if selector.task_id:
            validate_task_id(selector.task_id)
        validate_tags(selector.tags)
        history = self.hub.history
        await history.ready()
        # 0 is revision 0 like any other (everything), not "now": a client that resumes
        # with the revision it last saw must get what followed, even on an empty store.
        floor = history.floor
        if floor is not None and after_revision < floor:
            # Replayed from the store: refused here, before the stream, if it cannot be.
            replay = await self.store.changes_since(after_revision, 1)
            if replay.revision < after_revision:
                raise HistoryGone(after_revision, None, went_back(replay.revision, after_revision))
        elif after_revision > history.last:
            # Not seen here yet: the store must have handed it out, or it went back in time.
            current = await self.store.current_revision()
            if after_revision > current:
                raise HistoryGone(after_revision, None, went_back(current, after_revision))
        # An asset's task never changes: the store narrows the replay to the selector's.
        read = functools.partial(self.store.changes_since, task=selector.task_id)
        return SelectorStream(history, selector, after_revision, read).events()

    async def sweep_tombstones(self) -> int:
        """Remove deleted assets' tombstones older than --watch-tombstone-ttl."""
        ttl = timedelta(seconds=self.limits.watch_tombstone_ttl_seconds)
        removed = await self.store.sweep_tombstones(_base.now() - ttl)
        if removed:
            log.info("removed %d tombstone(s) of deleted assets past their TTL", removed)
        return removed

    # --- manifest ---------------------------------------------------------------------

    async def manifest(
        self,
        mappings: Mapping[str, str],
        config_params: Mapping[str, Any],
        *,
        wait: bool = False,
        wait_seconds: float | None = None,
    ) -> Manifest:
        """input_data.json for these inputs. With `wait`, first wait (up to `wait_seconds`;
        None: no limit) until none of them is PENDING."""
        if self.manifests is None:
            raise FailedPrecondition("this server has no manifest store; GetManifest is off")
        if wait:
            # A waiting manifest needs its inputs: none expires while it waits (a
            # retention, which lapses by itself if this server dies meanwhile).
            waits = wait_seconds if wait_seconds is not None else self.limits.manifest_ttl_seconds
            until = _base.now() + timedelta(seconds=waits or WAIT_RETENTION_SECONDS)
            await self.store.retain(list(dict.fromkeys(mappings.values())), until)
            await wait_for_inputs(
                lambda ids: self.watch(ids, 0, follow=False), mappings, wait_seconds
            )
        await self.store.check_room()  # its files would take the disk-full reserve's room
        built = await build_manifest(
            self.store, self.integrity, self.manifests, mappings, config_params
        )
        if self.limits.manifest_ttl_seconds > 0:
            # Its inputs outlive it: no expiry while the manifest may still be read.
            until = _base.now() + timedelta(seconds=self.limits.manifest_ttl_seconds)
            await self.store.retain(list(dict.fromkeys(mappings.values())), until)
        return built
