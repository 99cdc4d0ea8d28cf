"""The AssetManager: every use case of the service, over its ports (one part per module)."""

from asset_service.domain.manager._base import (
    DEFAULT_PAGE_SIZE,
    MAX_BATCH,
    MAX_PAGE_SIZE,
    MAX_RESPONSE_BYTES,
    Limits,
)
from asset_service.domain.manager._manager import AssetManager
from asset_service.domain.manager._reuse import KeyAnswer, KeyOutcome
from asset_service.domain.models import WatchEvent

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_BATCH",
    "MAX_PAGE_SIZE",
    "MAX_RESPONSE_BYTES",
    "AssetManager",
    "KeyAnswer",
    "KeyOutcome",
    "Limits",
    "WatchEvent",
]
