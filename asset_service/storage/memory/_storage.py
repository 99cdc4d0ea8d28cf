"""MemoryStorage: a BlobStorage held in memory, with LocalStorage's semantics, for fast tests."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from functools import partial

from asset_service.domain.errors import (
    AssetError,
    CorruptBytes,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Unverified,
    shown,
)
from asset_service.domain.models import (
    BlockSums,
    parse_asset_id,
    validate_server_path,
)
from asset_service.domain.uploads import UploadSession
from asset_service.storage import blocks, journal, keys
from asset_service.storage.imports import no_import_roots
from asset_service.storage.memory._blobs import MemoryAdopted, MemoryCloned, MemoryWriter
from asset_service.storage.memory._sessions import MemoryHold, MemorySessions, MemorySessionWriter
from asset_service.storage.memory._shelf import Shelf
from asset_service.storage.memory._state import (
    PREFIX,
    Leftover,
    MemoryState,
    MoveIntent,
    StagingArea,
    StoredBytes,
)
from asset_service.storage.reads import Span, SpanReads

log = logging.getLogger(__name__)

# As LocalStorage's CHANGED_GRACE_SECONDS.
CHANGED_GRACE = 1.0


class MemoryStorage(SpanReads):
    """Keys as LocalStorage lays them out (uploads/..., generated/...); paths memory://<key>.

    `files` stands for the server's files under its import roots (path -> bytes): adopt()
    reads them and a finished move deletes from it; None means no import roots.
    `clock` gives the time in seconds, so tests age bytes without sleeping.
    """

    def __init__(
        self,
        state: MemoryState | None = None,
        files: dict[str, bytes] | None = None,
        orphan_grace_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state if state is not None else MemoryState()
        self.files = files
        self.orphan_grace_seconds = orphan_grace_seconds
        self.clock = clock
        self.instance = uuid.uuid4().hex[:12]
        # What its blobs and sessions use of it (_shelf.py): they never call the storage.
        self._shelf = Shelf(self.state, files, orphan_grace_seconds, clock, self.instance)
        self._sessions = MemorySessions(self._shelf)
        self._vouched: dict[str, StoredBytes] = {}

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        self._shelf.opened = self.state.areas[self.instance] = StagingArea()

    async def close(self) -> None:
        area, self._shelf.opened = self._shelf.opened, None
        if area is None:
            return
        area.live = False
        if area.journals:
            log.warning("leaving memory staging %s for recovery: unsettled moves", self.instance)
            return
        self.state.areas.pop(self.instance, None)

    async def ping(self) -> None:
        _ = self.area  # Unavailable unless open

    @property
    def area(self) -> StagingArea:
        return self._shelf.area

    def _dead_areas(self) -> list[tuple[str, StagingArea]]:
        return [(name, a) for name, a in self.state.areas.items() if not a.live]

    async def leftovers(self, past_grace: bool = False) -> list[Leftover]:
        found = []
        now = self.clock()
        for name, area in self._dead_areas():
            for entry, intent in list(area.journals.items()):
                if past_grace and now - intent.placed.placed_at < self.orphan_grace_seconds:
                    continue  # its record write may still land
                try:
                    asset_id = journal.asset_of(intent.final)
                except (AssetError, IndexError) as exc:
                    log.error("dropping unreadable move journal %s/%s (%s)", name, entry, exc)
                    del area.journals[entry]
                    continue
                found.append(Leftover(asset_id, PREFIX + intent.final, name, entry, intent))
        return found

    async def settle(self, leftover: Leftover, committed: bool) -> None:
        steps = _MemoryMove(self._shelf, leftover.intent)
        await journal.settle(leftover, committed, steps, partial(self._forget, leftover))

    def _forget(self, leftover: Leftover) -> None:
        area = self.state.areas.get(leftover.area)
        if area is not None:
            area.journals.pop(leftover.journal, None)

    async def sweep_dead_staging(self, limit: int = 0) -> int:
        removed = 0
        for name, area in self._dead_areas():
            if area.journals:
                log.error("memory staging %s keeps unsettled move journals; not removed", name)
                continue
            log.warning("removing staging left by a dead instance: %s", name)
            del self.state.areas[name]
            removed += 1
            if removed == limit:
                break
        return removed

    # --- keys and paths ---------------------------------------------------------------

    def _key_of(self, storage_path: str) -> str:
        if not storage_path.startswith(PREFIX):
            raise NotFound(f"{storage_path} is not a path in this storage")
        key = storage_path.removeprefix(PREFIX)
        keys.key_parts(key)
        return key

    # --- writing ----------------------------------------------------------------------

    def new_writer(self, key: str | None = None) -> MemoryWriter:
        return MemoryWriter(self._shelf, key)

    async def clone(
        self, storage_path: str, size_bytes: int, sha256: str, sums: BlockSums
    ) -> MemoryCloned:
        return MemoryCloned(self._shelf, self._key_of(storage_path), size_bytes, sha256, sums)

    async def adopt(self, path: str, move: bool) -> MemoryAdopted:
        validate_server_path(path)
        if self.files is None:
            raise no_import_roots()
        data = self.files.get(path)
        if data is None:
            raise NotFound(f"{shown(path)} does not exist on the server")
        self._shelf.hold(path, move)
        return MemoryAdopted(self._shelf, path, data, move)

    # --- resumable upload sessions -----------------------------------------------------

    async def new_session(self, key: str, session: UploadSession) -> MemorySessionWriter:
        self.area  # noqa: B018 (open, or Unavailable)
        return await self._sessions.new_session(key, session)

    async def take_session(self, key: str) -> MemoryHold | None:
        self.area  # noqa: B018
        return await self._sessions.take_session(key)

    async def read_session(self, key: str) -> UploadSession | None:
        return await self._sessions.read_session(key)

    async def sweep_sessions(self, now: datetime, limit: int = 0) -> int:
        return await self._sessions.sweep_sessions(now, limit)

    # --- reading and housekeeping -----------------------------------------------------

    def _stored(self, storage_path: str, size_bytes: int) -> bytes:
        obj = self.state.objects.get(self._key_of(storage_path))
        if obj is None:
            raise IntegrityError(f"its bytes at {storage_path} are missing")
        if len(obj.data) != size_bytes:
            raise CorruptBytes(
                f"its bytes at {storage_path} are {len(obj.data)} bytes long; the record "
                f"says {size_bytes} (truncated or replaced in storage)"
            )
        return obj.data

    async def open_span(self, span: Span, sums: BlockSums | None) -> AsyncIterator[bytes]:
        data = self._stored(span.storage_path, span.size_bytes)
        if sums is None:
            return _chunks(data, span.offset, span.end, span.chunk_size)
        return _checked(data, span.storage_path, span.offset, span.end, span.chunk_size, sums)

    async def verify(self, storage_path: str, size_bytes: int, sums: BlockSums) -> None:
        obj = self.state.objects.get(self._key_of(storage_path))
        await super().verify(storage_path, size_bytes, sums)
        if obj is not None:
            self._vouched[storage_path] = obj

    async def check(self, storage_path: str, size_bytes: int) -> None:
        self._stored(storage_path, size_bytes)

    async def check_many(
        self, items: Sequence[tuple[str, int]], since: Sequence[datetime] | None = None
    ) -> Sequence[IntegrityError | None]:
        """As on the local disk: bytes placed after their record's time (plus the same
        grace), and not verified since, are Unverified."""
        found: list[IntegrityError | None] = []
        for index, (storage_path, size_bytes) in enumerate(items):
            try:
                self._stored(storage_path, size_bytes)
            except IntegrityError as exc:
                found.append(exc)
                continue
            obj = self.state.objects[self._key_of(storage_path)]
            late = since is not None and obj.placed_at > since[index].timestamp() + CHANGED_GRACE
            if late and self._vouched.get(storage_path) is not obj:
                found.append(Unverified(f"its bytes at {storage_path} were replaced"))
            else:
                found.append(None)
        return found

    async def remove(self, storage_path: str) -> None:
        self.state.objects.pop(self._key_of(storage_path), None)

    async def remove_orphan(
        self, storage_path: str, unclaimed: Callable[[], Awaitable[bool]]
    ) -> bool:
        key = self._key_of(storage_path)
        found = self.state.objects.get(key)
        if found is None or not await unclaimed():
            return False
        if self.state.objects.get(key) is not found:
            return False  # replaced while the records were read: a commit's now
        del self.state.objects[key]
        return True

    async def orphans(self, after: str = "") -> AsyncIterator[tuple[str, str]]:
        """Stored bytes older than the grace, as (asset id, path), in the order of their
        keys, past `after`'s; younger ones may be in flight."""
        now = self.clock()
        start = self._key_of(after) if after else ""
        for key, obj in sorted(self.state.objects.items()):
            if key <= start:
                continue
            parts = key.split("/")
            if len(parts) != 4:  # <area>/<day-or-task>/<asset-id>/<name>
                continue
            try:
                asset_id = parse_asset_id(parts[2])
            except InvalidArgument:
                continue
            if now - obj.placed_at >= self.orphan_grace_seconds:
                yield asset_id, PREFIX + key


class _MemoryMove:
    """The bytes a move placed are the very object journaled; its source, the file's bytes."""

    def __init__(self, shelf: Shelf, intent: MoveIntent) -> None:
        self._shelf = shelf
        self._intent = intent
        self.source = intent.source

    async def placed_is_ours(self) -> bool:
        return self._shelf.state.objects.get(self._intent.final) is self._intent.placed

    async def remove_source(self) -> bool:
        source, data = self.source, self._intent.source_data
        return source is not None and data is not None and self._shelf.remove_source(source, data)

    async def remove_placed(self) -> bool:
        del self._shelf.state.objects[self._intent.final]
        return True


async def _chunks(data: bytes, offset: int, end: int, chunk_size: int) -> AsyncIterator[bytes]:
    view = memoryview(data)
    while offset < end:
        step = min(chunk_size, end - offset)
        yield bytes(view[offset : offset + step])
        offset += step


async def _checked(
    data: bytes, shown: str, offset: int, end: int, chunk_size: int, sums: BlockSums
) -> AsyncIterator[bytes]:
    start, stop = blocks.aligned(sums, offset, end, len(data))
    while start < stop and offset < end:
        block = data[start : min(stop, start + sums.block_bytes)]
        blocks.check_block(sums, shown, start, block)
        for piece in blocks.pieces(block, start, offset, end, chunk_size):
            yield piece
        start += len(block)
