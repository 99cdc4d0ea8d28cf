"""Blob storage on a local (or shared) filesystem: staging, atomic commits, crash recovery."""

from asset_service.storage.local._storage import Leftover, LocalStorage

__all__ = ["Leftover", "LocalStorage"]
