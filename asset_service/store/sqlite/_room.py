"""Room on the SQLite database's disk: the disk-full reserve first, every other write after it.

What a full disk takes from SQLite, and how each is kept:
- a delete's own WAL frames (~40 KiB): the reserve (a preallocated file) is released for it;
- the checkpoint that folds the WAL back into the database, which grows the database file
  by the pages the WAL added: a write is admitted only if, once it has committed, the disk
  still holds that growth (`pending`), and the WAL is checkpointed every quarter of the
  reserve, so at most that much is ever pending when the reserve is spent;
- the reserve itself, once spent: while it is missing, every write but a delete is refused,
  and whatever space comes free (bytes deleted, the database's own free pages and WAL given
  back) goes to it first.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from asset_service.domain.errors import StorageFull
from asset_service.store.sqlite._reserve import DiskReserve, free_bytes
from asset_service.store.sqlite._schema import transaction

log = logging.getLogger(__name__)

T = TypeVar("T")

# PRAGMA auto_vacuum = INCREMENTAL: the pages a delete frees can be given back to the disk
# on demand (SQLite otherwise keeps them in the file for reuse). That is how deleting VALUE
# assets, whose bytes live in the database, makes room for the reserve again.
INCREMENTAL = 2
# Pages given back per transaction while the reserve waits for room: each step moves at
# most this many pages (and their parents and pointer-map pages) through the WAL, a few
# hundred KiB, well within the reserve a delete has just released.
SHRINK_STEP_PAGES = 64
# How long making room waits for readers to leave the WAL before trying again later, and
# how often a refused write tries (a delete or a health check always does).
CHECKPOINT_WAIT_MS = 200
SHRINK_RETRY_SECONDS = 1.0
# Pages a group of record writes may touch besides its values': the counter, table and
# index pages they share, pointer-map pages, and a few more per write (its row, its random
# id's index leaf, its tags'); a small insert alone was measured at ~10 frames.
PAGES_PER_GROUP = 16
PAGES_PER_WRITE = 4
# SQLite's own WAL auto-checkpoint threshold, in pages: a reserve too big to need a lower
# one keeps it.
SQLITE_AUTOCHECKPOINT = 1000


def is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL (extended codes keep the primary one in the low byte)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_FULL)
    return "database or disk is full" in str(exc)


def _frugally(conn: sqlite3.Connection, delete: Callable[[], T]) -> T:
    """`delete` without zeroing the pages it frees, to fit in the reserve.

    Builds with SQLITE_SECURE_DELETE (Debian's, Ubuntu's) overwrite every freed page, so
    deleting a 4 MiB VALUE writes 4 MiB of WAL; FAST writes only the pages it must.
    """
    mode = int(conn.execute("PRAGMA secure_delete").fetchone()[0])
    conn.execute("PRAGMA secure_delete = FAST")
    try:
        return delete()
    finally:
        conn.execute(f"PRAGMA secure_delete = {mode}")


class Room:
    """Keeps the database's disk-full reserve; used on the writer connection's thread."""

    def __init__(self, db: Path, reserve_bytes: int, shared: bool = False) -> None:
        self.db = db
        self.reserve = DiskReserve(db.with_name(db.name + ".reserve"), reserve_bytes)
        # Worker processes sharing the database share its reserve too: another may have
        # released or re-created it, so its file is looked at before each use.
        self._shared = shared
        self._shrinkable = False
        self._page = 4096
        self._shrunk_at = -SHRINK_RETRY_SECONDS
        self._wal = db.with_name(db.name + "-wal")

    def open(self, conn: sqlite3.Connection) -> None:
        """At start-up, before any write: auto-vacuum, then the reserve, or say it is missing.

        Raise InvalidArgument if the disk is too small ever to hold the reserve.
        """
        self._page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        if self.reserve.size > 0:
            pages = self.reserve.size // 4 // self._page
            pages = max(16, min(pages, SQLITE_AUTOCHECKPOINT))
            conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        self._shrinkable = self._incremental(conn)
        self.reserve.open(str(self.db))
        if not self.make(conn, force=True):
            # Starting anyway: reads and deletes work, and deletes are the way out.
            log.warning("%s (DeleteAsset works meanwhile)", self.refusal().message)

    def admit(self, conn: sqlite3.Connection, value_bytes: int, writes: int) -> StorageFull | None:
        """Before a group of writes: why it may not run now, if it may not."""
        if not self.make(conn):
            return self.refusal()
        # What the group appends to the WAL, and what the checkpoint after it then needs
        # to grow the file by (less the free pages it reuses).
        cost = value_bytes + (PAGES_PER_GROUP + writes * PAGES_PER_WRITE) * self._page
        free = free_bytes(self.db.parent)
        try:
            wal = os.stat(self._wal).st_size
        except FileNotFoundError:
            wal = 0
        if free >= 2 * cost + wal:
            return None  # the usual case: the WAL holds at most that much growth
        reused = int(conn.execute("PRAGMA freelist_count").fetchone()[0]) * self._page
        if free < cost + self._pending(conn) + max(0, cost - reused):
            return self.full()
        return None

    def make(self, conn: sqlite3.Connection, force: bool = False) -> bool:
        """Re-create the reserve if it is missing, first giving the database's slack back
        to the disk if that is what it takes; True if writes may go on.

        Without `force`, the slack is looked at no more than once a SHRINK_RETRY_SECONDS:
        writes refused in a burst do not each wait for a checkpoint.
        """
        if self._shared:
            self.reserve.recheck()
        if not self.reserve.missing:
            return True
        self.reserve.restore(self._pending(conn))
        now = time.monotonic()
        if self.reserve.missing and (force or now - self._shrunk_at >= SHRINK_RETRY_SECONDS):
            self._shrunk_at = now
            self._shrink(conn)
        return not self.reserve.missing

    def delete(self, conn: sqlite3.Connection, delete: Callable[[], T], asset_id: str) -> T:
        """Run `delete` (a transaction) so that it works on a full disk too: deleting is
        how space gets freed."""
        # Without the reserve there is no room to spare for zeroing the freed pages.
        try:
            return _frugally(conn, delete) if self.reserve.missing else delete()
        except sqlite3.OperationalError as exc:
            if not is_full(exc):
                raise
            if not self.reserve.release(f"the disk holding {self.db} is full"):
                raise StorageFull(
                    f"the metadata database's disk is full ({self.db}) and its reserve "
                    f"({self.reserve.path}) is used up, so even deleting asset {asset_id} "
                    "cannot be written: free space on that disk by other means, then retry"
                ) from exc
        gone = _frugally(conn, delete)
        # Copy the WAL into the database now, so the next writes restart the WAL from its
        # beginning (reusing its space) instead of appending to it.
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("checkpoint after a disk-full delete failed: %s", exc)
        return gone

    def full(self) -> StorageFull:
        """The error of a write that does not fit on the disk."""
        return StorageFull(
            f"the metadata database's disk is full ({self.db}): free space, e.g. delete "
            "assets with DeleteAsset"
        )

    def refusal(self) -> StorageFull:
        """The error of a write refused while the reserve is missing."""
        size = self.reserve.size
        return StorageFull(
            f"the metadata database's disk is full ({self.db}): its {size}-byte disk-full "
            f"reserve ({self.reserve.path}), which keeps DeleteAsset working on a full disk, "
            f"was spent and there is no room to re-create it ({free_bytes(self.db.parent)} "
            f"bytes free), so writes other than deletes are refused until {size} bytes are "
            "free there: free space, e.g. delete assets with DeleteAsset"
        )

    def _pending(self, conn: sqlite3.Connection) -> int:
        """Bytes the database file must grow by for a checkpoint to copy the whole WAL."""
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        # Allocated blocks, not the size: a checkpoint that failed may have left a hole.
        return max(0, pages * self._page - os.stat(self.db).st_blocks * 512)

    def _shrink(self, conn: sqlite3.Connection) -> None:
        """Give the database's slack back to the disk, a step at a time, until the reserve
        fits: free pages truncated off its end, and the WAL (which is otherwise kept at up
        to JOURNAL_SIZE_LIMIT for reuse) emptied."""
        for _ in range(self.reserve.size // (SHRINK_STEP_PAGES * self._page) + 8):
            pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            try:
                if pages and self._shrinkable:
                    with transaction(conn):
                        for _ in range(SHRINK_STEP_PAGES):
                            # sqlite3 steps a pragma once, and each step frees one page.
                            conn.execute("PRAGMA incremental_vacuum(1)")
                done = self._checkpoint(conn)
            except sqlite3.OperationalError as exc:
                # Expected while the disk is this full; the refused write says so.
                log.debug("giving free space of %s back to its disk failed: %s", self.db, exc)
                return
            self.reserve.restore(self._pending(conn))
            if not self.reserve.missing or not done or pages <= SHRINK_STEP_PAGES:
                return  # done, nothing more to give, or a reader holds the WAL: next time

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> bool:
        """Copy the WAL into the database (truncated to its pages in use) and empty it;
        False if a reader kept it from completing."""
        timeout = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
        # A reader's snapshot keeps the WAL: wait for it briefly, never for the usual 5 s.
        conn.execute(f"PRAGMA busy_timeout = {min(timeout, CHECKPOINT_WAIT_MS)}")
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {timeout}")
        return not busy

    def _incremental(self, conn: sqlite3.Connection) -> bool:
        """Whether free pages can be given back; converts a database made before, once."""
        if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == INCREMENTAL:
            return True
        size = self.db.stat().st_size
        # VACUUM writes the whole database through the WAL before copying it back.
        needed = size + max(self.reserve.size, 0)
        if free_bytes(self.db.parent) < needed:
            log.warning(
                "cannot convert %s to incremental auto-vacuum now (it needs about %d bytes "
                "free); until it is, deleting VALUE assets does not give space back to the disk",
                self.db,
                needed,
            )
            return False
        log.info(
            "converting %s (%d bytes) to incremental auto-vacuum, once, so that deleting "
            "VALUE assets can give space back to the disk",
            self.db,
            size,
        )
        started = time.monotonic()
        try:
            conn.execute(f"PRAGMA auto_vacuum = {INCREMENTAL}")
            conn.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            log.warning("converting %s to incremental auto-vacuum failed: %s", self.db, exc)
            return False
        log.info("converted %s in %.1f s", self.db, time.monotonic() - started)
        return True
