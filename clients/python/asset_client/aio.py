"""AsyncAssetClient: the asyncio client over the generated gRPC stubs."""

# The blocking AssetClient (client.py) is generated from this file by
# scripts/gen_sync_client.py (`make generate`): edit here, then regenerate.
# `timeout` is the gRPC deadline of each call, as in the sync client, not an asyncio timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from asset_client import _channel
from asset_client._aio_lifecycle import AsyncLifecycleMethods
from asset_client._aio_materializer import AsyncMaterializer
from asset_client._aio_producing import AsyncProducerMethods
from asset_client._aio_reads import AsyncReadMethods
from asset_client._aio_watches import AsyncWatchMethods
from asset_client._blobcache import BlobCache
from asset_client._convert import pb_grpc
from asset_client._leases import AsyncLeaseKeeper
from asset_client._progress import ProgressCallback
from asset_client.models import Manifest

_UNSET: Any = _channel.UNSET


# The methods live by concern in the classes it inherits, over one shared state (the stub,
# the default deadline); here are the connection and the methods that combine their calls.
class AsyncAssetClient(
    AsyncProducerMethods, AsyncReadMethods, AsyncLifecycleMethods, AsyncWatchMethods
):
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

    # -- combining the other calls -------------------------------------------------------

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
