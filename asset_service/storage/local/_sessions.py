"""Resumable upload sessions on the local disk: tmp/uploads/<key>/{session.json, data}."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from asset_service.domain.errors import Conflict
from asset_service.domain.uploads import UploadSession
from asset_service.modes import PRIVATE_FILE
from asset_service.storage import fs, sessions
from asset_service.storage.adoption import COPY_CHUNK
from asset_service.storage.blocks import Digests
from asset_service.storage.local._blobs import _Blob, _Sunk
from asset_service.storage.local._disk import Disk, oserror
from asset_service.storage.sink import FileSink

log = logging.getLogger(__name__)

RECORD = "session.json"
DATA = "data"
# While a stream runs, its bytes are fdatasynced and the offset recorded every this many
# bytes (and always when the stream ends, however it ends). What a crash can cost is what
# came after the last checkpoint: at most 64 MiB to send again, under a second on a
# 1 Gbit/s link. What it costs meanwhile is one flush of a disk that writeback has mostly
# caught up with already (storage/sink.py starts it every 8 MiB) and one small rename, per
# 64 MiB: well under 1% of the time to receive them. A smaller step multiplies the flushes
# (each waits for the device's cache) for seconds saved only after a crash.
CHECKPOINT_BYTES = 64 * 1024 * 1024
# A session folder without a record is one being created (its record follows at once);
# one older than this was left by a crash and goes.
HALF_MADE_SECONDS = 60.0


@dataclass(frozen=True)
class _Digest:
    """The sha256 of a session's durable bytes as this process last wrote them, so that
    resuming here does not read them back; valid while the file is as it was left."""

    offset: int
    file: tuple[int, int, int]  # (inode, size, mtime_ns)
    digests: Digests


def _file_id(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class LocalSessions:
    """The UploadSessions port of LocalStorage.

    A folder per session, kept across restarts (start-up sweeps only expired ones); a
    stream holds it by flock(2) on the folder, so one stream at a time, across processes.
    """

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        self.folder = disk.tmp / "uploads"
        self._digests: dict[str, _Digest] = {}

    def open_sync(self) -> str | None:
        return self.disk.modes.folder(self.folder, shared=False)

    # --- the port -----------------------------------------------------------------------

    async def new_session(self, key: str, session: UploadSession) -> LocalSessionWriter:
        return await asyncio.to_thread(self._new_sync, key, session)

    async def take_session(self, key: str) -> LocalHold | None:
        return await asyncio.to_thread(self._take_sync, key)

    async def read_session(self, key: str) -> UploadSession | None:
        try:
            return await asyncio.to_thread(_read_record, self.folder / key)
        except ValueError:
            return None

    async def sweep_sessions(self, now: datetime, limit: int = 0) -> int:
        return await asyncio.to_thread(self._sweep_sync, now, limit)

    # --- on a thread --------------------------------------------------------------------

    def _new_sync(self, key: str, session: UploadSession) -> LocalSessionWriter:
        path = self.folder / key
        try:
            self.disk.modes.mkdir(path, shared=False)
        except FileExistsError:
            raise Conflict("another stream started this upload first") from None
        except OSError as exc:
            raise oserror(exc, "starting an upload session") from None
        lock = os.open(path, fs.DIR_FLAGS)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_record(path, session)
            # Made with the mode it will have once linked into place.
            flags = os.O_RDWR | os.O_EXCL | os.O_CLOEXEC
            data = self.disk.modes.new_file(path / DATA, flags, shared=True)
            fs.fsync_dir(lock)
        except BaseException as exc:
            shutil.rmtree(path, ignore_errors=True)
            os.close(lock)
            if isinstance(exc, OSError):
                raise oserror(exc, "starting an upload session") from None
            raise
        return LocalSessionWriter(self, key, lock, session, data, 0, None)

    def _take_sync(self, key: str) -> LocalHold | None:
        path = self.folder / key
        try:
            lock = os.open(path, fs.DIR_FLAGS)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict("another stream of this upload is open") from None
            if os.fstat(lock).st_nlink == 0:
                os.close(lock)
                return None  # removed while we waited for it
            try:
                record = _read_record(path)
            except ValueError as exc:
                log.error("removing upload session %s: its record is unusable (%s)", path, exc)
                self._remove_sync(key)
                os.close(lock)
                return None
            if record is None:
                if time.time() - os.fstat(lock).st_mtime < HALF_MADE_SECONDS:
                    raise Conflict("another stream is starting this upload")
                self._remove_sync(key)
                os.close(lock)
                return None
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(lock)
            raise
        return LocalHold(self, key, lock, record)

    def _resume_sync(self, key: str, lock: int, session: UploadSession) -> LocalSessionWriter:
        path = self.folder / key / DATA
        try:
            flags = os.O_RDWR | os.O_CLOEXEC
            data = self.disk.modes.new_file(path, flags, shared=True)
        except OSError as exc:
            raise oserror(exc, "resuming an upload") from None
        try:
            st = os.fstat(data)
            durable = min(session.committed_bytes, st.st_size)
            cached = self._digests.pop(key, None)
            if cached is not None and (cached.offset, cached.file) == (durable, _file_id(st)):
                digests = cached.digests
            else:
                # After a restart (or another process's stream) nothing else vouches for
                # these bytes: hash them (sha256 and block sums) as they are on the disk.
                digests = _hash_prefix(data, durable)
            if st.st_size != durable:
                os.ftruncate(data, durable)  # what came after the last checkpoint goes
                os.fsync(data)
        except BaseException as exc:
            os.close(data)
            if isinstance(exc, OSError):
                raise oserror(exc, "resuming an upload") from None
            raise
        return LocalSessionWriter(self, key, lock, session, data, durable, digests)

    def remember(self, key: str, offset: int, digests: Digests) -> None:
        try:
            st = os.stat(self.folder / key / DATA)
        except OSError:
            return
        self._digests[key] = _Digest(offset, _file_id(st), digests)

    def _remove_sync(self, key: str) -> None:
        self._digests.pop(key, None)
        shutil.rmtree(self.folder / key, ignore_errors=True)

    def _sweep_sync(self, now: datetime, limit: int = 0) -> int:
        removed = 0
        try:
            entries = list(self.folder.iterdir())
        except FileNotFoundError:
            return 0
        for path in entries:
            try:
                lock = os.open(path, fs.DIR_FLAGS)
            except OSError:
                continue  # not a folder (or a symlink): not one of ours
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(lock).st_nlink == 0:
                    continue
                try:
                    record = _read_record(path)
                except ValueError:
                    record = None
                if record is None:
                    if time.time() - os.fstat(lock).st_mtime < HALF_MADE_SECONDS:
                        continue
                elif record.expires_at > now:
                    continue
                self._remove_sync(path.name)
                removed += 1
                if removed == limit:
                    break
            except BlockingIOError:
                continue  # a stream holds it
            finally:
                os.close(lock)
        return removed


class _Held:
    """What a hold and a writer share: the session folder's lock and its record."""

    def __init__(
        self, sessions_: LocalSessions, key: str, lock: int, session: UploadSession
    ) -> None:
        self._sessions = sessions_
        self._key = key
        self._lock: int | None = lock
        self._folder = sessions_.folder / key
        self._record_lock = threading.Lock()
        self.session = session

    async def save(self, session: UploadSession) -> None:
        await asyncio.to_thread(self._save_sync, session)

    def _save_sync(self, session: UploadSession) -> None:
        with self._record_lock:
            try:
                _write_record(self._folder, session)
            except OSError as exc:
                raise oserror(exc, "recording an upload session") from None
            self.session = session

    async def remove(self) -> None:
        await asyncio.to_thread(self._sessions._remove_sync, self._key)
        self.release()

    def release(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            os.close(lock)


class LocalHold(_Held):
    async def resume(self) -> LocalSessionWriter:
        assert self._lock is not None
        writer = await asyncio.to_thread(
            self._sessions._resume_sync, self._key, self._lock, self.session
        )
        self._lock = None  # the writer holds it now
        return writer


class LocalSessionWriter(_Sunk, _Held):
    """Appends to the session's data file through a FileSink that checkpoints it; commit()
    links it into place like any staging file."""

    def __init__(
        self,
        sessions_: LocalSessions,
        key: str,
        lock: int,
        session: UploadSession,
        data: int,
        size: int,
        digests: Digests | None,
    ) -> None:
        _Blob.__init__(self, sessions_.disk)
        _Held.__init__(self, sessions_, key, lock, session)
        self.path = self._folder / DATA
        self.size_bytes = size
        self._sink = FileSink(
            data,
            name=key[:8],
            direct=False,
            start=size,
            digests=digests,
            checkpoint_bytes=CHECKPOINT_BYTES,
            on_durable=self._durable,
        )

    def _durable(self, offset: int) -> None:
        """On the sink's thread: the data file is synced up to `offset`; record it (an
        OSError fails the upload like a failed write)."""
        with self._record_lock:
            session = dataclasses.replace(self.session, committed_bytes=offset)
            _write_record(self._folder, session)
            self.session = session

    def release(self) -> None:
        self._sink.abort()  # a sealed sink has nothing left to drop; an unsealed one stops
        super().release()

    async def suspend(self, expires_at: datetime) -> UploadSession:
        try:
            await self._sink.seal()
            durable = self.size_bytes  # everything received is on the disk now
        except OSError as exc:
            log.warning("upload session %s: syncing its bytes failed (%s)", self._key, exc)
            durable = self.session.committed_bytes  # the last checkpoint stands
        saved = dataclasses.replace(self.session, committed_bytes=durable, expires_at=expires_at)
        try:
            await self.save(saved)
            if durable == self.size_bytes:
                self._sessions.remember(self._key, durable, self._sink.digests())
        finally:
            self.release()
        return saved


def _write_record(folder: Path, session: UploadSession) -> None:
    """Durably replace the record: temp file, fsync, rename, fsync the folder."""
    part = folder / (RECORD + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # owner-only whatever the umask (modes.py)
        os.write(fd, sessions.encode(session))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(part, folder / RECORD)
    dir_fd = os.open(folder, fs.DIR_FLAGS)
    try:
        fs.fsync_dir(dir_fd)
    finally:
        os.close(dir_fd)


def _read_record(folder: Path) -> UploadSession | None:
    """The record, None if there is none; ValueError if it does not parse."""
    try:
        raw = (folder / RECORD).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return sessions.decode(raw)


def _hash_prefix(fd: int, size: int) -> Digests:
    digests, offset = Digests(), 0
    while offset < size:
        chunk = os.pread(fd, min(COPY_CHUNK, size - offset), offset)
        if not chunk:
            break  # cannot happen: size is at most the file's
        digests.update(chunk)
        offset += len(chunk)
    return digests
