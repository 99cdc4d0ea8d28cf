"""The client's long calls: uploads and watches that resume, follow, waiting for assets."""

# Functions over the stub, not methods: the client's methods say what each call does and
# hand the work to these. The blocking _streams.py is generated from this file by
# scripts/gen_sync_client.py (`make generate`), as client.py is from aio.py.
# `timeout` is a gRPC deadline, as in the clients, not an asyncio timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc

from asset_client import _convert, _core, _selectors, _transfers
from asset_client._convert import pb, pb_grpc
from asset_client.errors import (
    DeadlineExceededError,
    HistoryGoneError,
    NotFoundError,
    from_rpc_error,
)
from asset_client.models import Asset, AssetStatus, AssetType, WatchEvent

log = logging.getLogger(__name__)

Resp = TypeVar("Resp")


async def call(method: Callable[..., Awaitable[Resp]], request: Any, timeout: float | None) -> Resp:
    """One unary call; a failure raised as the client's typed error."""
    try:
        return await method(request, timeout=timeout)
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc


async def upload(
    stub: pb_grpc.AssetServiceAsyncStub,
    upload: _transfers.Upload,
    timeout: float | None,
    unary_timeout: float | None,
) -> Asset:
    """Send `upload` (opened here, closed after), resuming a resumable one after a cut;
    first, with `upload.reuse`, ask the server whether it stores the bytes already."""
    await asyncio.to_thread(upload.open)
    try:
        if upload.reuse and (reused := await _reuse_upload(stub, upload, timeout)):
            return upload.reused(reused)
        while True:
            try:
                response = await _send_upload(stub, upload, timeout)
                break
            except grpc.RpcError as exc:
                delay = upload.retry_delay(exc)
                if delay is None:
                    raise upload.failure(exc) from exc
                log.info("upload of %s cut (%s); resuming", upload.path, exc.code())
            state = await _resume_point(stub, upload, delay, unary_timeout)
            if state is None:
                # Unknown to the server (the cut came before the header, or it
                # expired): start again from 0 under a new upload_id.
                upload.restart()
                await asyncio.to_thread(upload.resume_at, 0)
            elif state.HasField("asset"):
                response = pb.UploadAssetResponse(asset=state.asset)
                break
            else:
                await asyncio.to_thread(upload.resume_at, state.committed_bytes)
    finally:
        upload.close()
    return upload.finish(response)


async def _reuse_upload(
    stub: pb_grpc.AssetServiceAsyncStub, upload: _transfers.Upload, timeout: float | None
) -> pb.UploadAssetResponse | None:
    """The server's answer to a stream asking it to reuse stored bytes, or None: then the
    bytes are sent as usual.

    Usually None means NOT_FOUND "no stored bytes"; also DATA_LOSS (its copy did not hash
    as declared, or a server too old to know the field took 0 bytes) and PERMISSION_DENIED
    (a task token may not ask). Any other failure is left to the upload that follows,
    which reports it (or resumes after it) as it always does: the question only saves
    bytes, it never fails an upload.
    """
    try:
        return await stub.UploadAsset(upload.reuse_requests(), timeout=timeout)
    except grpc.RpcError as exc:
        log.debug("%s: not reused (%s: %s); sending it", upload.path, exc.code(), exc.details())
        return None


async def _resume_point(
    stub: pb_grpc.AssetServiceAsyncStub,
    upload: _transfers.Upload,
    delay: float,
    unary_timeout: float | None,
) -> pb.QueryUploadResponse | None:
    """Where a cut upload resumes, asked once the server answers (within its attempts);
    None if the server does not know the upload."""
    while True:
        await asyncio.sleep(delay)
        try:
            return await stub.QueryUpload(upload.query_request(), timeout=unary_timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            next_delay = upload.retry_delay(exc)
            if next_delay is None:
                raise upload.failure(exc) from exc
            delay = next_delay


async def _send_upload(
    stub: pb_grpc.AssetServiceAsyncStub, upload: _transfers.Upload, timeout: float | None
) -> pb.UploadAssetResponse:
    """The header, then every chunk; stops writing once the server has answered."""
    # No request iterator: writes are explicit, so they can stop at an early answer.
    # (scripts/gen_sync_client.py gives the blocking client a request iterator instead.)
    stream = stub.UploadAsset(timeout=timeout)  # type: ignore[call-arg]
    await stream.write(upload.header_request())
    while (request := await asyncio.to_thread(upload.next_request)) is not None:
        # A server that refuses the upload (an unknown asset, a limit, a full disk)
        # answers before the last chunk. Stop writing then; a write that fails
        # because the stream just ended reports "INTERNAL: Internal error from Core"
        # (grpc/grpc#36066), while awaiting the call yields the server's own status.
        if stream.done():
            break
        try:
            await stream.write(request)
        except (asyncio.InvalidStateError, grpc.RpcError):
            break
    else:
        await stream.done_writing()
    return await stream


async def watch_events(
    stub: pb_grpc.AssetServiceAsyncStub, cursor: _core.Cursor, unary_timeout: float | None
) -> AsyncGenerator[WatchEvent, None]:
    """A watch's events; re-opened after the last revision yielded when a stream that
    delivered events is cut by UNAVAILABLE (gRPC retries one that delivered none)."""
    while True:
        try:
            if (pin := cursor.pin_request()) is not None:
                page = await stub.ListAssets(pin, timeout=cursor.deadline.capped(unary_timeout))
                cursor.pin(page.revision)
            stream = stub.WatchAsset(cursor.request(), timeout=cursor.deadline.remaining())
            try:
                async for msg in stream:
                    yield cursor.observe(msg)
            finally:
                stream.cancel()
            return
        except grpc.RpcError as exc:
            err = from_rpc_error(exc)
            if not cursor.resumes(err):
                raise err from exc
            log.info("watch: resuming after revision %s (%s)", cursor.revision, err)


async def follow(
    stub: pb_grpc.AssetServiceAsyncStub,
    unary_timeout: float | None,
    status: AssetStatus | None,
    type: AssetType | None,
    tags: Iterable[str],
    created_by_task: str | None,
    label: str | None,
    page_size: int,
    timeout: float | None,
) -> AsyncGenerator[WatchEvent, None]:
    """The client's `follow` (see there): list page after page, then watch the selector
    from the first page's revision; list again after HistoryGoneError."""
    tags = _convert.tags_list(tags)  # used for every listing and watch
    deadline = _core.Deadline(timeout)
    informer = _selectors.Informer(status)
    while True:
        informer.start_listing()
        request = _core.list_request(status, type, tags, created_by_task, label, page_size)
        while True:
            response = await call(stub.ListAssets, request, deadline.capped(unary_timeout))
            page = _convert.page_from_pb(response)
            informer.page_read(page.revision)
            for asset in page.assets:
                if (snapshot := informer.listed(asset)) is not None:
                    yield snapshot
            request.page_token = page.next_page_token
            if not request.page_token:
                break
        for asset_id in informer.unlisted():
            try:
                found = await call(
                    stub.GetAsset,
                    pb.GetAssetRequest(asset_id=asset_id),
                    deadline.capped(unary_timeout),
                )
                current: Asset | None = _convert.asset_from_pb(found.asset)
            except NotFoundError:
                current = None
            if (moved := informer.recheck(asset_id, current)) is not None:
                yield moved
        cursor = _selectors.SelectorCursor(
            status, type, tags, created_by_task, label, informer.revision, deadline.remaining()
        )
        changes = watch_events(stub, cursor, unary_timeout)
        try:
            async for change in changes:
                if (fresh := informer.watched(change)) is not None:
                    yield fresh
            return
        except HistoryGoneError as exc:
            log.info("follow: listing again (%s)", exc.details)
        finally:
            await changes.aclose()


async def wait_until_available(
    stub: pb_grpc.AssetServiceAsyncStub,
    asset_ids: Iterable[str],
    timeout: float | None,
    unary_timeout: float | None,
) -> tuple[Asset, ...]:
    """The assets once all are AVAILABLE; AssetFailedError/AssetDeletedError/TimeoutError."""
    waiter = _core.Waiter(asset_ids, timeout)
    if not waiter.asset_ids:
        return ()
    cursor = _core.WatchCursor(waiter.asset_ids, 0, False, timeout)
    events = watch_events(stub, cursor, unary_timeout)
    try:
        async for event in events:
            done = waiter.observe(event)
            if done is not None:
                return done
    except DeadlineExceededError as exc:
        raise waiter.timed_out() from exc
    finally:
        await events.aclose()
    raise waiter.ended()
