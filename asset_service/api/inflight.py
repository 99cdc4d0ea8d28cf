"""AssetService calls running now, so that a stop can let them finish before it closes."""

from __future__ import annotations

import asyncio
from types import TracebackType


class InFlight:
    """Counts calls between __enter__ and __exit__; `idle()` waits for none (bounded)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    def is_idle(self) -> bool:
        return self.count == 0

    async def wait_idle(self) -> None:
        """Returns once no call is running (bound it with asyncio.timeout)."""
        await self._idle.wait()
