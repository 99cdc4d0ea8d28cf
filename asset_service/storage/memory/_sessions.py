"""Resumable upload sessions of MemoryStorage: a record and a buffer per session."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from asset_service.domain.errors import Conflict
from asset_service.domain.ports import Chunk
from asset_service.domain.uploads import UploadSession
from asset_service.storage import sessions
from asset_service.storage.blocks import Digests
from asset_service.storage.memory._blobs import MemoryBlob
from asset_service.storage.memory._shelf import Shelf
from asset_service.storage.memory._state import MemorySession


class MemorySessions:
    """The UploadSessions port over MemoryState.sessions (every byte received is durable)."""

    def __init__(self, shelf: Shelf) -> None:
        self._shelf = shelf

    @property
    def _all(self) -> dict[str, MemorySession]:
        return self._shelf.state.sessions

    def _held(self, entry: MemorySession) -> bool:
        area = self._shelf.state.areas.get(entry.held_by or "")
        return area is not None and area.live

    async def new_session(self, key: str, session: UploadSession) -> MemorySessionWriter:
        if key in self._all:
            raise Conflict("another stream started this upload first")
        entry = MemorySession(sessions.encode(session), held_by=self._shelf.instance)
        self._all[key] = entry
        return MemorySessionWriter(self._shelf, key, entry, session)

    async def take_session(self, key: str) -> MemoryHold | None:
        entry = self._all.get(key)
        if entry is None:
            return None
        if self._held(entry):
            raise Conflict("another stream of this upload is open")
        entry.held_by = self._shelf.instance
        return MemoryHold(self._shelf, key, entry, sessions.decode(entry.record))

    async def read_session(self, key: str) -> UploadSession | None:
        entry = self._all.get(key)
        return None if entry is None else sessions.decode(entry.record)

    async def sweep_sessions(self, now: datetime, limit: int = 0) -> int:
        removed = 0
        for key, entry in list(self._all.items()):
            if removed == limit and limit:
                break
            if not self._held(entry) and sessions.decode(entry.record).expires_at <= now:
                del self._all[key]
                removed += 1
        return removed


class _Held:
    def __init__(
        self, shelf: Shelf, key: str, entry: MemorySession, session: UploadSession
    ) -> None:
        self._shelf = shelf
        self._key = key
        self._entry = entry
        self.session = session

    async def save(self, session: UploadSession) -> None:
        self._entry.record = sessions.encode(session)
        self.session = session

    async def remove(self) -> None:
        if self._shelf.state.sessions.get(self._key) is self._entry:
            del self._shelf.state.sessions[self._key]
        self.release()

    def release(self) -> None:
        if self._entry.held_by == self._shelf.instance:
            self._entry.held_by = None


class MemoryHold(_Held):
    async def resume(self) -> MemorySessionWriter:
        entry = self._entry
        del entry.data[self.session.committed_bytes :]  # never more than recorded
        return MemorySessionWriter(self._shelf, self._key, entry, self.session)


class MemorySessionWriter(MemoryBlob, _Held):
    """Appends to the session's buffer, hashing from its first byte."""

    def __init__(
        self, shelf: Shelf, key: str, entry: MemorySession, session: UploadSession
    ) -> None:
        MemoryBlob.__init__(self, shelf)
        _Held.__init__(self, shelf, key, entry, session)
        self._digests = Digests()
        self._digests.update(bytes(entry.data))
        self.size_bytes = len(entry.data)
        self._sealed = False

    async def write(self, chunk: Chunk) -> None:
        if self._sealed or self._done:
            raise RuntimeError("write() after seal() or after the blob was settled")
        self._entry.data += chunk
        self._digests.update(chunk)
        self.size_bytes += len(chunk)

    async def seal(self) -> None:
        self._sealed = True
        self.sha256 = self._digests.sha.hexdigest()
        self.block_sums = self._digests.blocks.result()

    def _content(self) -> bytes:
        if not self._sealed:
            raise RuntimeError("commit() before seal(): the bytes are not final yet")
        return bytes(self._entry.data)

    async def commit(self, key: str) -> str:
        path = await super().commit(key)
        self._drop_staging()  # placed: moved out of the session, like a linked file
        return path

    def _drop_staging(self) -> None:
        self._entry.data = bytearray()

    async def suspend(self, expires_at: datetime) -> UploadSession:
        saved = dataclasses.replace(
            self.session, committed_bytes=len(self._entry.data), expires_at=expires_at
        )
        await self.save(saved)
        self.release()
        return saved
