"""The blob storage: bytes staged, committed, read, checked and removed; upload sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeAlias

from asset_service.domain.errors import IntegrityError
from asset_service.domain.models import (
    BlockSums,
)
from asset_service.domain.uploads import UploadSession


class StagedBlob(Protocol):
    """Bytes on their way into storage, hashed, not yet visible.

    commit() places them under a key; then exactly one of finish() (a record now points
    at them), rollback()/discard() (none does) or abandon() (unknown: keep everything for
    start-up recovery) ends the blob's life.
    """

    size_bytes: int
    sha256: str
    # crc32c per block, computed in the same pass as the sha256 (final once sealed/staged).
    block_sums: BlockSums

    async def commit(self, key: str) -> str:
        """Durably place the bytes at `key` (never overwriting); return the storage path.

        Bytes there that a live commit holds: Conflict. Bytes no live commit holds (where
        the storage can tell, the local disk: the blob then holds the key until it ends):
        Occupied, whose replace() commits over them once the caller found no record
        pointing at them. Where it cannot tell, bytes older than the orphan grace are
        replaced by commit() itself, younger ones are a Conflict."""

    async def finish(self) -> None:
        """After the record is written: complete a move (remove the source), release."""

    async def rollback(self) -> None:
        """Undo everything: remove placed bytes; a source file stays where it was."""

    def discard(self) -> None:
        """rollback() without awaiting, for cleanup while a cancelled request unwinds."""

    def abandon(self) -> None:
        """Keep bytes, source and journal as they are; recovery settles them later."""


# An upload's chunk: the server passes views of the messages it received, not copies.
Chunk: TypeAlias = bytes | memoryview


class AdoptedBlob(StagedBlob, Protocol):
    """A server-side file staged (BlobStorage.adopt)."""

    async def forgo(self) -> None:
        """Never committed, because the asset's record points at the same bytes stored
        already (bytes stored once), and that record has committed: what was staged goes
        as rollback() removes it, and a move's source as finish() would take it (only if
        it is still the file adopted). A crash before it leaves the source in place."""


class StagingWriter(StagedBlob, Protocol):
    async def write(self, chunk: Chunk) -> None: ...

    async def seal(self) -> None:
        """Flush and fsync; no more writes."""


class _Held(Protocol):
    """A resumable upload's session, held by one stream: no other stream can take it until
    the hold ends (release, remove, or the writer's suspend)."""

    @property
    def session(self) -> UploadSession:
        """As recorded; committed_bytes may be more than the storage finds (never less)."""

    async def save(self, session: UploadSession) -> None:
        """Record `session` durably (about to complete, completed)."""

    async def remove(self) -> None:
        """Remove the session: its record and everything it staged. The hold ends."""

    def release(self) -> None:
        """End the hold, changing nothing (idempotent)."""


class SessionHold(_Held, Protocol):
    async def resume(self) -> SessionWriter:
        """The bytes held durably, read back and hashed (after a restart nothing else can
        vouch for them), ready to take the next ones; the hold passes to the writer."""


class SessionWriter(StagingWriter, _Held, Protocol):
    """A resumable upload's bytes: size_bytes, sha256 (and any other digest) cover the
    WHOLE file, the durable prefix included.

    A stream that was cut ends with suspend(); one that completes with seal() and a commit
    settled by StagedBlob's methods, which concern the bytes only (the record stays until
    save() or remove()).
    """

    async def suspend(self, expires_at: datetime) -> UploadSession:
        """Make what was received durable as far as the storage can (what it cannot is
        dropped: an object store's unfinished part), record that offset and `expires_at`,
        and end the hold. The record as saved."""


class UploadSessions(Protocol):
    """Where resumable uploads keep their sessions: beside the bytes, in the same storage
    (a folder of the storage root, or objects and a multipart upload in the bucket), so
    that they survive a restart and any server sharing the storage can resume them."""

    async def new_session(self, key: str, session: UploadSession) -> SessionWriter:
        """Start a session with no bytes, held by the calling stream; Conflict if there is
        one under `key` already (two first streams racing)."""

    async def take_session(self, key: str) -> SessionHold | None:
        """Hold the session under `key` for one stream: None if there is none, Conflict if
        another stream holds it."""

    async def read_session(self, key: str) -> UploadSession | None:
        """The session as it stands (committed_bytes: what is durable now), without
        holding it."""

    async def sweep_sessions(self, now: datetime, limit: int = 0) -> int:
        """Remove sessions that expired by `now` (and are not held), with everything they
        staged, and what a crash left of one being created: at most `limit` (0: all), the
        rest left for the next call; how many."""


class Leftover(Protocol):
    """A move a dead process journaled but did not settle."""

    @property
    def asset_id(self) -> str: ...

    @property
    def storage_path(self) -> str: ...


class BlobStorage(UploadSessions, Protocol):
    """Where FILE bytes live: storage/local/ (the local disk) or storage/s3/ (an object store)."""

    async def open(self) -> None:
        """Create the layout and this process's staging area."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise Unavailable unless bytes can be stored and read now (the readiness probe,
        every health interval): cheap, and bounded by its caller's timeout."""

    async def leftovers(self, past_grace: bool = False) -> Sequence[Leftover]:
        """Moves journaled by processes that died, for recovery to settle; `past_grace`
        (while serving): only those journaled longer than the orphan grace ago, as the
        record write of a process that died a moment ago may still land."""

    async def settle(self, leftover: Any, committed: bool) -> None:
        """Finish a move whose record committed (remove its source) or undo one that did not."""

    async def sweep_dead_staging(self, limit: int = 0) -> int:
        """Remove staging left by dead processes (after their moves were settled), at most
        `limit` folders or objects (0: all), the rest left for the next call; how many.
        A live process's staging is never removed, however old (its lock says it lives)."""

    def new_writer(self, key: str | None = None) -> StagingWriter:
        """A writer for new bytes. With `key` (where they will be committed, when known
        before they come), commit() must be given that key: an object store then streams
        the bytes to it and needs no copy at commit; ValueError for another key."""

    async def adopt(self, path: str, move: bool) -> AdoptedBlob:
        """Stage a server-side file under an import root, opened without following symlinks.

        With `move`, the source is removed only by finish(), after the record commits.
        """

    async def clone(
        self, storage_path: str, size_bytes: int, sha256: str, sums: BlockSums
    ) -> StagedBlob | None:
        """Stored bytes (vouched for by the caller: `size_bytes`, `sha256`, `sums` are
        their record's, and it checked them) staged to be committed under another key
        without being copied: the bytes are then stored once. On the local disk a hard
        link, whose count (the file system's) is the reference count: removing one name
        leaves the others whole, through any crash. On an object store, the same object:
        commit() returns `storage_path` itself, the record is written with shared=True
        (MetadataStore.insert) and rollback() never removes it; the records pointing at
        it are its references (MetadataStore.referenced). None where the storage cannot:
        the caller copies them. Committing raises SharedBytesGone if the bytes were removed
        meanwhile (the source's asset deleted): the caller looks for another holder of the
        same bytes, or stores them anew."""

    async def read(
        self,
        storage_path: str,
        size_bytes: int,
        offset: int,
        limit: int,
        chunk_size: int,
        sums: BlockSums | None = None,
    ) -> AsyncIterator[bytes]:
        """The stored bytes; IntegrityError if they are missing or not `size_bytes` long.

        With `sums`, whole blocks are read and each is checked before any of its bytes is
        yielded (a ranged read too): the stream ends with CorruptBytes, naming the block's
        offset, at the first that does not match.
        """

    async def summed(
        self,
        storage_path: str,
        size_bytes: int,
        sha256: str,
        pace: Callable[[int], Awaitable[None]] | None = None,
    ) -> BlockSums:
        """Block sums of bytes stored before they were kept: read whole, vouched for by
        `sha256` (CorruptBytes if they no longer hash to it). `pace(n)` after each chunk."""

    async def verify(self, storage_path: str, size_bytes: int, sums: BlockSums) -> None:
        """Read every block and check it (CorruptBytes); a file found Unverified by
        check_many is then taken as vouched for."""

    async def check(self, storage_path: str, size_bytes: int) -> None:
        """IntegrityError unless the bytes are there with that size."""

    async def check_many(
        self, items: Sequence[tuple[str, int]], since: Sequence[datetime] | None = None
    ) -> Sequence[IntegrityError | None]:
        """check() of every (storage_path, size_bytes) at once (GetManifest's inputs):
        each one's IntegrityError, or None, in order. With `since` (each record's time),
        bytes whose storage says they were written over after it are Unverified (verify()
        them before use); storages that cannot tell check reads only."""

    async def remove(self, storage_path: str) -> None: ...

    async def remove_orphan(
        self, storage_path: str, unclaimed: Callable[[], Awaitable[bool]]
    ) -> bool:
        """Remove bytes the orphan sweep found no record pointing at, if `unclaimed()`,
        asked again right before, still says so: a retry that replaced them and wrote
        its record after the sweep's first look keeps its bytes. Whether they went. On
        the local disk the key's folder is held meanwhile (flock: no commit of the key
        can link; one under way answers False at once, unasked); elsewhere a commit
        replaces only bytes past the orphan grace, which the sweep's candidates are."""

    def orphans(self, after: str = "") -> AsyncIterator[tuple[str, str]]:
        """(asset_id, storage_path) of every stored file old enough to be an orphan, in
        the storage's own order of paths; with `after` (a path it yielded before), those
        past it only, listing none of those before: a pass may stop and resume there.

        Younger files may be another server's commit in flight; the storage's own grace
        period decides (the same one that lets a commit replace a crash leftover).
        """
