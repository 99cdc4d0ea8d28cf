"""Staged blobs of MemoryStorage: a streaming writer and an adopted server-side file."""

from __future__ import annotations

import hashlib
import logging
import uuid

from asset_service.domain.errors import SharedBytesGone
from asset_service.domain.models import BlockSums
from asset_service.domain.ports import Chunk
from asset_service.storage import keys
from asset_service.storage.blocks import BlockSummer, sums_of
from asset_service.storage.memory._shelf import Shelf
from asset_service.storage.memory._state import PREFIX, MoveIntent, StagingArea, StoredBytes

log = logging.getLogger(__name__)

_EMPTY_SHA256 = hashlib.sha256().hexdigest()


class MemoryBlob:
    """Bytes on their way to a key: commit() places them, then finish() or rollback()."""

    def __init__(self, shelf: Shelf) -> None:
        self._shelf = shelf
        self.size_bytes = 0
        self.sha256 = _EMPTY_SHA256
        self.block_sums: BlockSums = sums_of(b"")
        self._placed: tuple[str, StoredBytes] | None = None
        self._journal: tuple[StagingArea, str] | None = None
        self._done = False

    def _content(self) -> bytes:
        raise NotImplementedError

    def _source(self) -> tuple[str, bytes] | None:
        return None

    async def commit(self, key: str) -> str:
        shelf = self._shelf
        keys.key_parts(key)
        obj = StoredBytes(self._content(), shelf.clock())
        shelf.claim(key)
        source = self._source()
        if source is not None:
            # Journaled before the bytes appear, as on disk: recovery may need to undo them.
            area, name = shelf.area, uuid.uuid4().hex
            area.journals[name] = MoveIntent(key, obj, *source)
            self._journal = (area, name)
        shelf.state.objects[key] = obj
        self._placed = (key, obj)
        return PREFIX + key

    async def finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._finish()
        self._forget_journal()
        self._release()

    def _finish(self) -> None:
        pass

    async def rollback(self) -> None:
        self.discard()

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        if self._placed is not None:
            key, obj = self._placed
            if self._shelf.state.objects.get(key) is obj:  # never another commit's bytes
                del self._shelf.state.objects[key]
        self._forget_journal()
        self._drop_staging()
        self._release()

    def abandon(self) -> None:
        if self._done:
            return
        self._done = True
        self._release()

    def _forget_journal(self) -> None:
        if self._journal is not None:
            area, name = self._journal
            area.journals.pop(name, None)
            self._journal = None

    def _drop_staging(self) -> None:
        pass

    def _release(self) -> None:
        pass


class MemoryCloned(MemoryBlob):
    """Stored bytes placed under another key: the same bytes object, stored once."""

    def __init__(
        self, shelf: Shelf, key: str, size_bytes: int, sha256: str, sums: BlockSums
    ) -> None:
        super().__init__(shelf)
        self._source_key = key
        self.size_bytes, self.sha256, self.block_sums = size_bytes, sha256, sums

    def _content(self) -> bytes:
        found = self._shelf.state.objects.get(self._source_key)
        if found is None:
            raise SharedBytesGone(self._source_key)
        return found.data


class MemoryWriter(MemoryBlob):
    """Chunks appended to this instance's staging, hashed as they arrive."""

    def __init__(self, shelf: Shelf, key: str | None = None) -> None:
        super().__init__(shelf)
        self._key = key  # the only key commit() takes, when given
        self._area, self._name = shelf.area, uuid.uuid4().hex
        self._buffer = bytearray()
        self._area.staging[self._name] = self._buffer
        self._hash = hashlib.sha256()
        self._blocks = BlockSummer()
        self._sealed = False

    async def write(self, chunk: Chunk) -> None:
        if self._sealed or self._done:
            raise RuntimeError("write() after seal() or after the blob was settled")
        self._buffer += chunk
        self._hash.update(chunk)
        self._blocks.update(chunk)
        self.size_bytes += len(chunk)

    async def seal(self) -> None:
        self._sealed = True
        self.sha256 = self._hash.hexdigest()
        self.block_sums = self._blocks.result()

    def _content(self) -> bytes:
        if not self._sealed:
            raise RuntimeError("commit() before seal(): the bytes are not final yet")
        return bytes(self._buffer)

    async def commit(self, key: str) -> str:
        if self._key is not None and key != self._key:
            raise ValueError(f"a writer opened for {self._key!r} cannot commit at {key!r}")
        path = await super().commit(key)
        self._drop_staging()  # placed: the staging copy goes, as a staging file is unlinked
        return path

    def _drop_staging(self) -> None:
        self._area.staging.pop(self._name, None)


class MemoryAdopted(MemoryBlob):
    """A server-side file, held (like a flock) from adopt() until the blob is settled."""

    def __init__(self, shelf: Shelf, path: str, data: bytes, move: bool) -> None:
        super().__init__(shelf)
        self.path, self._data, self.move = path, data, move
        self.size_bytes = len(data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.block_sums = sums_of(data)
        self._held = True

    def _content(self) -> bytes:
        return self._data

    def _source(self) -> tuple[str, bytes] | None:
        return (self.path, self._data) if self.move else None

    def _finish(self) -> None:
        if self.move and not self._shelf.remove_source(self.path, self._data):
            log.warning("the moved source %r was already gone or replaced", self.path)

    async def forgo(self) -> None:
        if self._done:
            return
        self._done = True
        self._finish()  # nothing was placed or journaled
        self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._shelf.unhold(self.path, self.move)
