"""AssetService servicer: decode the request, call the AssetManager, encode the answer."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterator

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.api import convert, transfers
from asset_service.api.handlers import Ctx, answer_within, streaming, unary
from asset_service.api.inflight import InFlight
from asset_service.api.stalls import StallGuard
from asset_service.api.wire import UploadMessage
from asset_service.config import Settings
from asset_service.domain.errors import (
    InvalidArgument,
    LimitExceeded,
    Unavailable,
)
from asset_service.domain.manager import AssetManager
from asset_service.domain.models import AssetType
from asset_service.security.principal import ANONYMOUS, current_principal
from asset_service.security.task_tokens import TaskTokens
from asset_service.telemetry import NO_RECORDER, Recorder

log = logging.getLogger(__name__)


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
            return await self._upload(aiter(request_iterator), context)
        finally:
            self.uploads_in_progress -= 1

    async def _upload(
        self, messages: AsyncIterator[UploadMessage], context: Ctx
    ) -> pb.UploadAssetResponse:
        idle, received = self.upload_idle_timeout, self.recorder.upload_received
        header, chunks = await transfers.upload_stream(
            messages, idle, received, lambda: context.send_initial_metadata(())
        )
        resumable = int(bool(header.upload_id))
        self.resumable_uploads_in_progress += resumable
        try:
            asset = await self.manager.upload(header, chunks, by=_caller())
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
                    await writer.write(context, data)
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
        await transfers.send_read(
            context, chunks, request.asset_id, request.offset, self.read_stalls, self.recorder
        )

    @unary
    async def GetManifest(
        self, request: pb.GetManifestRequest, context: Ctx
    ) -> pb.GetManifestResponse:
        manifest = await self.manager.manifest(
            dict(request.asset_mappings),
            convert.struct_to_dict(request.config_params),
            wait=request.wait,
            wait_seconds=answer_within(context),
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
