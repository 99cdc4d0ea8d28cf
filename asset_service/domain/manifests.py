"""GetManifest: every input must be AVAILABLE; the manifest store then writes the files."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from asset_service.domain.errors import (
    BlockingAsset,
    InvalidArgument,
    ManifestBlocked,
    ManifestWaitTimeout,
    NotFound,
    shown,
)
from asset_service.domain.integrity import Integrity
from asset_service.domain.models import (
    Asset,
    AssetType,
    Status,
    WatchEvent,
    WatchEventKind,
    parse_asset_id,
)
from asset_service.domain.ports import ManifestDraft, ManifestStore, MetadataStore
from asset_service.domain.reads import READ_BATCH

# Opens a watch of these ids that ends once all are terminal (AssetManager.watch).
Watch = Callable[[list[str]], Awaitable[AsyncGenerator[WatchEvent, None]]]

MAX_INPUTS = 1000
_CONTROL = re.compile(r"[\x00-\x1f]")
# VALUE inputs are read back (with their values) and written a batch at a time: a store
# call and a file-writing thread hop per batch, memory bounded by this many value bytes
# (beyond the first READ_BATCH values, which may be up to 4 MiB each as before).
VALUE_BATCH_BYTES = 16 * 1024 * 1024
VALUE_OVERHEAD_BYTES = 1024


@dataclass(frozen=True)
class Manifest:
    path: str
    entries: dict[str, str] = field(default_factory=dict)


def _parse_mappings(mappings: Mapping[str, str]) -> dict[str, str]:
    if len(mappings) > MAX_INPUTS:
        raise InvalidArgument(f"{len(mappings)} mappings given; the limit is {MAX_INPUTS}")
    ids: dict[str, str] = {}
    for key, raw in sorted(mappings.items()):
        if not key or _CONTROL.search(key):
            raise InvalidArgument(f"manifest key {shown(key)} is empty or has control characters")
        ids[key] = parse_asset_id(raw, f"asset id of key {shown(key)}")
    return ids


def _batches(values: Sequence[Asset]) -> Iterator[list[str]]:
    """Ids of VALUE inputs a batch at a time, each batch's values within VALUE_BATCH_BYTES
    (their sizes are in the records read without values), at least READ_BATCH of them."""
    batch: list[str] = []
    held = 0
    for asset in values:
        size = asset.size_bytes + VALUE_OVERHEAD_BYTES
        if batch and len(batch) >= READ_BATCH and held + size > VALUE_BATCH_BYTES:
            yield batch
            batch, held = [], 0
        batch.append(asset.id)
        held += size
    if batch:
        yield batch


async def _write_values(
    store: MetadataStore,
    draft: ManifestDraft,
    values: Sequence[Asset],
    keys: Mapping[str, Sequence[str]],
) -> dict[str, str]:
    """Each VALUE input read back with its value and written: {asset id: path}."""
    paths: dict[str, str] = {}
    for wanted in _batches(values):
        part = await store.get_many(wanted)
        gone = [
            BlockingAsset(key, asset_id, "NOT_FOUND")
            for asset_id in wanted
            if asset_id not in part
            for key in keys[asset_id]
        ]
        if gone:
            raise ManifestBlocked(gone)  # deleted while the manifest was written
        paths.update(await draft.add_values(list(part.values())))
    return paths


async def wait_for_inputs(watch: Watch, mappings: Mapping[str, str], seconds: float | None) -> None:
    """Return once no input of the manifest is PENDING (or one is FAILED or gone: building
    it then names them); ManifestWaitTimeout after `seconds` (None: no limit).

    It watches the inputs (a snapshot, then every change: nothing missed in between) and
    needs no polling; build_manifest reads them again afterwards.
    """
    ids = _parse_mappings(mappings)
    unique = sorted(set(ids.values()))
    try:
        events = await watch(unique)
    except NotFound:
        return  # build_manifest names the missing inputs
    latest: dict[str, Status] = {}
    try:
        async with asyncio.timeout(seconds):
            async for event in events:
                if event.kind is WatchEventKind.DELETED or event.asset.status is Status.FAILED:
                    return
                latest[event.asset.id] = event.asset.status
                if len(latest) == len(unique) and Status.PENDING not in latest.values():
                    return
    except TimeoutError:
        pending = [
            BlockingAsset(key, asset_id, Status.PENDING.value)
            for key, asset_id in ids.items()
            if latest.get(asset_id, Status.PENDING) is Status.PENDING
        ]
        raise ManifestWaitTimeout(seconds or 0.0, pending) from None
    finally:
        await events.aclose()


async def build_manifest(
    store: MetadataStore,
    integrity: Integrity,
    manifests: ManifestStore,
    mappings: Mapping[str, str],
    config_params: Mapping[str, Any],
) -> Manifest:
    """input_data.json mapping each key to a local file; ManifestBlocked names every input
    that is not AVAILABLE, IntegrityError one whose bytes are gone, changed or marked
    corrupt (Integrity.check_inputs)."""
    ids = _parse_mappings(mappings)
    # One consistent cut without values; they are fetched back, a batch at a time, as
    # their files are written.
    assets = await store.snapshot(sorted(set(ids.values())))
    blocking = []
    for key, asset_id in ids.items():
        asset = assets.get(asset_id)
        if asset is None:
            blocking.append(BlockingAsset(key, asset_id, "NOT_FOUND"))
        elif asset.status is not Status.AVAILABLE:
            blocking.append(BlockingAsset(key, asset_id, asset.status.value, asset.failure_reason))
    if blocking:
        raise ManifestBlocked(blocking)
    files = [a for a in assets.values() if a.type is AssetType.FILE]
    values = [a for a in assets.values() if a.type is AssetType.VALUE]
    keys: dict[str, list[str]] = {}
    for key, asset_id in ids.items():
        keys.setdefault(asset_id, []).append(key)
    # One after the other: run at once, the two threads' many short system calls made
    # them wait for each other's GIL (measured: a 1000-input manifest took 15% longer).
    await integrity.check_inputs(files)
    draft = await manifests.create()
    try:
        paths = {asset.id: await draft.add_file(asset) for asset in files}
        paths.update(await _write_values(store, draft, values, keys))
        entries = {key: paths[asset_id] for key, asset_id in ids.items()}
        return Manifest(await draft.finish(entries, config_params), entries)
    except BaseException:
        await draft.discard()
        raise
