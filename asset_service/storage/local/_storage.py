"""LocalStorage: the layout under its root, staging, recovery sweeps, reads and checks."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
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
from asset_service.storage import blocks, fs, keys
from asset_service.storage.imports import ImportRoots
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
from asset_service.storage.local._sessions import LocalHold, LocalSessions, LocalSessionWriter

log = logging.getLogger(__name__)

# Files verified in full despite a late ctime (chmod, recovery of a move), remembered by
# (device, inode, ctime) so that each is read once, not by every manifest.
VOUCHED_KEEP = 10_000


@dataclass(frozen=True)
class Leftover:
    """A move that a dead process left half-done; the record decides which side keeps it."""

    asset_id: str
    storage_path: str
    journal: Path
    intent: dict[str, Any]


class LocalStorage:
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
        self._staging_parent = disk.staging_parent
        self.staging, self.intents = disk.staging, disk.intents
        self._lock_fd: int | None = None
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
            changed.append(self.modes.folder(self._staging_parent, shared=False))
            changed.append(self.sessions.open_sync())
            report(changed, f"the storage under {self.root}")
            self.modes.mkdir(self.staging, shared=False)
            self.modes.mkdir(self.intents, shared=False)
            # Held for the life of the process; start-up sweeps of other processes
            # know this staging folder is live because they cannot take the lock.
            self._lock_fd = os.open(self.staging / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
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

    def _dead_staging(self) -> list[Path]:
        dead = []
        for folder in self._staging_parent.iterdir():
            if folder == self.staging or not folder.is_dir() or folder.is_symlink():
                continue
            try:
                fd = os.open(folder / ".lock", os.O_RDWR | os.O_NOFOLLOW)
            except OSError:
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                finally:
                    os.close(fd)
            dead.append(folder)
        return dead

    async def leftovers(self, past_grace: bool = False) -> list[Leftover]:
        """Moves journaled by dead processes, to settle before their staging is removed."""
        found = await asyncio.to_thread(self._leftovers_sync)
        if past_grace:
            return await asyncio.to_thread(fs.journaled_before, found, self.orphan_grace_seconds)
        return found

    def _leftovers_sync(self) -> list[Leftover]:
        found = []
        for folder in self._dead_staging():
            intents = folder / "intents"
            for journal in sorted(intents.glob("*.json")) if intents.is_dir() else ():
                try:
                    intent = json.loads(journal.read_text())
                    parts = keys.key_parts(intent["final"])
                    asset_id = parse_asset_id(parts[-2])
                except (OSError, ValueError, KeyError, IndexError, AssetError) as exc:
                    # Journals are fsynced whole before anything is linked, so one that does
                    # not parse (a disk error, a hand edit) was never acted on: drop it.
                    log.error("dropping unreadable move journal %s (%s)", journal, exc)
                    journal.unlink(missing_ok=True)
                    continue
                found.append(Leftover(asset_id, str(self.root.joinpath(*parts)), journal, intent))
        return found

    async def settle(self, leftover: Leftover, committed: bool) -> None:
        """Finish a journaled move whose record committed, or undo one whose record did not."""
        await asyncio.to_thread(self._settle_sync, leftover, committed)

    def _settle_sync(self, leftover: Leftover, committed: bool) -> None:
        intent = leftover.intent
        parts = keys.key_parts(intent["final"])
        try:
            folder = self.disk.open_folder(parts[:-1])
        except (OSError, AssetError):
            folder = -1
        try:
            final = None
            if folder >= 0:
                with contextlib.suppress(FileNotFoundError):
                    final = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
            ours = final is not None and (final.st_dev, final.st_ino) == (
                self.device,
                intent["final_ino"],
            )
            if committed and ours and final is not None:
                if "source" in intent:
                    source = (intent["dev"], intent["ino"])
                    if intent["ino"] == intent["final_ino"]:
                        # Moved by a hard link: the source is the stored file itself, as
                        # it is now (a reboot may renumber the device the journal names).
                        source = (final.st_dev, final.st_ino)
                    if self.imports.remove_if_same(intent["source"], source):
                        log.warning("finished an interrupted move of %r", intent["source"])
            elif committed:
                # A retry replaced the dead process's half-made commit with bytes of its
                # own (storage/local/_keyhold.py): the journaled source is not the asset's.
                log.warning(
                    "asset %s is AVAILABLE with other bytes at %s than an interrupted move "
                    "journaled (a retry committed its own); leaving that move's source %r "
                    "in place",
                    leftover.asset_id,
                    leftover.storage_path,
                    intent.get("source"),
                )
            elif ours and final is not None:
                fs.unlink_if_same(folder, parts[-1], (final.st_dev, final.st_ino))
                log.warning("undid an interrupted move of %r", intent.get("source"))
        finally:
            if folder >= 0:
                os.close(folder)
        leftover.journal.unlink(missing_ok=True)

    async def sweep_dead_staging(self, limit: int = 0) -> int:
        """Remove staging folders of dead processes (their moves already settled)."""
        return await asyncio.to_thread(self._sweep_dead_staging_sync, limit)

    def _sweep_dead_staging_sync(self, limit: int = 0) -> int:
        removed = 0
        for folder in self._dead_staging():
            intents = folder / "intents"
            if intents.is_dir() and any(intents.glob("*.json")):
                log.error("staging %s keeps unsettled move journals; not removed", folder)
                continue
            log.warning("removing staging left by a dead process: %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
            if removed == limit:
                break
        return removed

    async def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if any(self.intents.glob("*.json")):
            # Moves whose outcome is unknown: the next start-up settles them.
            log.warning("leaving %s for recovery: it holds unsettled moves", self.staging)
            return
        await asyncio.to_thread(shutil.rmtree, self.staging, True)

    # --- keys and paths ---------------------------------------------------------------

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
        opened = self.imports.open(path, exclusive=move)
        blob = Adopted(self.disk, path, opened, move)
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

    async def read(
        self,
        storage_path: str,
        size_bytes: int,
        offset: int,
        limit: int,
        chunk_size: int,
        sums: BlockSums | None = None,
    ) -> AsyncIterator[bytes]:
        opened = await asyncio.to_thread(self._open_stored, storage_path, size_bytes)
        end = size_bytes if limit <= 0 else min(size_bytes, offset + limit)
        if sums is None:
            return read_chunks(opened, storage_path, offset, end, chunk_size)
        return read_checked(opened, storage_path, offset, end, chunk_size, sums)

    async def summed(
        self, storage_path: str, size_bytes: int, sha256: str, pace: blocks.Pace | None = None
    ) -> BlockSums:
        chunks = await self.read(storage_path, size_bytes, 0, 0, BLOCK_BYTES)
        return await blocks.summed_from(chunks, sha256, storage_path, pace)

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
