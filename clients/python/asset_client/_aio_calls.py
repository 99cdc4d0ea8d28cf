"""What each part of the client stands on: its stub, its default deadline, one unary call."""

# A part of AsyncAssetClient (aio.py), which inherits it. The blocking _calls.py is
# generated from this file by scripts/gen_sync_client.py (`make generate`), as client.py
# is from aio.py. `timeout` is a gRPC deadline, as in the clients, not an asyncio timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asset_client import _aio_streams
from asset_client._convert import pb_grpc

Resp = TypeVar("Resp")


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
