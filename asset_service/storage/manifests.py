"""Manifest folders on the local disk: input_data.json and the VALUE files it points at."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from asset_service.domain.models import Asset, safe_file_name
from asset_service.modes import Modes, report
from asset_service.storage import fs
from asset_service.storage.file_cache import FileCache
from asset_service.storage.value_files import DRAFT_GRACE_SECONDS, ValueFiles, write_new_at

log = logging.getLogger(__name__)

INDEX_NAME = "input_data.json"


# syncfs(2): not in the os module.
_SYNCFS = fs.libc_function("syncfs", ctypes.c_int)


def syncfs(fd: int) -> bool:
    """Flush the data and metadata of every file on fd's file system; False if unsupported.

    Since Linux 5.8 it reports writeback errors (EIO, ENOSPC) met since the fd was opened.
    """
    if _SYNCFS is None:
        return False
    if _SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


# syncfs(2) writes back ALL dirty data of the file system, so with much of it pending (a
# big upload being received, whose chunks are fsynced only when it ends) one manifest would
# wait for all of it: past this much dirty memory (/proc/meminfo, system-wide, an upper
# bound for this file system), each file is fsynced instead.
SYNCFS_MAX_DIRTY_BYTES = 64 * 1024 * 1024


def dirty_bytes() -> int | None:
    """The kernel's dirty page cache, waiting to be written back (None if unknown)."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"Dirty:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Its threads start on first use only.
_FSYNC_POOL = ThreadPoolExecutor(8, thread_name_prefix="manifest-fsync")


class _Draft:
    """One manifest folder being written; only `finish` makes input_data.json appear."""

    def __init__(
        self, folder: Path, cache: FileCache | None, values: ValueFiles, modes: Modes
    ) -> None:
        self.folder = folder
        self.modes = modes
        self._cache = cache
        self._values = values
        # The VALUE files this manifest names: finish() makes them durable at once (those
        # found already written too: their writer may have failed before its own sync).
        self._unsynced: list[Path] = []

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
            with contextlib.suppress(FileExistsError):
                self.modes.mkdir(files, shared=True)
            target = files / f"{asset.id}-{safe_file_name(asset.label)}"
            with contextlib.suppress(FileExistsError):
                os.link(cached, target)
        except OSError as exc:
            raise self._failed(exc) from None
        return str(target)

    async def add_values(self, assets: Sequence[Asset]) -> dict[str, str]:
        """Each VALUE's content as a shared file (ValueFiles); {asset id: path}."""
        return await asyncio.to_thread(self._add_values_sync, assets)

    def _add_values_sync(self, assets: Sequence[Asset]) -> dict[str, str]:
        try:
            paths, _ = self._values.place(assets)
        except OSError as exc:
            raise self._failed(exc) from None
        self._unsynced.extend(Path(p) for p in paths.values())
        return paths

    async def finish(self, entries: Mapping[str, str], config: Mapping[str, Any]) -> str:
        """Write input_data.json = {"inputs": entries, "config_params": config}; its path."""
        body = {"inputs": dict(entries), "config_params": dict(config)}
        data = json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"
        return await asyncio.to_thread(self._finish_sync, data)

    def _finish_sync(self, data: bytes) -> str:
        """Everything durable first, then input_data.json renamed into place, in one hop.

        A crash at any point leaves either no input_data.json or one whose every file is
        complete. The files were written without an fsync each (one per VALUE made a
        1000-input manifest take seconds): one syncfs(2) of the folder's file system now
        writes back their data and every directory entry (tmp/values/, files/ links, the
        folder's own entry, input_data.json.part) with one journal commit; on ext4 an fsync
        per small file costs a journal commit each. The price: it also waits for other
        dirty data on that file system (an upload in progress), so past
        SYNCFS_MAX_DIRTY_BYTES of dirty memory, and without syncfs (not Linux), each file
        is fsynced instead. The last fsync, of the folder, makes the rename durable: the
        manifest is acknowledged only then.
        """
        part = INDEX_NAME + ".part"
        try:
            fd = os.open(self.folder, fs.DIR_FLAGS)
            try:
                write_new_at(fd, part, data, self.modes)
                dirty = dirty_bytes()
                cheap = dirty is not None and dirty <= SYNCFS_MAX_DIRTY_BYTES
                if not (cheap and syncfs(fd)):
                    self._fsync_each([*self._unsynced, self.folder / part])
                os.rename(part, INDEX_NAME, src_dir_fd=fd, dst_dir_fd=fd)
                fs.fsync_dir(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._failed(exc) from None
        self._unsynced.clear()
        return str(self.folder / INDEX_NAME)

    def _fsync_each(self, files: Sequence[Path]) -> None:
        # Several at once: the file system commits concurrent fsyncs together (measured on
        # ext4: 500 small files in half the time of one after the other).
        list(_FSYNC_POOL.map(_fsync_file, files))
        for folder in (self._values.folder, self.folder / "files", self.folder.parent):
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(folder, fs.DIR_FLAGS)
                try:
                    fs.fsync_dir(fd)
                finally:
                    os.close(fd)

    def _failed(self, exc: OSError) -> Exception:
        if exc.errno in fs.NO_SPACE:
            return fs.no_space(exc, "writing a manifest")
        return exc

    async def discard(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self.folder, True)


class LocalManifests:
    """<root>/tmp/manifests/<random>/: one folder per GetManifest, swept after a TTL.

    VALUE inputs are files in <root>/tmp/values/ shared between manifests (ValueFiles).
    With a FileCache, FILE inputs (kept elsewhere, e.g. in an object store) are copied
    into a local cache first; without one they are the stored files themselves.
    """

    def __init__(
        self, root: Path, cache: FileCache | None = None, modes: Modes | None = None
    ) -> None:
        self.root = root.resolve()
        self.area = self.root / "tmp" / "manifests"
        # Manifests and VALUE files: owner-only, or shared with --share-group's group.
        self.modes = modes or Modes()
        self.values = ValueFiles(self.root / "tmp" / "values", self.modes)
        self.cache = cache

    async def open(self) -> None:
        await asyncio.to_thread(self.modes.root, self.root)
        changed = [await asyncio.to_thread(self.modes.folder, self.area, True)]
        changed.append(await asyncio.to_thread(self.values.open_sync))
        if self.cache is not None:
            changed.append(await self.cache.open())
        report(changed, f"the manifests under {self.root / 'tmp'}")

    async def create(self) -> _Draft:
        folder = self.area / uuid.uuid4().hex
        try:
            await asyncio.to_thread(self.modes.mkdir, folder, True)
        except OSError as exc:
            if exc.errno in fs.NO_SPACE:
                raise fs.no_space(exc, "creating a manifest folder") from None
            raise
        return _Draft(folder, self.cache, self.values, self.modes)

    async def sweep(self, older_than_seconds: float, limit: int = 0) -> int:
        """Remove manifest folders older than that, and drafts (folders without
        input_data.json, left by a crash) past DRAFT_GRACE_SECONDS, at most `limit`
        folders (0: all); return how many. VALUE files no manifest used for that long go
        too."""
        removed = await asyncio.to_thread(self._sweep_sync, older_than_seconds, limit)
        values = await asyncio.to_thread(self.values.sweep_sync, older_than_seconds)
        if values:
            log.info("removed %d shared VALUE file(s) unused for %gs", values, older_than_seconds)
        return removed

    async def sweep_cache(self, older_than_seconds: float, limit: int = 0) -> int:
        """The FileCache's sweep (none: 0)."""
        if self.cache is None:
            return 0
        return await asyncio.to_thread(self.cache.sweep, older_than_seconds, limit)

    def _sweep_sync(self, older_than_seconds: float, limit: int = 0) -> int:
        now = time.time()
        cutoff = now - older_than_seconds
        draft_cutoff = now - min(older_than_seconds, DRAFT_GRACE_SECONDS)
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for folder in self.area.iterdir():
                try:
                    if not folder.is_dir():
                        continue
                    mtime = folder.stat().st_mtime
                    draft = not (folder / INDEX_NAME).exists()
                    if mtime < cutoff or (draft and mtime < draft_cutoff):
                        shutil.rmtree(folder)
                        removed += 1
                        if limit and removed >= limit:
                            break
                except OSError as exc:
                    log.warning("could not remove %s: %s", folder, exc)
        return removed
