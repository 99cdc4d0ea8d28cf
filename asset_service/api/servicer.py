"""AssetService servicer: decode the request, call the AssetManager, encode the answer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from asset_service import logs
from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.api import convert, wire
from asset_service.api.errors import capped, rich_status, status_code, status_message
from asset_service.api.inflight import InFlight
from asset_service.api.stalls import StallGuard
from asset_service.api.wire import Malformed, UploadMessage
from asset_service.config import Settings
from asset_service.domain.errors import (
    AssetError,
    InvalidArgument,
    LimitExceeded,
    Timeout,
    Unavailable,
)
from asset_service.domain.manager import AssetManager
from asset_service.domain.models import AssetType
from asset_service.domain.ports import Chunk
from asset_service.security.principal import ANONYMOUS, current_principal
from asset_service.security.task_tokens import TaskTokens
from asset_service.telemetry import NO_RECORDER, Recorder, note_error_ref

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
    async def wrapper(self: AssetServicer, request: Req, context: Ctx) -> Resp:
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
    async def wrapper(self: AssetServicer, request: Req, context: Ctx) -> AsyncIterator[Resp]:
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


def _answer_within(context: Ctx) -> float | None:
    """Seconds a waiting call may wait so that its answer still beats the client's
    deadline (a tenth of what is left, at most half a second, goes to writing the
    manifest and sending the answer); None without a deadline."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return max(0.0, remaining - min(0.5, remaining / 10))


class AssetServicer(pb_grpc.AssetServiceServicer):
    def __init__(
        self,
        manager: AssetManager,
        *,
        max_concurrent_uploads: int = Settings.max_concurrent_uploads,
        upload_idle_timeout_seconds: float = Settings.upload_idle_timeout_seconds,
        watch_stall_timeout_seconds: float = Settings.watch_stall_timeout_seconds,
        max_concurrent_reads: int = Settings.max_concurrent_reads,
        read_stall_timeout_seconds: float = Settings.read_stall_timeout_seconds,
        task_tokens: TaskTokens | None = None,
        recorder: Recorder = NO_RECORDER,
    ) -> None:
        self.manager = manager
        self.recorder = recorder
        self.task_tokens = task_tokens or TaskTokens()
        self.max_concurrent_uploads = max_concurrent_uploads
        self.upload_idle_timeout = upload_idle_timeout_seconds
        self.watch_stall_timeout = watch_stall_timeout_seconds
        self.max_concurrent_reads = max_concurrent_reads
        self.uploads_in_progress = 0
        self.resumable_uploads_in_progress = 0
        self.reads_in_progress = 0
        # WatchAsset's wire bytes of recent events, shared by every stream sending them.
        self.watch_events = convert.SharedEvents()
        self.answers = convert.Answers()  # GetAsset's, while its record is the same object
        self.watch_stalls = StallGuard(watch_stall_timeout_seconds)
        self.read_stalls = StallGuard(read_stall_timeout_seconds)
        # Every call between its start and its end (@unary, @streaming): a stop waits
        # for them, bounded by its grace, while health already says NOT_SERVING.
        self.in_flight = InFlight()

    @unary
    async def UploadAsset(
        self, request_iterator: AsyncIterator[UploadMessage], context: Ctx
    ) -> pb.UploadAssetResponse:
        # Each upload holds a staging file and a task until it ends: refuse one more at
        # once rather than queue it (the client can retry; a queue would hide the cause).
        if self.uploads_in_progress >= self.max_concurrent_uploads:
            raise LimitExceeded(
                f"{self.uploads_in_progress} uploads are in progress, the server's limit "
                f"(--max-concurrent-uploads {self.max_concurrent_uploads}); retry once one "
                "has finished, or ask the operator to raise the limit"
            )
        self.uploads_in_progress += 1
        try:
            return await self._upload(aiter(request_iterator))
        finally:
            self.uploads_in_progress -= 1

    async def _upload(self, messages: AsyncIterator[UploadMessage]) -> pb.UploadAssetResponse:
        idle = self.upload_idle_timeout

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
        received = self.recorder.upload_received

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

        resumable = int(bool(header.upload_id))
        self.resumable_uploads_in_progress += resumable
        try:
            asset = await self.manager.upload(header, chunks(), by=_caller())
        finally:
            self.resumable_uploads_in_progress -= resumable
        return pb.UploadAssetResponse(asset=convert.asset_to_pb(asset))

    @unary
    async def QueryUpload(
        self, request: pb.QueryUploadRequest, context: Ctx
    ) -> pb.QueryUploadResponse:
        state = await self.manager.query_upload(request.upload_id, by=_caller())
        response = pb.QueryUploadResponse(committed_bytes=state.committed_bytes)
        response.expire_time.FromDatetime(state.expires_at)
        if state.asset is not None:
            response.asset.CopyFrom(convert.asset_to_pb(state.asset))
        return response

    @unary
    async def RegisterFile(
        self, request: pb.RegisterFileRequest, context: Ctx
    ) -> pb.RegisterFileResponse:
        asset = await self.manager.register_file(
            request.path,
            request.label,
            request.media_type,
            list(request.tags),
            request.move,
            by=_caller(),
            ttl_seconds=request.ttl_seconds,
        )
        return pb.RegisterFileResponse(asset=convert.asset_to_pb(asset))

    @unary
    async def CreateValueAsset(
        self, request: pb.CreateValueAssetRequest, context: Ctx
    ) -> pb.CreateValueAssetResponse:
        asset = await self.manager.create_value(
            request.label,
            request.media_type,
            convert.value_from_pb(request.value),
            list(request.tags),
            by=_caller(),
            ttl_seconds=request.ttl_seconds,
        )
        return pb.CreateValueAssetResponse(asset=convert.asset_to_pb(asset))

    @unary
    async def CreatePendingAsset(
        self, request: pb.CreatePendingAssetRequest, context: Ctx
    ) -> pb.CreatePendingAssetResponse:
        type_ = convert.type_from_pb(request.type, AssetType.FILE)
        assert type_ is not None
        asset = await self.manager.create_pending(
            request.task_id,
            request.label,
            request.media_type,
            type_,
            list(request.tags),
            lease_seconds=request.lease_seconds,
            by=_caller(),
            ttl_seconds=request.ttl_seconds,
        )
        return pb.CreatePendingAssetResponse(asset=convert.asset_to_pb(asset))

    @unary
    async def GetOrCreatePendingAsset(
        self, request: pb.GetOrCreatePendingAssetRequest, context: Ctx
    ) -> pb.GetOrCreatePendingAssetResponse:
        promise = request.promise
        type_ = convert.type_from_pb(promise.type, AssetType.FILE)
        assert type_ is not None
        answer = await self.manager.get_or_create_pending(
            request.key,
            promise.task_id,
            promise.label,
            promise.media_type,
            type_,
            list(promise.tags),
            lease_seconds=promise.lease_seconds,
            by=_caller(),
            ttl_seconds=promise.ttl_seconds,
        )
        return pb.GetOrCreatePendingAssetResponse(
            asset=convert.asset_to_pb(answer.asset), outcome=convert.OUTCOME_TO_PB[answer.outcome]
        )

    @unary
    async def FulfillAsset(
        self, request: pb.FulfillAssetRequest, context: Ctx
    ) -> pb.FulfillAssetResponse:
        content = request.WhichOneof("content")
        if content == "source_path":
            asset = await self.manager.fulfill_from_path(
                request.asset_id, request.source_path, request.expected_sha256, by=_caller()
            )
        elif content == "value":
            asset = await self.manager.fulfill_with_value(
                request.asset_id,
                convert.value_from_pb(request.value),
                request.expected_sha256,
                by=_caller(),
            )
        else:
            raise InvalidArgument(
                "set source_path (a file on the server) or value (a VALUE asset's content); "
                "to fulfill with bytes from the client, use UploadAsset with pending_asset_id"
            )
        return pb.FulfillAssetResponse(asset=convert.asset_to_pb(asset))

    @unary
    async def FailAsset(self, request: pb.FailAssetRequest, context: Ctx) -> pb.FailAssetResponse:
        asset = await self.manager.fail(request.asset_id, request.reason, by=_caller())
        return pb.FailAssetResponse(asset=convert.asset_to_pb(asset))

    @unary
    async def RenewLease(
        self, request: pb.RenewLeaseRequest, context: Ctx
    ) -> pb.RenewLeaseResponse:
        asset = await self.manager.renew_lease(
            request.asset_id, request.lease_seconds, by=_caller()
        )
        return pb.RenewLeaseResponse(asset=convert.asset_to_pb(asset))

    @unary
    async def GetAsset(self, request: pb.GetAssetRequest, context: Ctx) -> pb.GetAssetResponse:
        return self.answers.get_asset(await self.manager.get(request.asset_id))

    @unary
    async def BatchGetAssets(
        self, request: pb.BatchGetAssetsRequest, context: Ctx
    ) -> pb.BatchGetAssetsResponse:
        assets = await self.manager.batch_get(list(request.asset_ids))
        return pb.BatchGetAssetsResponse(assets=[convert.asset_to_pb(a) for a in assets])

    @unary
    async def ListAssets(
        self, request: pb.ListAssetsRequest, context: Ctx
    ) -> pb.ListAssetsResponse:
        page = await self.manager.list_assets(
            convert.filter_from_pb(request), request.page_size, request.page_token
        )
        return pb.ListAssetsResponse(
            assets=[convert.asset_to_pb(a) for a in page.assets],
            next_page_token=page.next_token,
            revision=page.revision,
        )

    @streaming
    async def WatchAsset(
        self, request: pb.WatchAssetRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchAssetResponse]:
        if request.HasField("selector"):
            if request.asset_ids:
                raise InvalidArgument(
                    "give asset_ids or a selector, not both (a selector already picks its "
                    "assets; watch the ids in a stream of their own)"
                )
            events = await self.manager.watch_selector(
                convert.selector_from_pb(request.selector), request.after_revision
            )
        else:
            events = await self.manager.watch(
                list(request.asset_ids), request.after_revision, request.follow
            )
        stall = self.watch_stall_timeout
        sent = request.after_revision

        def stalled() -> Unavailable:
            log.info(
                "WatchAsset client did not read for %gs; ending its stream with "
                "UNAVAILABLE (it may resume after revision %d)",
                stall,
                sent,
            )
            return Unavailable(
                f"the watch stalled: the client did not read for {stall:g}s "
                f"(--watch-stall-timeout); resume with after_revision={sent}"
            )

        selector = request.HasField("selector")
        recorder = self.recorder
        recorder.watch_opened(selector)
        with self.watch_stalls.guarding(stalled) as writer, _closing_watch(recorder, selector):
            async with contextlib.aclosing(events):
                async for event in events:
                    # The bytes are serialized once per event for every stream (server.py
                    # registers WatchAsset with a serializer that passes bytes through).
                    data = self.watch_events.encode(event)
                    # context.write returns once the HTTP/2 window has room for the message
                    # (measured: a client that stops reading blocks it after ~6 MiB in
                    # flight). Bounding that wait (api/stalls.py) ends a stalled stream; its
                    # buffer is already bounded by --watch-buffer-bytes. The server sees
                    # reading only as window space, so a slow reader with many small events
                    # ahead of a big one waits longer.
                    try:
                        await writer.write(context, data)
                    except grpc.aio.InternalError:
                        # The client went away while an event was on its way (a cancelled
                        # or closed channel): nothing to report, and no one to report it to.
                        log.debug("WatchAsset client left after revision %d", sent)
                        return
                    recorder.watch_sent(event)
                    sent = max(sent, event.revision)
        return
        yield  # an async generator for @streaming; every message goes out via context.write

    @streaming
    async def ReadAsset(
        self, request: pb.ReadAssetRequest, context: Ctx
    ) -> AsyncIterator[pb.ReadAssetResponse]:
        # Each read holds an open file and a chunk or two until it ends: refuse one more at
        # once rather than queue it, as uploads do.
        if self.reads_in_progress >= self.max_concurrent_reads:
            raise LimitExceeded(
                f"{self.reads_in_progress} reads are in progress, the server's limit "
                f"(--max-concurrent-reads {self.max_concurrent_reads}); retry once one "
                "has finished, or ask the operator to raise the limit"
            )
        self.reads_in_progress += 1
        try:
            await self._read(request, context)
        finally:
            self.reads_in_progress -= 1
        return
        yield  # an async generator for @streaming; every message goes out via context.write

    async def _read(self, request: pb.ReadAssetRequest, context: Ctx) -> None:
        chunks = await self.manager.read(request.asset_id, request.offset, request.limit)
        stall = self.read_stalls.limit
        offset = request.offset

        def stalled() -> Unavailable:
            log.info(
                "ReadAsset client did not read %s for %gs; ending its stream with "
                "UNAVAILABLE (it may resume at offset %d)",
                request.asset_id,
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
        with self.read_stalls.guarding(stalled) as writer:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    try:
                        await writer.write(context, wire.read_response(chunk, offset))
                    except grpc.aio.InternalError:
                        log.debug("ReadAsset client left at offset %d", offset)
                        return
                    self.recorder.read_sent(len(chunk))
                    offset += len(chunk)

    @unary
    async def GetManifest(
        self, request: pb.GetManifestRequest, context: Ctx
    ) -> pb.GetManifestResponse:
        manifest = await self.manager.manifest(
            dict(request.asset_mappings),
            convert.struct_to_dict(request.config_params),
            wait=request.wait,
            wait_seconds=_answer_within(context),
        )
        return pb.GetManifestResponse(manifest_path=str(manifest.path), entries=manifest.entries)

    @unary
    async def DeleteAsset(
        self, request: pb.DeleteAssetRequest, context: Ctx
    ) -> pb.DeleteAssetResponse:
        # DeleteAsset is the admin's (security/roles.py): force is the admin's choice.
        asset = await self.manager.delete(request.asset_id, by=_caller(), force=request.force)
        return pb.DeleteAssetResponse(asset=convert.asset_to_pb(asset))

    @unary
    async def SetExpiry(self, request: pb.SetExpiryRequest, context: Ctx) -> pb.SetExpiryResponse:
        asset = await self.manager.set_expiry(
            request.asset_id, request.ttl_seconds, clear=request.clear, by=_caller()
        )
        return pb.SetExpiryResponse(asset=convert.asset_to_pb(asset))

    @unary
    async def PlaceHold(self, request: pb.PlaceHoldRequest, context: Ctx) -> pb.PlaceHoldResponse:
        asset = await self.manager.place_hold(
            request.asset_id, request.owner, request.reason, by=_caller()
        )
        return pb.PlaceHoldResponse(asset=convert.asset_to_pb(asset))

    @unary
    async def ReleaseHold(
        self, request: pb.ReleaseHoldRequest, context: Ctx
    ) -> pb.ReleaseHoldResponse:
        asset = await self.manager.release_hold(request.asset_id, request.owner)
        return pb.ReleaseHoldResponse(asset=convert.asset_to_pb(asset))

    @unary
    async def GetUsage(self, request: pb.GetUsageRequest, context: Ctx) -> pb.GetUsageResponse:
        usage = await self.manager.usage(request.group, list(request.keys), request.limit)
        return convert.usage_to_pb(usage)

    @streaming
    async def ScrubAssets(
        self, request: pb.ScrubAssetsRequest, context: Ctx
    ) -> AsyncIterator[pb.ScrubAssetsResponse]:
        rate = request.rate_mib_per_second
        if not math.isfinite(rate) or rate < 0:
            raise InvalidArgument(f"rate_mib_per_second must be 0 or more (got {rate})")
        results = await self.manager.scrub(list(request.asset_ids), rate * 1024 * 1024)
        async with contextlib.aclosing(results):  # a client gone: its open file goes now
            async for result in results:
                yield convert.scrubbed_to_pb(result)

    @unary
    async def MintTaskToken(
        self, request: pb.MintTaskTokenRequest, context: Ctx
    ) -> pb.MintTaskTokenResponse:
        minted = self.task_tokens.mint(
            _caller(),
            request.task_id,
            list(request.input_asset_ids),
            request.ttl_seconds,
        )
        # Its inputs are held while the task has a PENDING promise (no expiry before).
        await self.manager.hold_task_inputs(
            request.task_id, list(request.input_asset_ids), _caller()
        )
        response = pb.MintTaskTokenResponse(token=minted.token)
        response.expires_at.FromDatetime(minted.expires_at)
        return response


@contextlib.contextmanager
def _closing_watch(recorder: Recorder, selector: bool) -> Iterator[None]:
    try:
        yield
    finally:
        recorder.watch_closed(selector)


def _caller() -> str:
    """The authenticated principal's name, kept in the records it writes."""
    principal = current_principal()
    return principal.name if principal is not None else ANONYMOUS.name
