"""What MemoryStorage's blobs and sessions use of it: its state, staging area and claims."""

from __future__ import annotations

import logging
from collections.abc import Callable

from asset_service.domain.errors import Conflict, Unavailable, shown
from asset_service.storage.memory._state import MemoryState, StagingArea

log = logging.getLogger(__name__)


class Shelf:
    """One MemoryStorage instance's place in the shared state: a blob commits through it,
    never through the storage (as a BuildGrid write session never calls its storage).

    `files` are the server's files under its import roots (None: no import roots).
    """

    def __init__(
        self,
        state: MemoryState,
        files: dict[str, bytes] | None,
        orphan_grace_seconds: float,
        clock: Callable[[], float],
        instance: str,
    ) -> None:
        self.state = state
        self.files = files
        self.orphan_grace_seconds = orphan_grace_seconds
        self.clock = clock
        self.instance = instance
        self.opened: StagingArea | None = None  # this instance's area, from open() to close()

    @property
    def area(self) -> StagingArea:
        if self.opened is None:
            raise Unavailable("the memory storage is not open; call open() first")
        return self.opened

    def claim(self, key: str) -> None:
        """Refuse a key in use, unless what holds it is a crash leftover past the grace."""
        existing = self.state.objects.get(key)
        if existing is None:
            return
        age = self.clock() - existing.placed_at
        if age < self.orphan_grace_seconds:
            raise Conflict(
                "the asset's bytes are being committed by another request; retry shortly"
            )
        log.warning("replacing bytes left %.0fs ago by an interrupted commit", age)

    def hold(self, path: str, move: bool) -> None:
        """Hold a server-side file being adopted, as LocalStorage's flock: a move alone,
        copies together."""
        held = self.state.adopting.get(path, 0)
        if held < 0 or (move and held > 0):
            raise Conflict(
                f"{shown(path)} is being adopted by another request; one of them wins, "
                "re-read the asset before retrying"
            )
        self.state.adopting[path] = -1 if move else held + 1

    def unhold(self, path: str, move: bool) -> None:
        """Let go of a server-side file hold() held."""
        left = 0 if move else self.state.adopting.get(path, 1) - 1
        if left > 0:
            self.state.adopting[path] = left
        else:
            self.state.adopting.pop(path, None)

    def remove_source(self, path: str, data: bytes) -> bool:
        """Delete a moved server-side file if it still is the one adopted; True if removed."""
        if self.files is None or self.files.get(path) is not data:
            return False
        del self.files[path]
        return True
