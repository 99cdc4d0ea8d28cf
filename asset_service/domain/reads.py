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
    """The record without its (possibly large) inline value."""
    return asset if asset.value is None else dataclasses.replace(asset, value=None)


async def read_slim(
    get_many: GetMany, ids: Sequence[str], batch: int = READ_BATCH
) -> dict[str, Asset]:
    """Current states of `ids` without their values, read a batch at a time; values are
    fetched again, a batch at a time, by whoever needs them."""
    found: dict[str, Asset] = {}
    step = max(1, batch)
    for start in range(0, len(ids), step):
        for asset_id, asset in (await get_many(ids[start : start + step])).items():
            found[asset_id] = slim(asset)
    return found
