"""GetManifest: every input must be AVAILABLE; the manifest store then writes the files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from asset_service.domain.errors import (
    BlockingAsset,
    IntegrityError,
    InvalidArgument,
    ManifestBlocked,
    shown,
)
from asset_service.domain.models import AssetType, Status, parse_asset_id
from asset_service.domain.ports import BlobStorage, ManifestStore, MetadataStore
from asset_service.domain.reads import READ_BATCH

MAX_INPUTS = 1000


@dataclass(frozen=True)
class Manifest:
    path: str
    entries: dict[str, str] = field(default_factory=dict)


def _parse_mappings(mappings: Mapping[str, str]) -> dict[str, str]:
    if len(mappings) > MAX_INPUTS:
        raise InvalidArgument(f"{len(mappings)} mappings given; the limit is {MAX_INPUTS}")
    ids: dict[str, str] = {}
    for key, raw in sorted(mappings.items()):
        if not key or any(ord(c) < 32 for c in key):
            raise InvalidArgument(f"manifest key {shown(key)} is empty or has control characters")
        ids[key] = parse_asset_id(raw, f"asset id of key {shown(key)}")
    return ids


async def build_manifest(
    store: MetadataStore,
    storage: BlobStorage,
    manifests: ManifestStore,
    mappings: Mapping[str, str],
    config_params: Mapping[str, Any],
) -> Manifest:
    """input_data.json mapping each key to a local file; ManifestBlocked names every input
    that is not AVAILABLE, IntegrityError one whose bytes are gone."""
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
    for asset in files:
        try:
            await storage.check(asset.storage_path, asset.size_bytes)
        except IntegrityError as exc:
            raise IntegrityError(f"asset {asset.id} is AVAILABLE but {exc.message}") from None
    draft = await manifests.create()
    try:
        paths = {asset.id: await draft.add_file(asset) for asset in files}
        values = [a.id for a in assets.values() if a.type is AssetType.VALUE]
        for start in range(0, len(values), READ_BATCH):
            wanted = values[start : start + READ_BATCH]
            part = await store.get_many(wanted)
            gone = [
                BlockingAsset(key, asset_id, "NOT_FOUND")
                for key, asset_id in ids.items()
                if asset_id in wanted and asset_id not in part
            ]
            if gone:
                raise ManifestBlocked(gone)  # deleted while the manifest was written
            paths.update(await draft.add_values(list(part.values())))
        entries = {key: paths[asset_id] for key, asset_id in ids.items()}
        return Manifest(await draft.finish(entries, config_params), entries)
    except BaseException:
        await draft.discard()
        raise
