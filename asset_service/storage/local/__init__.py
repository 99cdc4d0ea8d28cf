"""Blob storage on a local (or shared) filesystem: staging, atomic commits, crash recovery."""

from asset_service.storage.local._storage import LocalStorage

__all__ = ["LocalStorage"]
