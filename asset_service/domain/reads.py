"""Reading many records without holding many large VALUEs at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence

from asset_service.domain.models import Asset

# Records read per store call where many large VALUEs may come back at once: 1000 inputs
# of 4 MiB each must never be loaded together.
READ_BATCH = 16

GetMany = Callable[[Sequence[str]], Awaitable[dict[str, Asset]]]


def slim(asset: Asset) -> Asset:
    """The record without its (possibly large) inline value and block checksums."""
    if asset.value is None and asset.block_sums is None:
        return asset
    return dataclasses.replace(asset, value=None, block_sums=None)
