"""A preallocated file given back to a full disk so that deletes (which free space) still work."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from asset_service.domain.errors import InvalidArgument

log = logging.getLogger(__name__)


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


class DiskReserve:
    """CockroachDB's "emergency ballast": `size` bytes really allocated at `path`.

    While it is `missing` (released for a delete, or never made for lack of space) the
    store refuses every write but deletes: whatever space frees up goes to the reserve
    first, so that the next full disk finds it there again.

    Not thread-safe: its owner calls it from one thread (the SQLite store's writer).
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._partial = path.with_name(path.name + ".part")
        self.present = False
        # Set when creating it failed for a reason other than space: retrying on every
        # write would only fill the log, and refusing writes for it would stop the service.
        self.unsupported = False

    @property
    def missing(self) -> bool:
        """Wanted but not there: writes other than deletes wait for it."""
        return not (self.present or self.unsupported or self.size <= 0)

    def open(self, what: str) -> None:
        """Drop a half-written reserve of a dead process, then make ours if space allows.

        Raise InvalidArgument if the disk could never hold it: a store that refuses writes
        until its reserve exists would then refuse them forever. A disk with too little free
        space now is another matter: the store says so once it has tried to make room.
        """
        if self.size <= 0:
            log.warning(
                "no disk-full reserve for %s (--disk-reserve-bytes 0): once its disk is full, "
                "DeleteAsset fails too until space is freed by other means",
                what,
            )
            return
        st = os.statvfs(self.path.parent)
        total = st.f_blocks * st.f_frsize
        if self.size > total // 2:
            raise InvalidArgument(
                f"the disk holding {what} is {total} bytes, too small for the {self.size}-byte "
                "disk-full reserve that keeps DeleteAsset working once that disk is full (it "
                "may take at most half the disk): give --disk-reserve-bytes a smaller size, "
                "at least 1MiB, or put the database on a bigger disk"
            )
        self._partial.unlink(missing_ok=True)
        self.restore()

    def recheck(self) -> None:
        """Whether it is there, from its file (another process may have released it)."""
        if self.size > 0 and not self.unsupported:
            self.present = self.path.exists()

    def restore(self, spoken_for: int = 0) -> None:
        """Create the reserve if it is missing and the disk has room for it besides
        `spoken_for` bytes (what the database's next checkpoint needs).

        It takes precedence over every other write: room for it is used for it at once, even
        if that leaves the disk full (the writes that follow then get StorageFull, and the
        next delete has the reserve to spend).
        """
        if not self.missing:
            return
        try:
            if self.path.stat().st_size >= self.size:
                self.present = True
                return
        except FileNotFoundError:
            pass
        try:
            if free_bytes(self.path.parent) < self.size + spoken_for:
                return
            fd = os.open(self._partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                # Really allocated (not a sparse hole), so unlinking it really frees space.
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                self._partial.unlink(missing_ok=True)
                raise
            os.close(fd)
            os.replace(self._partial, self.path)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                self.unsupported = True
                log.warning(
                    "cannot create the disk-full reserve %s (%s); running without it: "
                    "DeleteAsset may fail if this disk fills up",
                    self.path,
                    exc,
                )
            return
        self.present = True
        log.info(
            "disk-full reserve in place: %s (%d bytes, released so DeleteAsset works on a "
            "full disk)",
            self.path,
            self.size,
        )

    def release(self, why: str) -> bool:
        """Give the reserve's space back to the filesystem; False if there was none."""
        self.present = False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning(
            "%s: released the %d-byte reserve %s; writes other than deletes are refused "
            "until it is re-created, as soon as that much space is free again",
            why,
            self.size,
            self.path,
        )
        return True
