"""Where the input manifests of command-line tasks are written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from asset_service.domain.models import (
    Asset,
)


class ManifestDraft(Protocol):
    """One manifest being written; nothing is visible until finish()."""

    async def add_file(self, asset: Asset) -> str:
        """A local absolute path holding a FILE input's bytes (materialized if need be)."""

    async def add_values(self, assets: Sequence[Asset]) -> dict[str, str]:
        """A local file holding each VALUE's content (may be shared by several manifests,
        like a FILE input's stored file); {asset id: absolute path}."""

    async def finish(self, entries: Mapping[str, str], config: Mapping[str, Any]) -> str:
        """Write input_data.json ({"inputs": entries, "config_params": config}); its path."""

    async def discard(self) -> None: ...


class ManifestStore(Protocol):
    """Where manifests (input_data.json and VALUE files) are written for command-line tasks."""

    async def open(self) -> None: ...

    async def create(self) -> ManifestDraft: ...

    async def sweep(self, older_than_seconds: float, limit: int = 0) -> int:
        """Remove manifests older than that, at most `limit` (0: all); return how many."""

    async def sweep_cache(self, older_than_seconds: float, limit: int = 0) -> int:
        """Remove local copies of stored inputs (an object store's) unused for that long
        (0: none by age), past the cache's byte budget, or left half-written by a crash;
        at most `limit` (0: all); how many. A manifest keeps its own link to a copy."""
