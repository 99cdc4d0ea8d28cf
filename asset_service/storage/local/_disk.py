"""What LocalStorage's blobs and sessions use of it: the root's folders, modes and journal."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

from asset_service.modes import Modes
from asset_service.storage import fs
from asset_service.storage.journal import Journal


def oserror(exc: OSError, where: str) -> Exception:
    if exc.errno in fs.NO_SPACE:
        return fs.no_space(exc, where)
    return exc


class Disk:
    """One LocalStorage instance's storage root: a blob commits through it, never through
    the storage (as a BuildGrid write session never calls its storage).

    uploads/, generated/ and tmp/ under the root; this instance's staging folder (with its
    move journal, intents/) under tmp/staging/.
    """

    def __init__(
        self, root: Path, modes: Modes, direct_io: bool, orphan_grace_seconds: float
    ) -> None:
        self.root = root
        # Stored files and their folders: owner-only, or shared with --share-group's group.
        self.modes = modes
        # Uploads written with O_DIRECT where the file system allows it, instead of through
        # the page cache with early writeback (storage/sink.py says why not by default).
        self.direct_io = direct_io
        # A file in a final location younger than this may be another server's commit.
        self.orphan_grace_seconds = orphan_grace_seconds
        self.uploads = root / "uploads"
        self.generated = root / "generated"
        self.tmp = root / "tmp"
        self.staging_parent = self.tmp / "staging"
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # This instance's staging folder is its journal's instance folder (journal.py).
        self.journal = Journal(self.staging_parent, self.instance, modes)
        self.staging, self.intents = self.journal.folder, self.journal.intents
        self.device = -1  # the root's st_dev, once the storage is open

    def open_folder(self, parts: tuple[str, ...], create: bool = False) -> int:
        return fs.open_dir(self.root, parts, "/".join(parts), create, self._shared_dir)

    def _shared_dir(self, name: str, dir_fd: int) -> None:
        self.modes.mkdir(name, shared=True, dir_fd=dir_fd)

    def prune_empty(self, folder_fd: int) -> None:
        """Remove the now-empty per-asset folder of a rolled-back commit (best effort)."""
        with contextlib.suppress(OSError):
            path = os.readlink(f"/proc/self/fd/{folder_fd}")
            self.prune_empty_path(Path(path))

    def prune_empty_path(self, folder: Path) -> None:
        stops = {self.root, self.uploads, self.generated, self.tmp, self.staging_parent}
        while folder not in stops and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def write_intent(self, intent: dict[str, Any]) -> Path:
        """Durably journal a move before its final name appears (removed once settled)."""
        try:
            return self.journal.write(intent)
        except OSError as exc:
            raise oserror(exc, "journaling a move") from None
