"""Making bytes visible: place them, write the record, settle — never losing either side."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from asset_service.domain.errors import (
    AssetError,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Occupied,
    OutcomeUnknown,
    Overloaded,
)
from asset_service.domain.models import Asset, Status
from asset_service.domain.ports import MetadataStore, StagedBlob

log = logging.getLogger(__name__)


class Handover:
    """Owns a staged blob until publish() takes it; rolls it back if the request fails first.

    After the handover the publishing task alone decides between finish and rollback, so a
    cancelled RPC can never remove bytes that a record may already point at.
    """

    def __init__(self, blob: StagedBlob, shares: str = "") -> None:
        self.blob = blob
        # The storage path of the stored bytes `blob` is a clone of (BlobStorage.clone),
        # or "". A commit that returns that very path shares them: its record is written
        # with shared=True (domain/references.py).
        self.shares = shares
        self._taken = False

    def shared(self, path: str) -> bool:
        """Whether a record at `path` (what commit returned) shares stored bytes."""
        return bool(self.shares) and path == self.shares

    def take(self) -> StagedBlob:
        self._taken = True
        return self.blob

    @property
    def taken(self) -> bool:
        """publish() took the blob: a request that returned then committed with it."""
        return self._taken

    def __enter__(self) -> Handover:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if not self._taken:
            # Plain (synchronous) cleanup: this may run while a cancelled RPC unwinds.
            self.blob.discard()


@dataclass
class _Unsettled:
    asset_id: str
    storage_path: str
    blob: StagedBlob


class Committer:
    """Runs each commit as its own task and settles writes whose outcome was unknown."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        # Record writes in flight: they run to the end even if their RPC is cancelled.
        self.publishing: set[asyncio.Task[Asset]] = set()
        # Bytes whose record write had an unknown outcome: settled once the store answers.
        self.unsettled: list[_Unsettled] = []

    async def publish(
        self,
        handover: Handover,
        asset_id: str,
        key: str,
        write: Callable[[str], Awaitable[Asset]],
    ) -> Asset:
        """Commit the bytes to `key`, write the record that points at them, settle the blob.

        Runs as its own task: once the record write may have been sent, the RPC's
        cancellation (or deadline) can no longer stop it halfway. A write whose outcome is
        unknown (an error after it may have applied) is settled by re-reading the record;
        bytes are removed only once the record is known not to point at them.
        """
        blob = handover.take()

        async def run() -> Asset:
            try:
                path = await self._commit(blob, asset_id, key)
            except BaseException:
                await blob.rollback()
                raise
            try:
                stored = await write(path)
            except (Conflict, NotFound, InvalidArgument, FailedPrecondition, Overloaded):
                await blob.rollback()  # a definite "no": nothing was written
                raise
            except BaseException as exc:
                stored = await self._confirm(asset_id, path, blob, exc)
            try:
                await blob.finish()
            except Exception:
                # The record is committed, so the call succeeded; what is left (a source
                # not yet removed) stays journaled and the next start-up completes it.
                log.exception("asset %s committed, but completing its move failed", asset_id)
            return stored

        task = asyncio.create_task(run())
        self.publishing.add(task)
        task.add_done_callback(self.publishing.discard)
        return await asyncio.shield(task)

    async def _commit(self, blob: StagedBlob, asset_id: str, key: str) -> str:
        """blob.commit(key); bytes a dead process left at the key (no live commit holds
        them: Occupied) are replaced at once unless a record points at them.

        The same test as the orphan sweep's (recovery.py): asset_id's record, or any
        record (MetadataStore.referenced). Races: a second retry meets Conflict (the
        storage holds the key until this blob is settled); no commit can place bytes at
        the name meanwhile (it holds the key, and the occupant the name); a delete only
        removes; a dead process's record write that lands after this read (MongoDB)
        makes this commit's conditional write fail, and the rollback puts the occupant
        back. Sharing needs a live record at the path, so none can appear once none is.
        """
        try:
            return await blob.commit(key)
        except Occupied as occupied:
            path = occupied.storage_path
            found = (await self.store.settled([asset_id])).get(asset_id)
            recorded = found is not None and found.storage_path == path
            if recorded or await self.store.referenced([path]):
                raise Conflict(
                    f"asset {asset_id}'s bytes were committed by another request meanwhile; "
                    "re-read the asset"
                ) from None
            log.warning("replacing %s: no record points at it", occupied.storage_path)
            return await occupied.replace()

    async def _confirm(
        self, asset_id: str, path: str, blob: StagedBlob, cause: BaseException
    ) -> Asset:
        """After a failed record write: the record if it applied after all, else roll back.

        Read with settled(): a read that could show a commit a failover then rolls back
        (or miss one still on its way) would keep bytes nothing points at, or remove
        bytes a record then points at.
        """
        try:
            found = (await self.store.settled([asset_id])).get(asset_id)
            shared = found is None and bool(await self.store.referenced([path]))
        except BaseException:
            self.unsettled.append(_Unsettled(asset_id, path, blob))
            log.warning("record write of asset %s has an unknown outcome: %s", asset_id, cause)
            raise OutcomeUnknown(
                f"the record of asset {asset_id} may or may not have been written ({cause}); "
                "its bytes are kept: re-read it with GetAsset before retrying"
            ) from cause
        if found is not None and found.storage_path == path and found.status is Status.AVAILABLE:
            log.warning("record write of asset %s reported %r but had applied", asset_id, cause)
            return found
        if shared:
            # It had applied, other records came to share its bytes, and it was deleted
            # meanwhile: the bytes are theirs now (domain/references.py).
            await blob.finish()
        else:
            await blob.rollback()
        raise cause

    async def settle(self) -> int:
        """Retry what an ambiguous record write left: keep or drop the bytes by the record
        as it will stay (one settled() read for all); nothing while that is unknown."""
        pending = list(self.unsettled)
        if not pending:
            return 0
        try:
            records = await self.store.settled([item.asset_id for item in pending])
            # A record that applied may have been shared and deleted since: its bytes
            # stay while others point at them (domain/references.py).
            shared = await self.store.referenced(
                [i.storage_path for i in pending if i.asset_id not in records]
            )
        except AssetError as exc:
            log.info("%d record write(s) still have an unknown outcome: %s", len(pending), exc)
            return 0
        for item in pending:
            found = records.get(item.asset_id)
            if (
                found is not None and found.storage_path == item.storage_path
            ) or item.storage_path in shared:
                await item.blob.finish()
            else:
                await item.blob.rollback()
            self.unsettled.remove(item)
        return len(pending)

    async def stop(self) -> None:
        """Let commits in flight end, settle what can be; keep the rest for recovery."""
        if self.publishing:
            await asyncio.wait(set(self.publishing), timeout=30)
        await self.settle()
        for item in self.unsettled:
            item.blob.abandon()  # the next start-up settles them from the journal
