"""LocalStorage: the layout under its root, staging, recovery sweeps, reads and checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from asset_service.domain.errors import (
    AssetError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from asset_service.domain.models import BLOCK_BYTES, BlockSums, parse_asset_id
from asset_service.domain.uploads import UploadSession
from asset_service.modes import Modes, report
from asset_service.storage import blocks, fs, journal, keys
from asset_service.storage.adoption import Source
from asset_service.storage.imports import ImportRoots
from asset_service.storage.journal import Leftover
from asset_service.storage.local._blobs import Adopted, Cloned, Writer
from asset_service.storage.local._disk import Disk
from asset_service.storage.local._keyhold import age_of, hold_folder
from asset_service.storage.local._reads import (
    check_many_sync,
    not_regular,
    read_checked,
    read_chunks,
    wrong_size,
)
from asset_service.storage.local._recovery import LocalMove
from asset_service.storage.local._sessions import LocalHold, LocalSessions, LocalSessionWriter
from asset_service.storage.reads import Span, SpanReads

log = logging.getLogger(__name__)

# Files verified in full despite a late ctime (chmod, recovery of a move), remembered by
# (device, inode, ctime) so that each is read once, not by every manifest.
VOUCHED_KEEP = 10_000


class LocalStorage(SpanReads):
    """uploads/YYYY-MM-DD/<asset-id>/<name>, generated/<task>/<asset-id>/<name>, tmp/."""

    def __init__(
        self,
        root: Path,
        orphan_grace_seconds: float = 600.0,
        imports: ImportRoots | None = None,
        direct_io: bool = False,
        modes: Modes | None = None,
    ) -> None:
        # What its blobs and sessions use of it (_disk.py): they never call the storage.
        self.disk = Disk(root.resolve(), modes or Modes(), direct_io, orphan_grace_seconds)
        disk = self.disk
        self.root, self.modes, self.direct_io = disk.root, disk.modes, direct_io
        self.orphan_grace_seconds = orphan_grace_seconds
        self.imports = imports or ImportRoots(())
        self.uploads, self.generated, self.tmp = disk.uploads, disk.generated, disk.tmp
        self.staging, self.intents = disk.staging, disk.intents
        # Resumable uploads' sessions, in tmp/uploads/ (kept across restarts).
        self.sessions = LocalSessions(self.disk)
        self._ping: asyncio.Future[None] | None = None
        self._vouched: dict[str, tuple[int, int, int]] = {}

    @property
    def device(self) -> int:
        """The root's st_dev, once open (-1 before)."""
        return self.disk.device

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        try:
            self.modes.root(self.root)
            changed = [self.modes.folder(f, shared=True) for f in (self.uploads, self.generated)]
            changed.append(self.sessions.open_sync())
            # The staging folder, locked for the life of the process (journal.py).
            changed.append(self.disk.journal.open())
            report(changed, f"the storage under {self.root}")
            self.disk.device = os.stat(self.root).st_dev
        except OSError as exc:
            raise Unavailable(f"storage root {self.root} is not usable: {exc}") from exc

    async def ping(self) -> None:
        # A check stuck on a hung disk is waited for again, never started twice: probes
        # every few seconds do not pile up threads blocked in the kernel.
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(asyncio.to_thread(self._ping_sync))
            # Its outcome is read by whichever ping awaits it; none may be left to.
            self._ping.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.shield(self._ping)

    def _ping_sync(self) -> None:
        """The root is the file system opened (not the folder under an unmounted disk), and
        a file can be created in this process's staging folder (not read-only, not gone)."""
        try:
            if os.stat(self.root).st_dev != self.device:
                raise Unavailable(
                    f"storage root {self.root} is now on another file system than at start-up "
                    "(was its disk unmounted?); mount it back, or restart the server"
                )
            probe = self.staging / f".ping-{uuid.uuid4().hex[:8]}"
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            os.unlink(probe)
        except OSError as exc:
            raise Unavailable(f"storage root {self.root} is not usable: {exc}") from exc

    async def leftovers(self, past_grace: bool = False) -> list[Leftover]:
        older_than = self.orphan_grace_seconds if past_grace else 0.0
        return await asyncio.to_thread(self.disk.journal.leftovers, self._path_of, older_than)

    async def settle(self, leftover: Leftover, committed: bool) -> None:
        steps = LocalMove(self.disk, self.imports, leftover.intent)
        await journal.settle(leftover, committed, steps, partial(journal.forget, leftover.journal))

    async def sweep_dead_staging(self, limit: int = 0) -> int:
        return await asyncio.to_thread(self.disk.journal.sweep_dead, limit)

    async def close(self) -> None:
        await asyncio.to_thread(self.disk.journal.close)

    # --- keys and paths ---------------------------------------------------------------

    def _path_of(self, key: str) -> str:
        return str(self.root.joinpath(*keys.key_parts(key)))

    def _parts_of(self, storage_path: str) -> tuple[str, ...]:
        path = Path(storage_path)
        if not path.is_absolute() or not path.is_relative_to(self.root):
            raise NotFound(f"{storage_path} is not a path in this storage")
        return keys.key_parts(str(path.relative_to(self.root)))

    def write_intent(self, intent: dict[str, Any]) -> Path:
        return self.disk.write_intent(intent)

    # --- writing ----------------------------------------------------------------------

    def new_writer(self, key: str | None = None) -> Writer:
        # A staging file linked into place at commit: knowing the key early gains nothing.
        return Writer(self.disk, self.staging / uuid.uuid4().hex, key)

    async def clone(
        self, storage_path: str, size_bytes: int, sha256: str, sums: BlockSums
    ) -> Cloned:
        return Cloned(self.disk, self._parts_of(storage_path), size_bytes, sha256, sums)

    async def adopt(self, path: str, move: bool) -> Adopted:
        """Hash (and, unless it can be linked, copy) a server-side file under an import root."""
        return await asyncio.to_thread(self._adopt_sync, path, move)

    def _adopt_sync(self, path: str, move: bool) -> Adopted:
        blob = Adopted(self.disk, Source(path, self.imports.open(path, exclusive=move), move))
        try:
            blob.stage()
        except BaseException:
            blob._rollback_sync()
            blob._close()
            raise
        return blob

    # --- resumable upload sessions (storage/local/_sessions.py) -------------------------

    async def new_session(self, key: str, session: UploadSession) -> LocalSessionWriter:
        return await self.sessions.new_session(key, session)

    async def take_session(self, key: str) -> LocalHold | None:
        return await self.sessions.take_session(key)

    async def read_session(self, key: str) -> UploadSession | None:
        return await self.sessions.read_session(key)

    async def sweep_sessions(self, now: datetime, limit: int = 0) -> int:
        return await self.sessions.sweep_sessions(now, limit)

    # --- reading and housekeeping -----------------------------------------------------

    def _open_stored(self, storage_path: str, size_bytes: int) -> fs.Opened:
        parts = self._parts_of(storage_path)
        try:
            opened = fs.open_file(self.root, parts, storage_path)
        except NotFound:
            raise IntegrityError(f"its bytes at {storage_path} are missing") from None
        except AssetError:  # a symlink or a non-regular file where the bytes should be
            raise not_regular(storage_path) from None
        if opened.st.st_size != size_bytes:
            opened.close()
            raise wrong_size(storage_path, opened.st.st_size, size_bytes)
        return opened

    async def open_span(self, span: Span, sums: BlockSums | None) -> AsyncIterator[bytes]:
        opened = await asyncio.to_thread(self._open_stored, span.storage_path, span.size_bytes)
        if sums is None:
            return read_chunks(opened, span.storage_path, span.offset, span.end, span.chunk_size)
        return read_checked(opened, span.storage_path, span.offset, span.end, span.chunk_size, sums)

    async def verify(self, storage_path: str, size_bytes: int, sums: BlockSums) -> None:
        """Read every block and check it; remember the file as vouched for (check_many)."""
        opened = await asyncio.to_thread(self._open_stored, storage_path, size_bytes)
        st = opened.st
        await blocks.drain(read_checked(opened, storage_path, 0, size_bytes, BLOCK_BYTES, sums))
        if len(self._vouched) >= VOUCHED_KEEP:
            self._vouched.clear()
        self._vouched[storage_path] = (st.st_dev, st.st_ino, st.st_ctime_ns)

    async def check(self, storage_path: str, size_bytes: int) -> None:
        """Raise IntegrityError unless the bytes are there, a regular file of that size."""
        opened = await asyncio.to_thread(self._open_stored, storage_path, size_bytes)
        opened.close()

    async def check_many(
        self, items: Sequence[tuple[str, int]], since: Sequence[datetime] | None = None
    ) -> Sequence[IntegrityError | None]:
        """check() of each, all in one thread hop (a manifest may name 1000 inputs)."""
        return await asyncio.to_thread(self._check_many_sync, items, since)

    def _check_many_sync(
        self, items: Sequence[tuple[str, int]], since: Sequence[datetime] | None = None
    ) -> list[IntegrityError | None]:
        return check_many_sync(self.root, self._parts_of, items, since, self._vouched)

    async def remove(self, storage_path: str) -> None:
        parts = self._parts_of(storage_path)
        await asyncio.to_thread(self._remove_sync, parts)

    async def remove_orphan(
        self, storage_path: str, unclaimed: Callable[[], Awaitable[bool]]
    ) -> bool:
        parts = self._parts_of(storage_path)
        held = await asyncio.to_thread(self._hold_key_sync, parts)
        if held is None:
            return False  # gone already, or a commit of the key under way
        try:
            # Holding the key's folder, as a commit does from before its link until its
            # record settled (_keyhold.py): what the records say now stays true until
            # the file is gone.
            if not await unclaimed():
                return False
            await asyncio.to_thread(self._remove_sync, parts)
            return True
        finally:
            os.close(held)

    def _hold_key_sync(self, parts: tuple[str, ...]) -> int | None:
        """The key's folder, held (unless the file system has no flock); None if it is
        gone or a commit holds it."""
        try:
            folder = self.disk.open_folder(parts[:-1])
        except (OSError, AssetError):
            return None
        if hold_folder(folder, parts) is None:
            os.close(folder)
            return None
        return folder

    def _remove_sync(self, parts: tuple[str, ...]) -> None:
        try:
            folder = self.disk.open_folder(parts[:-1])
        except (OSError, AssetError):
            return  # gone already, or behind a symlink that is not ours to follow
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(parts[-1], dir_fd=folder)
        finally:
            os.close(folder)
        self.disk.prune_empty_path(self.root.joinpath(*parts[:-1]))

    async def orphans(self, after: str = "") -> AsyncIterator[tuple[str, str]]:
        """Files in final locations older than the grace, as (asset id, path), in the
        order of their path's parts: one day's (or task's) folder listed at a time, none
        of those before `after`'s."""
        start = self._parts_of(after) if after else ()
        # <area>/<day-or-task>/<asset-id>/<name>
        for area in sorted((self.uploads, self.generated)):
            if (area.name,) < start[:1]:
                continue
            for day in await asyncio.to_thread(_names_in, area):
                if (area.name, day) < start[:2]:
                    continue
                for path, st in await asyncio.to_thread(_entries_under, area / day):
                    if (area.name, day, path.parent.name, path.name) <= start:
                        continue
                    try:
                        asset_id = parse_asset_id(path.parent.name)
                    except InvalidArgument:
                        continue
                    if age_of(st) < self.orphan_grace_seconds:
                        continue  # may be another server's commit in flight
                    yield asset_id, str(path)


def _names_in(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _entries_under(folder: Path) -> list[tuple[Path, os.stat_result]]:
    found = []
    for path in sorted(folder.glob("*/*")):
        with contextlib.suppress(OSError):
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                found.append((path, st))
    return found
