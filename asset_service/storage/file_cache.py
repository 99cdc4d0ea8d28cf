"""Local copies of object-store FILE inputs for manifests: by sha256, verified, LRU-bounded."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path

from asset_service.domain.errors import IntegrityError
from asset_service.domain.models import Asset
from asset_service.domain.ports import BlobStorage
from asset_service.modes import Modes
from asset_service.storage import fs

log = logging.getLogger(__name__)

COPY_CHUNK = 1024 * 1024
# A copy being downloaded (<sha256>.<random>.part) is written to all along: one unwritten
# for this long belongs to a download a crash cut (a live read stalls out well before).
STALE_PART_SECONDS = 3600.0


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

    def sweep(self, older_than_seconds: float, limit: int = 0) -> int:
        """Remove downloads a crash cut, copies unused for `older_than_seconds` (0: kept
        by age), and the least recently used past the byte budget (a budget lowered
        since they came): at most `limit` (0: all); how many. Copies a manifest uses go
        from the cache only: the manifest has its own link to the bytes."""
        now = time.time()
        copies: list[tuple[float, int, Path]] = []
        parts: list[tuple[float, int, Path]] = []
        with contextlib.suppress(FileNotFoundError):
            for path in self.folder.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    (parts if path.name.endswith(".part") else copies).append(
                        (st.st_mtime, st.st_size, path)
                    )
        doomed = [p for mtime, _, p in parts if now - mtime >= STALE_PART_SECONDS]
        total = sum(size for _, size, _ in copies)
        for mtime, size, path in sorted(copies):
            old = older_than_seconds > 0 and now - mtime >= older_than_seconds
            if old or total > self.max_bytes:
                doomed.append(path)
                total -= size
        if limit:
            doomed = doomed[:limit]
        for path in doomed:
            path.unlink(missing_ok=True)
        if doomed:
            log.info("removed %d cached object-store copy(ies) from %s", len(doomed), self.folder)
        return len(doomed)

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
