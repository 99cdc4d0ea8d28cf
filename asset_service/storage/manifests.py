"""Manifest folders on the local disk: input_data.json and the VALUE files it points at."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asset_service.domain.models import Asset
from asset_service.storage import fs

log = logging.getLogger(__name__)

INDEX_NAME = "input_data.json"


def _write_file(path: Path, data: bytes, sync: bool) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    tmp.replace(path)


class _Draft:
    """One manifest folder being written; only `finish` makes input_data.json appear."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._values = folder / "values"

    async def add_file(self, asset: Asset) -> str:
        """A FILE input's local path: on this storage, the stored file itself."""
        return asset.storage_path

    async def add_values(self, assets: Sequence[Asset]) -> dict[str, str]:
        """Each VALUE's content as values/<asset id><suffix>; {asset id: path}."""
        return await asyncio.to_thread(self._add_values_sync, assets)

    def _add_values_sync(self, assets: Sequence[Asset]) -> dict[str, str]:
        written = {}
        try:
            self._values.mkdir(exist_ok=True)
            for asset in assets:
                assert asset.value is not None, f"asset {asset.id} has no value"
                # Named by asset id, never by the (untrusted) key or label.
                target = self._values / f"{asset.id}{asset.value.kind.suffix}"
                _write_file(target, asset.value.data, sync=True)
                written[asset.id] = str(target)
        except OSError as exc:
            raise self._failed(exc) from None
        return written

    async def finish(self, entries: Mapping[str, str], config: Mapping[str, Any]) -> str:
        """Write input_data.json = {"inputs": entries, "config_params": config}; its path."""
        body = {"inputs": dict(entries), "config_params": dict(config)}
        data = json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"
        return await asyncio.to_thread(self._finish_sync, data)

    def _finish_sync(self, data: bytes) -> str:
        index = self.folder / INDEX_NAME
        try:
            _write_file(index, data, sync=True)
            fd = os.open(self.folder, fs.DIR_FLAGS)
            try:
                fs.fsync_dir(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._failed(exc) from None
        return str(index)

    def _failed(self, exc: OSError) -> Exception:
        if exc.errno in fs.NO_SPACE:
            return fs.no_space(exc, "writing a manifest")
        return exc

    async def discard(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self.folder, True)


class LocalManifests:
    """<root>/tmp/manifests/<random>/: one folder per GetManifest, swept after a TTL."""

    def __init__(self, root: Path) -> None:
        self.area = root.resolve() / "tmp" / "manifests"

    async def open(self) -> None:
        await asyncio.to_thread(self.area.mkdir, parents=True, exist_ok=True)

    async def create(self) -> _Draft:
        folder = self.area / uuid.uuid4().hex
        try:
            await asyncio.to_thread(folder.mkdir, parents=True)
        except OSError as exc:
            if exc.errno in fs.NO_SPACE:
                raise fs.no_space(exc, "creating a manifest folder") from None
            raise
        return _Draft(folder)

    async def sweep(self, older_than_seconds: float) -> int:
        """Remove manifest folders older than that; return how many."""
        return await asyncio.to_thread(self._sweep_sync, older_than_seconds)

    def _sweep_sync(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for folder in self.area.iterdir():
                try:
                    if folder.is_dir() and folder.stat().st_mtime < cutoff:
                        shutil.rmtree(folder)
                        removed += 1
                except OSError as exc:
                    log.warning("could not remove %s: %s", folder, exc)
        return removed
