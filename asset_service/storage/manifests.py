"""Manifest folders on the local disk: input_data.json and the VALUE files it points at."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asset_service.domain.errors import IntegrityError
from asset_service.domain.models import Asset, safe_file_name
from asset_service.domain.ports import BlobStorage
from asset_service.storage import fs

log = logging.getLogger(__name__)

INDEX_NAME = "input_data.json"
COPY_CHUNK = 1024 * 1024


def _write_file(path: Path, data: bytes, sync: bool) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    tmp.replace(path)


class FileCache:
    """Local copies of FILE assets kept in an object store, for manifests to point at.

    Content-addressed (<sha256>), verified on download, bounded in bytes: past the budget
    the least recently used copies go. A manifest never points into the cache itself but
    at its own hard link to the copy, so an eviction cannot break a manifest already
    handed out (its folder lives until --manifest-ttl).
    """

    def __init__(self, folder: Path, storage: BlobStorage, max_bytes: int) -> None:
        self.folder = folder
        self.storage = storage
        self.max_bytes = max_bytes

    async def open(self) -> None:
        await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)

    async def local_copy(self, asset: Asset) -> Path:
        cached = self.folder / asset.sha256
        if await asyncio.to_thread(self._touch, cached, asset.size_bytes):
            return cached
        part = self.folder / f"{asset.sha256}.{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        try:
            out = await asyncio.to_thread(open, part, "xb")
            try:
                chunks = await self.storage.read(
                    asset.storage_path, asset.size_bytes, 0, 0, COPY_CHUNK
                )
                async for chunk in chunks:
                    digest.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(out.flush)
                await asyncio.to_thread(os.fsync, out.fileno())
            finally:
                out.close()
            if digest.hexdigest() != asset.sha256:
                raise IntegrityError(
                    f"asset {asset.id}: its bytes at {asset.storage_path} have sha256 "
                    f"{digest.hexdigest()}, the record says {asset.sha256}"
                )
            await asyncio.to_thread(os.replace, part, cached)
        except OSError as exc:
            if exc.errno in fs.NO_SPACE:
                raise fs.no_space(exc, "caching an input for a manifest") from None
            raise
        finally:
            part.unlink(missing_ok=True)
        await asyncio.to_thread(self._evict, cached)
        return cached

    @staticmethod
    def _touch(path: Path, size: int) -> bool:
        try:
            if path.stat().st_size != size:
                return False
            os.utime(path)  # the mtime is the LRU clock
            return True
        except FileNotFoundError:
            return False

    def _evict(self, keep: Path) -> None:
        entries = []
        for path in self.folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if not path.name.endswith(".part"):
                    st = path.stat()
                    entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size


class _Draft:
    """One manifest folder being written; only `finish` makes input_data.json appear."""

    def __init__(self, folder: Path, cache: FileCache | None) -> None:
        self.folder = folder
        self._values = folder / "values"
        self._cache = cache

    async def add_file(self, asset: Asset) -> str:
        """A FILE input's local path: the stored file itself on local storage, else this
        manifest's own link to a verified local copy."""
        if self._cache is None:
            return asset.storage_path
        cached = await self._cache.local_copy(asset)
        return await asyncio.to_thread(self._link, cached, asset)

    def _link(self, cached: Path, asset: Asset) -> str:
        files = self.folder / "files"
        try:
            files.mkdir(exist_ok=True)
            target = files / f"{asset.id}-{safe_file_name(asset.label)}"
            with contextlib.suppress(FileExistsError):
                os.link(cached, target)
        except OSError as exc:
            raise self._failed(exc) from None
        return str(target)

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
    """<root>/tmp/manifests/<random>/: one folder per GetManifest, swept after a TTL.

    With a FileCache, FILE inputs (kept elsewhere, e.g. in an object store) are copied
    into a local cache first; without one they are the stored files themselves.
    """

    def __init__(self, root: Path, cache: FileCache | None = None) -> None:
        self.area = root.resolve() / "tmp" / "manifests"
        self.cache = cache

    async def open(self) -> None:
        await asyncio.to_thread(self.area.mkdir, parents=True, exist_ok=True)
        if self.cache is not None:
            await self.cache.open()

    async def create(self) -> _Draft:
        folder = self.area / uuid.uuid4().hex
        try:
            await asyncio.to_thread(folder.mkdir, parents=True)
        except OSError as exc:
            if exc.errno in fs.NO_SPACE:
                raise fs.no_space(exc, "creating a manifest folder") from None
            raise
        return _Draft(folder, self.cache)

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
