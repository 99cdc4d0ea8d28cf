"""The AssetManager: the state machine, uploads, fulfilment, watch and manifests."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asset_service.domain.errors import (
    BlockingAsset,
    Conflict,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    ManifestBlocked,
    NotFound,
    PermissionDenied,
    TooLarge,
)
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    Change,
    ChangeKind,
    Failure,
    Fulfilment,
    Page,
    Status,
    Value,
    ValueKind,
    new_asset_id,
    parse_asset_id,
    validate_label,
    validate_media_type,
    validate_sha256,
    validate_tags,
    validate_task_id,
)
from asset_service.domain.ports import BlobStorage, MetadataStore, StagedBlob
from asset_service.domain.watch import ChangeHub, Subscription

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_VALUE_BYTES = 4 * 1024 * 1024
MAX_REASON_CHARS = 4096
READ_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * 1024**3
    import_roots: tuple[Path, ...] = ()
    # Manifest folders (input_data.json and VALUE files) live this long; 0 keeps them.
    manifest_ttl_seconds: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class UploadHeader:
    label: str = ""
    media_type: str = ""
    tags: tuple[str, ...] = ()
    expected_size_bytes: int | None = None
    expected_sha256: str = ""
    pending_asset_id: str = ""


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "SNAPSHOT" | "CHANGED" | "DELETED"
    asset: Asset

    @property
    def revision(self) -> int:
        return self.asset.revision


@dataclass(frozen=True)
class Manifest:
    path: Path
    entries: dict[str, str] = field(default_factory=dict)


def _now() -> datetime:
    return datetime.now(UTC)


class _KeyedLocks:
    """One asyncio.Lock per asset id while anyone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def parse_value(kind: ValueKind, data: bytes) -> Value:
    if len(data) > MAX_VALUE_BYTES:
        raise InvalidArgument(
            f"value is {len(data)} bytes; the limit is {MAX_VALUE_BYTES} (upload a FILE instead)"
        )
    if kind is not ValueKind.BYTES:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{kind.value.lower()} value is not valid UTF-8") from None
        if kind is ValueKind.JSON:
            try:
                json.loads(text)
            except ValueError as exc:
                raise InvalidArgument(f"json value does not parse: {exc}") from None
    return Value(kind, data)


def _value_sha256(value: Value) -> str:
    return hashlib.sha256(value.data).hexdigest()


class AssetManager:
    """Every use case of the service, over a MetadataStore and a BlobStorage."""

    def __init__(self, store: MetadataStore, storage: BlobStorage, limits: Limits) -> None:
        self.store = store
        self.storage = storage
        self.limits = limits
        self.hub = ChangeHub()
        self._locks = _KeyedLocks()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.storage.open()
        await self.store.open()
        await self.reconcile()
        self.hub.start(self.store.changes())

    async def stop(self) -> None:
        await self.hub.close()
        await self.store.close()
        await self.storage.close()

    async def sweep_manifests(self) -> int:
        """Remove manifest folders older than the TTL (tasks read them when they start)."""
        if self.limits.manifest_ttl_seconds <= 0:
            return 0
        removed = await self.storage.sweep_scratch("manifests", self.limits.manifest_ttl_seconds)
        if removed:
            log.info("removed %d manifest folder(s) past their TTL", removed)
        return removed

    async def reconcile(self) -> int:
        """Remove stored files that no record points at (left by a crash mid-commit)."""
        removed = 0
        batch: list[tuple[str, str]] = []

        async def flush() -> int:
            records = await self.store.get_many(sorted({a for a, _ in batch}))
            count = 0
            for asset_id, path in batch:
                rec = records.get(asset_id)
                if rec is None or rec.storage_path != path:
                    log.warning("removing orphan file %s (no record points at it)", path)
                    await self.storage.remove(path)
                    count += 1
            batch.clear()
            return count

        async for asset_id, path in self.storage.orphans():
            batch.append((asset_id, path))
            if len(batch) >= 500:
                removed += await flush()
        if batch:
            removed += await flush()
        if removed:
            log.info("reconcile removed %d orphan file(s)", removed)
        return removed

    # --- reads ----------------------------------------------------------------------

    async def get(self, asset_id: str) -> Asset:
        asset_id = parse_asset_id(asset_id)
        asset = await self.store.get(asset_id)
        if asset is None:
            raise NotFound(f"asset {asset_id} not found")
        return asset

    async def batch_get(self, asset_ids: Sequence[str]) -> list[Asset]:
        if not asset_ids:
            raise InvalidArgument("asset_ids is empty; name at least one asset")
        if len(asset_ids) > MAX_BATCH:
            raise InvalidArgument(f"{len(asset_ids)} ids given; the limit is {MAX_BATCH}")
        ids = [parse_asset_id(i, "asset_ids entry") for i in asset_ids]
        found = await self.store.get_many(sorted(set(ids)))
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if missing:
            raise NotFound(f"{len(missing)} asset(s) not found: {', '.join(missing)}")
        return [found[i] for i in ids]

    async def list_assets(self, flt: AssetFilter, page_size: int, page_token: str) -> Page:
        if page_size < 0:
            raise InvalidArgument(f"page_size must not be negative (got {page_size})")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        validate_tags(flt.tags)
        return await self.store.query(flt, size, page_token)

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
        if not await self.storage.exists(asset.storage_path):
            raise IntegrityError(
                f"asset {asset.id} is AVAILABLE but its bytes at {asset.storage_path} are missing"
            )
        return await self.storage.read(asset.storage_path, offset, limit, READ_CHUNK_BYTES)

    # --- creation ---------------------------------------------------------------------

    async def upload(self, header: UploadHeader, chunks: AsyncIterator[bytes]) -> Asset:
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
        try:
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
                    return await self._fulfil_with_blob(current, writer, media_type, "")
            stored = await self._insert_file(
                writer, header.label, media_type or "application/octet-stream", tags
            )
        except BaseException:
            await writer.rollback()
            raise
        await writer.finish()
        return stored

    async def register_file(
        self, path: str, label: str, media_type: str, tags: Sequence[str], move: bool
    ) -> Asset:
        source = self._resolve_import(path)
        label = validate_label(label or source.name)
        media_type = validate_media_type(media_type, "application/octet-stream")
        tag_tuple = validate_tags(tags)
        staged = await self.storage.ingest(source, move=move)
        try:
            stored = await self._insert_file(staged, label, media_type, tag_tuple)
        except BaseException:
            await staged.rollback()
            raise
        await staged.finish()
        return stored

    async def _insert_file(
        self, blob: StagedBlob, label: str, media_type: str, tags: tuple[str, ...]
    ) -> Asset:
        """Bytes into uploads/, then the AVAILABLE record (the caller rolls back on error)."""
        asset_id, now = new_asset_id(), _now()
        path = await blob.commit(self.storage.upload_key(asset_id, label, now))
        asset = Asset(
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
        )
        return await self.store.insert(asset)

    async def create_value(
        self, label: str, media_type: str, value: Value, tags: Sequence[str]
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
            sha256=_value_sha256(value),
        )
        return await self.store.insert(asset)

    async def create_pending(
        self, task_id: str, label: str, media_type: str, type_: AssetType, tags: Sequence[str]
    ) -> Asset:
        task_id = validate_task_id(task_id)
        label = validate_label(label)
        now = _now()
        asset = Asset(
            id=new_asset_id(),
            label=label,
            status=Status.PENDING,
            type=type_,
            # A VALUE promise without a media type gets its value kind's on fulfilment.
            media_type=validate_media_type(
                media_type, "application/octet-stream" if type_ is AssetType.FILE else ""
            ),
            created_at=now,
            updated_at=now,
            created_by_task=task_id,
            tags=validate_tags(tags),
        )
        return await self.store.insert(asset)

    # --- transitions ------------------------------------------------------------------

    async def fulfil_from_path(self, asset_id: str, source_path: str, expected_sha: str) -> Asset:
        asset_id = parse_asset_id(asset_id)
        expected_sha = validate_sha256(expected_sha)
        source = self._resolve_import(source_path, must_exist=False)
        async with self._locks.hold(asset_id):
            current = await self.get(asset_id)
            if (
                current.status is Status.AVAILABLE
                and current.fulfilled_from == str(source)
                and not source.exists()
            ):
                # A retry of the fulfil that moved this very file: same answer, no second file.
                return current
            self._check_fulfillable(current, AssetType.FILE, allow_done=True)
            if not source.is_file():
                raise NotFound(f"source file {source} does not exist on the server")
            staged = await self.storage.ingest(source, move=True)
            try:
                if expected_sha and staged.sha256 != expected_sha:
                    raise IntegrityError(
                        f"{source} has sha256 {staged.sha256}, expected {expected_sha}"
                    )
                return await self._fulfil_with_blob(current, staged, "", origin=str(source))
            except BaseException:
                await staged.rollback()
                raise

    async def fulfil_with_value(self, asset_id: str, value: Value, expected_sha: str) -> Asset:
        asset_id = parse_asset_id(asset_id)
        expected_sha = validate_sha256(expected_sha)
        value = parse_value(value.kind, value.data)
        digest = _value_sha256(value)
        if expected_sha and digest != expected_sha:
            raise IntegrityError(f"value has sha256 {digest}, expected {expected_sha}")
        async with self._locks.hold(asset_id):
            current = await self.get(asset_id)
            if current.status is Status.AVAILABLE and current.value == value:
                return current
            self._check_fulfillable(current, AssetType.VALUE, allow_done=False)
            change = Fulfilment(
                size_bytes=len(value.data),
                sha256=digest,
                value=value,
                media_type="" if current.media_type else value.kind.default_media_type,
            )
            return await self._transition(current, change)

    async def fail(self, asset_id: str, reason: str) -> Asset:
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
            return await self._transition(current, Failure(reason))

    async def delete(self, asset_id: str) -> Asset:
        asset_id = parse_asset_id(asset_id)
        async with self._locks.hold(asset_id):
            removed = await self.store.delete(asset_id)
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
                f"asset {asset.id} is a {asset.type.value} asset; fulfil it {how}"
            )
        if asset.status is not Status.PENDING and not (
            allow_done and asset.status is Status.AVAILABLE
        ):
            raise FailedPrecondition(_not_pending(asset, "fulfilled"))

    async def _fulfil_with_blob(
        self, current: Asset, blob: StagedBlob, media_type: str, origin: str
    ) -> Asset:
        """Commit staged bytes as the content of `current`, a FILE asset read under its lock.

        The caller rolls the blob back if this raises; the conditional write still guards
        against another process having moved the asset since `current` was read.
        """
        if current.status is Status.AVAILABLE and current.sha256 == blob.sha256:
            await blob.rollback()  # an identical retry: keep the first copy only
            return current
        self._check_fulfillable(current, AssetType.FILE, allow_done=False)
        path = await blob.commit(
            self.storage.generated_key(current.created_by_task, current.id, current.label)
        )
        change = Fulfilment(
            size_bytes=blob.size_bytes,
            sha256=blob.sha256,
            storage_path=path,
            fulfilled_from=origin,
            media_type=media_type,
        )
        updated = await self._transition(current, change)
        await blob.finish()
        return updated

    async def _transition(self, current: Asset, change: Fulfilment | Failure) -> Asset:
        try:
            return await self.store.transition(current.id, Status.PENDING, change, _now())
        except Conflict as exc:
            raise Conflict(
                f"asset {current.id} changed while this request ran ({exc.message}); "
                "re-read it before retrying"
            ) from None

    def _resolve_import(self, raw: str, must_exist: bool = True) -> Path:
        if not raw:
            raise InvalidArgument("path is required: an absolute path on the server")
        if "\x00" in raw:
            raise InvalidArgument("path contains a NUL character")
        given = Path(raw)
        if not given.is_absolute():
            raise InvalidArgument(f"path {raw!r} must be absolute")
        roots = self.limits.import_roots
        if not roots:
            raise PermissionDenied(
                "the server has no import roots; start it with --import-root DIR "
                "(or ASSET_SERVICE_IMPORT_ROOTS) to allow server-side paths"
            )
        resolved = given.resolve(strict=False)  # follows every symlink that exists
        if not any(resolved.is_relative_to(root) for root in roots):
            shown = ", ".join(str(r) for r in roots)
            via = f" (it resolves to {resolved})" if resolved != given else ""
            raise PermissionDenied(f"{raw} is outside the import roots [{shown}]{via}")
        if must_exist and not resolved.is_file():
            raise NotFound(f"file {raw} does not exist on the server (or is not a regular file)")
        return resolved

    # --- watch ------------------------------------------------------------------------

    async def watch(
        self, asset_ids: Sequence[str], after_revision: int, follow: bool
    ) -> AsyncIterator[WatchEvent]:
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
            snapshot = await self.store.get_many(ids)
            missing = [i for i in ids if i not in snapshot]
            if missing:
                raise NotFound(f"{len(missing)} asset(s) not found: {', '.join(missing)}")
        except BaseException:
            sub.close()
            raise
        return self._watch_stream(sub, ids, snapshot, after_revision, follow)

    async def _watch_stream(
        self,
        sub: Subscription,
        ids: list[str],
        snapshot: dict[str, Asset],
        after_revision: int,
        follow: bool,
    ) -> AsyncIterator[WatchEvent]:
        # The last state seen of each asset (None once deleted). A change is new iff its
        # revision is above that state's: the snapshot was read after subscribing, so
        # anything buffered but older is already in it, and anything newer is above
        # every revision the client could have seen (after_revision included).
        known: dict[str, Asset | None] = dict(snapshot)

        def finished() -> bool:
            return all(a is None or a.status.terminal for a in known.values())

        def is_new(change: Change) -> bool:
            last = known[change.asset.id]
            return last is not None and change.revision > last.revision

        try:
            for asset in sorted(snapshot.values(), key=lambda a: a.revision):
                if asset.revision > after_revision:
                    yield WatchEvent("SNAPSHOT", asset)
            while follow or not finished():
                change = await sub.next()
                if change is not None:
                    events = [change] if is_new(change) else []
                elif sub.closed:
                    raise asyncio.CancelledError("the server is shutting down")
                else:
                    events = await self._catch_up(sub, ids, known)
                for event in events:
                    if event.kind is ChangeKind.DELETE:
                        known[event.asset.id] = None
                        yield WatchEvent("DELETED", event.asset)
                    else:
                        known[event.asset.id] = event.asset
                        yield WatchEvent("CHANGED", event.asset)
        finally:
            sub.close()

    async def _catch_up(
        self, sub: Subscription, ids: list[str], known: dict[str, Asset | None]
    ) -> list[Change]:
        """After a lag or a lost change history: re-read current state, report what moved."""
        sub.reset_lag()
        current = await self.store.get_many(ids)
        changes = []
        for asset_id in ids:
            before, now = known.get(asset_id), current.get(asset_id)
            if now is None and before is not None:
                changes.append(Change(ChangeKind.DELETE, before))
            elif now is not None and (before is None or now.revision > before.revision):
                changes.append(Change(ChangeKind.PUT, now))
        return sorted(changes, key=lambda c: c.revision)

    # --- manifest ---------------------------------------------------------------------

    async def manifest(
        self, mappings: Mapping[str, str], config_params: Mapping[str, Any]
    ) -> Manifest:
        if len(mappings) > MAX_BATCH:
            raise InvalidArgument(f"{len(mappings)} mappings given; the limit is {MAX_BATCH}")
        ids: dict[str, str] = {}
        for key, raw in sorted(mappings.items()):
            if not key or any(ord(c) < 32 for c in key):
                raise InvalidArgument(f"manifest key {key!r} is empty or has control characters")
            ids[key] = parse_asset_id(raw, f"asset id of key {key!r}")
        assets = await self.store.get_many(sorted(set(ids.values())))
        blocking = []
        for key, asset_id in ids.items():
            asset = assets.get(asset_id)
            if asset is None:
                blocking.append(BlockingAsset(key, asset_id, "NOT_FOUND"))
            elif asset.status is not Status.AVAILABLE:
                blocking.append(
                    BlockingAsset(key, asset_id, asset.status.value, asset.failure_reason)
                )
        if blocking:
            raise ManifestBlocked(blocking)
        for asset in assets.values():
            if asset.type is AssetType.FILE and not await self.storage.exists(asset.storage_path):
                raise IntegrityError(
                    f"asset {asset.id} is AVAILABLE but its bytes at {asset.storage_path} "
                    "are missing"
                )
        folder = self.storage.scratch_dir("manifests")
        try:
            return await asyncio.to_thread(
                _write_manifest, folder, ids, assets, dict(config_params)
            )
        except BaseException:
            await asyncio.to_thread(_remove_tree, folder)
            raise


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
    detail = f" ({asset.failure_reason})" if asset.failure_reason else ""
    return f"asset {asset.id} is {asset.status.value}{detail}; only a PENDING asset can be {verb}"


async def _chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), READ_CHUNK_BYTES):
        yield data[start : start + READ_CHUNK_BYTES]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _write_manifest(
    folder: Path, ids: dict[str, str], assets: dict[str, Asset], config: dict[str, Any]
) -> Manifest:
    entries: dict[str, str] = {}
    values_dir = folder / "values"
    for key, asset_id in ids.items():
        asset = assets[asset_id]
        if asset.type is AssetType.FILE:
            entries[key] = asset.storage_path
            continue
        assert asset.value is not None
        values_dir.mkdir(exist_ok=True)
        # Named by asset id, never by the (untrusted) key or label.
        target = values_dir / f"{asset.id}{asset.value.kind.suffix}"
        if not target.exists():
            _write_atomic(target, asset.value.data)
        entries[key] = str(target)
    manifest_path = folder / "input_data.json"
    body = {"inputs": entries, "config_params": config}
    _write_atomic(manifest_path, json.dumps(body, indent=2, sort_keys=True).encode() + b"\n")
    return Manifest(manifest_path, entries)


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
