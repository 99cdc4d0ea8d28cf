"""Resumable uploads (an upload_id): sessions that outlive a cut stream, and QueryUpload.

A cut stream keeps what the storage made durable, and a later stream of the same principal
continues from there (domain/uploads.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Coroutine
from datetime import datetime, timedelta
from typing import Any

from asset_service.domain.commits import Handover
from asset_service.domain.errors import (
    Conflict,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    TooLarge,
)
from asset_service.domain.manager import _base, _creation
from asset_service.domain.manager._context import Context, space_freed
from asset_service.domain.manager._creation import Complete, UploadPlan
from asset_service.domain.models import Asset, Status, UploadHeader, new_asset_id
from asset_service.domain.ports import Chunk, SessionWriter
from asset_service.domain.uploads import (
    UploadSession,
    UploadState,
    busy,
    check_same_header,
    expired,
    first_header,
    gone,
    session_key,
    validate_upload_id,
)

log = logging.getLogger(__name__)


async def upload(
    ctx: Context,
    header: UploadHeader,
    chunks: AsyncIterator[Chunk],
    *,
    by: str = "",
    complete: Complete | None = None,
) -> Asset:
    """An upload with an upload_id (one without goes to _creation.upload); `complete`
    makes the asset of its sealed bytes (complete_upload if None)."""
    complete = complete or functools.partial(_creation.complete_upload, ctx)
    if not header.upload_id:
        if header.write_offset:
            raise InvalidArgument(
                f"header.write_offset is {header.write_offset} without an upload_id; only "
                "a resumable upload (header.upload_id) starts past 0"
            )
        return await _creation.upload(ctx, header, chunks, by=by, complete=complete)
    upload_id = validate_upload_id(header.upload_id)
    if header.write_offset < 0:
        raise InvalidArgument(f"header.write_offset is negative ({header.write_offset})")
    # Opening runs to its end even if the RPC is cancelled meanwhile (a client that
    # gives up at once): what it took (a hold, a writer) is then let go, not leaked.
    opening = asyncio.create_task(_open_session(ctx, upload_id, header, by))
    ctx.session_work.add(opening)
    opening.add_done_callback(ctx.session_work.discard)
    try:
        found = await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(functools.partial(_let_go, ctx))
        raise
    if isinstance(found, Asset):
        return found
    plan, writer = found
    return await _stream_session(ctx, plan, writer, chunks, by, complete)


def _let_go(ctx: Context, opening: asyncio.Task[Asset | tuple[UploadPlan, SessionWriter]]) -> None:
    """An opening whose RPC was cancelled: suspend the writer it got, untouched."""
    if opening.cancelled() or opening.exception() is not None:
        return
    found = opening.result()
    if isinstance(found, tuple):
        task = asyncio.get_running_loop().create_task(found[1].suspend(_expiry(ctx)))
        ctx.session_work.add(task)
        task.add_done_callback(ctx.session_work.discard)


def _expiry(ctx: Context) -> datetime:
    return _base.now() + timedelta(seconds=ctx.limits.upload_session_ttl_seconds)


async def _open_session(
    ctx: Context, upload_id: str, header: UploadHeader, by: str
) -> Asset | tuple[UploadPlan, SessionWriter]:
    """The asset of a completed upload, or the session held for this stream."""
    key = session_key(by, upload_id)
    offset = header.write_offset
    try:
        hold = await ctx.storage.take_session(key)
    except Conflict:
        raise busy(upload_id) from None
    if hold is None:
        if offset > 0:
            raise gone(upload_id)
        plan = await _creation.upload_plan(ctx, header)
        await ctx.store.check_room()
        now = _base.now()
        session = UploadSession(upload_id, by, first_header(header), now, _expiry(ctx))
        try:
            return plan, await ctx.storage.new_session(key, session)
        except Conflict:
            raise busy(upload_id) from None
    try:
        session = hold.session
        if expired(session, _base.now()):
            await hold.remove()
            raise gone(upload_id, "it expired")
        check_same_header(session.header, header)
        if session.asset_id:
            done = await _completed(ctx, session)
            if done is not None:
                hold.release()
                return done
        plan = await _creation.upload_plan(ctx, session.header)
        if offset != session.committed_bytes:
            raise _resume_at(offset, session.committed_bytes)
        await ctx.store.check_room()
        writer = await hold.resume()
    except BaseException:
        hold.release()
        raise
    if writer.size_bytes != offset:
        # Fewer bytes than recorded were found (a power cut took what was not synced):
        # the client resends from there.
        saved = await _shielded(ctx, writer.suspend(_expiry(ctx)))
        raise _resume_at(offset, saved.committed_bytes)
    return plan, writer


async def _completed(ctx: Context, session: UploadSession) -> Asset | None:
    """The asset a completing upload made, or None if its commit did not happen."""
    asset = await ctx.store.get(session.asset_id)
    if asset is not None and asset.status is Status.AVAILABLE and asset.sha256 == session.sha256:
        return asset
    if session.done:
        raise NotFound(
            f"upload {session.upload_id} completed as asset {session.asset_id}, which has "
            "been deleted since"
        )
    return None


async def _stream_session(
    ctx: Context,
    plan: UploadPlan,
    writer: SessionWriter,
    chunks: AsyncIterator[Chunk],
    by: str,
    complete: Complete,
) -> Asset:
    try:
        await _creation.take_in(ctx, writer, chunks)
        await writer.seal()
        _base.verify(writer, plan.expected_size, plan.expected_sha)
    except (TooLarge, IntegrityError):
        # The whole file can never be what the header declared: nothing to resume.
        await _shielded(ctx, writer.remove())
        raise
    except BaseException:
        # Cut (cancelled, silent, the server stopping) or a client error mid-stream:
        # what arrived is kept for a later stream.
        received = writer.size_bytes
        saved = await _shielded(ctx, writer.suspend(_expiry(ctx)))
        log.info(
            "upload %s was cut at %d bytes; %d held durably for a resume",
            saved.upload_id,
            received,
            saved.committed_bytes,
        )
        raise
    # From here on the RPC's cancellation cannot stop the completion halfway: the
    # session stays held until the commit settled one way or the other.
    asset: Asset = await _shielded(ctx, _complete_session(ctx, plan, writer, by, complete))
    return asset


async def _complete_session(
    ctx: Context, plan: UploadPlan, writer: SessionWriter, by: str, complete: Complete
) -> Asset:
    asset_id = plan.pending.id if plan.pending is not None else new_asset_id()
    try:
        # Recorded first: after a crash mid-commit, a later stream or QueryUpload finds
        # the asset (if its record was written) by this id and sha256.
        completing = writer.session.completing(asset_id, writer.size_bytes, writer.sha256)
        await writer.save(completing)
        with Handover(writer) as handover:
            asset = await complete(plan, handover, by, asset_id, "")
    except OutcomeUnknown:
        writer.release()  # the bytes wait to be settled; the record says "completing"
        raise
    except BaseException:
        await writer.remove()
        raise
    try:
        done = dataclasses.replace(completing, asset_id=asset.id, sha256=asset.sha256, done=True)
        await writer.save(dataclasses.replace(done, expires_at=_expiry(ctx)))
    except Exception as exc:
        # The asset exists; a later stream finds it by the "completing" record anyway.
        log.warning("upload %s completed, but recording it failed: %s", asset.id, exc)
    finally:
        writer.release()
    return asset


async def _shielded(ctx: Context, work: Coroutine[Any, Any, Any]) -> Any:
    task = asyncio.create_task(work)
    ctx.session_work.add(task)
    task.add_done_callback(ctx.session_work.discard)
    return await asyncio.shield(task)


async def settle_sessions(ctx: Context, within: float = 30.0) -> None:
    """Let suspends and completions in flight end (the server is stopping), and what
    they start as they end (an abandoned opening's suspend)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while ctx.session_work and loop.time() < deadline:
        await asyncio.wait(set(ctx.session_work), timeout=deadline - loop.time())
        await asyncio.sleep(0)  # done callbacks run: they may add work


async def query_upload(ctx: Context, upload_id: str, *, by: str = "") -> UploadState:
    upload_id = validate_upload_id(upload_id)
    session = await ctx.storage.read_session(session_key(by, upload_id))
    if session is None or expired(session, _base.now()):
        raise gone(upload_id)
    asset = await _completed(ctx, session) if session.asset_id else None
    return UploadState(session.committed_bytes, session.expires_at, asset)


async def sweep_upload_sessions(ctx: Context, limit: int = 0) -> int:
    """Remove unfinished uploads past their expiry with everything they staged, at
    most `limit` (0: all); a session a stream holds stays, expired or not."""
    removed = await ctx.storage.sweep_sessions(_base.now(), limit)
    if removed:
        log.info("removed %d expired upload session(s)", removed)
        await space_freed(ctx)
    return removed


def _resume_at(offset: int, committed: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"header.write_offset is {offset}, but the server holds {committed} bytes of this "
        f"upload durably: resume at committed_bytes={committed} (QueryUpload says it too)"
    )
