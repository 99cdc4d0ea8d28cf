"""Every handler's wrapper: a request that did not parse is refused, and whatever a
handler raises ends the call with the one status api/errors.py maps it to."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from asset_service import logs
from asset_service.api.errors import capped, rich_status, status_code, status_message
from asset_service.api.wire import Malformed
from asset_service.domain.errors import AssetError, InvalidArgument, StorageFull
from asset_service.telemetry import note_error_ref

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Ctx = grpc.aio.ServicerContext[Any, Any]


async def _abort(context: Ctx, exc: BaseException, method: str) -> None:
    """End the call with the status `exc` maps to; its message is capped (api/errors.py).

    Raises grpc's AbortError, or returns if the status could not be sent because the call
    had already ended (the client left, e.g. killed while its stalled stream was being
    ended): grpc then ends the call quietly with the abort it recorded when the handler
    returns. Left to grpc, that failure was logged as an error with two tracebacks.
    """
    try:
        await _send_status(context, exc, method)
    except grpc.aio.AbortError:
        raise
    except grpc.aio.InternalError as failed:  # ExecuteBatchError: nobody to tell
        log.debug("%s ended before its status could be sent: %s", method, failed)


async def _send_status(context: Ctx, exc: BaseException, method: str) -> None:
    if isinstance(exc, AssetError):
        if isinstance(exc, StorageFull):
            # The server's disk, not the client's request: the operator's to fix, so said
            # in the log even without the access line (--no-access-log), once per kind.
            log.warning("%s refused: %s", method, exc.message, extra={logs.RATE_KEY: "full"})
        rich = rich_status(exc)
        if rich is not None:
            await context.abort_with_status(rpc_status.to_status(rich))  # type: ignore[attr-defined]
        await context.abort(status_code(exc), status_message(exc))
    if isinstance(exc, DecodeError):
        # A client-streaming request is parsed as the handler reads it, so bytes that are
        # not the message surface here: the client's error, logged in one rate-limited line.
        log.warning(
            "malformed message in %s: %s", method, exc, extra={logs.RATE_KEY: logs.MALFORMED}
        )
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            capped(f"a message of the {method} stream does not parse: {exc}"),
        )
    ref = uuid.uuid4().hex[:12]
    note_error_ref(ref)  # the call's access line carries it too
    # Tracebacks are kept (a bug to fix) but rate-limited: a client repeating the request
    # that triggers one must not flood the log.
    log.error(
        "%s failed unexpectedly (ref %s)",
        method,
        ref,
        exc_info=exc,
        extra={logs.RATE_KEY: f"unexpected:{method}:{type(exc).__name__}"},
    )
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error in {method}; server log ref {ref}"
    )


def _parsed(request: object, method: str) -> None:
    """Refuse a request whose bytes did not parse (server.py registers api/wire.tolerant
    deserializers): one rate-limited log line, INVALID_ARGUMENT naming the method."""
    if isinstance(request, Malformed):
        log.warning(
            "malformed request to %s: %s",
            method,
            request.message,
            extra={logs.RATE_KEY: logs.MALFORMED},
        )
        raise InvalidArgument(request.message)


def unary(
    fn: Callable[[Any, Req, Ctx], Awaitable[Resp]],
) -> Callable[[Any, Req, Ctx], Awaitable[Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: Ctx) -> Resp:
        with self.in_flight:
            try:
                _parsed(request, fn.__name__)
                return await fn(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # AssetError and anything unexpected
                await _abort(context, exc, fn.__name__)
                # The call ended before its status could be sent; grpc ends it now.
                return None  # type: ignore[return-value]

    return wrapper


def streaming(
    fn: Callable[[Any, Req, Ctx], AsyncIterator[Resp]],
) -> Callable[[Any, Req, Ctx], AsyncIterator[Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: Ctx) -> AsyncIterator[Resp]:
        with self.in_flight:
            try:
                _parsed(request, fn.__name__)
                async for item in fn(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # AssetError and anything unexpected
                await _abort(context, exc, fn.__name__)

    return wrapper


def answer_within(context: Ctx) -> float | None:
    """Seconds a waiting call may wait so that its answer still beats the client's
    deadline (a tenth of what is left, at most half a second, goes to writing the
    manifest and sending the answer); None without a deadline."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return max(0.0, remaining - min(0.5, remaining / 10))
