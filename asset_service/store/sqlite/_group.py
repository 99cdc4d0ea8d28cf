"""What a group transaction's writes keep in memory until its COMMIT: revisions, accounting."""

from __future__ import annotations

import sqlite3

from asset_service.domain.models import Asset
from asset_service.domain.usage import Cell, Deltas, deltas, merge

_UPSERT = (
    "INSERT INTO usage (grp, key, status, count, bytes) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (grp, key, status) DO UPDATE SET count = count + excluded.count, "
    "bytes = bytes + excluded.bytes"
)
_DROP_EMPTY = (
    "DELETE FROM usage WHERE grp = ? AND key = ? AND status = ? AND count = 0 AND bytes = 0"
)


def write_cells(c: sqlite3.Connection, moved: Deltas) -> None:
    """Add `moved` to the accounting cells (domain/usage.py); a cell back at zero goes."""
    moved = {cell: change for cell, change in moved.items() if change != (0, 0)}
    if not moved:
        return
    c.executemany(_UPSERT, [(*cell, count, size) for cell, (count, size) in moved.items()])
    # Only a cell that went down can have reached zero: a batch of new records (every cell
    # up) skips this statement.
    emptied = [cell for cell, (count, size) in moved.items() if count < 0 or size < 0]
    if emptied:
        c.executemany(_DROP_EMPTY, emptied)


def counter(c: sqlite3.Connection) -> int:
    return int(c.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()[0])


class GroupState:
    """The revision counter and the accounting deltas of one group transaction's writes
    (_writer.py), written to their rows once, just before its COMMIT.

    Why: each record write took its revision with an UPDATE of the counter and moved six
    accounting cells or more (all, type, task, tags; each with its status and total) with
    an upsert each; 64 promises of one task move the same six. Once per batch instead of
    once per write was a third of the writer's time per insert (bench/README.md).

    Only a write that succeeded counts: a write's deltas wait apart (`_job`) until its
    savepoint is released (`job_done(True)`) and are dropped with it (`job_done(False)`),
    which also gives its revisions back, as the rollback of its savepoint did; a batch
    rolled back as a whole drops everything (`discard`). A read of a cell on the writer
    connection inside the batch adds what is still pending (`count`).
    """

    def __init__(self) -> None:
        self._batch: Deltas = {}  # the released writes' deltas, not yet written
        self._job: Deltas = {}  # the running write's
        self._read: int | None = None  # the counter as this transaction read it
        self._released: int = 0  # the last revision of the released writes
        self._revision: int = 0  # the last revision taken

    def next_revision(self, c: sqlite3.Connection) -> int:
        if self._read is None:
            self._read = self._released = self._revision = counter(c)
        self._revision += 1
        return self._revision

    def account(self, before: Asset | None, after: Asset | None) -> None:
        """Move the cells as domain.usage.deltas(before, after) says (cells netting to
        nothing are left out when written)."""
        merge(self._job, deltas(before, after))

    def count(self, c: sqlite3.Connection, cell: Cell) -> int:
        """The cell's count as this transaction has it, pending deltas included."""
        row = c.execute(
            "SELECT count FROM usage WHERE grp = ? AND key = ? AND status = ?", cell
        ).fetchone()
        stored = int(row[0]) if row is not None else 0
        return stored + self._batch.get(cell, (0, 0))[0] + self._job.get(cell, (0, 0))[0]

    def job_done(self, ok: bool) -> None:
        if ok:
            merge(self._batch, self._job)
            self._released = self._revision
        else:
            self._revision = self._released
        self._job = {}

    def flush(self, c: sqlite3.Connection) -> None:
        """Write the batch's counter and cells (before its COMMIT, outside any savepoint)."""
        assert not self._job, "a write's accounting is still open"
        if self._read is not None and self._released != self._read:
            c.execute("UPDATE counters SET value = ? WHERE name = 'revision'", (self._released,))
        moved = self._batch
        self.discard()
        write_cells(c, moved)

    def discard(self) -> None:
        self._batch, self._job, self._read = {}, {}, None
