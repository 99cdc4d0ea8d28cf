"""The interfaces the domain depends on: a metadata store (_store.py), a blob storage with
its upload sessions (_storage.py) and a manifest store (_manifests.py)."""

from asset_service.domain.ports._manifests import ManifestDraft, ManifestStore
from asset_service.domain.ports._storage import (
    AdoptedBlob,
    BlobStorage,
    Chunk,
    Leftover,
    SessionHold,
    SessionWriter,
    StagedBlob,
    StagingWriter,
    UploadSessions,
)
from asset_service.domain.ports._store import MetadataStore

__all__ = [
    "AdoptedBlob",
    "BlobStorage",
    "Chunk",
    "Leftover",
    "ManifestDraft",
    "ManifestStore",
    "MetadataStore",
    "SessionHold",
    "SessionWriter",
    "StagedBlob",
    "StagingWriter",
    "UploadSessions",
]
