"""A move the local disk journaled, settled at start-up: the steps journal.settle() takes."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from asset_service.domain.errors import AssetError
from asset_service.storage import fs, keys
from asset_service.storage.imports import ImportRoots
from asset_service.storage.local._disk import Disk


class LocalMove:
    """The file placed by a move is the one whose inode the journal recorded ("final_ino")
    on the storage's device; its source, the server-side file (device, inode) it names."""

    def __init__(self, disk: Disk, imports: ImportRoots, intent: dict[str, Any]) -> None:
        self._disk = disk
        self._imports = imports
        self._intent = intent
        self._parts = keys.key_parts(intent["final"])
        self._final: os.stat_result | None = None  # what stands at the key
        self.source: str | None = intent.get("source")

    async def placed_is_ours(self) -> bool:
        final = self._final = await asyncio.to_thread(self._stat_final)
        return final is not None and (final.st_dev, final.st_ino) == (
            self._disk.device,
            self._intent["final_ino"],
        )

    def _stat_final(self) -> os.stat_result | None:
        try:
            folder = self._disk.open_folder(self._parts[:-1])
        except (OSError, AssetError):
            return None
        try:
            return os.stat(self._parts[-1], dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(folder)

    async def remove_source(self) -> bool:
        intent, final = self._intent, self._final
        if self.source is None or final is None:
            return False
        source = (intent["dev"], intent["ino"])
        if intent["ino"] == intent["final_ino"]:
            # Moved by a hard link: the source is the stored file itself, as it is now (a
            # reboot may renumber the device the journal names).
            source = (final.st_dev, final.st_ino)
        return await asyncio.to_thread(self._imports.remove_if_same, self.source, source)

    async def remove_placed(self) -> bool:
        return await asyncio.to_thread(self._unlink_final)

    def _unlink_final(self) -> bool:
        final = self._final
        try:
            folder = self._disk.open_folder(self._parts[:-1])
        except (OSError, AssetError):
            return False
        try:
            return final is not None and fs.unlink_if_same(
                folder, self._parts[-1], (final.st_dev, final.st_ino)
            )
        finally:
            os.close(folder)
