"""Watch: the change hub, id watches, the shared history and selector watches."""

from asset_service.domain.watch._history import DEFAULT_HISTORY_BYTES, History
from asset_service.domain.watch._hub import (
    DEFAULT_BUFFER_BYTES,
    EVENT_OVERHEAD_BYTES,
    ChangeHub,
    Subscription,
    change_cost,
)
from asset_service.domain.watch._selectors import Selector, SelectorStream, went_back
from asset_service.domain.watch._streams import DEFAULT_CATCH_UP_BATCH, WatchStream

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_CATCH_UP_BATCH",
    "DEFAULT_HISTORY_BYTES",
    "EVENT_OVERHEAD_BYTES",
    "ChangeHub",
    "History",
    "Selector",
    "SelectorStream",
    "Subscription",
    "WatchStream",
    "change_cost",
    "went_back",
]
