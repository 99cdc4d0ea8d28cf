"""The two interfaces the domain depends on: a metadata store and a blob storage."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

from asset_service.domain.models import (
    Asset,
    AssetFilter,
    Change,
    Failure,
    Fulfilment,
    Page,
    Resync,
    Status,
)


class MetadataStore(Protocol):
    """Asset records. Every write assigns the next revision of one store-wide counter.

    Implementations: store/sqlite.py (embedded default), store/mongo.py (production).
    The contract suite in tests/contract runs against every one of them.
    """

    async def open(self) -> None:
        """Connect, create schema/indexes; raise Unavailable with a fix-it message on failure."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise Unavailable unless the store answers."""

    async def insert(self, asset: Asset) -> Asset:
        """Store a new record; return it with revision (and timestamps) assigned."""

    async def get(self, asset_id: str) -> Asset | None: ...

    async def get_many(self, asset_ids: Sequence[str]) -> dict[str, Asset]: ...

    async def query(self, flt: AssetFilter, limit: int, page_token: str) -> Page:
        """Oldest first; raise InvalidArgument for a token this store did not issue."""

    async def transition(
        self,
        asset_id: str,
        expected: Status,
        change: Fulfilment | Failure,
        now: datetime,
    ) -> Asset:
        """One conditional write: apply `change` only if the status is `expected`.

        Raise NotFound if the asset is gone, Conflict (naming the current status) if
        another writer got there first.
        """

    async def delete(self, asset_id: str) -> Asset | None:
        """Remove the record; return its last state (with a new revision) or None."""

    def changes(self) -> AsyncIterator[Change | Resync]:
        """Every committed change in commit order; consumed by ONE task per process.

        Yield Resync when changes may have been missed (then subscribers re-read state).
        The iterator runs for the life of the process and recovers from transient errors.
        """


class StagedBlob(Protocol):
    """Bytes in the storage's staging area, hashed, not yet visible."""

    size_bytes: int
    sha256: str

    async def commit(self, key: str) -> str:
        """Durably move the bytes to `key`; return the absolute storage path."""

    async def rollback(self) -> None:
        """Undo everything: remove the bytes, or give a moved source file back."""

    async def finish(self) -> None:
        """After the record is written: drop what is left (e.g. a copied source file)."""


class StagingWriter(StagedBlob, Protocol):
    async def write(self, chunk: bytes) -> None: ...

    async def seal(self) -> None:
        """Flush and fsync; no more writes."""


class BlobStorage(Protocol):
    """Where FILE bytes live: storage/local.py today, an object store later."""

    async def open(self) -> None:
        """Create the layout and remove staging left behind by dead processes."""

    async def close(self) -> None: ...

    def upload_key(self, asset_id: str, label: str, now: datetime) -> str: ...

    def generated_key(self, task_id: str, asset_id: str, label: str) -> str: ...

    def new_writer(self) -> StagingWriter: ...

    async def ingest(self, source: Path, move: bool) -> StagedBlob:
        """Stage a server-side file (already checked against the import roots)."""

    async def read(
        self, storage_path: str, offset: int, limit: int, chunk_size: int
    ) -> AsyncIterator[bytes]: ...

    async def exists(self, storage_path: str) -> bool: ...

    async def remove(self, storage_path: str) -> None: ...

    def orphans(self) -> AsyncIterator[tuple[str, str]]:
        """(asset_id, storage_path) of every stored file old enough to be an orphan.

        Younger files may be another server's commit in flight; the storage's own grace
        period decides (the same one that lets a commit replace a crash leftover).
        """

    def scratch_dir(self, purpose: str) -> Path:
        """A new private directory under tmp/ (manifests, value files)."""

    async def sweep_scratch(self, purpose: str, older_than_seconds: float) -> int:
        """Remove scratch directories of `purpose` older than that; return how many."""
