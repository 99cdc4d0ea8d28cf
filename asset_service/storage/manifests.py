"""Manifest folders on the local disk: input_data.json and the VALUE files it points at."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from asset_service.domain.errors import IntegrityError
from asset_service.domain.models import Asset, safe_file_name
from asset_service.domain.ports import BlobStorage
from asset_service.modes import PRIVATE_FILE, Modes, report
from asset_service.storage import fs

log = logging.getLogger(__name__)

INDEX_NAME = "input_data.json"
COPY_CHUNK = 1024 * 1024
# A folder without input_data.json is a draft a crashed server left; one this old is swept
# even when finished manifests are kept longer. Writing one takes seconds, but copying
# big inputs from an object store may take long, so the grace is generous.
DRAFT_GRACE_SECONDS = 86400.0


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


def _write_new_at(
    folder: int, name: str, data: bytes, modes: Modes, read_only: bool = False
) -> None:
    """A new file `name` in the folder `folder` (an fd) holding `data`; never overwrites.
    Shared with --share-group's group: tasks read manifests and VALUE files by path."""
    fd = modes.new_file(name, _NEW_FILE_FLAGS, shared=True, read_only=read_only, dir_fd=folder)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


_NEW_FILE_FLAGS = os.O_WRONLY | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A shared VALUE file a manifest uses again gets its mtime (the sweep's clock) set to now
# at most this often: a write per use would cost what writing the file again costs.
VALUE_TOUCH_SECONDS = 60.0


class ValueFiles:
    """<root>/tmp/values/<sha256 of the content><suffix>: each distinct VALUE content once,
    shared by every manifest that names it, as FILE inputs are their stored files.

    Creating 500 small files per manifest cost 15-90 ms (ext4 metadata, slower while the
    disk writes back other data); using them again costs a read each. Files are created
    read-only (_write_at); each use compares the file byte for byte with the value and
    writes it again when it differs (a task that wrote to its input, a crash or a manifest
    still writing it that left it short), so a finished manifest names complete files. Files
    unused for the manifest TTL are swept. An flock on .lock (shared while manifests use
    files, exclusive while the sweep removes them) keeps a sweep from removing a file a
    manifest has just checked, across processes sharing the root too.
    """

    def __init__(self, folder: Path, modes: Modes | None = None) -> None:
        self.folder = folder
        self.modes = modes or Modes()
        self._lock = folder / ".lock"

    def open_sync(self) -> str | None:
        """Make the folder and its lock; what start-up changed of an older install's modes."""
        changed = self.modes.folder(self.folder, shared=True)
        os.close(os.open(self._lock, os.O_CREAT | os.O_RDONLY | os.O_CLOEXEC, PRIVATE_FILE))
        return changed

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[int]:
        """The folder's fd, under an flock of `how` on .lock."""
        lock = os.open(self._lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(lock, how)
            folder = os.open(self.folder, fs.DIR_FLAGS)
            try:
                yield folder
            finally:
                os.close(folder)
        finally:
            os.close(lock)

    def place(self, assets: Sequence[Asset]) -> tuple[dict[str, str], list[Path]]:
        """({asset id: path of its content}, the files written now, not yet synced)."""
        paths: dict[str, str] = {}
        written: list[Path] = []
        now = time.time()
        with self._locked(fcntl.LOCK_SH) as folder:
            for asset in assets:
                assert asset.value is not None, f"asset {asset.id} has no value"
                data = asset.value.data
                # Named by a digest of the content computed here, never by the
                # (untrusted) key or label.
                name = hashlib.sha256(data).hexdigest() + asset.value.kind.suffix
                if not _holds(folder, name, data, now):
                    _write_at(folder, name, data, self.modes)
                    written.append(self.folder / name)
                paths[asset.id] = str(self.folder / name)
        return paths, written

    def sweep_sync(self, older_than_seconds: float) -> int:
        """Remove files unused for that long (and parts a crash left); how many."""
        now = time.time()
        cutoff = now - older_than_seconds - VALUE_TOUCH_SECONDS
        part_cutoff = now - DRAFT_GRACE_SECONDS
        removed = 0
        with contextlib.suppress(FileNotFoundError), self._locked(fcntl.LOCK_EX) as folder:
            for entry in os.scandir(folder):
                if entry.name.startswith("."):
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                    if mtime < (part_cutoff if entry.name.endswith(".part") else cutoff):
                        os.unlink(entry.name, dir_fd=folder)
                        removed += 1
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning("could not remove %s: %s", self.folder / entry.name, exc)
        return removed


def _write_at(folder: int, name: str, data: bytes, modes: Modes) -> None:
    """folder/name holding `data`, read-only. A missing name is created in place (a rename
    more doubled the cost of a new file): a manifest using it meanwhile, or after a crash,
    finds it short and writes it again. A name that exists with other content is replaced
    by a rename, never written in place: tasks of earlier manifests may be reading it."""
    try:
        _write_new_at(folder, name, data, modes, read_only=True)
        return
    except FileExistsError:
        pass
    part = f"{name}.{uuid.uuid4().hex}.part"
    _write_new_at(folder, part, data, modes, read_only=True)
    try:
        os.rename(part, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=folder)
        raise


def _holds(folder: int, name: str, data: bytes, now: float) -> bool:
    """Whether folder/name is a regular file holding exactly `data` (touched if need be)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return False  # missing, a symlink, or unreadable: written again
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return False
        if os.read(fd, len(data) + 1) != data:
            return False
        if st.st_mtime < now - VALUE_TOUCH_SECONDS:
            os.utime(fd)
        return True
    finally:
        os.close(fd)


# Its threads start on first use only.
_FSYNC_POOL = ThreadPoolExecutor(8, thread_name_prefix="manifest-fsync")


class FileCache:
    """Local copies of FILE assets kept in an object store, for manifests to point at.

    Content-addressed (<sha256>), verified on download, bounded in bytes: past the budget
    the least recently used copies go. A manifest never points into the cache itself but
    at its own hard link to the copy, so an eviction cannot break a manifest already
    handed out (its folder lives until --manifest-ttl).
    """

    def __init__(
        self, folder: Path, storage: BlobStorage, max_bytes: int, modes: Modes | None = None
    ) -> None:
        self.folder = folder
        self.storage = storage
        self.max_bytes = max_bytes
        self.modes = modes or Modes()

    async def open(self) -> str | None:
        """Make the folder (owner-only: manifests reach its copies through their own
        links); what start-up changed of an older install's modes."""
        return await asyncio.to_thread(self.modes.folder, self.folder, False)

    async def local_copy(self, asset: Asset) -> Path:
        cached = self.folder / asset.sha256
        if await asyncio.to_thread(self._touch, cached, asset.size_bytes):
            return cached
        part = self.folder / f"{asset.sha256}.{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        try:
            # Shared with --share-group's group: manifests link to this very file.
            flags = os.O_WRONLY | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = await asyncio.to_thread(self.modes.new_file, part, flags, True)
            out = await asyncio.to_thread(os.fdopen, fd, "wb")
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
                _write_new_at(fd, part, data, self.modes)
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
