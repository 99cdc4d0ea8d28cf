"""MemoryStore's shared bytes: who points at a storage path, and a shared write's check."""

from __future__ import annotations

from collections.abc import Sequence

from asset_service.domain.errors import SharedBytesGone
from asset_service.domain.models import Asset, Status


class MemoryReferences:
    """Which records point at a storage path. Like the rest of MemoryStore, each check
    runs without an await between it and the write it guards."""

    _rows: dict[str, tuple[int, Asset]]

    async def _enter(self) -> None:
        raise NotImplementedError

    def _require_shared(self, storage_path: str) -> None:
        """SharedBytesGone unless an AVAILABLE record points at `storage_path`."""
        for _, asset in self._rows.values():
            if asset.status is Status.AVAILABLE and asset.storage_path == storage_path:
                return
        raise SharedBytesGone(storage_path)

    async def referenced(self, storage_paths: Sequence[str]) -> set[str]:
        await self._enter()
        wanted = {p for p in storage_paths if p}
        return {a.storage_path for _, a in self._rows.values() if a.storage_path in wanted}
