"""A preallocated file given back to a full disk so that deletes (which free space) still work."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class DiskReserve:
    """CockroachDB's "emergency ballast": `size` bytes really allocated at `path`.

    Not thread-safe: its owner calls it from one thread (the SQLite store's writer).
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._partial = path.with_name(path.name + ".part")
        self.present = False
        # Set when creating it failed for a reason other than space: retrying on every
        # write would only fill the log.
        self.unsupported = size <= 0

    def open(self, what: str) -> None:
        """Drop a half-written reserve of a dead process, then make ours if space allows."""
        self._partial.unlink(missing_ok=True)
        self.restore()
        if not (self.present or self.unsupported):
            log.warning(
                "not enough free space beside %s for the %d-byte disk-full reserve %s; if "
                "this disk fills up, DeleteAsset may fail too. Free some space.",
                what,
                self.size,
                self.path,
            )

    def _free_bytes(self) -> int:
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    def restore(self) -> None:
        """Create the reserve if it is missing and the disk can spare it twice over.

        Twice: creating it must leave as much free as it holds, or restoring it the moment
        a delete freed a little space would fill the disk again at once.
        """
        if self.present or self.unsupported:
            return
        try:
            if self.path.stat().st_size >= self.size:
                self.present = True
                return
        except FileNotFoundError:
            pass
        try:
            if self._free_bytes() < 2 * self.size:
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
                    "cannot create the disk-full reserve %s (%s); DeleteAsset may fail if "
                    "this disk fills up",
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
            "%s: released the %d-byte reserve %s; it is re-created once twice that much space "
            "is free again",
            why,
            self.size,
            self.path,
        )
        return True
