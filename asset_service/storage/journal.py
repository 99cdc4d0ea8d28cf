"""The crash journal of moves for every storage: written before the bytes appear, settled later."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from asset_service.domain.errors import AssetError
from asset_service.domain.models import parse_asset_id
from asset_service.domain.ports import Leftover as JournaledMove
from asset_service.modes import PRIVATE_FILE, Modes
from asset_service.storage import fs, keys

log = logging.getLogger(__name__)

LOCK = ".lock"
INTENTS = "intents"


@dataclass(frozen=True)
class Leftover:
    """A move that a dead process left half-done; the record decides which side keeps it.

    `intent` is the entry as journaled: "final" (the key), "source", "dev" and "ino" (the
    server-side file moved), and what tells the placed bytes apart ("final_ino" on a disk,
    "blob_id" in a bucket).
    """

    asset_id: str
    storage_path: str
    journal: Path
    intent: dict[str, Any]


def asset_of(key: str) -> str:
    """The asset id a storage key names (<area>/<day-or-task>/<asset-id>/<name>)."""
    return parse_asset_id(keys.key_parts(key)[-2])


def write_entry(folder: Path, record: dict[str, Any]) -> Path:
    """Durably write a JSON journal entry: temp file, fsync, rename, fsync the folder.

    An entry that exists is complete, and one that does not parse was never acted on.
    Raises OSError; the caller says what it was journaling.
    """
    name = uuid.uuid4().hex
    part, journal = folder / f"{name}.part", folder / f"{name}.json"
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            os.write(fd, json.dumps(record).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(part, journal)
        dir_fd = os.open(folder, fs.DIR_FLAGS)
        try:
            fs.fsync_dir(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        part.unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
        raise
    return journal


def forget(journal: Path | None) -> None:
    """Remove a settled entry (gone already is fine)."""
    if journal is not None:
        with contextlib.suppress(FileNotFoundError):
            journal.unlink()


def _unsettled(folder: Path) -> bool:
    return any((folder / INTENTS).glob("*.json"))


class Journal:
    """<parent>/<instance>/intents/*.json, <instance>/.lock flocked for the process's life.

    One instance folder a process: its lock tells other processes on this host that it
    lives; a folder whose lock can be taken is a dead process's, and its entries are moves
    to settle. The local disk keeps its staging files in the same folder (tmp/staging/ of
    its root); an object store keeps it in its state folder on this host, where the moved
    files are (only this host can finish or undo their moves).
    """

    def __init__(self, parent: Path, instance: str, modes: Modes | None = None) -> None:
        self.modes = modes or Modes()
        self.parent = parent
        self.folder = parent / instance
        self.intents = self.folder / INTENTS
        self._lock_fd: int | None = None

    def open(self) -> str | None:
        """Make the folders and take the lock; what the parent's mode change was (for the
        caller's log line). Raises OSError: the caller says what is not usable."""
        changed = self.modes.folder(self.parent, shared=False)
        self.modes.mkdir(self.folder, shared=False)
        self.modes.mkdir(self.intents, shared=False)
        self._lock_fd = os.open(self.folder / LOCK, os.O_CREAT | os.O_RDWR, PRIVATE_FILE)
        # Held for the life of the process: others see this folder is live.
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return changed

    def close(self) -> None:
        """Release the lock; remove the folder unless it holds moves whose outcome is
        unknown (the next start-up settles them)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.unsettled():
            log.warning("leaving %s for recovery: it holds unsettled moves", self.folder)
            return
        shutil.rmtree(self.folder, ignore_errors=True)

    def unsettled(self) -> bool:
        return _unsettled(self.folder)

    def write(self, intent: dict[str, Any]) -> Path:
        """Durably journal a move before its bytes appear (forget() it once settled)."""
        return write_entry(self.intents, intent)

    # --- other processes' folders ---------------------------------------------------------

    def instances(self) -> tuple[set[str], set[str]]:
        """Names of the instance folders here: (live, dead), this process counted live."""
        live, dead = {self.folder.name}, set()
        for folder in self.parent.iterdir() if self.parent.is_dir() else ():
            if folder == self.folder or not folder.is_dir() or folder.is_symlink():
                continue
            try:
                fd = os.open(folder / LOCK, os.O_RDWR | os.O_NOFOLLOW)
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
        return {f.name for f in self.dead_folders() if _unsettled(f)}

    def leftovers(self, path_of: Callable[[str], str], older_than: float = 0.0) -> list[Leftover]:
        """The moves dead processes journaled, each with its asset and storage path
        (`path_of` a key); with `older_than`, only entries written that many seconds ago."""
        found = []
        now = time.time()
        for folder in self.dead_folders():
            for journal in sorted((folder / INTENTS).glob("*.json")):
                try:
                    if older_than and now - journal.stat().st_mtime < older_than:
                        continue  # the record write of a process that just died may land
                    intent = json.loads(journal.read_text())
                    final = intent["final"]
                    leftover = Leftover(asset_of(final), path_of(final), journal, intent)
                except FileNotFoundError:
                    continue  # settled meanwhile
                except (OSError, ValueError, KeyError, TypeError, IndexError, AssetError) as exc:
                    # Written whole (temp + rename) before anything is placed, so one that
                    # does not parse (a disk error, a hand edit) was never acted on.
                    log.error("dropping unreadable move journal %s (%s)", journal, exc)
                    journal.unlink(missing_ok=True)
                    continue
                found.append(leftover)
        return found

    def sweep_dead(self, limit: int = 0) -> int:
        """Remove the folders of dead instances without unsettled moves, at most `limit`
        (0: all); how many."""
        removed = 0
        for folder in self.dead_folders():
            if _unsettled(folder):
                log.error("%s keeps unsettled move journals; not removed", folder)
                continue
            log.warning("removing %s, left by a dead process", folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
            if removed == limit:
                break
        return removed


class MoveSteps(Protocol):
    """What settling one journaled move takes of a storage; settle() decides which."""

    source: str | None  # the server-side file moved, for the log

    async def placed_is_ours(self) -> bool:
        """The bytes standing at the move's key are the ones it placed."""

    async def remove_source(self) -> bool:
        """Remove the moved file if it still is the one journaled; whether it did."""

    async def remove_placed(self) -> bool:
        """Remove the placed bytes if they still are the move's; whether it did."""


async def settle(
    leftover: JournaledMove, committed: bool, steps: MoveSteps, drop: Callable[[], None]
) -> None:
    """Finish a journaled move whose record committed (remove its source), or undo one
    whose record did not (remove its bytes), then `drop` its entry.

    Only while the bytes standing at the key are the journaled ones: otherwise a retry
    committed bytes of its own there, and the source stays, so the bytes are never in
    neither place.
    """
    ours = await steps.placed_is_ours()
    if committed and ours:
        if await steps.remove_source():
            log.warning("finished an interrupted move of %r", steps.source)
    elif committed:
        log.warning(
            "asset %s is AVAILABLE with other bytes at %s than an interrupted move "
            "journaled (a retry committed its own); leaving that move's source %r in place",
            leftover.asset_id,
            leftover.storage_path,
            steps.source,
        )
    elif ours and await steps.remove_placed():
        log.warning("undid an interrupted move of %r", steps.source)
    drop()
