"""The two byte streams' edges: an upload's messages into a header and its chunks, and a
read's chunks onto the wire, each bounded in time (a silent or stalled client)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import grpc

from asset_service.api import convert, wire
from asset_service.api.handlers import Ctx
from asset_service.api.stalls import StallGuard
from asset_service.api.wire import UploadMessage
from asset_service.domain.errors import InvalidArgument, Timeout, Unavailable
from asset_service.domain.models import UploadHeader
from asset_service.domain.ports import Chunk
from asset_service.telemetry import Recorder

log = logging.getLogger(__name__)


async def upload_stream(
    messages: AsyncIterator[UploadMessage],
    idle: float,
    received: Callable[[int], None],
    still_open: Callable[[], Awaitable[object]],
) -> tuple[UploadHeader, AsyncIterator[Chunk]]:
    """The upload's header, and its chunks as they come (`received(n)` for each).

    The chunks end only once `still_open()` (the call's initial metadata sent) confirms
    that the client half-closed: grpc.aio reads a cut stream (a dropped connection, a
    client that died or cancelled) as its end too, and only cancels the call a moment
    later (grpc#33038), which would make a cut upload complete with what had arrived.
    On a cut stream it fails, or the call's cancellation lands while it waits: the
    chunks then raise CancelledError, as for any cut.
    """

    async def next_message() -> UploadMessage | None:
        # A silent client would hold its slot and staging file forever; the manager
        # removes the staging file when this raises out of the chunk stream.
        try:
            async with asyncio.timeout(idle):
                return await anext(messages, None)
        except TimeoutError:
            raise Timeout(
                f"the upload sent no message for {idle:g}s (--upload-idle-timeout); "
                "nothing was stored: send the header and chunks without such pauses"
            ) from None

    first = await next_message()
    if first is None:
        raise InvalidArgument("empty upload: send an UploadHeader as the first message")
    if isinstance(first, memoryview) or first.WhichOneof("payload") != "header":
        raise InvalidArgument(
            "the first message of an upload must be the header; a chunk came first"
        )
    header = convert.upload_header_from_pb(first.header)

    async def chunks() -> AsyncIterator[Chunk]:
        while (msg := await next_message()) is not None:
            if isinstance(msg, memoryview):  # a chunk, not copied out (api/wire)
                received(len(msg))
                yield msg
            elif msg.WhichOneof("payload") == "header":
                raise InvalidArgument(
                    "a second header arrived mid-upload; send the header once, first"
                )
            else:
                received(len(msg.chunk))
                yield msg.chunk
        try:
            async with asyncio.timeout(idle):  # headers that cannot go out: a stalled call
                await still_open()
        except TimeoutError:
            raise Timeout(
                f"the upload's stream ended, but its call could not answer for {idle:g}s "
                "(--upload-idle-timeout): the connection looks stalled, so the upload ends "
                "as cut (a resumable one keeps what arrived)"
            ) from None
        except grpc.aio.UsageError:
            pass  # its initial metadata was sent already: the call was open then
        except Exception:  # grpc's error for a call that is over: the client is gone
            log.debug("an upload's stream ended because its call was cut, not half-closed")
            raise asyncio.CancelledError("the upload's stream was cut") from None

    return header, chunks()


async def send_read(
    context: Ctx,
    chunks: AsyncGenerator[bytes, None],
    asset_id: str,
    offset: int,
    stalls: StallGuard,
    recorder: Recorder,
) -> None:
    """Write a read's chunks from `offset` on; a client that stops reading for the
    stall limit is ended with UNAVAILABLE naming the offset to resume at."""
    stall = stalls.limit

    def stalled() -> Unavailable:
        log.info(
            "ReadAsset client did not read %s for %gs; ending its stream with "
            "UNAVAILABLE (it may resume at offset %d)",
            asset_id,
            stall,
            offset,
        )
        # `offset` is what the client has been sent, not what it has taken in: what
        # the HTTP/2 window still held is delivered before this status.
        return Unavailable(
            f"the read stalled: the client did not read for {stall:g}s "
            f"(--read-stall-timeout); resume with ReadAsset offset={offset} (the "
            "first byte not sent)"
        )

    # The messages are serialized here (server.py registers ReadAsset with a serializer
    # that passes bytes through), so a write waiting on a client that does not read
    # holds one copy of one chunk; writing, not yielding, so that the chunk stream is
    # closed (its file with it) however the call ends, not when it is collected.
    with stalls.guarding(stalled) as writer:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                await writer.write(context, wire.read_response(chunk, offset))
                recorder.read_sent(len(chunk))
                offset += len(chunk)
