"""AsyncAssetClient: the asyncio client over the generated gRPC stubs."""

# The blocking AssetClient (client.py) is generated from this file by
# scripts/gen_sync_client.py (`make generate`): edit here, then regenerate.
# `timeout` is the gRPC deadline of each call, as in the sync client, not an asyncio timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import builtins
import logging
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import UTC
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from asset_client import _aio_streams, _channel, _convert, _core, _reading, _selectors, _transfers
from asset_client._blobcache import BlobCache
from asset_client._convert import pb, pb_grpc
from asset_client._leases import AsyncLeaseKeeper
from asset_client._materialize import AsyncMaterializer
from asset_client._progress import ProgressCallback
from asset_client.errors import (
    from_rpc_error,
)
from asset_client.models import (
    Asset,
    AssetPage,
    AssetStatus,
    AssetType,
    KeyedAsset,
    Manifest,
    ScrubResult,
    TaskToken,
    UploadState,
    Usage,
    Value,
    WatchEvent,
)

log = logging.getLogger(__name__)

Resp = TypeVar("Resp")

_UNSET: Any = _channel.UNSET


class AsyncAssetClient:
    """asyncio client of the Asset Service; AssetClient has the same API, blocking.

    `target` is host:port. Where an argument is not given, its ASSET_SERVICE_* variable
    is read (README: "Configuration from the environment"): ASSET_SERVICE_ADDR,
    ASSET_SERVICE_TIMEOUT, ASSET_SERVICE_CA_FILE, ASSET_SERVICE_CLIENT_CERT and
    ASSET_SERVICE_CLIENT_KEY, ASSET_SERVICE_TOKEN or ASSET_SERVICE_TOKEN_FILE; without
    either, 127.0.0.1:50051 in plaintext with 30 s deadlines.

    Security (docs/security.md): `tls=True` (system roots) or `root_certificates` (PEM)
    for TLS; `certificate_chain` + `private_key` (PEM) for a client certificate (mTLS);
    `token`, a bearer token or a callable returning one before each call (refreshing
    task tokens). A token without TLS is sent only to a loopback address.

    `timeout` (seconds, more than 0; None: none) is the default deadline of unary calls;
    each method takes its own `timeout` too (None there means the client default for
    unary calls, no deadline for streams: upload, download, watch, watch_selector,
    follow). Calls that are safe to repeat are retried by gRPC after UNAVAILABLE, within
    their deadline (the channel's service config; README: "Retries").
    Blocking file work (hashing, fsync) runs in a worker thread.
    Use `async with` to close the channel.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float | None = _UNSET,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.aio.Channel | None = None,
        options: Sequence[tuple[str, Any]] = (),
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        token: str | Callable[[], str] | None = None,
    ) -> None:
        settings = _channel.resolve(
            target,
            timeout,
            credentials=credentials,
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            token=token,
            own_channel=channel is None,
        )
        self.target = settings.target
        self.timeout = settings.timeout
        self._owns_channel = channel is None
        if channel is None:
            opts = _channel.channel_options(options)
            if settings.credentials is None:
                channel = grpc.aio.insecure_channel(self.target, options=opts)
            else:
                channel = grpc.aio.secure_channel(self.target, settings.credentials, options=opts)
        self._channel = channel
        self._stub = pb_grpc.AssetServiceStub(channel)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close(None)

    async def __aenter__(self) -> AsyncAssetClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(
        self, method: Callable[..., Awaitable[Resp]], request: Any, timeout: float | None
    ) -> Resp:
        return await _aio_streams.call(
            method, request, self.timeout if timeout is None else timeout
        )

    # -- creating assets -----------------------------------------------------------------

    async def upload(
        self,
        path: str | os.PathLike[str],
        label: str | None = None,
        media_type: str | None = None,
        tags: Iterable[str] = (),
        pending_asset_id: str | None = None,
        progress: bool | Callable[[int, int], None] = True,
        *,
        checksum: bool = True,
        resumable: bool | None = None,
        attempts: int = 10,
        reuse: bool | None = None,
        timeout: float | None = None,
    ) -> Asset:
        """Stream a local file in 1 MiB chunks; with pending_asset_id, fulfill that asset.

        `progress`: a bar on a terminal (True), none (False), or a callable given (bytes
        sent, total) as they go. `resumable` (by default for files of 8 MiB or more): the
        upload gets an upload_id, and a stream cut by UNAVAILABLE (a dropped connection, a
        server restart), CANCELLED or ABORTED resumes where the server's durable bytes end
        (QueryUpload), up to `attempts` streams with backoff; the committed prefix is not
        sent again. `timeout` applies to each stream.

        `reuse` (by default for files of 1 MiB or more, with `checksum`): first ask the
        server to make the asset from bytes it already stores with this size and sha256
        (it checks its own copy; a declared sha256 alone is never trusted): a stream of
        one message, no chunk. If it stores none, the file is sent as usual.
        """
        upload = _transfers.Upload(
            path,
            label,
            media_type,
            tags,
            pending_asset_id,
            progress,
            checksum,
            resumable,
            attempts,
            reuse,
        )
        return await _aio_streams.upload(self._stub, upload, timeout, self.timeout)

    async def query_upload(self, upload_id: str, *, timeout: float | None = None) -> UploadState:
        """How much of a resumable upload the server holds durably (and its asset once it
        completed); NotFoundError once it expired or for another principal's upload."""
        response = await self._call(
            self._stub.QueryUpload, pb.QueryUploadRequest(upload_id=upload_id), timeout
        )
        return _convert.upload_state_from_pb(response)

    async def register_file(
        self,
        path: str | os.PathLike[str],
        label: str | None = None,
        media_type: str | None = None,
        tags: Iterable[str] = (),
        move: bool = False,
        *,
        timeout: float | None = None,
    ) -> Asset:
        """Adopt a file already on the server's filesystem (under an import root)."""
        request = _core.register_request(path, label, media_type, tags, move)
        response = await self._call(self._stub.RegisterFile, request, timeout)
        return _convert.asset_from_pb(response.asset)

    async def create_value(
        self,
        label: str,
        *,
        text: str | None = None,
        json: Any = _UNSET,
        data: bytes | None = None,
        media_type: str | None = None,
        tags: Iterable[str] = (),
        ttl_seconds: int = 0,
        timeout: float | None = None,
    ) -> Asset:
        """An AVAILABLE VALUE asset from exactly one of text=, json= (any object), data=.
        With `ttl_seconds` it expires that long after its creation (0: the server's rules)."""
        value = _convert.value_from_kwargs(text, json, data, json is not _UNSET)
        request = _core.create_value_request(label, value, media_type, tags, ttl_seconds)
        response = await self._call(self._stub.CreateValueAsset, request, timeout)
        return _convert.asset_from_pb(response.asset)

    async def create_pending(
        self,
        task_id: str,
        label: str,
        media_type: str = "",
        type: AssetType = AssetType.FILE,
        tags: Iterable[str] = (),
        *,
        lease_seconds: int = 0,
        ttl_seconds: int = 0,
        timeout: float | None = None,
    ) -> Asset:
        """Promise an asset that task `task_id` will produce.

        With `lease_seconds` (0: none) the promise fails by itself ("lease expired at ...")
        unless renewed within that many seconds, again and again (renew_lease, keep_lease).
        With `ttl_seconds` it expires that long after its creation, once fulfilled or failed.
        """
        request = _core.create_pending_request(
            task_id, label, media_type, type, tags, lease_seconds, ttl_seconds
        )
        response = await self._call(self._stub.CreatePendingAsset, request, timeout)
        return _convert.asset_from_pb(response.asset)

    async def get_or_create_pending(
        self,
        key: str,
        task_id: str,
        label: str,
        media_type: str = "",
        type: AssetType = AssetType.FILE,
        tags: Iterable[str] = (),
        *,
        lease_seconds: int = 0,
        timeout: float | None = None,
    ) -> KeyedAsset:
        """The asset for `key` (e.g. a hash of the task's code and inputs), made at most once.

        HIT: the key's AVAILABLE asset. JOIN: another caller's live promise for it (watch
        it; do not produce). PRODUCE: a new promise (as create_pending would make) that
        this caller alone must produce; of any number of concurrent callers on any servers
        sharing a store, exactly one gets PRODUCE. A FAILED one, one whose bytes are gone
        or corrupt, or a promise whose lease ran out does not block: the next call
        produces anew. Not retried (a lost PRODUCE would come back as JOIN): give the
        promise a lease, so that a producer that never heard it is taken over.
        """
        request = pb.GetOrCreatePendingAssetRequest(
            key=key,
            promise=_core.create_pending_request(
                task_id, label, media_type, type, tags, lease_seconds
            ),
        )
        response = await self._call(self._stub.GetOrCreatePendingAsset, request, timeout)
        return _convert.keyed_from_pb(response)

    async def fulfill(
        self,
        asset_id: str,
        source_path: str | os.PathLike[str] | None = None,
        value: Value | str | bytes | None = None,
        *,
        expected_sha256: str = "",
        timeout: float | None = None,
    ) -> Asset:
        """PENDING -> AVAILABLE from a file on the server's filesystem (moved) or a value."""
        request = _core.fulfill_request(asset_id, source_path, value, expected_sha256)
        response = await self._call(self._stub.FulfillAsset, request, timeout)
        return _convert.asset_from_pb(response.asset)

    async def fail(self, asset_id: str, reason: str, *, timeout: float | None = None) -> Asset:
        """PENDING -> FAILED with a reason every watcher sees."""
        request = pb.FailAssetRequest(asset_id=asset_id, reason=reason)
        response = await self._call(self._stub.FailAsset, request, timeout)
        return _convert.asset_from_pb(response.asset)

    async def mint_task_token(
        self,
        task_id: str,
        input_asset_ids: Iterable[str] = (),
        ttl_seconds: int = 0,
        *,
        timeout: float | None = None,
    ) -> TaskToken:
        """A token for task `task_id`'s worker: it may fulfill or fail that task's promises
        and read `input_asset_ids` and the task's outputs (orchestrator role; 0 = 1 hour)."""
        request = pb.MintTaskTokenRequest(
            task_id=task_id, input_asset_ids=list(input_asset_ids), ttl_seconds=ttl_seconds
        )
        response = await self._call(self._stub.MintTaskToken, request, timeout)
        return TaskToken(response.token, response.expires_at.ToDatetime(tzinfo=UTC))

    # -- leases --------------------------------------------------------------------------

    async def renew_lease(
        self, asset_id: str, lease_seconds: int = 0, *, timeout: float | None = None
    ) -> Asset:
        """Extend a PENDING asset's lease to now + lease_seconds (0: its promised lease).

        FailedPreconditionError once the asset is not PENDING, was promised without a lease
        or its lease ran out; InvalidArgumentError past the server's --max-lease-seconds.
        """
        request = pb.RenewLeaseRequest(asset_id=asset_id, lease_seconds=lease_seconds)
        response = await self._call(self._stub.RenewLease, request, timeout)
        return _convert.asset_from_pb(response.asset)

    def keep_lease(self, asset_id: str, *, every: float | None = None) -> AsyncLeaseKeeper:
        """Renew a promise's lease in the background while a block runs.

        `async with client.keep_lease(asset_id) as lease:` renews every `every` seconds
        (default: a third of the asset's lease_seconds, read with one GetAsset on entry;
        at least 0.05), first one interval after entry, each renewal with a deadline of
        one interval (at most the client's timeout). UNAVAILABLE and DEADLINE_EXCEEDED
        are retried at the next tick. Any other refusal (the asset was failed or deleted,
        its lease ran out) stops the renewals, is logged as a warning and kept as
        `lease.lost`, and the block goes on: check `lease.lost` before delivering. A
        refusal because the asset became AVAILABLE (fulfilled in the block) stops them
        quietly; a promise without a lease has nothing to renew. Leaving the block stops
        the renewer and waits for it, however the block ends.
        """
        return AsyncLeaseKeeper(self, asset_id, every)

    # -- reading -------------------------------------------------------------------------

    async def get(self, asset_id: str, *, timeout: float | None = None) -> Asset:
        request = pb.GetAssetRequest(asset_id=asset_id)
        response = await self._call(self._stub.GetAsset, request, timeout)
        return _convert.asset_from_pb(response.asset)

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
            call = self._stub.ReadAsset(target.request(), timeout=timeout)
            try:
                async for msg in call:
                    target.write(msg)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from exc
            finally:
                call.cancel()
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
        call = self._stub.ReadAsset(reading.request(), timeout=timeout)
        try:
            async for msg in call:
                yield reading.chunk(msg)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()
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

    async def materialize(
        self,
        mappings: Mapping[str, str],
        config_params: Mapping[str, Any] | None = None,
        *,
        dest: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool | ProgressCallback = False,
        timeout: float | None = None,
    ) -> Manifest:
        """Write input_data.json for these input keys -> asset ids on THIS machine, in `dest`.

        No disk shared with the server: it waits (a watch, up to `timeout`; None: as long
        as it takes) until no input is PENDING, an input that FAILED or was deleted ending
        it at once (AssetFailedError / AssetDeletedError naming its key); downloads each
        FILE input into a cache keyed by sha256 (`cache_dir`, default
        $ASSET_SERVICE_CACHE_DIR or ~/.cache/asset-service; size and sha256 checked before
        a blob gets its name; another process fetching the same content is waited for, not
        repeated) and links it as `dest`/files/<id>-<label>; writes VALUE inputs as
        `dest`/values/<id>.txt|.json|.bin; then `dest`/input_data.json in GetManifest's
        format with these absolute paths. Returns its path and each key's file.
        `progress` is download's, for each input fetched in turn.
        """
        cache = await asyncio.to_thread(BlobCache.open, cache_dir)
        materializer = AsyncMaterializer(self, cache)
        return await materializer.run(mappings, config_params, dest, progress, timeout)

    async def delete(
        self, asset_id: str, *, force: bool = False, timeout: float | None = None
    ) -> Asset:
        """Remove an asset's record and bytes; returns its last state. A held asset is
        refused (FailedPreconditionError naming the holders) unless `force` (admin)."""
        request = pb.DeleteAssetRequest(asset_id=asset_id, force=force)
        response = await self._call(self._stub.DeleteAsset, request, timeout)
        return _convert.asset_from_pb(response.asset)

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
        response = await self._call(self._stub.SetExpiry, request, timeout)
        return _convert.asset_from_pb(response.asset)

    async def place_hold(
        self, asset_id: str, owner: str, reason: str = "", *, timeout: float | None = None
    ) -> Asset:
        """Keep the asset (no expiry, no delete without force) until `owner` releases it."""
        request = pb.PlaceHoldRequest(asset_id=asset_id, owner=owner, reason=reason)
        response = await self._call(self._stub.PlaceHold, request, timeout)
        return _convert.asset_from_pb(response.asset)

    async def release_hold(
        self, asset_id: str, owner: str, *, timeout: float | None = None
    ) -> Asset:
        """Remove `owner`'s hold (NotFoundError if it has none)."""
        request = pb.ReleaseHoldRequest(asset_id=asset_id, owner=owner)
        response = await self._call(self._stub.ReleaseHold, request, timeout)
        return _convert.asset_from_pb(response.asset)

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
        call = self._stub.ScrubAssets(request, timeout=timeout)
        try:
            async for msg in call:
                yield _convert.scrubbed_from_pb(msg)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

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
