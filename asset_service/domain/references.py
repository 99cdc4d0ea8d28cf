"""Bytes stored once: they go with the last record pointing at them, never before it.

On an object store records may share one object (BlobStorage.clone, issue 24): the
records pointing at a storage path are its references, counted by the metadata store
itself (MetadataStore.referenced, from an index), so there is no counter to keep right
through crashes. Two rules make that enough:

- A record comes to point at stored bytes only by a shared write, which applies only while
  an AVAILABLE record still points there, in the same atomic write (else SharedBytesGone:
  the caller stores the bytes anew). So once no record points at a path, none ever will.
- Bytes go only after a record's delete has committed AND a read after it says no record
  points there. Of several deletes racing, the one committed last reads after all of them
  and removes the bytes; a shared write racing a delete either committed first (the read
  sees it: the bytes stay) or is refused.

A crash between the delete and the removal leaves the bytes with no reference: the
orphan collection (reconcile) removes them once past the storage's grace, checking the
same "no record points there", so nothing leaks for good. Every other path that removes
bytes asks the same question first: start-up recovery of journaled moves, and the
settling of record writes whose outcome was unknown.
"""

from __future__ import annotations

import logging

from asset_service.domain.errors import AssetError
from asset_service.domain.ports import BlobStorage, MetadataStore

log = logging.getLogger(__name__)


async def remove_unreferenced(store: MetadataStore, storage: BlobStorage, path: str) -> bool:
    """After a record pointing at `path` was deleted: remove its bytes unless another
    record still points there. Whether they went. Failing to tell (the store is down)
    keeps them: the orphan collection removes them later if nothing points there."""
    try:
        if await store.referenced([path]):
            log.info("bytes at %s kept: another asset still holds them", path)
            return False
    except AssetError as exc:
        log.warning("bytes at %s kept for the orphan collection: %s", path, exc.message)
        return False
    await storage.remove(path)
    return True
