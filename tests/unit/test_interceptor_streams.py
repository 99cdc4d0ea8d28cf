"""The interceptor's stream wrappers end their handlers in the call's own task and context."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from asset_service.api.interceptor import security_interceptor
from asset_service.config import load_settings
from asset_service.security.principal import ANONYMOUS, current_principal
from asset_service.security.setup import Security

WATCH = "/asset.v1.AssetService/WatchAsset"


class BlockedContext:
    """A client that stopped reading: every write after the first waits forever."""

    def __init__(self) -> None:
        self.written: list[Any] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def write(self, message: Any) -> None:
        self.written.append(message)
        if len(self.written) > 1:
            await asyncio.Event().wait()


class Details:
    method = WATCH
    invocation_metadata = ()


async def serve_like_grpc(handler: Any, context: BlockedContext) -> None:
    """What grpc.aio's server does with a unary-stream handler (server.pyx.pxi): await a
    coroutine, or write what an async generator yields, never closing the generator."""
    behaviour = handler.unary_stream
    if inspect.iscoroutinefunction(behaviour):
        await behaviour(b"", context)
    else:
        async for item in behaviour(b"", context):
            await context.write(item)


async def test_a_stream_ended_mid_write_is_closed_in_its_own_call(tmp_path: Path) -> None:
    """Issue 18: when a call ended while its handler waited at a `yield`, grpc left the
    generator to the garbage collector, which closed it in another context: "Token ...
    created in a different Context" from reset_principal, and files held until then."""
    closed: list[object] = []

    async def watch(request: Any, context: Any) -> AsyncIterator[str]:
        try:
            for i in range(10):
                yield f"event {i}"
        finally:
            closed.append(current_principal())

    security = Security(load_settings(["--storage-root", str(tmp_path)], {}))
    interceptor = security_interceptor(security, None)  # type: ignore[arg-type]

    async def continuation(details: Any) -> Any:
        return grpc.unary_stream_rpc_method_handler(watch)

    handler = await interceptor.intercept_service(continuation, Details())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, error: errors.append(error))
    try:
        context = BlockedContext()
        call = asyncio.create_task(serve_like_grpc(handler, context))
        await asyncio.sleep(0.05)
        assert len(context.written) == 2, "the second write is blocked"
        call.cancel()  # the client went away: grpc cancels the call's task
        await asyncio.gather(call, return_exceptions=True)
        assert closed == [ANONYMOUS], "closed in the call's own task, as its caller"
        del call, context
        gc.collect()
        await asyncio.sleep(0.05)  # a generator finalized late would be closed now
        assert errors == [] and closed == [ANONYMOUS]
    finally:
        loop.set_exception_handler(None)
