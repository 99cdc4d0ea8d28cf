"""A local journal of moves into the object store, so a crashed process's moves get settled."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asset_service.domain.errors import Unavailable
from asset_service.modes import PRIVATE_FILE, Modes, report
from asset_service.storage import fs

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class Leftover:
    """A move that a dead process left half-done; the record decides which side keeps it."""

    asset_id: str
    storage_path: str
    journal: Path
    intent: dict[str, Any]


class Journal:
    """<state>/<instance>/intents/*.json, the instance folder flocked for the process's life.

    The source of a move is a server-side file, so its journal lives on this server's disk,
    not in the bucket: only this host can finish (or undo) the move.
    """

    def __init__(self, state_dir: Path, instance: str, modes: Modes | None = None) -> None:
        self.modes = modes or Modes()
        self.parent = state_dir.resolve()
        self.folder = self.parent / instance
        self.intents = self.folder / "intents"
        self._lock_fd: int | None = None

    def open(self) -> None:
        try:
            report([self.modes.folder(self.parent, shared=False)], "the object store's state")
            self.modes.mkdir(self.folder, shared=False)
            self.modes.mkdir(self.intents, shared=False)
            self._lock_fd = os.open(self.folder / ".lock", os.O_CREAT | os.O_RDWR, PRIVATE_FILE)
            # Held for the life of the process: others see this folder is live.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise Unavailable(f"state folder {self.parent} is not usable: {exc}") from exc

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.unsettled():
            log.warning("leaving %s for recovery: it holds unsettled moves", self.folder)
            return
        shutil.rmtree(self.folder, ignore_errors=True)

    def unsettled(self) -> bool:
        return any(self.intents.glob("*.json"))

    def instances(self) -> tuple[set[str], set[str]]:
        """Names of the instance folders here: (live, dead), this process counted live."""
        live, dead = {self.folder.name}, set()
        for folder in self.parent.iterdir() if self.parent.is_dir() else ():
            if folder == self.folder or not folder.is_dir() or folder.is_symlink():
                continue
            try:
                fd = os.open(folder / ".lock", os.O_RDWR | os.O_NOFOLLOW)
            except OSError:
                dead.add(folder.name)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.add(folder.name)  # a live process owns it
                continue
            finally:
                os.close(fd)
            dead.add(folder.name)
        return live, dead

    def dead_folders(self) -> list[Path]:
        """Instance folders whose process is gone (their lock can be taken)."""
        return [self.parent / name for name in sorted(self.instances()[1])]

    def blocked(self) -> set[str]:
        """Dead instances that still hold unsettled moves: their staging must stay."""
        return {f.name for f in self.dead_folders() if any((f / "intents").glob("*.json"))}

    def dead_intents(self) -> list[tuple[Path, dict[str, Any]]]:
        found = []
        for folder in self.dead_folders():
            for journal in sorted((folder / "intents").glob("*.json")):
                try:
                    found.append((journal, json.loads(journal.read_text())))
                except (OSError, ValueError) as exc:
                    # Written whole (temp + rename) before anything is placed, so one that
                    # does not parse was never acted on.
                    log.error("dropping unreadable move journal %s (%s)", journal, exc)
                    journal.unlink(missing_ok=True)
        return found

    def sweep_dead(self, limit: int = 0) -> int:
        """Remove the state folders of dead instances without unsettled moves, at most
        `limit` (0: all); how many."""
        removed = 0
        for folder in self.dead_folders():
            if any((folder / "intents").glob("*.json")):
                log.error("state %s keeps unsettled move journals; not removed", folder)
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
            if removed == limit:
                break
        return removed

    def write(self, intent: dict[str, Any]) -> Path:
        """Durably journal a move before its object appears: temp file, fsync, rename."""
        try:
            return fs.write_journal(self.intents, intent)
        except OSError as exc:
            raise Unavailable(f"could not journal a move in {self.intents}: {exc}") from exc

    @staticmethod
    def forget(journal: Path | None) -> None:
        if journal is not None:
            with contextlib.suppress(FileNotFoundError):
                journal.unlink()
