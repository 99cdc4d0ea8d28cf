"""Manifest folders on disk: written whole or not at all, swept after their TTL."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from asset_service.domain.models import Asset, AssetType, Status, Value, ValueKind
from asset_service.storage.manifests import LocalManifests

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def value(asset_id: str, kind: ValueKind, data: bytes) -> Asset:
    return Asset(
        asset_id, "v", Status.AVAILABLE, AssetType.VALUE, "x/y", NOW, NOW, value=Value(kind, data)
    )


async def test_a_manifest_appears_only_when_finished(tmp_path: Path) -> None:
    manifests = LocalManifests(tmp_path)
    await manifests.open()
    draft = await manifests.create()
    ids = ["5b0e4f0e-0000-4000-8000-00000000000a", "5b0e4f0e-0000-4000-8000-00000000000b"]
    paths = await draft.add_values(
        [value(ids[0], ValueKind.JSON, b'{"k": 1}'), value(ids[1], ValueKind.TEXT, b"hi")]
    )
    assert Path(paths[ids[0]]).name == f"{ids[0]}.json"
    assert Path(paths[ids[1]]).read_bytes() == b"hi"
    assert not list(tmp_path.rglob("input_data.json")), "nothing to read before finish"
    index = await draft.finish({"a": paths[ids[0]]}, {"threshold": 0.5})
    assert json.loads(Path(index).read_text()) == {
        "inputs": {"a": paths[ids[0]]},
        "config_params": {"threshold": 0.5},
    }
    assert not list(tmp_path.rglob("*.part")), "no temporary files left"


async def test_discard_and_sweep_remove_folders(tmp_path: Path) -> None:
    manifests = LocalManifests(tmp_path)
    await manifests.open()
    dropped = await manifests.create()
    await dropped.add_values([value("5b0e4f0e-0000-4000-8000-00000000000c", ValueKind.TEXT, b"x")])
    await dropped.discard()
    assert list(manifests.area.iterdir()) == []
    old, fresh = await manifests.create(), await manifests.create()
    await old.finish({}, {})
    day_ago = time.time() - 86400
    os.utime(old.folder, (day_ago, day_ago))
    assert await manifests.sweep(3600) == 1
    assert not old.folder.exists() and fresh.folder.exists()
