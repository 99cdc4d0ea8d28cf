"""Taking the next few items of a watch or change feed, within a time limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def take(items: AsyncIterator[T], n: int, seconds: float = 5) -> list[T]:
    """The next `n` items; TimeoutError if they have not all come within `seconds`."""
    out: list[T] = []
    async with asyncio.timeout(seconds):
        while len(out) < n:
            out.append(await anext(items))
    return out
