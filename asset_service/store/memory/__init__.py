"""MemoryStore: the in-memory fake of the metadata store, and its retention part."""

from asset_service.store.memory._store import MemoryStore, decode_token, encode_token

__all__ = ["MemoryStore", "decode_token", "encode_token"]
