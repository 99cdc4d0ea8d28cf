"""The AssetManager: every use case of the service, over its ports."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asset_service.domain import leases, recovery
from asset_service.domain.commits import Committer, Handover
from asset_service.domain.errors import (
    Conflict,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TooLarge,
    brief,
    shown,
    shown_list,
)
from asset_service.domain.locks import KeyedLocks
from asset_service.domain.manifests import Manifest, build_manifest, wait_for_inputs
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    Failure,
    Fulfillment,
    Page,
    Renewal,
    Status,
    UploadHeader,
    Value,
    approx_bytes,
    new_asset_id,
    parse_asset_id,
    validate_label,
    validate_media_type,
    validate_server_path,
    validate_sha256,
    validate_tags,
    validate_task_id,
)
from asset_service.domain.models import (
    WatchEvent as WatchEvent,  # re-exported: the API layer converts it
)
from asset_service.domain.ports import (
    BlobStorage,
    Chunk,
    ManifestStore,
    MetadataStore,
    StagedBlob,
)
from asset_service.domain.reads import READ_BATCH
from asset_service.domain.selectors import DEFAULT_HISTORY_BYTES, Selector, SelectorStream
from asset_service.domain.values import parse_value, value_sha256
from asset_service.domain.watch import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_CATCH_UP_BATCH,
    ChangeHub,
    WatchStream,
)

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_REASON_CHARS = 4096
READ_CHUNK_BYTES = 1024 * 1024
# What one response may carry in records: under a default grpc client's 4 MiB receive
# limit, with room for the envelope (a page always holds at least one record).
MAX_RESPONSE_BYTES = 3 * 1024 * 1024 + 512 * 1024


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * 1024**3
    # Manifest folders (input_data.json) live this long, and shared VALUE files this long
    # after their last use; 0 keeps them.
    manifest_ttl_seconds: float = 7 * 24 * 3600.0
    # Changes buffered per WatchAsset stream (estimated bytes); past it, it re-reads state.
    watch_buffer_bytes: int = DEFAULT_BUFFER_BYTES
    # Records a lagging watcher reads from the store per call while it catches up.
    watch_catch_up_batch: int = DEFAULT_CATCH_UP_BATCH
    # The longest lease a promise may be created or renewed with.
    max_lease_seconds: int = 86400
    # The latest changes kept for selector watches (slim records, estimated bytes).
    watch_history_bytes: int = DEFAULT_HISTORY_BYTES


def _now() -> datetime:
    return datetime.now(UTC)


class AssetManager:
    """Every use case of the service, over a MetadataStore and a BlobStorage."""

    def __init__(
        self,
        store: MetadataStore,
        storage: BlobStorage,
        limits: Limits,
        manifests: ManifestStore | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.limits = limits
        self.manifests = manifests
        self.hub = ChangeHub(limits.watch_buffer_bytes, limits.watch_history_bytes)
        self.commits = Committer(store)
        self._locks = KeyedLocks()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.storage.open()
        if self.manifests is not None:
            await self.manifests.open()
        await self.store.open()
        await self.recover()
        await self.reconcile()
        self.hub.start(self.store.changes(), self.store.current_revision)

    async def stop(self) -> None:
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

    async def sweep_manifests(self) -> int:
        """Remove manifest folders older than the TTL (tasks read them when they start)."""
        if self.limits.manifest_ttl_seconds <= 0 or self.manifests is None:
            return 0
        removed = await self.manifests.sweep(self.limits.manifest_ttl_seconds)
        if removed:
            log.info("removed %d manifest folder(s) past their TTL", removed)
        return removed

    async def reconcile(self) -> int:
        """Remove stored bytes no record points at (see recovery.reconcile)."""
        return await recovery.reconcile(self.store, self.storage)

    # --- reads ----------------------------------------------------------------------

    async def get(self, asset_id: str) -> Asset:
        asset_id = parse_asset_id(asset_id)
        asset = await self.store.get(asset_id)
        if asset is None:
            raise NotFound(f"asset {asset_id} not found")
        return asset

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

    async def read(self, asset_id: str, offset: int, limit: int) -> AsyncIterator[bytes]:
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
            return _chunks_of(asset.value.data[offset:end])
        try:
            chunks = await self.storage.read(
                asset.storage_path, asset.size_bytes, offset, limit, READ_CHUNK_BYTES
            )
        except IntegrityError as exc:
            raise IntegrityError(f"asset {asset.id} is AVAILABLE but {exc.message}") from None
        return _naming(asset.id, chunks)

    # --- creation ---------------------------------------------------------------------

    async def upload(
        self, header: UploadHeader, chunks: AsyncIterator[Chunk], *, by: str = ""
    ) -> Asset:
        media_type = validate_media_type(header.media_type, "")
        tags = validate_tags(header.tags)
        expected_sha = validate_sha256(header.expected_sha256)
        expected_size = header.expected_size_bytes
        limit = self.limits.max_upload_bytes
        if expected_size is not None:
            if expected_size < 0:
                raise InvalidArgument(f"expected_size_bytes is negative ({expected_size})")
            if expected_size > limit:
                raise TooLarge(
                    f"expected_size_bytes {expected_size} exceeds the server's limit of "
                    f"{limit} bytes (--max-upload-bytes)"
                )
        pending: Asset | None = None
        if header.pending_asset_id:
            pending = await self.get(header.pending_asset_id)
            self._check_fulfillable(pending, AssetType.FILE, allow_done=True)
        else:
            validate_label(header.label)

        writer = self.storage.new_writer()
        with Handover(writer) as handover:
            async for chunk in chunks:
                if writer.size_bytes + len(chunk) > limit:
                    raise TooLarge(
                        f"upload exceeds the server's limit of {limit} bytes (--max-upload-bytes)"
                    )
                await writer.write(chunk)
            await writer.seal()
            _verify(writer, expected_size, expected_sha)
            if pending is not None:
                async with self._locks.hold(pending.id):
                    # Re-read: the state may have moved while the bytes streamed in.
                    current = await self.get(pending.id)
                    return await self._fulfill_with_blob(current, handover, media_type, "", by)
            return await self._insert_file(
                handover, header.label, media_type or "application/octet-stream", tags, by
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def register_file(
        self,
        path: str,
        label: str,
        media_type: str,
        tags: Sequence[str],
        move: bool,
        *,
        by: str = "",
    ) -> Asset:
        path = validate_server_path(path)
        label = validate_label(label or path.rsplit("/", 1)[-1])
        media_type = validate_media_type(media_type, "application/octet-stream")
        tag_tuple = validate_tags(tags)
        staged = await self.storage.adopt(path, move=move)
        with Handover(staged) as handover:
            return await self._insert_file(handover, label, media_type, tag_tuple, by)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _insert_file(
        self, handover: Handover, label: str, media_type: str, tags: tuple[str, ...], by: str
    ) -> Asset:
        """Bytes into uploads/, then the AVAILABLE record."""
        blob = handover.blob
        asset_id, now = new_asset_id(), _now()
        key = self.storage.upload_key(asset_id, label, now)

        def record(path: str) -> Asset:
            return Asset(
                id=asset_id,
                label=label,
                status=Status.AVAILABLE,
                type=AssetType.FILE,
                media_type=media_type,
                created_at=now,
                updated_at=now,
                storage_path=path,
                tags=tags,
                size_bytes=blob.size_bytes,
                sha256=blob.sha256,
                created_by=by,
                updated_by=by,
            )

        return await self.commits.publish(
            handover, asset_id, key, lambda path: self.store.insert(record(path))
        )

    async def create_value(
        self, label: str, media_type: str, value: Value, tags: Sequence[str], *, by: str = ""
    ) -> Asset:
        label = validate_label(label)
        value = parse_value(value.kind, value.data)
        media_type = validate_media_type(media_type, value.kind.default_media_type)
        now = _now()
        asset = Asset(
            id=new_asset_id(),
            label=label,
            status=Status.AVAILABLE,
            type=AssetType.VALUE,
            media_type=media_type,
            created_at=now,
            updated_at=now,
            value=value,
            tags=validate_tags(tags),
            size_bytes=len(value.data),
            sha256=value_sha256(value),
            created_by=by,
            updated_by=by,
        )
        return await self.store.insert(asset)

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
    ) -> Asset:
        task_id = validate_task_id(task_id)
        label = validate_label(label)
        lease_seconds = leases.check_seconds(lease_seconds, self.limits.max_lease_seconds)
        now = _now()
        asset = Asset(
            id=new_asset_id(),
            label=label,
            status=Status.PENDING,
            type=type_,
            # A VALUE promise without a media type gets its value kind's on fulfillment.
            media_type=validate_media_type(
                media_type, "application/octet-stream" if type_ is AssetType.FILE else ""
            ),
            created_at=now,
            updated_at=now,
            created_by_task=task_id,
            tags=validate_tags(tags),
            created_by=by,
            updated_by=by,
            lease_seconds=lease_seconds,
            lease_expires_at=leases.deadline(now, lease_seconds) if lease_seconds else None,
        )
        return await self.store.insert(asset)

    # --- transitions ------------------------------------------------------------------

    async def fulfill_from_path(
        self, asset_id: str, source_path: str, expected_sha: str, *, by: str = ""
    ) -> Asset:
        asset_id = parse_asset_id(asset_id)
        expected_sha = validate_sha256(expected_sha)
        source = validate_server_path(source_path, "source_path")
        async with self._locks.hold(asset_id):
            current = await self.get(asset_id)
            self._check_fulfillable(current, AssetType.FILE, allow_done=True)
            try:
                staged = await self.storage.adopt(source, move=True)
            except NotFound:
                if current.status is Status.AVAILABLE and current.fulfilled_from == source:
                    # A retry of the fulfill that moved this very file: same answer.
                    return current
                raise
            with Handover(staged) as handover:
                if expected_sha and staged.sha256 != expected_sha:
                    raise IntegrityError(
                        f"{shown(source)} has sha256 {staged.sha256}, expected {expected_sha}"
                    )
                return await self._fulfill_with_blob(current, handover, "", source, by)
            raise AssertionError("unreachable")  # pragma: no cover

    async def fulfill_with_value(
        self, asset_id: str, value: Value, expected_sha: str, *, by: str = ""
    ) -> Asset:
        asset_id = parse_asset_id(asset_id)
        expected_sha = validate_sha256(expected_sha)
        value = parse_value(value.kind, value.data)
        digest = value_sha256(value)
        if expected_sha and digest != expected_sha:
            raise IntegrityError(f"value has sha256 {digest}, expected {expected_sha}")
        async with self._locks.hold(asset_id):
            current = await self.get(asset_id)
            if current.status is Status.AVAILABLE and current.value == value:
                return current
            self._check_fulfillable(current, AssetType.VALUE, allow_done=False)
            change = Fulfillment(
                size_bytes=len(value.data),
                sha256=digest,
                value=value,
                media_type="" if current.media_type else value.kind.default_media_type,
                by=by,
            )
            return await self._transition(current, change)

    async def fail(self, asset_id: str, reason: str, *, by: str = "") -> Asset:
        asset_id = parse_asset_id(asset_id)
        reason = reason.strip()
        if not reason:
            raise InvalidArgument("reason is required: say why the asset could not be produced")
        reason = reason[:MAX_REASON_CHARS]
        async with self._locks.hold(asset_id):
            current = await self.get(asset_id)
            if current.status is Status.FAILED and current.failure_reason == reason:
                return current
            if current.status is not Status.PENDING:
                raise FailedPrecondition(_not_pending(current, "failed"))
            return await self._transition(current, Failure(reason, by=by))

    async def renew_lease(self, asset_id: str, lease_seconds: int = 0, *, by: str = "") -> Asset:
        """Extend a PENDING asset's lease to now + lease_seconds (0: its own lease)."""
        asset_id = parse_asset_id(asset_id)
        async with self._locks.hold(asset_id):
            current = await self.get(asset_id)
            now = _now()
            seconds = leases.renewal_seconds(
                current, lease_seconds, self.limits.max_lease_seconds, now
            )
            renewal = Renewal(leases.deadline(now, seconds), by=by)
            try:
                return await self.store.transition(asset_id, Status.PENDING, renewal, now)
            except Conflict:
                # Fulfilled, failed or run out meanwhile: say which.
                latest = await self.get(asset_id)
                leases.renewal_seconds(latest, lease_seconds, self.limits.max_lease_seconds, now)
                raise FailedPrecondition(leases.ran_out(latest)) from None

    async def expire_leases(self) -> int:
        """Fail every PENDING asset whose lease has run out; how many this call failed."""
        return await leases.expire_due(self.store, _now())

    async def delete(self, asset_id: str, *, by: str = "") -> Asset:
        asset_id = parse_asset_id(asset_id)
        async with self._locks.hold(asset_id):
            removed = await self.store.delete(asset_id, by)
            if removed is None:
                raise NotFound(f"asset {asset_id} not found")
            # Record first, bytes second: a crash in between leaves an orphan file that
            # reconcile removes, never a record without its bytes.
            if removed.storage_path:
                await self.storage.remove(removed.storage_path)
            return removed

    def _check_fulfillable(self, asset: Asset, type_: AssetType, allow_done: bool) -> None:
        if asset.type is not type_:
            how = (
                "with source_path or UploadAsset"
                if asset.type is AssetType.FILE
                else "with a value"
            )
            raise FailedPrecondition(
                f"asset {asset.id} is a {asset.type.value} asset; fulfill it {how}"
            )
        if asset.status is not Status.PENDING and not (
            allow_done and asset.status is Status.AVAILABLE
        ):
            raise FailedPrecondition(_not_pending(asset, "fulfilled"))

    async def _fulfill_with_blob(
        self, current: Asset, handover: Handover, media_type: str, origin: str, by: str
    ) -> Asset:
        """Commit staged bytes as the content of `current`, a FILE asset read under its lock.

        The conditional write still guards against another process having moved the asset
        since `current` was read.
        """
        blob = handover.blob
        if current.status is Status.AVAILABLE and current.sha256 == blob.sha256:
            return current  # an identical retry: keep the first copy only (handover rolls back)
        self._check_fulfillable(current, AssetType.FILE, allow_done=False)
        key = self.storage.generated_key(current.created_by_task, current.id, current.label)

        def change(path: str) -> Fulfillment:
            return Fulfillment(
                size_bytes=blob.size_bytes,
                sha256=blob.sha256,
                storage_path=path,
                fulfilled_from=origin,
                media_type=media_type,
                by=by,
            )

        return await self.commits.publish(
            handover, current.id, key, lambda path: self._transition(current, change(path))
        )

    async def _transition(self, current: Asset, change: Fulfillment | Failure) -> Asset:
        try:
            return await self.store.transition(current.id, Status.PENDING, change, _now())
        except Conflict as exc:
            raise Conflict(
                f"asset {current.id} changed while this request ran ({exc.message}); "
                "re-read it before retrying"
            ) from None

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
        DELETED with slim records, in revision order, until cancelled.

        HistoryGone if this process cannot replay from that revision: list again.
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
        history.check(after_revision)
        return SelectorStream(history, selector, after_revision).events()

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
            await wait_for_inputs(
                lambda ids: self.watch(ids, 0, follow=False), mappings, wait_seconds
            )
        return await build_manifest(
            self.store, self.storage, self.manifests, mappings, config_params
        )


async def _naming(asset_id: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Re-raise a mid-stream integrity error with the asset's id in front."""
    try:
        async for chunk in chunks:
            yield chunk
    except IntegrityError as exc:
        raise IntegrityError(f"asset {asset_id} is AVAILABLE but {exc.message}") from None


def _verify(blob: StagedBlob, expected_size: int | None, expected_sha: str) -> None:
    if expected_size is not None and blob.size_bytes != expected_size:
        raise IntegrityError(
            f"received {blob.size_bytes} bytes, but the header declared {expected_size}"
        )
    if expected_sha and blob.sha256 != expected_sha:
        raise IntegrityError(
            f"content has sha256 {blob.sha256}, but the header declared {expected_sha}"
        )


def _not_pending(asset: Asset, verb: str) -> str:
    detail = f" ({brief(asset.failure_reason, 200)})" if asset.failure_reason else ""
    return f"asset {asset.id} is {asset.status.value}{detail}; only a PENDING asset can be {verb}"


async def _chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), READ_CHUNK_BYTES):
        yield data[start : start + READ_CHUNK_BYTES]
