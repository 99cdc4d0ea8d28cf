"""Blob storage on a local (or shared) filesystem: staging, atomic commits, reconciliation."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from asset_service.domain.errors import Conflict, InvalidArgument, NotFound, Unavailable
from asset_service.domain.models import parse_asset_id, safe_file_name, validate_task_id

log = logging.getLogger(__name__)

COPY_CHUNK = 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Staged:
    """A staging file (or a source file moved into staging) on its way to a final key."""

    def __init__(self, storage: LocalStorage, path: Path, origin: Path | None = None) -> None:
        self._storage = storage
        self.path = path  # where the bytes are now
        self._origin = origin  # a moved source file, given back on rollback
        self._copied_from: Path | None = None  # a copied source, removed by finish()
        self.size_bytes = 0
        self.sha256 = hashlib.sha256().hexdigest()
        self._done = False

    async def commit(self, key: str) -> str:
        final = self._storage.path_for(key)
        await asyncio.to_thread(self._commit_sync, final)
        return str(final)

    def _commit_sync(self, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        # link + unlink is an atomic rename that never clobbers: two servers committing
        # the same asset cannot overwrite each other's bytes (the loser gets Conflict).
        # Same filesystem as staging; bytes fsynced before, directory entry after.
        try:
            os.link(self.path, final)
        except FileExistsError:
            age = time.time() - final.stat().st_mtime
            if age < self._storage.orphan_grace_seconds:
                raise Conflict(
                    f"{final} is being committed by another request; retry shortly"
                ) from None
            # Older than the grace: left by a crash between commit and record.
            log.warning("replacing %s, left %.0fs ago by an interrupted commit", final, age)
            os.replace(self.path, final)
        else:
            os.unlink(self.path)
        self.path = final
        _fsync_dir(final.parent)

    async def rollback(self) -> None:
        # Plain syscalls, no thread hop: this runs while a cancelled RPC unwinds.
        if self._done:
            return
        self._done = True
        if self._origin is not None:
            try:
                os.replace(self.path, self._origin)
            except OSError as exc:
                # Never destroy a worker's output: leave it for reconciliation to report.
                log.warning("could not give %s back to %s: %s", self.path, self._origin, exc)
                return
        else:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._storage._prune_empty(self.path.parent)

    async def finish(self) -> None:
        self._done = True
        if self._copied_from is not None:
            with contextlib.suppress(FileNotFoundError):
                self._copied_from.unlink()


class _Writer(_Staged):
    """Streams chunks into a staging file, hashing as it goes; memory stays flat."""

    def __init__(self, storage: LocalStorage, path: Path) -> None:
        super().__init__(storage, path)
        self._hash = hashlib.sha256()
        self._fh = open(path, "xb")  # noqa: SIM115 - closed by seal() or rollback()

    def _write_sync(self, chunk: bytes) -> None:
        self._fh.write(chunk)
        self._hash.update(chunk)

    async def write(self, chunk: bytes) -> None:
        if len(chunk) < 64 * 1024:  # a thread hop costs more than a small write
            self._write_sync(chunk)
        else:
            await asyncio.to_thread(self._write_sync, chunk)
        self.size_bytes += len(chunk)

    def _seal_sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    async def seal(self) -> None:
        await asyncio.to_thread(self._seal_sync)
        self.sha256 = self._hash.hexdigest()

    async def rollback(self) -> None:
        self._fh.close()
        await super().rollback()


class LocalStorage:
    """uploads/YYYY-MM-DD/<asset-id>/<name>, generated/<task>/<asset-id>/<name>, tmp/."""

    def __init__(self, root: Path, orphan_grace_seconds: float = 600.0) -> None:
        self.root = root.resolve()
        # A file in a final location younger than this may be another server's commit.
        self.orphan_grace_seconds = orphan_grace_seconds
        self.uploads = self.root / "uploads"
        self.generated = self.root / "generated"
        self.tmp = self.root / "tmp"
        self._staging_parent = self.tmp / "staging"
        self._instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.staging = self._staging_parent / self._instance
        self._lock_fd: int | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        try:
            for folder in (self.uploads, self.generated, self._staging_parent):
                folder.mkdir(parents=True, exist_ok=True)
            (self.tmp / "manifests").mkdir(exist_ok=True)
            self.staging.mkdir()
            # Held for the life of the process; start-up sweeps of other processes
            # know this staging folder is live because they cannot take the lock.
            self._lock_fd = os.open(self.staging / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise Unavailable(f"storage root {self.root} is not usable: {exc}") from exc
        self._sweep_dead_staging()

    def _sweep_dead_staging(self) -> None:
        for folder in self._staging_parent.iterdir():
            if folder == self.staging or not folder.is_dir():
                continue
            lock = folder / ".lock"
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # a live process owns it
                os.close(fd)
            log.warning("removing staging left by a dead process: %s", folder)
            shutil.rmtree(folder, ignore_errors=True)

    async def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        await asyncio.to_thread(shutil.rmtree, self.staging, True)

    # --- keys and paths ---------------------------------------------------------------

    def upload_key(self, asset_id: str, label: str, now: datetime) -> str:
        asset_id = parse_asset_id(asset_id)
        return f"uploads/{now.strftime('%Y-%m-%d')}/{asset_id}/{safe_file_name(label)}"

    def generated_key(self, task_id: str, asset_id: str, label: str) -> str:
        task_id = validate_task_id(task_id)
        asset_id = parse_asset_id(asset_id)
        return f"generated/{task_id}/{asset_id}/{safe_file_name(label)}"

    def path_for(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidArgument(f"storage key {key!r} escapes the storage root")
        return path

    def _owned(self, storage_path: str) -> Path:
        path = Path(storage_path)
        if not path.is_absolute() or not path.resolve().is_relative_to(self.root):
            raise NotFound(f"{storage_path} is not a path in this storage")
        return path

    def _prune_empty(self, folder: Path) -> None:
        """Remove now-empty per-asset folders up to (not including) the area roots."""
        stops = {
            self.root,
            self.uploads,
            self.generated,
            self.tmp,
            self._staging_parent,
            self.staging,
        }
        while folder not in stops and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    # --- writing ----------------------------------------------------------------------

    def new_writer(self) -> _Writer:
        return _Writer(self, self.staging / uuid.uuid4().hex)

    async def ingest(self, source: Path, move: bool) -> _Staged:
        return await asyncio.to_thread(self._ingest_sync, source, move)

    def _ingest_sync(self, source: Path, move: bool) -> _Staged:
        target = self.staging / uuid.uuid4().hex
        # O_NOFOLLOW: the caller resolved symlinks and checked the import roots; a
        # symlink swapped in since then must not be followed.
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise NotFound(f"source file {source} does not exist on the server") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidArgument(f"{source} became a symlink; refusing it") from None
            raise
        with os.fdopen(fd, "rb") as src:
            if move and os.fstat(src.fileno()).st_dev == os.stat(self.staging).st_dev:
                staged = _Staged(self, target, origin=source)
                digest, size = _hash_file(src)
                os.fsync(src.fileno())
                os.replace(source, target)
            else:
                staged = _Staged(self, target)
                digest, size = _copy_hashing(src, target)
                if move:
                    staged._copied_from = source
        staged.sha256, staged.size_bytes = digest, size
        return staged

    # --- reading and housekeeping -----------------------------------------------------

    async def read(
        self, storage_path: str, offset: int, limit: int, chunk_size: int
    ) -> AsyncIterator[bytes]:
        path = self._owned(storage_path)
        try:
            fh = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise NotFound(f"the bytes of {storage_path} are gone") from None
        return _read_chunks(fh, offset, limit, chunk_size)

    async def exists(self, storage_path: str) -> bool:
        return await asyncio.to_thread(self._owned(storage_path).is_file)

    async def remove(self, storage_path: str) -> None:
        path = self._owned(storage_path)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(path.unlink)
        self._prune_empty(path.parent)

    async def orphans(self) -> AsyncIterator[tuple[str, str]]:
        """Files in final locations older than the grace, as (asset id, path)."""
        cutoff = time.time() - self.orphan_grace_seconds
        for area in (self.uploads, self.generated):
            # <area>/<day-or-task>/<asset-id>/<name>
            for path in await asyncio.to_thread(_files_under, area):
                try:
                    asset_id = parse_asset_id(path.parent.name)
                    if path.stat().st_mtime >= cutoff:
                        continue  # may be another server's commit in flight
                except (InvalidArgument, OSError):
                    continue
                yield asset_id, str(path)

    def scratch_dir(self, purpose: str) -> Path:
        folder = self.tmp / purpose / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    async def sweep_scratch(self, purpose: str, older_than_seconds: float) -> int:
        return await asyncio.to_thread(self._sweep_scratch_sync, purpose, older_than_seconds)

    def _sweep_scratch_sync(self, purpose: str, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        removed = 0
        area = self.tmp / purpose
        for folder in area.iterdir() if area.is_dir() else ():
            try:
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder)
                    removed += 1
            except OSError as exc:
                log.warning("could not remove %s: %s", folder, exc)
        return removed


def _files_under(area: Path) -> list[Path]:
    return [p for p in area.glob("*/*/*") if p.is_file()]


def _hash_file(fh: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(COPY_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _copy_hashing(src: BinaryIO, target: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(target, "xb") as out:
        while chunk := src.read(COPY_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


async def _read_chunks(
    fh: BinaryIO, offset: int, limit: int, chunk_size: int
) -> AsyncIterator[bytes]:
    try:
        await asyncio.to_thread(fh.seek, offset)
        remaining = limit if limit > 0 else None
        while remaining is None or remaining > 0:
            want = chunk_size if remaining is None else min(chunk_size, remaining)
            chunk = await asyncio.to_thread(fh.read, want)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    finally:
        fh.close()
