"""MemoryStorage: a BlobStorage held in memory, with LocalStorage's semantics, for fast tests."""

from asset_service.storage.memory._state import PREFIX, Leftover, MemoryState
from asset_service.storage.memory._storage import MemoryStorage

__all__ = ["PREFIX", "Leftover", "MemoryState", "MemoryStorage"]
