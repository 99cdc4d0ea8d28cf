"""Reads: records by id, pages, bytes, the scrub, and manifests of inputs."""

from __future__ import annotations

import contextlib
from collections.abc import (
    AsyncGenerator,
    Mapping,
    Sequence,
)
from datetime import timedelta
from typing import Any

from asset_service.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    shown_list,
)
from asset_service.domain.manager import (
    _base,
    _watches,
)
from asset_service.domain.manager._base import (
    DEFAULT_PAGE_SIZE,
    MAX_BATCH,
    MAX_PAGE_SIZE,
    MAX_RESPONSE_BYTES,
    READ_CHUNK_BYTES,
    chunks_of,
)
from asset_service.domain.manager._context import Context, get
from asset_service.domain.manifests import Manifest, build_manifest, wait_for_inputs
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    Page,
    Status,
    approx_bytes,
    parse_asset_id,
    validate_tags,
)
from asset_service.domain.reads import READ_BATCH
from asset_service.domain.scrub import Checked

# How long a GetManifest that waits without a deadline keeps its inputs from expiring
# when manifests are kept forever (--manifest-ttl 0): renewed by each such call.
WAIT_RETENTION_SECONDS = 86400.0


async def promised_by(ctx: Context, asset_ids: Sequence[str]) -> dict[str, str]:
    """{asset id: the task that promised it ("" if none)} for the ids that name an
    asset; malformed and unknown ids are left out. One read, without inline values."""
    ids = []
    for raw in asset_ids:
        with contextlib.suppress(InvalidArgument):
            ids.append(parse_asset_id(raw))
    found = await ctx.store.snapshot(ids) if ids else {}
    return {asset_id: asset.created_by_task for asset_id, asset in found.items()}


async def batch_get(ctx: Context, asset_ids: Sequence[str]) -> list[Asset]:
    if not asset_ids:
        raise InvalidArgument("asset_ids is empty; name at least one asset")
    if len(asset_ids) > MAX_BATCH:
        raise InvalidArgument(f"{len(asset_ids)} ids given; the limit is {MAX_BATCH}")
    ids = [parse_asset_id(i, "asset_ids entry") for i in asset_ids]
    found: dict[str, Asset] = {}
    used = 0
    unique = sorted(set(ids))
    for start in range(0, len(unique), READ_BATCH):
        part = await ctx.store.get_many(unique[start : start + READ_BATCH])
        used += sum(approx_bytes(a) for a in part.values())
        if used > MAX_RESPONSE_BYTES:
            raise ResourceExhausted(
                f"the {len(unique)} assets asked for weigh more than the "
                f"{MAX_RESPONSE_BYTES / 1024**2:g} MiB a response may carry (their VALUEs); "
                "ask for fewer ids, or page with ListAssets"
            )
        found.update(part)
    missing = [i for i in dict.fromkeys(ids) if i not in found]
    if missing:
        raise NotFound(f"{len(missing)} asset(s) not found: {shown_list(missing)}")
    return [found[i] for i in ids]


async def list_assets(ctx: Context, flt: AssetFilter, page_size: int, page_token: str) -> Page:
    if page_size < 0:
        raise InvalidArgument(f"page_size must not be negative (got {page_size})")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    validate_tags(flt.tags)
    # A page of large VALUEs ends early (next_page_token set) to fit one response.
    return await ctx.store.query(flt, size, page_token, MAX_RESPONSE_BYTES)


async def read(ctx: Context, asset_id: str, offset: int, limit: int) -> AsyncGenerator[bytes, None]:
    """Check first (so errors come before any chunk), then return the chunk stream."""
    asset = await get(ctx, asset_id)
    if asset.status is not Status.AVAILABLE:
        raise FailedPrecondition(
            f"asset {asset.id} is {asset.status.value}; only AVAILABLE assets can be read"
        )
    if offset < 0 or limit < 0:
        raise InvalidArgument("offset and limit must not be negative")
    if offset > asset.size_bytes:
        raise InvalidArgument(f"offset {offset} is past the end ({asset.size_bytes} bytes)")
    if asset.type is AssetType.VALUE:
        assert asset.value is not None
        end = asset.size_bytes if limit == 0 else min(asset.size_bytes, offset + limit)
        return chunks_of(asset.value.data[offset:end])
    return await ctx.integrity.open_read(asset, offset, limit, READ_CHUNK_BYTES)


async def scrub(
    ctx: Context, asset_ids: Sequence[str], rate_bytes: float
) -> AsyncGenerator[Checked, None]:
    """Check stored bytes now (the named assets, or every AVAILABLE FILE asset)."""
    return ctx.scrubber.run(asset_ids, rate_bytes)


async def manifest(
    ctx: Context,
    mappings: Mapping[str, str],
    config_params: Mapping[str, Any],
    *,
    wait: bool = False,
    wait_seconds: float | None = None,
) -> Manifest:
    """input_data.json for these inputs. With `wait`, first wait (up to `wait_seconds`;
    None: no limit) until none of them is PENDING."""
    if ctx.manifests is None:
        raise FailedPrecondition("this server has no manifest store; GetManifest is off")
    if wait:
        # A waiting manifest needs its inputs: none expires while it waits (a
        # retention, which lapses by itself if this server dies meanwhile).
        waits = wait_seconds if wait_seconds is not None else ctx.limits.manifest_ttl_seconds
        until = _base.now() + timedelta(seconds=waits or WAIT_RETENTION_SECONDS)
        await ctx.store.retain(list(dict.fromkeys(mappings.values())), until)
        await wait_for_inputs(
            lambda ids: _watches.watch(ctx, ids, 0, follow=False), mappings, wait_seconds
        )
    await ctx.store.check_room()  # its files would take the disk-full reserve's room
    built = await build_manifest(ctx.store, ctx.integrity, ctx.manifests, mappings, config_params)
    if ctx.limits.manifest_ttl_seconds > 0:
        # Its inputs outlive it: no expiry while the manifest may still be read.
        until = _base.now() + timedelta(seconds=ctx.limits.manifest_ttl_seconds)
        await ctx.store.retain(list(dict.fromkeys(mappings.values())), until)
    return built
