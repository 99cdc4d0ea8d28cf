"""What each part of the client stands on: its stub, its default deadline, its calls."""

# A part of AsyncAssetClient (aio.py), which inherits it. The blocking _calls.py is
# generated from this file by scripts/gen_sync_client.py (`make generate`), as client.py
# is from aio.py. `timeout` is a gRPC deadline, as in the clients, not an asyncio timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from asset_client import _aio_streams, _convert
from asset_client._convert import pb, pb_grpc
from asset_client.errors import from_rpc_error
from asset_client.models import Asset

Resp = TypeVar("Resp")


class _AssetResponse(Protocol):
    """A response that carries an asset (the one its call read, made or changed)."""

    @property
    def asset(self) -> pb.Asset: ...


class AsyncClientBase:
    """The state the client's parts share; the client class sets it when it connects."""

    # The default deadline of unary calls (seconds; None: none).
    timeout: float | None
    _stub: pb_grpc.AssetServiceAsyncStub

    async def _call(
        self, method: Callable[..., Awaitable[Resp]], request: Any, timeout: float | None
    ) -> Resp:
        return await _aio_streams.call(
            method, request, self.timeout if timeout is None else timeout
        )

    async def _asset_call(
        self,
        method: Callable[..., Awaitable[_AssetResponse]],
        request: Any,
        timeout: float | None,
    ) -> Asset:
        """A unary call answered with an asset (the one it read, made or changed)."""
        response = await self._call(method, request, timeout)
        return _convert.asset_from_pb(response.asset)

    @contextlib.asynccontextmanager
    async def _streaming(
        self,
        method: grpc.aio.UnaryStreamMultiCallable[Any, Resp],
        request: Any,
        timeout: float | None,
    ) -> AsyncIterator[AsyncIterable[Resp]]:
        """A server-streaming call (`timeout` as given: no default deadline) whose failures
        are raised as the client's typed errors; cancelled on leaving, however that is."""
        call = method(request, timeout=timeout)
        try:
            yield call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()
