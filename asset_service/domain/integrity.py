"""Vouching for stored bytes: block sums for old assets, corrupt marks, checked reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from asset_service.domain.errors import (
    AssetError,
    Conflict,
    CorruptBytes,
    IntegrityError,
    NotFound,
    Unverified,
)
from asset_service.domain.locks import KeyedLocks
from asset_service.domain.models import Asset, BlockSums, Corruption, Status
from asset_service.domain.ports import BlobStorage, MetadataStore

log = logging.getLogger(__name__)

# updated_by of the change that marks an asset corrupt (or whole again).
CHECKER = "integrity-check"
# A corrupt_reason is kept to this many characters.
MAX_CORRUPT_REASON = 1024

Pace = Callable[[int], Awaitable[None]]


def refused(asset: Asset) -> IntegrityError:
    """The DATA_LOSS every read and manifest of an asset marked corrupt gets."""
    return IntegrityError(
        f"asset {asset.id} is corrupt: {asset.corrupt_reason}; its bytes are not served. "
        "Restore them from a copy (same sha256) and scrub it again, or delete the asset"
    )


def named(asset: Asset, exc: IntegrityError) -> IntegrityError:
    """`exc` with the asset's id in front (and a CorruptBytes' offset kept)."""
    message = f"asset {asset.id} is AVAILABLE but {exc.message}"
    if isinstance(exc, CorruptBytes):
        return CorruptBytes(message, exc.offset)
    return IntegrityError(message)


async def close(chunks: AsyncIterator[bytes]) -> None:
    """Close a storage's chunk stream now (its open file or connection), not when it is
    collected; the storages return async generators."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


class Integrity:
    """What the manager, the scrub and GetManifest share to vouch for stored bytes."""

    def __init__(self, store: MetadataStore, storage: BlobStorage) -> None:
        self.store = store
        self.storage = storage
        self._summing = KeyedLocks()

    async def sums_for(self, asset: Asset, pace: Pace | None = None) -> BlockSums:
        """The asset's block sums; for one stored before they were kept, computed once
        from its bytes (vouched for by its sha256: CorruptBytes, for the caller to mark,
        if they no longer hash to it) and kept in its record."""
        if asset.block_sums is not None and asset.block_sums.covers(asset.size_bytes):
            return asset.block_sums
        # One computation per asset at a time; a read that waited finds them kept.
        async with self._summing.hold(asset.id):
            latest = await self.store.get(asset.id)
            known = latest.block_sums if latest is not None else None
            if known is not None and known.covers(asset.size_bytes):
                return known
            sums = await self.storage.summed(
                asset.storage_path, asset.size_bytes, asset.sha256, pace
            )
            await self.store.set_block_sums(asset.id, asset.storage_path, sums)
            log.info("kept the block checksums of asset %s (stored before they were)", asset.id)
            return sums

    async def mark_corrupt(self, asset: Asset, exc: IntegrityError) -> None:
        """Record that the asset's bytes are corrupt (its readers then get DATA_LOSS at
        once, its watchers see the change); a store failure is logged, not raised."""
        reason = exc.message[:MAX_CORRUPT_REASON]
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.error("asset %s is corrupt: %s", asset.id, reason)
        change = Corruption(f"{reason} (found {stamp})", by=CHECKER)
        try:
            # Shielded: a reader that goes away must not leave the mark half-done.
            await asyncio.shield(
                self.store.transition(asset.id, Status.AVAILABLE, change, datetime.now(UTC))
            )
        except (NotFound, Conflict):
            pass  # deleted meanwhile: nothing left to mark
        except AssetError as exc2:  # the store failing: the caller still gets its DATA_LOSS
            log.warning("could not mark asset %s corrupt: %s", asset.id, exc2.message)

    async def clear_mark(self, asset: Asset) -> None:
        """Its bytes check out again (restored from a copy): serve them again."""
        log.warning("asset %s is whole again (was: %s)", asset.id, asset.corrupt_reason)
        change = Corruption("", by=CHECKER)
        with contextlib.suppress(NotFound, Conflict):
            await self.store.transition(asset.id, Status.AVAILABLE, change, datetime.now(UTC))

    async def open_read(
        self, asset: Asset, offset: int, limit: int, chunk_size: int
    ) -> AsyncGenerator[bytes, None]:
        """A FILE asset's bytes in [offset, offset+limit), each block checked before it is
        sent; errors found before the first chunk are raised here."""
        if asset.corrupt_reason:
            raise refused(asset)
        try:
            sums = await self.sums_for(asset)
            chunks = await self.storage.read(
                asset.storage_path, asset.size_bytes, offset, limit, chunk_size, sums
            )
        except CorruptBytes as exc:
            await self.mark_corrupt(asset, exc)
            raise named(asset, exc) from None
        except IntegrityError as exc:
            raise named(asset, exc) from None
        return self.checked(asset, chunks)

    async def checked(
        self, asset: Asset, chunks: AsyncIterator[bytes]
    ) -> AsyncGenerator[bytes, None]:
        """A read's chunks; an integrity error mid-stream names the asset, and bytes found
        corrupt are marked so. Closing this closes `chunks` at once (its open file or
        connection), not when it is collected."""
        try:
            async for chunk in chunks:
                yield chunk
        except CorruptBytes as exc:
            await self.mark_corrupt(asset, exc)
            raise named(asset, exc) from None
        except IntegrityError as exc:
            raise named(asset, exc) from None
        finally:
            await close(chunks)

    async def check_inputs(self, files: list[Asset]) -> None:
        """GetManifest's FILE inputs: IntegrityError for the first that is marked corrupt,
        missing or of another size; those changed on disk after their record are read and
        checked in full first (once per change: the storage remembers)."""
        for asset in files:
            if asset.corrupt_reason:
                raise refused(asset)
        if not files:
            return
        found = await self.storage.check_many(
            [(a.storage_path, a.size_bytes) for a in files], [a.updated_at for a in files]
        )
        suspects = []
        for asset, problem in zip(files, found, strict=True):
            if problem is None:
                continue
            if isinstance(problem, Unverified):
                suspects.append(asset)
                continue
            if isinstance(problem, CorruptBytes):
                await self.mark_corrupt(asset, problem)
            raise named(asset, problem)
        for slim_asset in suspects:
            asset = await self.store.get(slim_asset.id) or slim_asset
            await self.verify(asset)

    async def verify(self, asset: Asset, pace: Pace | None = None) -> None:
        """Read all of a FILE asset's bytes and check them: IntegrityError naming the asset
        (and, for corrupt bytes, marking it) if they do not check out."""
        try:
            if asset.block_sums is None:
                await self.sums_for(asset, pace)  # reads and checks it whole
                return
            if pace is None:
                await self.storage.verify(asset.storage_path, asset.size_bytes, asset.block_sums)
                return
            chunks = await self.storage.read(
                asset.storage_path,
                asset.size_bytes,
                0,
                0,
                asset.block_sums.block_bytes,
                asset.block_sums,
            )
            try:
                async for chunk in chunks:
                    await pace(len(chunk))
            finally:
                await close(chunks)
        except CorruptBytes as exc:
            if not asset.corrupt_reason:
                await self.mark_corrupt(asset, exc)
            raise named(asset, exc) from None
        except IntegrityError as exc:
            raise named(asset, exc) from None
