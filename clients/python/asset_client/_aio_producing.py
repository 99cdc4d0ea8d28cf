"""The client's calls that make assets: uploads, values, promises and their leases."""

# A part of AsyncAssetClient (aio.py), which inherits it. The blocking _producing.py is
# generated from this file by scripts/gen_sync_client.py (`make generate`), as client.py
# is from aio.py. `timeout` is a gRPC deadline, as in the clients, not an asyncio timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import Any

from asset_client import _aio_streams, _channel, _convert, _core, _transfers
from asset_client._aio_calls import AsyncClientBase
from asset_client._convert import pb
from asset_client.models import Asset, AssetType, KeyedAsset, TaskToken, UploadState, Value

_UNSET: Any = _channel.UNSET


class AsyncProducerMethods(AsyncClientBase):
    """Creating assets (upload, register_file, create_value), promising and delivering
    them (create_pending, get_or_create_pending, fulfill, fail, renew_lease), task tokens."""

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
        return await self._asset_call(self._stub.RegisterFile, request, timeout)

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
        return await self._asset_call(self._stub.CreateValueAsset, request, timeout)

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
        return await self._asset_call(self._stub.CreatePendingAsset, request, timeout)

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
        return await self._asset_call(self._stub.FulfillAsset, request, timeout)

    async def fail(self, asset_id: str, reason: str, *, timeout: float | None = None) -> Asset:
        """PENDING -> FAILED with a reason every watcher sees."""
        request = pb.FailAssetRequest(asset_id=asset_id, reason=reason)
        return await self._asset_call(self._stub.FailAsset, request, timeout)

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
        return await self._asset_call(self._stub.RenewLease, request, timeout)
