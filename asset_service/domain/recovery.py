"""After a crash: settle journaled moves by their records, and sweep orphan bytes."""

from __future__ import annotations

import functools
import logging

from asset_service.domain.models import Status
from asset_service.domain.ports import BlobStorage, MetadataStore

log = logging.getLogger(__name__)

ORPHAN_BATCH = 500
# Files a bounded collection looks at, per file it may remove: a run lists a bounded
# part of the storage even where nearly every file has its record.
SCAN_PER_REMOVAL = 10


async def recover(
    store: MetadataStore, storage: BlobStorage, limit: int = 0, serving: bool = False
) -> int:
    """Settle moves that crashed processes journaled, then drop their staging: at start-up
    (all of it), and while serving (a process dies while others run), `limit` of each at
    most (0: all). How many moves were settled and staging folders or objects removed.

    A move's source is removed only if its record committed; otherwise the bytes that
    were linked or copied into place go, and the worker's file stays where it was. A
    staging folder holding a journal not yet settled stays (the next call settles it).
    While `serving`, a move journaled within the orphan grace waits: the record write of
    a process that died a moment ago may still land (as a young file may be a commit).
    """
    leftovers = list(await storage.leftovers(past_grace=serving))
    if limit:
        leftovers = leftovers[:limit]
    for leftover in leftovers:
        record = await store.get(leftover.asset_id)
        committed = (
            record is not None
            and record.status is Status.AVAILABLE
            and record.storage_path == leftover.storage_path
        )
        # Its record may have committed, been shared, then deleted: the bytes stay while
        # any record points at them (domain/references.py), and then it did commit.
        if not committed and await store.referenced([leftover.storage_path]):
            committed = True
        await storage.settle(leftover, committed)
    swept = await storage.sweep_dead_staging(limit)
    if leftovers:
        log.info("recovery settled %d interrupted move(s)", len(leftovers))
    return len(leftovers) + swept


async def reconcile(store: MetadataStore, storage: BlobStorage, limit: int = 0) -> int:
    """Remove stored bytes that no record points at (left by a crash mid-commit); at most
    `limit` files (0: all), the rest left for the next call."""
    removed, _ = await reconcile_from(store, storage, limit)
    return removed


async def _unclaimed(store: MetadataStore, asset_id: str, path: str) -> bool:
    """No record points at `path`: neither its asset's nor one sharing its bytes."""
    record = await store.get(asset_id)
    if record is not None and record.storage_path == path:
        return False
    return not await store.referenced([path])


async def reconcile_from(
    store: MetadataStore, storage: BlobStorage, limit: int = 0, after: str = ""
) -> tuple[int, str]:
    """reconcile() of the files past `after` in the storage's order, stopping at `limit`
    removals or `limit` * SCAN_PER_REMOVAL files looked at (0: neither): how many went,
    and where the next call resumes ("" once the pass reached the end)."""
    removed = seen = 0
    cursor = ""
    batch: list[tuple[str, str]] = []

    async def flush() -> int:
        records = await store.get_many(sorted({a for a, _ in batch}))
        unclaimed = {
            path
            for asset_id, path in batch
            if (rec := records.get(asset_id)) is None or rec.storage_path != path
        }
        # Bytes stored once outlive the record they were stored for while another
        # points at them (domain/references.py): only those none points at go.
        shared = await store.referenced(sorted(unclaimed)) if unclaimed else set()
        count = 0
        for asset_id, path in batch:
            if path not in unclaimed or path in shared:
                continue
            # Asked again where no commit of the key can run (remove_orphan): a retry
            # may have replaced the file and written its record since the reads above.
            if await storage.remove_orphan(
                path, functools.partial(_unclaimed, store, asset_id, path)
            ):
                log.warning("removed orphan file %s (no record points at it)", path)
                count += 1
        batch.clear()
        return count

    def budget() -> int:
        return min(ORPHAN_BATCH, limit - removed) if limit else ORPHAN_BATCH

    candidates = storage.orphans(after)
    try:
        async for asset_id, path in candidates:
            batch.append((asset_id, path))
            seen += 1
            full = limit and seen >= limit * SCAN_PER_REMOVAL
            if len(batch) >= budget() or full:
                cursor = path
                removed += await flush()
                if limit and (removed >= limit or full):
                    break
        else:
            cursor = ""
            if batch:
                removed += await flush()
    finally:
        await candidates.aclose()  # type: ignore[attr-defined]
    if removed:
        log.info("reconcile removed %d orphan file(s)", removed)
    return removed, cursor
